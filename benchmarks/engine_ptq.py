"""PTQ engine figures on CIFAR-10 ResNet-20, measured side by side in one run.

1. Our single calibration pass (statistics for all five algorithms at once) vs onnxruntime's
   MinMax / Entropy / Percentile calibrators on the same data: wall time and peak RSS, each in a
   fresh process.
2. Building one plan's model from the cache vs one calibration pass.
3. Per-tensor vs per-channel weights × the five activation algorithms: accuracy, bitops, latency
   ratio to FP32 (interleaved in the same process).
4. uint8 vs int8 activations: latency, interleaved, on ResNet-20 and the MobileNet-style model.

    python benchmarks/engine_ptq.py [--experiment experiments/cifar10_resnet20.yaml] [--quick]

Writes benchmarks/results/engine_ptq.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_calibrate(experiment: Path, method: str, calibration_size: int | None = None) -> dict:
    """Run one calibration method in this (fresh) process; report wall time and peak RSS."""
    from common import data_reader
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from autoquant.calibrate.collect import collect_stats
    from autoquant.config import load_experiment
    from autoquant.graph.ingest import prepare
    from autoquant.graph.layers import analyze
    from autoquant.runtime import Batches
    from autoquant.sources import load_splits, model_path

    exp = load_experiment(experiment)
    if calibration_size:
        exp = replace(exp, data=replace(exp.data, calibration_size=calibration_size))
    splits = load_splits(exp)
    prepared = prepare(model_path(exp, lambda: splits), exp.cache)
    model = prepared.load()
    graph = analyze(model)
    # onnxruntime's histogram calibrators fail on a ragged last batch, so every method gets equal batches.
    calib, bs = splits.calibration, 25
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if method == "autoquant":
        collect_stats(model, prepared.inputs, graph.float_tensors, calib, batches=Batches(bs), threads=os.cpu_count())
    else:

        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            cal = create_calibrator(prepared.preprocessed, ["Conv", "Gemm", "MatMul"],
                                    augmented_model_path=f"{tmp}/aug.onnx",
                                    calibrate_method=getattr(CalibrationMethod, method))
            cal.collect_data(data_reader(calib, bs))
            cal.compute_data()
    return {"method": method, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": base, "samples": len(calib)}


def calibration_comparison(experiment: Path, calibration_size: int | None = None) -> list[dict]:
    """Each calibration method in a fresh process, so its peak RSS is its own."""
    rows = []
    size = ["--calibration-size", str(calibration_size)] if calibration_size else []
    for method in ("autoquant", "MinMax", "Entropy", "Percentile"):
        out = subprocess.run([sys.executable, __file__, "--child-calibrate", method, "--experiment", str(experiment),
                              *size], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def algorithm_table(ws, rounds: int) -> list[dict]:
    """All ten uniform plans; their latencies are timed interleaved with FP32 in several rounds, since
    single measurements on a 2-core VM drift by tens of percent between otherwise identical graphs."""
    from autoquant.calibrate.ranges import ALGORITHMS
    from autoquant.evaluate.cost import bitops_fraction
    from autoquant.quantize.plan import LayerChoice, QuantPlan

    ev = ws.evaluator
    rows, blobs = [], [ws.model.SerializeToString()]
    for gran in ("per_tensor", "per_channel"):
        for algo in ALGORITHMS:
            plan = QuantPlan.uniform(ws.graph.names, LayerChoice.of(weight_granularity=gran, activation_algorithm=algo))
            t0 = time.perf_counter()
            qmodel = ws.build(plan)
            build_s = time.perf_counter() - t0
            blobs.append(qmodel.SerializeToString())
            acc = ev.score(ev.session(qmodel)).accuracy
            rows.append({"granularity": gran, "algorithm": algo, "accuracy": acc,
                         "drop": ws.reference.accuracy - acc, "bitops_fraction": bitops_fraction(ws.graph, plan),
                         "build_seconds": build_s})
    per_round = np.concatenate([ev.latency_rounds(*blobs) for _ in range(rounds)])  # rounds x models, interleaved
    ratios = per_round[:, 1:] / per_round[:, :1]
    for i, r in enumerate(rows):
        r["latency_ratio"] = float(np.median(ratios[:, i]))
        r["latency_ratio_range"] = [float(ratios[:, i].min()), float(ratios[:, i].max())]
    return rows


def activation_type_latency(experiments: list[Path], repeats: int) -> list[dict]:
    from autoquant.api import preset_plan
    from autoquant.config import load_experiment
    from autoquant.workspace import Workspace

    rows = []
    for path in experiments:
        exp = load_experiment(path)
        exp = replace(exp, eval=replace(exp.eval, latency_repeats=repeats))
        blobs, accs = {}, {}
        for at in ("uint8", "int8"):
            ws = Workspace(replace(exp, quantization=replace(exp.quantization, activation_type=at)))
            blobs[at] = ws.build(preset_plan(ws, "int8-per-channel")).SerializeToString()
            accs[at] = ws.evaluator.score(ws.evaluator.session(blobs[at])).accuracy
        u, i, f = ws.evaluator.latency_ms(blobs["uint8"], blobs["int8"], ws.model.SerializeToString())
        rows.append({"model": exp.name, "uint8_ms": u, "int8_ms": i, "fp32_ms": f, "int8_over_uint8": i / u,
                     "uint8_accuracy": accs["uint8"], "int8_accuracy": accs["int8"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", type=Path, default=REPO / "experiments" / "cifar10_resnet20.yaml")
    p.add_argument("--mobilenet", type=Path, default=REPO / "experiments" / "cifar10_mobilenet.yaml")
    p.add_argument("--child-calibrate")
    p.add_argument("--calibration-size", type=int)
    p.add_argument("--quick", action="store_true", help="fewer latency repeats")
    args = p.parse_args()
    if args.child_calibrate:
        print(json.dumps(child_calibrate(args.experiment, args.child_calibrate, args.calibration_size)))
        return

    from autoquant.config import load_experiment
    from autoquant.versions import versions
    from autoquant.workspace import Workspace

    repeats = 10 if args.quick else 30
    calib = calibration_comparison(args.experiment)
    exp = load_experiment(args.experiment)
    ws = Workspace(replace(exp, eval=replace(exp.eval, latency_repeats=repeats)))
    table = algorithm_table(ws, rounds=3 if args.quick else 7)
    act = activation_type_latency([args.experiment, args.mobilenet], repeats)
    ours = next(r for r in calib if r["method"] == "autoquant")
    result = {
        "command": "python benchmarks/engine_ptq.py" + (" --quick" if args.quick else ""),
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), **versions()},
        "experiment": exp.name, "fp32_accuracy": ws.reference.accuracy,
        "eval_samples": len(ws.splits.eval), "calibration": calib,
        "median_build_seconds": float(np.median([r["build_seconds"] for r in table])),
        "calibration_pass_seconds": ours["seconds"],
        "algorithms": table, "activation_type": act,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine_ptq.json").write_text(json.dumps(result, indent=1))

    print(f"## Calibration pass on {ours['samples']} images ({exp.name})\n")
    print("| method | wall s | peak RSS MB |\n|---|---:|---:|")
    for r in calib:
        label = "autoquant (one pass, all 5 algorithms)" if r["method"] == "autoquant" else f"onnxruntime {r['method']}"
        print(f"| {label} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
    print(f"\nBuild one plan from cache: median {result['median_build_seconds']:.3f} s "
          f"vs one calibration pass {ours['seconds']:.2f} s\n")
    print(f"## All-INT8 on {exp.name}: FP32 top-1 {ws.reference.accuracy:.2f} % on {len(ws.splits.eval)} eval images\n")
    print("| weights | activations | top-1 % | drop pt | bitops (of FP32) | latency / FP32, median [min-max] |")
    print("|---|---|---:|---:|---:|---:|")
    for r in table:
        lo, hi = r["latency_ratio_range"]
        print(f"| {r['granularity']} | {r['algorithm']} | {r['accuracy']:.2f} | {r['drop']:+.2f} | "
              f"{r['bitops_fraction']:.4f} | {r['latency_ratio']:.2f} [{lo:.2f}-{hi:.2f}] |")
    print("\n## Activation integer type (per-channel INT8 weights, minmax)\n")
    print("| model | uint8 ms | int8 ms | FP32 ms | int8 / uint8 | top-1 uint8 | top-1 int8 |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in act:
        print(f"| {r['model']} | {r['uint8_ms']:.2f} | {r['int8_ms']:.2f} | {r['fp32_ms']:.2f} | {r['int8_over_uint8']:.2f} | "
              f"{r['uint8_accuracy']:.2f} | {r['int8_accuracy']:.2f} |")


if __name__ == "__main__":
    main()
