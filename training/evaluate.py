"""``capserve eval``: how well a registered site's model reads a labelled folder (or fresh
generated images), through exactly the served path: ``Model.recognize(image bytes)``,
which decodes, preprocesses, invokes LiteRT, decodes and post-processes. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Sequence

from capserve.core.errors import CapserveError
from capserve.training import datasets
from capserve.training.metrics import Scores, format_confusions, score


@dataclasses.dataclass
class EvalResult:
    site: str
    version: int
    source: str
    scores: Scores
    truths: list[str]
    predictions: list[str]
    errors: int  # images the server path refused (counted as wrong)
    ms_per_image: float

    def to_dict(self, top: int = 10) -> dict:
        return {
            "site": self.site,
            "version": self.version,
            "source": self.source,
            **self.scores.to_dict(),
            "unreadable": self.errors,
            "ms_per_image": round(self.ms_per_image, 3),
            "worst_confusions": [{"true": t, "read": p, "count": n} for t, p, n in self.scores.worst_confusions(top)],
        }


def load_model(site: str, registry: Sequence[Path] | None = None):
    """The model serving ``site`` in the given registry folders (default: as the server's default)."""
    from capserve.core.errors import UnknownSite
    from capserve.model_registry.registry import Registry

    reg = Registry(list(registry) if registry else None)
    reg.refresh()
    try:
        return reg.get(site)
    except UnknownSite:
        failed = [e for e in reg.entries() if e.state == "FAILED"]
        hint = "".join(f"\n  FAILED {e.path}: {e.error}" for e in failed)
        raise LookupError(f"no model is registered for site {site!r} in {[str(r) for r in reg.roots]}{hint}") from None


def evaluate_bytes(model, items: Sequence[tuple[bytes, str]], source: str) -> EvalResult:
    truths, preds, errors = [], [], 0
    started = time.perf_counter()
    for data, label in items:
        try:
            text = model.recognize(data).text
        except CapserveError:
            text, errors = "", errors + 1
        truths.append(label)
        preds.append(text)
    elapsed = time.perf_counter() - started
    return EvalResult(
        site=model.spec.site,
        version=model.spec.version,
        source=source,
        scores=score(truths, preds),
        truths=truths,
        predictions=preds,
        errors=errors,
        ms_per_image=elapsed / max(1, len(truths)) * 1e3,
    )


def evaluate_folder(site: str, folder: Path, *, registry: Sequence[Path] | None = None, case: str = "sensitive") -> EvalResult:
    model = load_model(site, registry)
    items = [(path.read_bytes(), label) for path, label in datasets.scan_folder(folder, case=case)]
    return evaluate_bytes(model, items, str(folder))


def generated_pngs(spec: str, count: int, *, seed: int = 12345) -> list[tuple[bytes, str]]:
    """``count`` fresh images from a generator spec, as PNG bytes with their labels."""
    generator, params = datasets.parse_generator_spec(spec)
    out = []
    for image, label in datasets.generated_images(generator, params, count, seed=seed):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((buffer.getvalue(), label))
    return out


def evaluate_generator(
    site: str,
    spec: str,
    count: int,
    *,
    seed: int = 12345,
    registry: Sequence[Path] | None = None,
    case: str = "sensitive",
) -> EvalResult:
    model = load_model(site, registry)
    items = [(data, datasets.apply_case(label, case)) for data, label in generated_pngs(spec, count, seed=seed)]
    return evaluate_bytes(model, items, f"{spec} ({count} fresh images, seed {seed})")


def format_result(result: EvalResult, top: int = 10) -> str:
    s = result.scores
    lines = [
        f"site {result.site} v{result.version} on {result.source}",
        f"  images:              {s.samples}" + (f" ({result.errors} refused by the server path)" if result.errors else ""),
        f"  sequence accuracy:   {s.sequence_accuracy:.4f}",
        f"  character accuracy:  {s.char_accuracy:.4f}",
        f"  time per image:      {result.ms_per_image:.2f} ms",
        "worst-confused characters (true -> read, count; ∅ = missing/extra):",
        format_confusions(s, top),
    ]
    return "\n".join(lines)
