"""Search throughput and the search's export against onnxruntime's quantize_static, in one run.

    python benchmarks/search_benchmark.py [EXPERIMENT.yaml ...] [--trials 40]

For each experiment (default: ResNet-20 and the MobileNet-style model): runs a fresh study with the
default space (calibration cache warm), reports trials per minute and the share of trial time spent
outside onnxruntime inference, then measures the export at the experiment's max_accuracy_drop
against quantize_static (defaults, and per-channel) — accuracy on the same eval split, latency
interleaved in the same process. Writes benchmarks/results/search_benchmark.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, ort_quantize_static, write_result

from autoquant.api import search
from autoquant.config import load_experiment
from autoquant.evaluate import evaluator as evaluator_mod
from autoquant.search import study as study_mod
from autoquant.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


class InferenceClock:
    """Time spent in onnxruntime inference (scoring and latency runs) inside trials only — not in the
    per-study FP32 latency or sensitivity passes that run before the trial loop."""

    def __init__(self):
        self.seconds = 0.0
        self.in_trial = False

    def inference(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.in_trial:
                    self.seconds += time.perf_counter() - t0

        return timed

    def trial(self, fn):
        def flagged(*args, **kwargs):
            self.in_trial = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.in_trial = False

        return flagged


def bench(path: Path, trials: int, repeats: int) -> dict:
    exp = load_experiment(path)
    Workspace(exp)  # warm the calibration / reference cache: the search measures trials, not setup
    clock = InferenceClock()
    originals = (evaluator_mod.Evaluator.score, evaluator_mod.Evaluator.latency_ms, study_mod.Objective.__call__)
    evaluator_mod.Evaluator.score = clock.inference(originals[0])
    evaluator_mod.Evaluator.latency_ms = clock.inference(originals[1])
    study_mod.Objective.__call__ = clock.trial(originals[2])
    out = Path(tempfile.mkdtemp(prefix="aq-bench-"))
    try:
        # run.seconds covers the trial loop only (sampler, storage, MLflow and trials), not the setup.
        result = search(exp, out, trials=trials)
        inference_in_search = clock.seconds
    finally:
        evaluator_mod.Evaluator.score, evaluator_mod.Evaluator.latency_ms, study_mod.Objective.__call__ = originals
    per_min = result.completed / result.seconds * 60
    ws = Workspace(replace(exp, eval=replace(exp.eval, latency_repeats=repeats)))
    ev = ws.evaluator
    models = {
        "fp32": ws.model,
        "autoquant export": onnx.load(str(result.export.model_path)) if result.export else None,
        "quantize_static defaults": ort_quantize_static(ws, per_channel=False),
        "quantize_static per-channel": ort_quantize_static(ws, per_channel=True),
    }
    models = {k: m for k, m in models.items() if m is not None}
    sessions = {k: ev.session(m) for k, m in models.items()}
    lat = dict(zip(sessions, ev.latency_ms(*sessions.values())))
    rows = {k: {"accuracy": ev.score(s).accuracy, "latency_ms": lat[k], "latency_ratio": lat[k] / lat["fp32"],
                "size_bytes": models[k].ByteSize()} for k, s in sessions.items()}  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    return {"experiment": exp.name, "trials": result.completed, "evaluated": result.evaluated,
            "search_seconds": result.seconds, "trials_per_minute": per_min,
            "inference_seconds": inference_in_search,
            "overhead_share": 1 - inference_in_search / result.seconds,
            "eval_samples": len(ws.splits.eval), "max_accuracy_drop": exp.search.max_accuracy_drop,
            "export_trial": result.chosen.number if result.chosen else None, "constraint_met": result.met,
            "export_bitops_fraction": result.chosen.result.bitops_fraction if result.chosen else None,
            "models": rows}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("experiments", nargs="*", type=Path,
                   default=[REPO / "experiments" / "cifar10_resnet20.yaml", REPO / "experiments" / "cifar10_mobilenet.yaml"])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--repeats", type=int, default=30, help="latency repeats per model (interleaved)")
    args = p.parse_args()
    results = [bench(path, args.trials, args.repeats) for path in args.experiments]
    path = write_result("search_benchmark", {"command": " ".join(["python benchmarks/search_benchmark.py"] + sys.argv[1:]),
                                             "machine": machine(), "results": results})  # fmt: skip
    for r in results:
        print(f"\n## {r['experiment']}: {r['trials']} trials on {r['eval_samples']} eval images\n")
        print(f"throughput {r['trials_per_minute']:.1f} trials/min; share of trial time outside onnxruntime inference "
              f"{r['overhead_share'] * 100:.0f} %; export = trial {r['export_trial']} (bitops "
              f"{(r['export_bitops_fraction'] or 0) * 100:.2f} % of FP32, constraint {r['max_accuracy_drop']} pt met: "
              f"{r['constraint_met']})\n")  # fmt: skip
        print("| model | top-1 % | latency ms | latency ratio | size KB |\n|---|---:|---:|---:|---:|")
        for name, m in r["models"].items():
            print(f"| {name} | {m['accuracy']:.2f} | {m['latency_ms']:.2f} | {m['latency_ratio']:.2f} | {m['size_bytes'] / 1024:.0f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
