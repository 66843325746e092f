"""Wall time of the same search with 1 and with 2 worker processes (each with its share of the cores
for onnxruntime), side by side in one run.

    python benchmarks/workers.py [EXPERIMENT.yaml] [--trials 40]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result

from autoquant.api import search
from autoquant.config import load_experiment
from autoquant.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("experiment", nargs="?", type=Path, default=REPO / "experiments" / "cifar10_resnet20.yaml")
    p.add_argument("--trials", type=int, default=40)
    args = p.parse_args()
    exp = load_experiment(args.experiment)
    Workspace(exp)  # calibration cache warm for both runs
    rows = []
    for workers in (1, 2):
        out = Path(tempfile.mkdtemp(prefix="aq-workers-"))
        t0 = time.perf_counter()
        result = search(exp, out, trials=args.trials, workers=workers)
        rows.append({"workers": workers, "wall_seconds": time.perf_counter() - t0, "loop_seconds": result.seconds,
                     "completed": result.completed})
        shutil.rmtree(out, ignore_errors=True)
    ratio = rows[1]["wall_seconds"] / rows[0]["wall_seconds"]
    path = write_result("workers", {"command": "python " + " ".join(sys.argv), "machine": machine(),
                                    "experiment": exp.name, "trials": args.trials, "rows": rows,
                                    "two_over_one_wall_time": ratio})
    for r in rows:
        print(f"{r['workers']} worker(s): {r['wall_seconds']:.1f} s wall ({r['completed']} trials complete)")
    print(f"2 workers / 1 worker wall time: {ratio:.2f}\nwrote {path}")


if __name__ == "__main__":
    main()
