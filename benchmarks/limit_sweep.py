"""The fastest model within each accuracy limit: autoquant against the tools users run instead, per bed and limit,
measured side by side in one run.

Per bed (benchmarks/beds.py) and limit (points of the bed's metric):
- autoquant with its defaults (`--objectives` adds runs with an explicit objective), a fresh study from cold
  per-study caches (statistics, FP32 reference, error and latency tables; the decoded data and the exported
  model stay cached, as after a user's first run): whether it exports, its drop, the time to its first feasible
  export and to the final one, and per-phase seconds;
- Intel Neural Compressor for ONNX (accuracy-driven autotune, static QDQ) and NNCF (`quantize_with_accuracy_control`)
  at the same limit, run from their own virtual environment (benchmarks/peers/);
- onnxruntime's one-shot `quantize_static` (per-channel MinMax, uint8 and int8 activations) and, on models with
  MatMul/Gemm layers, `quantize_dynamic`: made once per bed, feasible at a limit when their drop is within it.
Every model is scored by autoquant's Meter on the same eval split; the models within a limit are timed side by side
with FP32 in the same interleaved rounds, and autoquant's export is compared with each peer's in those rounds
(evaluate/latency.py: not_slower, the same sign test the export's choice uses). What each model runs per layer is
`autoquant inspect`'s count (evaluate/executed.py).

    pip install -e ".[bench]" && python benchmarks/limit_sweep.py [--beds ...] [--limits 0.1 0.25 0.5 1 2]
        [--tools autoquant inc nncf static dynamic] [--peers-python /work/peers/bin/python]

Writes benchmarks/results/limit_sweep.json (each bed's entry replaced as it goes, after every limit, so a sweep can
be run bed by bed) and prints one line per tool and limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import beds
import numpy as np
import onnx
from common import RESULTS, machine, ort_quantize_static, write_result
from peers.driver import PEER_NAMES, run_peer
from studies import cold_study, kernels

from autoquant import Workspace, load_experiment
from autoquant.evaluate.latency import not_slower
from autoquant.measure import Meter, paired_figures

LIMITS = (0.1, 0.25, 0.5, 1.0, 2.0)
TOOLS = ("autoquant", "inc", "nncf", "static", "dynamic")
def one_shot(ws: Workspace, tools: list[str]) -> dict[str, tuple[onnx.ModelProto, float]]:
    """onnxruntime's one-call quantizers on the bed: (model, seconds to make it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = {}
    _ = ws.prepared, ws.splits  # made before the clock starts: a built-in model may be trained here first
    if "static" in tools:
        for label, act in (("quantize_static u8", "QUInt8"), ("quantize_static s8", "QInt8")):
            t0 = time.perf_counter()
            model = ort_quantize_static(ws, per_channel=True, activation_type=act)
            out[label] = (model, time.perf_counter() - t0)
    # Dynamic quantization is the transformer recipe: on convolutions it runs ConvInteger, many times slower than FP32.
    if "dynamic" in tools and not any(la.op_type == "Conv" for la in ws.graph.layers):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            quantize_dynamic(str(ws.prepared.preprocessed), f"{tmp}/d.onnx", per_channel=True, weight_type=QuantType.QInt8)
            out["quantize_dynamic"] = (onnx.load(f"{tmp}/d.onnx"), time.perf_counter() - t0)
    return out


def sweep_limit(ws: Workspace, meter: Meter, exp: dict, limit: float, args, shots: dict, work: Path) -> list[dict]:
    rows, models = [], {}
    if "autoquant" in args.tools:
        for objective in [None, *args.objectives]:
            name = "autoquant" + (f" (objective {objective})" if objective else "")
            search_cfg = {"max_accuracy_drop": limit} | ({"objective": objective} if objective else {})
            model, info, _ = cold_study(exp, work, f"{limit:g}-{objective or 'default'}", **search_cfg)
            rows.append({"tool": name, **info})
            models[name] = model
    for peer in (p for p in ("inc", "nncf") if p in args.tools):
        model, info = run_peer(peer, args.peers_python, ws, limit, work / f"{peer}-{limit:g}", args.peer_timeout)
        seconds = info.get("wall_seconds")
        rows.append({"tool": PEER_NAMES[peer], "seconds": seconds, "first_feasible_seconds": seconds if model else None,
                     **{k: v for k, v in info.items() if k in ("notes", "failed")}})
        models[PEER_NAMES[peer]] = model
    for name, (model, seconds) in shots.items():
        rows.append({"tool": name, "seconds": seconds, "first_feasible_seconds": seconds})
        models[name] = model
    for row in rows:
        model = models[row["tool"]]
        if model is None:
            row["feasible"] = False
            continue
        m = meter(model)
        row |= {"metric": m.accuracy, "drop": m.accuracy_drop, "feasible": m.accuracy_drop <= limit,
                "size_bytes": m.size_bytes, "runs": kernels(model)}
        if not row["feasible"]:
            row["first_feasible_seconds"] = None
    timed = [r for r in rows if r["feasible"]]
    if timed:
        rounds = meter.paired_rounds([models[r["tool"]].SerializeToString() for r in timed])
        ratios = rounds[:, :-1] / rounds[:, -1:]
        for i, (r, (ms, ratio, n)) in enumerate(zip(timed, paired_figures(rounds))):
            r |= {"latency_ms": ms, "latency_ratio": ratio, "latency_ratio_iqr": np.percentile(ratios[:, i], [25, 75]).tolist(),
                  "latency_rounds": n}
        ours = next((i for i, r in enumerate(timed) if r["tool"] == "autoquant"), None)
        for j, r in enumerate(timed):
            if ours is not None and j != ours:
                r["autoquant_not_slower"] = not_slower(rounds, ours, j)
                r["autoquant_over_this"] = float(np.median(rounds[:, ours] / rounds[:, j]))
    return rows


