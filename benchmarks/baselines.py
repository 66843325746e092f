"""Each test bed's starting point: FP32 against all-INT8 per-channel and per-tensor (minmax ranges), the metric
on the bed's eval set and the latency of the three timed in the same interleaved rounds, and what onnxruntime
runs for each layer (`autoquant inspect`'s count). These are the figures every limit on the bed is read
against: a limit all-INT8 meets needs no search.

    pip install -e ".[bench]"
    python benchmarks/baselines.py [--beds efficientnet-lite1 resnet56 ...]

Writes benchmarks/results/baselines.json (one entry per bed, others kept) and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import beds
from common import RESULTS, machine, write_result

from autoquant import LayerChoice, QuantPlan, Workspace, load_experiment
from autoquant.evaluate.executed import executed_layers
from autoquant.measure import Meter

PLANS = {"all INT8 per-channel": "per_channel", "all INT8 per-tensor": "per_tensor"}


def measure(bed: str, tmp: Path) -> dict:
    exp = beds.experiment(bed)
    ws = Workspace(load_experiment(beds.write(exp, tmp)))
    t0 = time.perf_counter()
    meter = Meter(ws)
    rows = [{"plan": "FP32", "metric": ws.reference.accuracy, "drop": 0.0}]
    models = []
    for label, granularity in PLANS.items():
        plan = QuantPlan.uniform(ws.graph.names, LayerChoice.of(weight_granularity=granularity))
        model = ws.build(plan)
        m = meter(model, plan)
        runs = collections.Counter(e.mode for e in executed_layers(model))
        rows.append({"plan": label, "metric": m.accuracy, "drop": m.accuracy_drop, "output_nmse": m.output_mse,
                     "runs": dict(runs)})
        models.append(model)
    timed = meter.latencies([m.SerializeToString() for m in models])
    for r, (ms, ratio, rounds) in zip(rows[1:], timed):
        r |= {"latency_ms": ms, "latency_ratio": ratio, "latency_rounds": rounds}
    rows[0] |= {"latency_ms": timed[0][0] / timed[0][1], "latency_ratio": 1.0, "latency_rounds": timed[0][2]}
    return {**beds.describe(exp), "layers": len(ws.graph.layers), "depthwise": sum(la.depthwise for la in ws.graph.layers),
            "weight_range": ws.weight_range, "latency_batch": ws.exp.eval.latency_batch_size, "rows": rows,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beds", nargs="+", default=list(beds.BEDS), choices=beds.BEDS)
    args = p.parse_args()
    previous = RESULTS / "baselines.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {"beds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for bed in args.beds:
            results["beds"][bed] = entry = measure(bed, Path(tmp))
            for r in entry["rows"]:
                print(f"{bed:20s} {r['plan']:22s} {r['metric']:7.2f} drop {r['drop']:+6.2f}  latency "
                      f"{r['latency_ratio']:.2f}x  {r.get('runs', '')}", flush=True)
    results.update(command=" ".join(["python benchmarks/baselines.py", *sys.argv[1:]]), machine=machine())
    print(f"wrote {write_result('baselines', results)}")


if __name__ == "__main__":
    main()
