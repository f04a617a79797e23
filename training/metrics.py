"""Sequence and character accuracy, and which characters get confused (no TensorFlow).

Character accuracy is ``1 - edit distance / characters`` summed over the samples, so a
missing or extra character counts as one error, as for variable-length CTC output. The
alignment behind the edit distance also says which true character became which prediction.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Sequence

MISSING = "∅"  # a deleted character (true side) or an inserted one (predicted side)


def align(truth: str, pred: str) -> list[tuple[str, str]]:
    """Levenshtein alignment as ``(true char or MISSING, predicted char or MISSING)`` pairs."""
    n, m = len(truth), len(pred)
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = truth[i - 1] != pred[j - 1]
            dist[i][j] = min(dist[i - 1][j] + 1, dist[i][j - 1] + 1, dist[i - 1][j - 1] + cost)
    pairs = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and dist[i][j] == dist[i - 1][j - 1] + (truth[i - 1] != pred[j - 1]):
            pairs.append((truth[i - 1], pred[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and dist[i][j] == dist[i - 1][j] + 1:
            pairs.append((truth[i - 1], MISSING))
            i -= 1
        else:
            pairs.append((MISSING, pred[j - 1]))
            j -= 1
    return pairs[::-1]


@dataclasses.dataclass
class Scores:
    samples: int
    sequence_accuracy: float
    char_accuracy: float
    confusions: collections.Counter  # (true, predicted) -> count, errors only
    per_char: dict[str, dict[str, int]]  # true char -> {"total", "errors"}

    def worst_confusions(self, k: int = 10) -> list[tuple[str, str, int]]:
        return [(t, p, n) for (t, p), n in self.confusions.most_common(k)]

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "sequence_accuracy": round(self.sequence_accuracy, 5),
            "char_accuracy": round(self.char_accuracy, 5),
        }


def score(truths: Sequence[str], preds: Sequence[str]) -> Scores:
    """Sequence accuracy, character accuracy, confusions and per-character errors."""
    if len(truths) != len(preds):
        raise ValueError(f"{len(truths)} labels but {len(preds)} predictions")
    confusions: collections.Counter = collections.Counter()
    per_char: dict[str, dict[str, int]] = {}
    exact = errors = chars = 0
    for truth, pred in zip(truths, preds):
        chars += len(truth)
        if truth == pred:
            exact += 1
            for c in truth:
                entry = per_char.setdefault(c, {"total": 0, "errors": 0})
                entry["total"] += 1
            continue
        for t, p in align(truth, pred):
            if t != MISSING:
                entry = per_char.setdefault(t, {"total": 0, "errors": 0})
                entry["total"] += 1
                entry["errors"] += t != p
            if t != p:
                errors += 1
                confusions[(t, p)] += 1
    n = len(truths)
    return Scores(
        samples=n,
        sequence_accuracy=exact / n if n else 0.0,
        char_accuracy=max(0.0, 1 - errors / chars) if chars else 0.0,
        confusions=confusions,
        per_char=dict(sorted(per_char.items())),
    )


def format_confusions(scores: Scores, k: int = 10) -> str:
    rows = scores.worst_confusions(k)
    if not rows:
        return "no confusions"
    return "\n".join(f"  {t!s:>3} -> {p!s:<3} {n:5d}" for t, p, n in rows)


def char_table(scores: Scores) -> Iterable[tuple[str, int, int, float]]:
    """``(char, total, errors, error rate)`` per true character, worst first."""
    rows = [(c, v["total"], v["errors"], v["errors"] / v["total"] if v["total"] else 0.0) for c, v in scores.per_char.items()]
    return sorted(rows, key=lambda r: (-r[3], r[0]))
