"""Whether autoquant's latency figures can be trusted, on a quiet and on a loaded machine, in one run per bed:

1. the all-float plan (the FP32 model rebuilt by autoquant: the same graph) timed against FP32 as a trial is —
   every figure should read 1.00 (± 0.05);
2. a search's export: its trial figure against `autoquant evaluate`'s re-timing of the exported file, repeated —
   within ±10 %.

"Loaded" runs the same measurements while other processes keep the cores busy (`--load N` processes, default one
per core, each a single-threaded numpy matrix product in a loop), as on a shared build machine.

    pip install -e ".[bench]" && python benchmarks/latency_trust.py [--beds efficientnet-lite1 resnet56] [--repeats 8]

Writes benchmarks/results/latency_trust.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import beds
import numpy as np
from common import machine, write_result

from autoquant import QuantPlan, Workspace, evaluate, load_experiment, search
from autoquant.measure import Meter
from autoquant.quantize.plan import FLOAT

BURNER = "import numpy as np\na = np.random.rand(384, 384)\nwhile True:\n    a = (a @ a) / 384.0\n"


@contextlib.contextmanager
def load(processes: int):
    """`processes` single-threaded busy loops for the duration of the block (none: a quiet machine)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", BURNER], env=env) for _ in range(processes)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def trust(bed: str, repeats: int, load_processes: int, trials: int, tmp: Path) -> dict:
    exp = beds.experiment_with(beds.experiment(bed), trials=trials, max_accuracy_drop=1.0)
    loaded = load_experiment(beds.write(exp, tmp))
    result = search(loaded, tmp / f"run-{bed}")  # quiet: the export's trial figure is the one a user reads
    ws: Workspace = result.workspace
    meter = Meter(ws)
    all_float = ws.build(QuantPlan.uniform(ws.graph.names, FLOAT)).SerializeToString()
    out = {**beds.describe(exp), "latency_batch": ws.exp.eval.latency_batch_size, "repeats": repeats,
           "load_processes": load_processes, "export_trial_latency_ratio": None}
    if result.met:
        out["export_trial_latency_ratio"] = result.chosen.result.latency_ratio
        out["export_label"] = result.chosen.label
    for state, processes in (("quiet", 0), ("loaded", load_processes)):
        with load(processes):
            floats = [meter.latency(all_float)[1] for _ in range(repeats)]
            again = [evaluate(result.export.model_path, ws).latency_ratio for _ in range(repeats)] if result.met else []
        out[state] = {"all_float_ratios": floats, "evaluate_ratios": again,
                      "all_float_within_5_percent": all(abs(r - 1.0) <= 0.05 for r in floats),
                      "evaluate_within_10_percent_of_trial": all(abs(r / out["export_trial_latency_ratio"] - 1.0) <= 0.10
                                                                 for r in again) if again else None}
        print(f"{bed} {state}: all-float {np.min(floats):.2f}-{np.max(floats):.2f}x"
              + (f"; export trial {out['export_trial_latency_ratio']:.2f}x, evaluate {np.min(again):.2f}-"
                 f"{np.max(again):.2f}x" if again else ""), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beds", nargs="+", default=["efficientnet-lite1", "resnet56"], choices=beds.BEDS)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes for the loaded runs")
    p.add_argument("--trials", type=int, default=20, help="trials of the search whose export is re-timed")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {bed: trust(bed, args.repeats, args.load, args.trials, Path(tmp)) for bed in args.beds}
    print(f"wrote {write_result('latency_trust', {'command': ' '.join(['python benchmarks/latency_trust.py', *sys.argv[1:]]), 'machine': machine(), 'beds': results})}")


if __name__ == "__main__":
    main()
