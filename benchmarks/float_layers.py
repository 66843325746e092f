"""Float layers that really run float: before/after, measured side by side in one run.

    python benchmarks/float_layers.py [--rounds 7]

For ResNet-56 and the MobileNet-style net (experiments/), the plans "all INT8 per-channel minmax but
the k most sensitive layers float" (k = 0, 1, 2, 4; sensitivity from autoquant's cached pass), each
built twice:
  before — the graph as onnxruntime's QDQQuantizer alone writes it (what autoquant shipped until
           now): a default session re-quantizes float layers that sit between quantized ones;
  after  — autoquant's construction (quantize/float_layers.py).
Per model: top-1 on the eval split in a default session, what that session executes per layer
(`autoquant inspect`'s view), bitops, and latency as a ratio to FP32, every model of a family timed
interleaved in the same rounds (median and spread over rounds).
Writes benchmarks/results/float_layers.json and float_layers.png.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import sys
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result

from autoquant.config import load_experiment
from autoquant.evaluate.cost import bitops_fraction
from autoquant.evaluate.executed import executed_layers
from autoquant.quantize.plan import FLOAT, LayerChoice, QuantPlan
from autoquant.search.sensitivity import layer_sensitivity, most_sensitive
from autoquant.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
KS = (0, 1, 2, 4)
BUILD = importlib.import_module("autoquant.quantize.build")  # `autoquant.quantize` is the function re-exported by the package


def plain_build(ws: Workspace, plan: QuantPlan):
    with mock.patch.object(BUILD, "isolate_float_layers", lambda *args: None):
        return ws.build(plan)


def family(experiment: str, rounds: int) -> dict:
    ws = Workspace(load_experiment(REPO / "experiments" / experiment))
    ranked = most_sensitive(layer_sensitivity(ws, progress=lambda i, n, name: print(f"  sensitivity {i}/{n}", end="\r")), 4)
    ev = ws.evaluator
    rows, models = [], [("FP32", ws.model)]
    for k in KS:
        plan = QuantPlan(tuple((n, FLOAT if n in ranked[:k] else LayerChoice.of()) for n in ws.graph.names))
        for how, model in (("before", plain_build(ws, plan)), ("after", ws.build(plan))):
            if k == 0 and how == "before":
                continue  # no float layer: the two constructions are the same graph
            modes = collections.Counter(e.mode for e in executed_layers(model))
            acc = ev.score(ev.session(model)).accuracy
            rows.append({"k": k, "build": how, "float_layers": ranked[:k], "accuracy": acc,
                         "drop": ws.reference.accuracy - acc, "bitops": bitops_fraction(ws.graph, plan),
                         "runs": dict(modes)})
            models.append((f"k={k} {how}", model))
            print(f"  k={k} {how:6s} top-1 {acc:6.2f} %  runs {dict(modes)}")
    blobs = [m.SerializeToString() for _, m in models]
    per_round = np.concatenate([ev.latency_rounds(*blobs) for _ in range(rounds)])  # rounds x models, interleaved
    ratios = per_round[:, 1:] / per_round[:, :1]
    for row, col in zip(rows, ratios.T):
        row["latency_ratio"] = float(np.median(col))
        row["latency_ratio_range"] = [float(col.min()), float(col.max())]
    return {"experiment": experiment, "fp32_accuracy": ws.reference.accuracy, "eval_samples": len(ws.splits.eval),
            "most_sensitive": ranked, "rows": rows, "rounds": rounds}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    for ax, res in zip(np.atleast_1d(axes), results):
        for how, color in (("before", "tab:red"), ("after", "tab:blue")):
            rows = [r for r in res["rows"] if r["build"] == how or r["k"] == 0]
            ax.plot([r["k"] for r in rows], [r["drop"] for r in rows], "o-", color=color, label=f"{how} (default session)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(KS)
        ax.set_xlabel("k most sensitive layers kept float")
        ax.set_ylabel("top-1 drop vs FP32 (points)")
        ax.set_title(f"{res['experiment']} (FP32 {res['fp32_accuracy']:.2f} %)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    results = []
    for experiment in ("cifar10_resnet56.yaml", "cifar10_mobilenet.yaml"):
        print(experiment)
        results.append(family(experiment, args.rounds))
    out = write_result("float_layers", {"command": "python benchmarks/float_layers.py", "machine": machine(),
                                        "families": results})
    plot(results, RESULTS / "float_layers.png")
    print(f"\n{'model':24s} {'k':>2s} {'build':6s} {'top-1':>7s} {'drop':>6s} {'bitops':>7s} {'lat/FP32':>9s}  runs")
    for res in results:
        for r in res["rows"]:
            print(f"{res['experiment']:24s} {r['k']:2d} {r['build']:6s} {r['accuracy']:7.2f} {r['drop']:+6.2f} "
                  f"{r['bitops']:7.4f} {r['latency_ratio']:9.2f}  {r['runs']}")
    print(f"wrote {out} and {RESULTS / 'float_layers.png'}")


if __name__ == "__main__":
    main()
