"""Transformer modes on the real all-MiniLM-L6-v2 (same data and metric as benchmarks/real_models.py: 200
calibration / 500 eval English sentences, cosine similarity to FP32 × 100), side by side in one run:

- FP32; onnxruntime's `quantize_dynamic` (its defaults) and `quantize_static` (two configurations);
- every uniform mode autoquant builds (static INT8, dynamic INT8 per channel / per tensor, int4 weight-only
  in blocks of 32 and 128), and static / dynamic with SmoothQuant α = 0.5;
- one autoquant study over `search_spaces/transformer.yaml` (objective: paired latency), exported at two
  constraints: the one `quantize_dynamic` meets (its drop, rounded up to 0.1 point) and a tighter one it
  misses (half its drop).

Every latency is a ratio to FP32 timed interleaved in the same rounds (autoquant's Meter); each export is
also timed interleaved with `quantize_dynamic`'s model directly. Writes
benchmarks/results/transformer_modes.json and .png, and prints the README table.

    pip install -e ".[bench]" && python benchmarks/transformer_modes.py [--trials 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import onnx
import optuna
import yaml
from common import machine, ort_quantize_static, save_figure, write_result

from autoquant import LayerChoice, QuantPlan, Workspace, load_experiment, quantize, search
from autoquant.config import Cost
from autoquant.evaluate.executed import executed_layers
from autoquant.measure import Meter
from autoquant.search.select import choose, retime_fastest, scored_points

REAL = Path(__file__).resolve().parent / "real"


def experiment(tmp: Path, trials: int) -> Path:
    exp = yaml.safe_load((REAL / "minilm.yaml").read_text())
    exp["model"]["torch"] = str(REAL / "minilm.py") + ":encoder"
    exp["data"].update(loader=str(REAL / "minilm.py") + ":sentences", calibration_size=200, eval_size=500)
    exp["search"] = {"trials": trials, "space": "transformer", "objective": "latency", "max_accuracy_drop": 1.0,
                     "sensitivity_k": [1, 2, 4]}
    path = tmp / "minilm_modes.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def ort_quantize_dynamic(ws: Workspace) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(str(ws.prepared.preprocessed), str(out))
        return onnx.load(str(out))


def row(method: str, m, seconds: float = 0.0, model: onnx.ModelProto | None = None, **extra) -> dict:
    kernels = {}
    if model is not None:
        for e in executed_layers(model):
            kernels[e.kernel] = kernels.get(e.kernel, 0) + 1
    return {"method": method, "fidelity": m.accuracy, "drop": m.accuracy_drop, "latency_ratio": m.latency_ratio,
            "latency_ms": m.latency_ms, "size_bytes": m.size_bytes, "seconds": seconds, "kernels": kernels, **extra}


def plot(results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results["rows"]:
        m = r["method"]
        kind = "FP32" if m == "FP32" else "export" if m.startswith("autoquant search") else "ORT" if m.startswith("ORT") else "uniform"
        color, marker = {"FP32": ("k", "o"), "export": ("tab:orange", "*"), "ORT": ("tab:blue", "s"),
                         "uniform": ("tab:green", "^")}[kind]
        ax.scatter(r["latency_ratio"], r["fidelity"], c=color, marker=marker, s=180 if kind == "export" else 60)
        ax.annotate(m.replace("autoquant search ", "").replace("ORT ", ""), (r["latency_ratio"], r["fidelity"]),
                    fontsize=7, xytext=(5, -4), textcoords="offset points")
    for c in results["constraints"]:
        ax.axhline(100 - c, ls="--", c="tab:red", lw=1)
    ax.set_ylim(max(80, min(r["fidelity"] for r in results["rows"]) - 1), 100.5)
    ax.set_xlabel("latency / FP32 (interleaved)")
    ax.set_ylabel("fidelity: cosine to FP32 x 100")
    ax.set_title(f"all-MiniLM-L6-v2, {results['eval_samples']} sentences; dashed: the two constraints")
    ax.grid(alpha=0.3)
    return save_figure(fig, "transformer_modes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--run-dir", help="keep the study here (a rerun resumes it) instead of a temporary directory")
    args = p.parse_args()
    sys.path.insert(0, str(REAL))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exp = load_experiment(experiment(tmp, args.trials))
        ws = Workspace(exp)
        meter = Meter(ws)
        names = ws.graph.names
        rows = [row("FP32", meter(ws.fp32_model, timed=True))]
        t0 = time.perf_counter()
        dynamic = ort_quantize_dynamic(ws)
        rows.append(row("ORT quantize_dynamic (defaults)", meter(dynamic, timed=True), time.perf_counter() - t0, dynamic))
        for label, kwargs in (("quantize_static defaults (s8/s8 per-tensor)", {"per_channel": False}),
                              ("quantize_static per-channel, u8 activations", {"per_channel": True, "activation_type": "QUInt8"})):
            t0 = time.perf_counter()
            model = ort_quantize_static(ws, **kwargs)
            rows.append(row(f"ORT {label}", meter(model, timed=True), time.perf_counter() - t0, model))
        uniform = {"static INT8 per-channel": LayerChoice.of(), "dynamic per-channel": LayerChoice.of("dynamic"),
                   "dynamic per-tensor": LayerChoice.of("dynamic", weight_granularity="per_tensor"), "int4 blocks of 32": LayerChoice.of("int4", block_size=32),
                   "int4 blocks of 128": LayerChoice.of("int4", block_size=128)}
        for label, choice in uniform.items():
            plan = QuantPlan.uniform(names, choice)
            model = ws.build(plan)
            rows.append(row(f"autoquant all {label}", meter(model, plan, timed=True), model=model))
        smoothed = Workspace(dataclasses.replace(exp, quantization=dataclasses.replace(exp.quantization, smoothquant_alpha=0.5)))
        sq_meter = Meter(smoothed)
        for label in ("static INT8 per-channel", "dynamic per-channel"):
            plan = QuantPlan.uniform(smoothed.graph.names, uniform[label])
            model = smoothed.build(plan)
            rows.append(row(f"autoquant all {label} + SmoothQuant 0.5", sq_meter(model, plan, timed=True), model=model,
                            smoothing={"folded": len(smoothed.smoothing.folded), "inserted": len(smoothed.smoothing.inserted)}))

        qd_drop = rows[1]["drop"]
        constraints = [math.ceil(qd_drop * 10) / 10, round(qd_drop / 2, 3)]
        run = Path(args.run_dir) if args.run_dir else tmp / "run"
        t0 = time.perf_counter()
        result = search(dataclasses.replace(exp, search=dataclasses.replace(exp.search, max_accuracy_drop=constraints[0])),
                        run)
        search_s = time.perf_counter() - t0
        study = optuna.load_study(study_name=exp.name, storage=f"sqlite:///{run / 'study.db'}")
        points = scored_points(study)  # objective latency: every trial was timed, interleaved with FP32
        for i, c in enumerate(constraints):
            # as the search's own export does: the fastest plans within the limit timed again, side by side
            retimed, tied = retime_fastest(ws, study, points, c)
            chosen, met = choose(retimed, c, Cost.LATENCY, tied)
            label = f"autoquant search ({result.completed} trials), export at max drop {c:g}"
            if not met:
                model = ws.build(chosen.plan)
                rows.append(row(label + ": constraint NOT met, closest plan", meter(model, chosen.plan, timed=True),
                                search_s, model))
                continue
            exported = quantize(ws, chosen.plan, tmp / f"export{i}")  # the export step: model + record, re-measured
            model = onnx.load(str(exported.model_path))
            ms, qd_ms = ws.evaluator.latency_ms(model.SerializeToString(), dynamic.SerializeToString())
            modes: dict[str, int] = {}
            for _, ch in chosen.plan.choices:
                modes[ch.label] = modes.get(ch.label, 0) + 1
            rows.append(row(label, exported, search_s, model, vs_quantize_dynamic=ms / qd_ms, modes=modes,
                            trial_latency_ratio=chosen.result.latency_ratio, trial=chosen.number))
        results = {"command": " ".join(["python benchmarks/transformer_modes.py", *sys.argv[1:]]), "machine": machine(),
                   "eval_samples": len(ws.splits.eval), "calibration_samples": len(ws.splits.calibration),
                   "layers": len(names), "weight_range": ws.weight_range, "constraints": constraints,
                   "search_seconds": search_s, "rows": rows}
    print(f"\nall-MiniLM-L6-v2: {len(names)} MatMul/Gemm layers; {results['eval_samples']} eval sentences; "
          f"constraints {constraints} points (quantize_dynamic drops {qd_drop:.2f})\n")
    print("| method | fidelity (cosine × 100) | drop | latency / FP32 | size MB | kernels |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        extra = f" ({r['vs_quantize_dynamic']:.2f}× quantize_dynamic's latency, paired)" if "vs_quantize_dynamic" in r else ""
        kernels = ", ".join(f"{n} {k}" for k, n in sorted(r["kernels"].items(), key=lambda kv: -kv[1]))
        print(f"| {r['method']}{extra} | {r['fidelity']:.2f} | {r['drop']:+.2f} | {r['latency_ratio']:.2f} | "
              f"{r['size_bytes'] / 1e6:.1f} | {kernels} |")
    print(f"\nwrote {write_result('transformer_modes', results)} and {plot(results)}")


if __name__ == "__main__":
    main()
