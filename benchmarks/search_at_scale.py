"""The search at real size, side by side in one run per test bed, on the same data split and constraint:

- FP32 and every hand-made plan (all INT8 per-channel / per-tensor with each range algorithm; all INT8 but
  the k most sensitive layers float, k = 1, 2, 4, 8), each measured on the whole eval set;
- autoquant's search (60 trials; `--space`, default the default space; `--objective` bitops or latency),
  its phases timed, its export re-measured by `autoquant evaluate` and timed again side by side with every
  hand-made plan that meets the constraint;
- `--below N` (default 24): whether any plan is strictly cheaper in bitops than every hand-made plan that
  meets the constraint — the study's trials below the cheapest of them, and its N cheaper neighbours
  (guided.py: cheaper_neighbours) scored on the whole eval set;
- Intel Neural Compressor for ONNX (accuracy-driven autotune, static QDQ) and NNCF
  (`quantize_with_accuracy_control`), run from a separate virtual environment (benchmarks/peers);
- with `--hypervolume MINUTES`: autoquant, the warm-started NSGA-II it had before (no calibrated proposals,
  no early stopping, population 16, uniform mutation) and random search, each given the same wall time, on 3 seeds; hypervolume of the
  plans that meet the constraint, in (bitops, accuracy) from (1.0, FP32 − limit); on CIFAR-10 beds each
  front is also re-scored on the test images no split uses, and its hypervolume computed there.
  `--hypervolume-only [--variants ...]` runs only these studies and adds them to the bed's stored entry.

Every latency is a ratio to FP32 timed interleaved in the same rounds. The constraint is chosen from a
measurement: half the drop of all-INT8 per-channel minmax (with a space that has 4-bit weights, of all
4-bit weights), rounded to 0.1 point, so the cheapest uniform plan fails.

    pip install -e ".[bench]"
    python -m venv --system-site-packages /tmp/peers && /tmp/peers/bin/pip install onnx-neural-compressor==1.0 nncf==3.4.0
    python benchmarks/search_at_scale.py --bed efficientnet-lite1 [--peers-python /tmp/peers/bin/python] [--hypervolume 3]

Writes benchmarks/results/search_at_scale.json (one entry per bed, others kept) and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import beds
import numpy as np
import onnx
import optuna
import yaml
from common import RESULTS, hypervolume, machine, write_result
from peers.driver import PEER_NAMES, run_peer

from autoquant import LayerChoice, QuantPlan, Workspace, evaluate, load_experiment, search
from autoquant.config import Cost
from autoquant.evaluate.executed import executed_layers
from autoquant.measure import Meter
from autoquant.quantize.plan import FLOAT
from autoquant.search.estimate.error_model import ErrorModel
from autoquant.search.estimate.layer_errors import layer_errors
from autoquant.search.propose.baselines import sensitive_layers
from autoquant.search.select import pareto_front, scored_points
from autoquant.search.space import SearchSpace, space_path

REAL = beds.REAL
ALGORITHMS = ("minmax", "percentile", "mse", "entropy", "histogram")


def bed_experiment(bed: str, tmp: Path) -> dict:
    return beds.experiment(bed)


def write_exp(exp: dict, tmp: Path, **search) -> Path:
    exp = json.loads(json.dumps(exp))
    exp["search"] = {**exp.get("search", {}), **search}
    path = tmp / f"{exp['name']}-{abs(hash(json.dumps(search, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def kernels(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in executed_layers(model):
        out[e.mode] = out.get(e.mode, 0) + 1
    return out


def row(method: str, m, model: onnx.ModelProto | None = None, seconds: float = 0.0, **extra) -> dict:
    return {"method": method, "accuracy": m.accuracy, "drop": m.accuracy_drop, "bitops": m.bitops_fraction,
            "latency_ratio": m.latency_ratio, "size_bytes": m.size_bytes, "seconds": seconds,
            "kernels": kernels(model) if model is not None else {}, **extra}


def hand_made(ws: Workspace, meter: Meter) -> list[tuple[dict, onnx.ModelProto, QuantPlan]]:
    names = ws.graph.names
    rows = []
    for granularity in ("per_channel", "per_tensor"):
        for algorithm in ALGORITHMS:
            plan = QuantPlan.uniform(names, LayerChoice.of(weight_granularity=granularity, activation_algorithm=algorithm))
            model = ws.build(plan)
            rows.append((row(f"all INT8 {granularity} {algorithm}", meter(model, plan, timed=True), model), model, plan))
    space = SearchSpace.from_yaml(space_path(ws.exp.search), ws.graph)
    if any(o.endswith(":w4") for layer in space.layers for o in layer.options):
        plan = QuantPlan.uniform(names, LayerChoice.of(weight_bits=4))
        model = ws.build(plan)
        rows.append((row("all INT8, 4-bit weights per_channel minmax", meter(model, plan, timed=True), model), model, plan))
    errors = layer_errors(ws, space)
    for k in (1, 2, 4, 8):
        keep = set(sensitive_layers(ws, errors, k))
        plan = QuantPlan(tuple((n, FLOAT if n in keep else LayerChoice.of()) for n in names))
        model = ws.build(plan)
        rows.append((row(f"INT8 but the {k} most sensitive float", meter(model, plan, timed=True), model), model, plan))
    return rows


def below_hand_made(ws: Workspace, meter: Meter, hand_models: list, max_drop: float, study: optuna.Study,
                    count: int) -> dict:
    """Is any plan strictly cheaper in bitops than every hand-made plan that meets the limit? The study's
    trials below the cheapest such plan, and that plan's `count` cheaper neighbours (one float layer back to
    INT8, or swapped for a cheaper one: guided.py's cheaper_neighbours, least predicted error first), each
    scored on the whole eval set."""
    feasible = [(r, plan) for r, _, plan in hand_models if r["drop"] <= max_drop]
    if not feasible:
        return {}
    base_row, base = min(feasible, key=lambda x: x[0]["bitops"])
    results = [(t.state, t.user_attrs["result"]) for t in study.trials if "result" in t.user_attrs]
    below = [(state, r) for state, r in results if r["bitops_fraction"] < base_row["bitops"]]
    complete = [r for state, r in below if state == optuna.trial.TrialState.COMPLETE]
    space = SearchSpace.from_yaml(space_path(ws.exp.search), ws.graph)
    model = ErrorModel.build(ws, layer_errors(ws, space), space)
    candidates = sorted(model.cheaper_neighbours(base), key=model.predict)
    scored = []
    for plan in candidates[:count]:
        m = meter(ws.build(plan), plan)
        scored.append({"bitops": m.bitops_fraction, "accuracy": m.accuracy, "drop": m.accuracy_drop,
                       "float_layers": len(plan.names) - len(plan.quantized), "predicted_nmse": model.predict(plan)})
    return {"hand_made": base_row["method"], "hand_made_bitops": base_row["bitops"],
            "study_trials_below": len(below), "study_complete_below": len(complete),
            "study_met_below": sum(r["accuracy_drop"] <= max_drop for r in complete),
            "study_best_accuracy_below": max((r["accuracy"] for r in complete), default=None),
            "neighbours": len(candidates), "neighbours_scored": scored}


def run_search(exp_path: Path, out: Path) -> tuple[dict, object]:
    exp = load_experiment(exp_path)
    t0 = time.perf_counter()
    result = search(exp, out)
    total = time.perf_counter() - t0
    ws = result.workspace
    study = optuna.load_study(study_name=exp.name, storage=f"sqlite:///{out / 'study.db'}")
    trials = [t for t in study.trials if t.state.is_finished()]
    phases = dataclasses.asdict(ws.timings)
    phases["trials"] = result.seconds
    phases["other (study, warm starts, MLflow)"] = total - sum(phases.values())
    all_float = next((t for t in trials if t.user_attrs.get("label") == "all-float" and "result" in t.user_attrs), None)
    info = {"seconds": total, "phases": phases, "trials": len(trials),
            "all_float_trial_latency_ratio": all_float.user_attrs["result"]["latency_ratio"] if all_float else None,
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "first_export_s": result.first_export_seconds,
            "labels_on_front": [p.label or "sampled" for p in result.front]}
    return info, result


class HeldOut:
    """The CIFAR-10 test images no split uses (after train | calibration | eval). The search keeps the plans
    that scored best on its eval set; re-scored on images it never saw, a front shows how much of that score
    was the eval set's noise (on 1,000 images a plan's top-1 moves by about ±0.5 point by chance)."""

    def __init__(self, exp: dict, tmp: Path):
        d = exp["data"]
        total = len(np.load(d["path"])["labels"])
        start = d.get("train_size", 0) + d["calibration_size"]
        wide = json.loads(json.dumps(exp)) | {"name": f"{exp['name']}-heldout"}
        wide["data"]["eval_size"] = total - start  # the same permutation: the eval images and every unused one
        self.ws = Workspace(load_experiment(write_exp(wide, tmp)))
        perm = np.random.default_rng(d.get("seed", 0)).permutation(total)
        self.unseen = ~np.isin(np.sort(perm[start:]), perm[start : start + d["eval_size"]])
        self.fp32 = self.accuracy(self.ws.fp32_model)

    def accuracy(self, model: onnx.ModelProto) -> float:
        out = self.ws.evaluator.outputs(self.ws.evaluator.session(model))
        return 100.0 * float(np.mean(out[self.unseen].argmax(1) == self.ws.splits.eval.y[self.unseen]))


VARIANTS = {
    "autoquant": {},
    "NSGA-II warm-started (before: no calibrated proposals, no early stop)": {
        "refine": False, "early_stop": False, "guided_mutation": False, "population_size": 16},
    "random search": {"sampler": "random", "warm_start": False, "refine": False, "early_stop": False},
}


def hv_runs(exp: dict, tmp: Path, max_drop: float, minutes: float, seeds: tuple[int, ...],
            only: list[str] | None = None) -> dict:
    variants = {label: v for label, v in VARIANTS.items() if not only or label.split()[0].lower() in only}
    held = HeldOut(exp, tmp) if exp["data"].get("source") == "cifar10" else None
    out = {}
    for label, settings in variants.items():
        out[label] = []
        for seed in seeds:
            path = write_exp(exp, tmp, trials=100000, timeout_minutes=minutes, seed=seed, max_accuracy_drop=max_drop,
                             **settings)
            result = search(load_experiment(path), tmp / f"hv-{abs(hash((label, seed))) % 10**8}")
            ref = result.fp32_accuracy - max_drop
            study = optuna.load_study(study_name=exp["name"], storage=f"sqlite:///{result.out_dir / 'study.db'}")
            points = scored_points(study)
            front = [p for p in pareto_front(points, Cost.BITOPS) if p.result.accuracy > ref]
            run = {"seed": seed, "trials": len(study.trials),
                   "hypervolume": hypervolume([(p.result.accuracy, p.result.bitops_fraction) for p in points], ref),
                   "front": [{"bitops": p.result.bitops_fraction, "accuracy": p.result.accuracy} for p in front]}
            if held is not None:
                for point, p in zip(run["front"], front):
                    point["accuracy_unseen"] = held.accuracy(held.ws.build(p.plan))
                unseen = [(p["accuracy_unseen"], p["bitops"]) for p in run["front"]]
                run |= {"hypervolume_unseen": hypervolume(unseen, held.fp32 - max_drop),
                        "unseen_images": int(held.unseen.sum()), "unseen_fp32_accuracy": held.fp32}
            out[label].append(run)
            print(f"  {label} seed {seed}: HV {run['hypervolume']:.4f}"
                  + (f", on unseen images {run['hypervolume_unseen']:.4f}" if held else "")
                  + f" ({len(study.trials)} trials)", flush=True)
    return out


def print_hypervolumes(hv: dict) -> None:
    for label, runs in hv.items():
        unseen = [r["hypervolume_unseen"] for r in runs if "hypervolume_unseen" in r]
        print(f"hypervolume {label}: " + ", ".join(f"{r['hypervolume']:.4f}" for r in runs)
              + (" (on unseen images " + ", ".join(f"{u:.4f}" for u in unseen) + ")" if unseen else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bed", required=True, choices=beds.BEDS)
    p.add_argument("--peers-python", default="/work/peers/bin/python")
    p.add_argument("--no-peers", action="store_true",
                   help="do not run INC and NNCF; keep the bed's stored peer runs when the constraint is the same")
    p.add_argument("--hypervolume", type=float, default=0.0, help="minutes per study for the hypervolume runs")
    p.add_argument("--hypervolume-only", action="store_true",
                   help="only the hypervolume runs, added to the bed's stored entry (its constraint unless --max-drop)")
    p.add_argument("--variants", nargs="+", choices=["autoquant", "nsga-ii", "random"],
                   help="with --hypervolume-only: run these, keep the stored runs of the others")
    p.add_argument("--max-drop", type=float, help="default: half the all-INT8 per-channel minmax drop")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--objective", choices=["bitops", "latency"], default="bitops")
    p.add_argument("--work", help="keep the runs (study, MLflow, exports) in this directory instead of a temporary one")
    p.add_argument("--space", default="default", help="search space: a shipped name (default, int4_weights) or a file")
    p.add_argument("--below", type=int, default=24, metavar="N",
                   help="score the N cheaper neighbours of the cheapest hand-made plan that meets the limit")
    args = p.parse_args()
    sys.path.insert(0, str(REAL))
    previous = RESULTS / "search_at_scale.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {"beds": {}}
    results.update(command=" ".join(["python benchmarks/search_at_scale.py", *sys.argv[1:]]), machine=machine())
    key = " ".join([args.bed, *([f"objective {args.objective}"] if args.objective != "bitops" else []),
                    *([f"space {args.space}"] if args.space != "default" else [])])
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.work or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        exp = bed_experiment(args.bed, tmp)
        exp["search"] = {**exp.get("search", {}), "space": args.space}
        if args.hypervolume_only:
            entry = results["beds"].get(key)
            if entry is None or not args.hypervolume:
                sys.exit(f"--hypervolume-only needs --hypervolume MINUTES and a stored run of '{key}'")
            max_drop = args.max_drop if args.max_drop is not None else entry["max_drop"]
            entry["hypervolume"] = entry.get("hypervolume", {}) | hv_runs(exp, tmp, max_drop, args.hypervolume, (0, 1, 2),
                                                                         args.variants)
            entry["hypervolume_minutes"] = args.hypervolume
            print_hypervolumes(entry["hypervolume"])
            print(f"wrote {write_result('search_at_scale', results)}")
            return
        ws = Workspace(load_experiment(write_exp(exp, tmp)))
        meter = Meter(ws)
        rows = [row("FP32", meter(ws.fp32_model, timed=True))]
        hand_models = hand_made(ws, meter)
        hand = [r for r, _, _ in hand_models]
        # the cheapest uniform plan (4-bit weights where the space has them) must break the limit
        cheapest = next((r for r in hand if "4-bit" in r["method"]), hand[0])
        max_drop = args.max_drop if args.max_drop is not None else max(0.1, round(cheapest["drop"] / 2, 1))
        print(f"{args.bed}: {len(ws.graph.layers)} layers, {cheapest['method']} drops {cheapest['drop']:.2f}; "
              f"constraint {max_drop} pt", flush=True)
        # the sensitivity pass is part of what the study costs: not from the hand-made plans' cache
        for kind in ("layer_errors", "latency_table"):
            for f in (ws.exp.cache / kind).glob(f"{ws.model_key[:16]}-*"):
                f.unlink()
        info, result = run_search(write_exp(exp, tmp, max_accuracy_drop=max_drop, trials=args.trials,
                                            objective=args.objective), tmp / "run")
        side_by_side = {}
        if result.export is not None:
            model = onnx.load(str(result.export.model_path))
            # the export and every hand-made plan that meets the limit, timed in the same interleaved rounds
            rivals = [(r["method"], m) for r, m, _ in hand_models if r["drop"] <= max_drop]
            ms = ws.evaluator.latency_ms(ws.model.SerializeToString(), model.SerializeToString(),
                                         *(m.SerializeToString() for _, m in rivals))
            side_by_side = {"export": ms[1] / ms[0]} | {name: t / ms[0] for (name, _), t in zip(rivals, ms[2:])}
            again = evaluate(result.export.model_path, ws)
            rows.append(row(f"autoquant search ({info['trials']} trials, {info['pruned']} stopped early), export",
                            result.export, model, info["seconds"], trial_latency_ratio=result.chosen.result.latency_ratio,
                            evaluate_latency_ratio=again.latency_ratio, evaluate_accuracy=again.accuracy))
        rows += hand
        study = optuna.load_study(study_name=ws.exp.name, storage=f"sqlite:///{result.out_dir / 'study.db'}")
        below = below_hand_made(ws, meter, hand_models, max_drop, study, args.below)
        peers = {}
        stored = results["beds"].get(key, {})
        if args.no_peers and stored.get("peers") and stored.get("max_drop") == max_drop:
            # the peers' runs do not depend on autoquant's code: keep the stored ones, marked as such
            peers = {k: v | {"from_stored_run": True} for k, v in stored["peers"].items()}
            rows += [r | {"from_stored_run": True} for r in stored["rows"] if r["method"] in PEER_NAMES.values()]
        elif not args.no_peers:
            for peer, name in PEER_NAMES.items():
                model, peer_info = run_peer(peer, args.peers_python, ws, max_drop, tmp / peer)
                peers[peer] = peer_info
                if model is not None:
                    rows.append(row(name, meter(model, timed=True), model, peer_info["wall_seconds"]))
                print(f"  {name}: {peer_info}", flush=True)
        hv, hv_minutes = {}, args.hypervolume
        if args.hypervolume:
            hv = hv_runs(exp, tmp, max_drop, args.hypervolume, (0, 1, 2))
        elif stored.get("hypervolume") and stored.get("max_drop") == max_drop:
            hv, hv_minutes = stored["hypervolume"], stored.get("hypervolume_minutes", 0.0)
        results["beds"][key] = {"layers": len(ws.graph.layers), "eval_samples": len(ws.splits.eval),
                                     "calibration_samples": len(ws.splits.calibration), "max_drop": max_drop,
                                     "fp32_accuracy": ws.reference.accuracy, "search": info, "rows": rows,
                                     "peers": peers, "hypervolume": hv,
                                "hypervolume_minutes": hv_minutes, "weight_range": ws.weight_range,
                                     "objective": args.objective, "space": args.space,
                                     "side_by_side_latency": side_by_side, "below_hand_made": below}
    print(f"\n{args.bed}: constraint {max_drop} pt; search {info['seconds']:.0f} s, phases " +
          ", ".join(f"{k} {v:.0f} s" for k, v in info["phases"].items()) +
          f"; first feasible plan exported after {info['first_export_s'] or float('nan'):.0f} s\n")
    print("| method | accuracy | drop | bitops | latency / FP32 | runs as | time s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        runs = ", ".join(f"{n} {k}" for k, n in r["kernels"].items())
        print(f"| {r['method']} | {r['accuracy']:.2f} | {r['drop']:+.2f} | {r['bitops']:.4f} | {r['latency_ratio']:.2f} | "
              f"{runs} | {r['seconds']:.0f} |")
    if side_by_side:
        print("latency / FP32 timed side by side: " + ", ".join(f"{k} {v:.2f}" for k, v in side_by_side.items()))
    if below:
        met = [n for n in below["neighbours_scored"] if n["drop"] <= max_drop]
        print(f"below {below['hand_made']} (bitops {below['hand_made_bitops']:.4f}): the study tried "
              f"{below['study_trials_below']} plans ({below['study_complete_below']} complete, {below['study_met_below']} "
              f"within the limit, best {below['study_best_accuracy_below']}); of its {below['neighbours']} cheaper "
              f"neighbours {len(below['neighbours_scored'])} scored, {len(met)} within the limit, best "
              f"{max((n['accuracy'] for n in below['neighbours_scored']), default=float('nan')):.2f}")
    print_hypervolumes(hv)
    print(f"\nwrote {write_result('search_at_scale', results)}")


if __name__ == "__main__":
    main()
