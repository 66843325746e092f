"""autoquant against what users would pick instead, measured side by side in one run.

    python benchmarks/compare.py [--quick]

Per model (CIFAR-10 ResNet-20, ResNet-56 and the MobileNet-style net; --quick: ResNet-20 and
MobileNet, smaller budgets):
  1. onnxruntime quantize_static (QDQ, after quant_pre_process) with MinMax / Entropy / Percentile,
     per-tensor and per-channel: the uniform all-INT8 baselines;
  2. autoquant all-INT8 with each activation algorithm (per-channel and per-tensor), no search;
  3. random search (Optuna RandomSampler, no warm start) with the trial budget;
  4. autoquant's search (NSGA-II + warm starts) with the same budget, and with half of it.
Each gets top-1 and drop vs FP32 on the same eval split, bitops fraction, size, CPU latency as a
ratio to FP32 (all models of a family timed interleaved, several rounds: median and spread) and
the wall time to produce it (calibration + search, from a cold statistics cache). For the searches,
Pareto hypervolume against trial count, over several seeds, for both samplers.
Writes benchmarks/results/compare[_quick].json and compare[_quick]_*.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autoquant.search.pareto import choose
from common import RESULTS, hypervolume, machine, ort_quantize_static, write_result

from autoquant.api import search
from autoquant.calibrate.ranges import ALGORITHMS
from autoquant.config import Cost, load_experiment
from autoquant.evaluate.cost import bitops_fraction
from autoquant.quantize.plan import LayerChoice, QuantPlan
from autoquant.search.study import scored_points
from autoquant.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
HV_REFERENCE_DROP = 10.0  # hypervolume reference point: (FP32 accuracy - 10 pt, bitops fraction 1.0)


def hv_curve(study_points, fp32: float, budget: int) -> list[float]:
    by_number = sorted(study_points, key=lambda p: p.number)
    curve = []
    for n in range(1, budget + 1):
        pts = [(p.result.accuracy, p.result.bitops_fraction) for p in by_number if p.number < n]
        curve.append(hypervolume(pts, fp32 - HV_REFERENCE_DROP))
    return curve


def entry(name, kind, accuracy, fp32, bitops, model, seconds, **extra) -> dict:
    return {"name": name, "kind": kind, "accuracy": accuracy, "drop": fp32 - accuracy, "bitops_fraction": bitops,
            "size_bytes": model.ByteSize(), "wall_seconds": seconds, "model": model, **extra}  # fmt: skip


def run_family(path: Path, budget: int, seeds: list[int], rounds: int, repeats: int) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="aq-compare-cache-"))
    base = load_experiment(path)
    exp = replace(base, cache_dir=cache, eval=replace(base.eval, latency_repeats=repeats))
    # Export the FP32 model (MobileNet: train it) once in the shared cache and reuse it, so that the
    # timed region below holds calibration and quantization only.
    Workspace(base)
    shutil.copytree(base.cache / "builtin", cache / "builtin")
    t0 = time.perf_counter()
    ws = Workspace(exp)  # cold statistics cache: this is one calibration pass + FP32 reference
    setup_s = time.perf_counter() - t0
    calib_s = ws.timings.calibration
    fp32 = ws.reference.accuracy
    rows = [entry("FP32", "reference", fp32, fp32, 1.0, ws.model, 0.0)]
    uniform_bitops = 1 / 16
    for method in ("MinMax", "Entropy", "Percentile"):
        for per_channel in (False, True):
            t0 = time.perf_counter()
            model = ort_quantize_static(ws, per_channel=per_channel, method=method)
            secs = time.perf_counter() - t0
            sess = ws.evaluator.session(model)
            rows.append(entry(f"ORT quantize_static {method} {'per-channel' if per_channel else 'per-tensor'}",
                              "onnxruntime", ws.evaluator.score(sess).accuracy, fp32, uniform_bitops, model, secs))  # fmt: skip
    for gran in ("per_tensor", "per_channel"):
        for algo in ALGORITHMS:
            plan = QuantPlan.uniform(ws.graph.names, LayerChoice(True, gran, algo))
            t0 = time.perf_counter()
            model = ws.build(plan)
            secs = calib_s + time.perf_counter() - t0
            sess = ws.evaluator.session(model)
            rows.append(entry(f"autoquant all-INT8 {gran.replace('_', '-')} {algo}", "autoquant uniform",
                              ws.evaluator.score(sess).accuracy, fp32, bitops_fraction(ws.graph, plan), model, secs))  # fmt: skip
    curves = {"nsga2": [], "random": []}
    for sampler in ("nsga2", "random"):
        for seed in seeds:
            out = Path(tempfile.mkdtemp(prefix="aq-compare-run-"))
            sexp = replace(exp, search=replace(exp.search, sampler=sampler, seed=seed, trials=budget,
                                               warm_start=sampler == "nsga2"))  # fmt: skip
            t0 = time.perf_counter()
            search(sexp, out, trials=budget)
            secs = time.perf_counter() - t0 + calib_s
            study = optuna.load_study(study_name=sexp.name, storage=f"sqlite:///{out / 'study.db'}")
            points = scored_points(study)
            durations = {t.number: (t.datetime_complete - t.datetime_start).total_seconds()
                         for t in study.get_trials(deepcopy=False) if t.datetime_complete}  # fmt: skip
            curves[sampler].append(hv_curve(points, fp32, budget))
            if seed == seeds[0]:
                label = "autoquant search" if sampler == "nsga2" else "random search"
                half = secs - sum(d for n, d in durations.items() if n >= budget // 2)
                budgets = [(budget, secs)] + ([(budget // 2, half)] if sampler == "nsga2" else [])
                for b, bsecs in budgets:
                    chosen, met = choose([p for p in points if p.number < b], exp.search.max_accuracy_drop, Cost.BITOPS)
                    model = ws.build(chosen.plan)
                    acc = ws.evaluator.score(ws.evaluator.session(model)).accuracy
                    rows.append(entry(f"{label} ({b} trials)", "search", acc, fp32, chosen.result.bitops_fraction,
                                      model, bsecs, constraint_met=met, trial=chosen.number,
                                      int8_layers=len(chosen.plan.quantized)))  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
    # Latency: every model of the family, interleaved, several rounds; ratio to FP32 per round.
    sessions = [ws.evaluator.session(r["model"]) for r in rows]
    ratios = []
    for _ in range(rounds):
        ms = ws.evaluator.latency_ms(*sessions)
        ratios.append([m / ms[0] for m in ms])
    ratios = np.array(ratios)
    for i, r in enumerate(rows):
        r["latency_ratio_median"] = float(np.median(ratios[:, i]))
        r["latency_ratio_iqr"] = [float(np.percentile(ratios[:, i], 25)), float(np.percentile(ratios[:, i], 75))]
        del r["model"]
    shutil.rmtree(cache, ignore_errors=True)
    return {"experiment": base.name, "fp32_accuracy": fp32, "eval_samples": len(ws.splits.eval),
            "calibration_samples": len(ws.splits.calibration), "calibration_seconds": calib_s,
            "setup_seconds": setup_s, "budget": budget, "seeds": seeds, "max_accuracy_drop": exp.search.max_accuracy_drop,
            "hv_reference": f"(FP32 - {HV_REFERENCE_DROP} pt, bitops fraction 1.0)", "rows": rows,
            "hypervolume": {k: np.array(v).tolist() for k, v in curves.items()}}  # fmt: skip


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 9), squeeze=False)
    for col, fam in enumerate(results):
        ax = axes[0][col]
        for sampler, color in (("nsga2", "tab:blue"), ("random", "tab:gray")):
            curves = np.array(fam["hypervolume"][sampler])
            x = np.arange(1, curves.shape[1] + 1)
            ax.plot(x, np.median(curves, axis=0), c=color, label=f"{'autoquant (NSGA-II + warm start)' if sampler == 'nsga2' else 'random'}")
            ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2)
        ax.set_title(f"{fam['experiment']}: hypervolume vs trials ({len(fam['seeds'])} seeds, min-max band)")
        ax.set_xlabel("trials")
        ax.set_ylabel(f"hypervolume, ref {fam['hv_reference']}")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        for r in fam["rows"]:
            marker = {"reference": "k*", "onnxruntime": "rs", "autoquant uniform": "bo", "search": "g^"}[r["kind"]]
            ax.plot(r["latency_ratio_median"], r["accuracy"], marker, ms=7, alpha=0.8)
        ax.axhline(fam["fp32_accuracy"] - fam["max_accuracy_drop"], ls="--", c="tab:red", lw=1)
        ax.set_xlabel("latency / FP32 (median of rounds)")
        ax.set_ylabel("top-1 %")
        ax.set_title("red squares: quantize_static; blue: autoquant all-INT8; green: searches")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    names = ["cifar10_resnet20", "cifar10_mobilenet"] + ([] if args.quick else ["cifar10_resnet56"])
    budget, seeds, rounds, repeats = (24, [0, 1, 2], 3, 10) if args.quick else (60, [0, 1, 2], 5, 20)
    t0 = time.perf_counter()
    results = [run_family(REPO / "experiments" / f"{n}.yaml", budget, seeds, rounds, repeats) for n in names]
    tag = "compare_quick" if args.quick else "compare"
    plot(results, RESULTS / f"{tag}.png")
    write_result(tag, {"command": "python benchmarks/compare.py" + (" --quick" if args.quick else ""),
                       "machine": machine(), "total_seconds": time.perf_counter() - t0, "results": results})  # fmt: skip
    for fam in results:
        print(f"\n## {fam['experiment']} — FP32 {fam['fp32_accuracy']:.2f} % on {fam['eval_samples']} eval images, "
              f"budget {fam['budget']} trials, constraint {fam['max_accuracy_drop']} pt\n")  # fmt: skip
        print("| method | top-1 % | drop pt | bitops | size KB | latency / FP32 (median [IQR]) | wall s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in fam["rows"]:
            lo, hi = r["latency_ratio_iqr"]
            print(f"| {r['name']} | {r['accuracy']:.2f} | {r['drop']:+.2f} | {r['bitops_fraction']:.4f} | "
                  f"{r['size_bytes'] / 1024:.0f} | {r['latency_ratio_median']:.2f} [{lo:.2f}-{hi:.2f}] | {r['wall_seconds']:.1f} |")  # fmt: skip
        hv = {k: np.array(v)[:, -1] for k, v in fam["hypervolume"].items()}
        print(f"\nfinal hypervolume ({fam['hv_reference']}): autoquant {np.median(hv['nsga2']):.3f} "
              f"[{hv['nsga2'].min():.3f}-{hv['nsga2'].max():.3f}], random {np.median(hv['random']):.3f} "
              f"[{hv['random'].min():.3f}-{hv['random'].max():.3f}]")  # fmt: skip
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; wrote {RESULTS / (tag + '.json')} and {RESULTS / (tag + '.png')}")


if __name__ == "__main__":
    main()
