"""Write a registry entry: ``<out>/<site>/<version>/model.yaml``, ``model.tflite`` and ``report/``.

The report holds the training curves (``curves.png``), the per-character error table and the
summary with the exact command that reproduces the entry (``README.md``), and a sheet of
validation samples the exported model got wrong, with its predictions (``failures.png``).
Everything is small: a few tens of KB per entry.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from capserve.core.spec import ENTRY_FILE, load_spec
from capserve.training.metrics import Scores, char_table

MODEL_FILE = "model.tflite"
REPORT_DIR = "report"


def next_version(out: Path, site: str) -> int:
    """One more than the highest numeric version folder of ``site`` under ``out`` (1 if none)."""
    folder = Path(out) / site
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(versions, default=0) + 1


def reproduce_command(argv: Sequence[str] | None = None) -> str:
    """The command line that made this entry, as ``capserve ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["capserve", *args])


def write_entry(
    out: Path,
    *,
    site: str,
    version: int,
    content: bytes,
    width: int,
    height: int,
    channels: int,
    charset: str,
    decoder: str,
    min_length: int,
    max_length: int,
    preprocess: list[Any],
    postprocess: list[Any],
    description: str,
    training: dict[str, Any],
) -> Path:
    """Write the YAML and the model file; returns the entry folder. Refuses to overwrite one."""
    folder = Path(out) / site / str(version)
    if (folder / ENTRY_FILE).exists():
        raise FileExistsError(f"{folder / ENTRY_FILE} exists; choose another --version")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(content)
    doc = {
        "site": site,
        "version": version,
        "description": description,
        "model": {"file": MODEL_FILE, "sha256": hashlib.sha256(content).hexdigest()},
        "input": {"width": width, "height": height, "channels": channels},
        "charset": charset,
        "decoder": {"type": decoder},
        "length": {"min": min_length, "max": max_length},
        "preprocess": preprocess,
        "postprocess": postprocess,
        "training": training,
    }
    tmp = folder / (ENTRY_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")
    os.replace(tmp, folder / ENTRY_FILE)  # the YAML last: a watching registry sees a whole entry
    load_spec(folder / ENTRY_FILE)  # the registry's own parser must accept what we wrote
    return folder


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


# -- report ---------------------------------------------------------------------------------


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    ax1.plot(epochs, [h["loss"] for h in history], marker=".")
    ax1.set_title("training loss")
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax2.plot(epochs, [h["sequence_accuracy"] for h in history], marker=".", label="sequence")
    ax2.plot(epochs, [h["char_accuracy"] for h in history], marker=".", label="character")
    ax2.set_title("validation accuracy")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.01)
    ax2.legend(loc="lower right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _to_uint8(tensor: np.ndarray) -> np.ndarray:
    t = np.asarray(tensor, np.float32)
    lo, hi = float(t.min()), float(t.max())
    t = (t - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(t)
    t = t.astype(np.uint8)
    if t.shape[-1] == 1:
        return t[..., 0]
    return t[..., :3]


def failure_sheet(x: np.ndarray, truths: Sequence[str], preds: Sequence[str], path: Path, *, limit: int = 16) -> int:
    """A grid of wrongly read validation inputs captioned ``truth -> prediction``; returns how many."""
    from PIL import Image, ImageDraw

    wrong = [i for i, (t, p) in enumerate(zip(truths, preds)) if t != p][:limit]
    if not wrong:
        return 0
    h, w = x.shape[1:3]
    scale = max(1, min(2, 160 // max(w, 1)))
    cell_w, cell_h = max(w * scale, 120), h * scale + 14
    cols = min(4, len(wrong))
    rows = (len(wrong) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(wrong):
        r, c = divmod(k, cols)
        tile = Image.fromarray(_to_uint8(x[i])).convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(tile, (c * cell_w, r * cell_h))
        draw.text((c * cell_w + 2, r * cell_h + h * scale + 1), f"{truths[i]} -> {preds[i] or '(empty)'}", fill="red")
    # a 64-colour palette keeps the sheet at tens of KB
    sheet.quantize(64).save(path, optimize=True)
    return len(wrong)


def character_table_md(scores: Scores) -> str:
    lines = ["| char | seen | errors | error rate | most often read as |", "|---|---:|---:|---:|---|"]
    read_as: dict[str, list[tuple[int, str]]] = {}
    for (t, p), n in scores.confusions.items():
        read_as.setdefault(t, []).append((n, p))
    for char, total, errors, rate in char_table(scores):
        top = ", ".join(f"`{p}` ({n})" for n, p in sorted(read_as.get(char, []), reverse=True)[:3])
        lines.append(f"| `{char}` | {total} | {errors} | {rate:.2%} | {top} |")
    return "\n".join(lines)


def write_report(
    folder: Path,
    *,
    site: str,
    version: int,
    history: list[dict],
    scores: Scores,
    keras_scores: Scores,
    x_val: np.ndarray,
    val_labels: Sequence[str],
    predictions: Sequence[str],
    training: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    report = Path(folder) / REPORT_DIR
    report.mkdir(parents=True, exist_ok=True)
    if history:
        plot_curves(history, report / "curves.png")
    failures = failure_sheet(x_val, val_labels, predictions, report / "failures.png")
    (report / "history.json").write_text(json.dumps(history, indent=1))
    confused = scores.worst_confusions(10)
    lines = [
        f"# {site} v{version}: training report",
        "",
        f"- date: {training.get('date')}",
        f"- data: {training.get('data')}",
        f"- samples: {training.get('samples')}",
        f"- model: {training.get('model')}",
        f"- epochs: {training.get('epochs')} (best: {training.get('best_epoch')}), {training.get('seconds')} s",
        f"- quantization: {training.get('quantization')}, {training.get('model_bytes')} bytes",
        f"- validation sequence accuracy, LiteRT file: {scores.sequence_accuracy:.4f}"
        f" (Keras model: {keras_scores.sequence_accuracy:.4f})",
        f"- validation character accuracy, LiteRT file: {scores.char_accuracy:.4f}",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        str(training.get("command")),
        "```",
        "",
        "## Curves",
        "",
        "![training curves](curves.png)" if history else "(no epochs recorded)",
        "",
        "## Most confused characters (true -> read)",
        "",
    ]
    lines += [f"- `{t}` -> `{p}`: {n}" for t, p, n in confused] or ["none"]
    lines += ["", "## Per-character errors (validation set, LiteRT file)", "", character_table_md(scores), ""]
    lines += ["## Failed samples", ""]
    lines += [f"{failures} shown in failures.png (truth -> prediction)." if failures else "No validation sample was misread."]
    (report / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