def sweep_bed(bed: str, args, work: Path, save, earlier: dict, command: str) -> dict:
    """The bed's entry; `save(entry)` is called after every limit, so an interrupted sweep keeps what it measured.
    The limits of `earlier` (this bed's entry from the same machine and settings) that this run does not measure
    are kept."""
    exp = beds.experiment(bed)
    exp["cache_dir"] = str(work / "cache")
    if args.trials:
        exp["search"]["trials"] = args.trials
    ws = Workspace(load_experiment(beds.write(exp, work)))
    meter = Meter(ws)
    shots = one_shot(ws, args.tools)
    entry = {**beds.describe(exp), "fp32_metric": ws.reference.accuracy, "layers": len(ws.graph.layers),
             "weight_range": ws.weight_range, "latency_batch": ws.exp.eval.latency_batch_size,
             "trials": exp["search"]["trials"], "limits": {}}
    same = {k: earlier.get(k) for k in ("machine", "trials")} == {"machine": machine(), "trials": entry["trials"]}
    kept = {k: v for k, v in earlier.get("limits", {}).items() if same and float(k) not in args.limits}
    measured = {}
    entry["command"] = f"{earlier['command']} && {command}" if kept else command
    for limit in args.limits:
        print(f"{bed} at {limit:g} pt:", flush=True)
        measured[f"{limit:g}"] = rows = sweep_limit(ws, meter, exp, limit, args, shots, work)
        entry["limits"] = dict(sorted({**kept, **measured}.items(), key=lambda kv: float(kv[0])))
        for r in rows:
            latency = f"{r['latency_ratio']:.2f}x" if "latency_ratio" in r else "-"
            drop = f"{r['drop']:+.2f}" if "drop" in r else "none"
            first = f"{r['first_feasible_seconds']:.0f} s" if r.get("first_feasible_seconds") else "-"
            print(f"  {r['tool']:42s} {'ok ' if r['feasible'] else 'no '} drop {drop:>6}  {latency:>6}  first {first:>6}"
                  f"  total {r.get('seconds') or 0:5.0f} s", flush=True)
        save(entry)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beds", nargs="+", default=["efficientnet-lite1", "resnet56", "mobilenet", "minilm"], choices=beds.BEDS)
    p.add_argument("--limits", nargs="+", type=float, default=list(LIMITS))
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    p.add_argument("--objectives", nargs="*", default=[], choices=["bitops", "latency", "size"],
                   help="also run autoquant with these objectives (the default run uses the shipped default)")
    p.add_argument("--trials", type=int, help="autoquant's trial budget (default: the bed's)")
    p.add_argument("--peers-python", default="/work/peers/bin/python")
    p.add_argument("--peer-timeout", type=float, default=600,
                   help="seconds a peer may take per limit (default: the 10 minutes a study of autoquant is held to)")
    p.add_argument("--work", help="keep studies and models here instead of a temporary directory")
    p.add_argument("--results", default="limit_sweep", help="results file name (benchmarks/results/NAME.json)")
    args = p.parse_args()
    previous = RESULTS / f"{args.results}.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {"beds": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for bed in args.beds:
            work = Path(args.work or scratch) / bed
            work.mkdir(parents=True, exist_ok=True)
            command = " ".join(["python benchmarks/limit_sweep.py", *sys.argv[1:]])

            def save(entry: dict, bed: str = bed) -> None:
                results["beds"][bed] = entry | {"machine": machine()}
                write_result(args.results, results)

            sweep_bed(bed, args, work, save, results["beds"].get(bed, {}), command)
    print(f"wrote {previous}")


if __name__ == "__main__":
    main()
