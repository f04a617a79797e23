"""Start-up of a registry of the three bundled entries, copied to a temporary folder (so they
are proven like any registry folder's; the bundled folder itself is trusted), with and without
proving the model files in a child process (model_registry/proof.py): median of interleaved
rounds, each in a fresh process."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from capserve.model_registry.registry import BUNDLED

CODE = """
import time
t = time.perf_counter()
from capserve.model_registry import proof
from capserve.model_registry.registry import Registry
if {skip}:
    proof.prove = lambda contents, **kw: [None] * len(contents)
Registry([{root!r}]).refresh()
print(time.perf_counter() - t)
"""


def once(skip: bool, root: Path) -> float:
    code = CODE.format(skip=skip, root=str(root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main(rounds: int = 15) -> None:
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "registry"
        shutil.copytree(BUNDLED, root)
        for _ in range(rounds):
            for skip in (True, False):
                times[skip].append(once(skip, root))
    without, proven = statistics.median(times[True]), statistics.median(times[False])
    print("| start-up of the 3 bundled entries copied to a registry folder (import + refresh), median of %d interleaved rounds | s |" % rounds)
    print("| --- | --- |")
    print(f"| without the proof | {without:.3f} |")
    print(f"| with the proof in a child process | {proven:.3f} |")
    print(f"| ratio | {proven / without:.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
