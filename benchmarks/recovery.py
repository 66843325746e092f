"""Recovery without training (bias correction, adaptive rounding, weight clipping by output error): what each
recovers of all-INT8's loss, what it costs, and whether the default space, which offers them, exports a faster
model than a space without them at a limit plain all-INT8 misses. The evidence for which recovery is in the default.

Per bed (benchmarks/beds.py), on the same eval split:
- FP32 and the uniform plans int8-per-channel, +bc, +clip+bc, +adaround, +bc+adaround: the metric's drop, its
  output NMSE, each method's share of all-INT8's drop it recovers, and latency as a ratio to FP32, every model
  timed side by side in the same interleaved rounds (recovery changes weights and biases, not kernels: the
  ratios should agree);
- the seconds adaptive rounding takes per layer (fitted once per layer and weight grid, then cached);
- two fresh studies at each limit (default: half of all-INT8's drop, which all-INT8 misses), from cold per-study
  caches (the recovery included): the default space (bias correction offered to every static layer with a bias,
  adaptive rounding fitted for the layers that decide the plan), and the same space without recovery (the default
  before it had any). Their exports' float layers, kernels run, drop, and paired latency against each other and
  FP32.

    pip install -e ".[bench]" && python benchmarks/recovery.py [--beds efficientnet-lite1 resnet56] [--limits 1.0]
        [--no-studies]

Writes benchmarks/results/recovery.json (each bed's entry replaced as it goes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import beds
import numpy as np
from common import run_beds
from studies import cold_study, kernels

from autoquant import Workspace, load_experiment
from autoquant.engine import preset_plan
from autoquant.evaluate.latency import not_slower
from autoquant.measure import Meter, paired_figures

PRESETS = ("int8-per-channel", "int8-per-channel+bc", "int8-per-channel+clip+bc", "int8-per-channel+adaround",
           "int8-per-channel+bc+adaround")
# The default space without recovery: its choices less bias_correction and weight_rounding (each takes its default)
WITHOUT = "without recovery"
SPACES = {WITHOUT: "no-recovery", "default space": None}


def no_recovery_space(work: Path) -> Path:
    import yaml

    from autoquant.config import SearchConfig
    from autoquant.search.space import DEFAULT_SPACE, space_path

    raw = yaml.safe_load(space_path(SearchConfig()).read_text())
    raw["choices"] = {k: v for k, v in raw["choices"].items() if k not in ("bias_correction", "weight_rounding")}
    path = work / f"no-recovery-{DEFAULT_SPACE}"
    path.write_text(yaml.safe_dump(raw))
    return path


def uniform(ws: Workspace, meter: Meter) -> list[dict]:
    rows, blobs = [], []
    for preset in PRESETS:
        model = ws.build(preset_plan(ws, preset))
        m = meter(model)
        rows.append({"plan": preset, "metric": m.accuracy, "drop": m.accuracy_drop, "output_nmse": m.output_mse,
                     "runs": kernels(model)})
        blobs.append(model.SerializeToString())
        print(f"  {preset:32s} drop {m.accuracy_drop:+.2f}", flush=True)
    plain = rows[0]["drop"]
    for r, (ms, ratio, n) in zip(rows, paired_figures(meter.paired_rounds(blobs))):
        r |= {"latency_ms": ms, "latency_ratio": ratio, "latency_rounds": n,
              "share_recovered": (plain - r["drop"]) / plain if plain > 0 else None}
    return rows


def exports(exp: dict, limit: float, meter: Meter, work: Path) -> list[dict]:
    rows, models = [], []
    for name, space in SPACES.items():
        search_cfg = {"max_accuracy_drop": limit} | ({"space": str(no_recovery_space(work))} if space else {})
        model, info, result = cold_study(exp, work, f"{limit:g}-{space or 'default'}", **search_cfg)
        fitted = dict(result.workspace.recovery.seconds)
        row = {"space": name, **info, "rounding_seconds": fitted}
        if model is not None:
            m = meter(model)
            row |= {"metric": m.accuracy, "drop": m.accuracy_drop, "feasible": m.accuracy_drop <= limit,
                    "runs": kernels(model), "recovery_layers": _recovery_layers(result)}
            models.append(model.SerializeToString())
        rows.append(row)
        print(f"  {name:16s} at {limit:g}: {'exported' if model else 'none'} float layers {row['float_layers']}  "
              f"{row['seconds']:.0f} s", flush=True)
    if len(models) == len(rows):
        rounds = meter.paired_rounds(models)
        for r, (ms, ratio, n) in zip(rows, paired_figures(rounds)):
            r |= {"latency_ms": ms, "latency_ratio": ratio, "latency_rounds": n}
        rows[1]["not_slower_than_without"] = not_slower(rounds, 1, 0)
        rows[1]["over_without"] = float(np.median(rounds[:, 1] / rounds[:, 0]))
    return rows


def _recovery_layers(result) -> dict[str, int]:
    plan = result.chosen.plan
    return {"bias_correction": sum(c.quantize and getattr(c, "bias_correction", False) for _, c in plan.choices),
            "adaptive_rounding": sum(c.quantize and getattr(c, "weight_rounding", "") == "adaptive"
                                     for _, c in plan.choices)}


def bed_entry(bed: str, args, work: Path, save) -> dict:
    exp = beds.experiment(bed)
    exp["cache_dir"] = str(work / "cache")
    ws = Workspace(load_experiment(beds.write(exp, work)))
    meter = Meter(ws)
    print(f"{bed}:", flush=True)
    rows = uniform(ws, meter)
    entry = {**beds.describe(exp), "fp32_metric": ws.reference.accuracy, "layers": len(ws.graph.layers),
             "trials": exp["search"]["trials"], "uniform": rows, "rounding_seconds": dict(ws.recovery.seconds),
             "limits": {}}
    save(entry)
    for limit in [] if args.no_studies else args.limits or [round(rows[0]["drop"] / 2, 2)]:
        entry["limits"][f"{limit:g}"] = exports(exp, limit, meter, work)
        save(entry)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beds", nargs="+", default=["efficientnet-lite1", "resnet56"], choices=beds.BEDS)
    p.add_argument("--limits", nargs="*", type=float, help="default: half of all-INT8 per-channel's drop")
    p.add_argument("--no-studies", action="store_true", help="the uniform plans only")
    p.add_argument("--work", help="keep studies and models here instead of a temporary directory")
    args = p.parse_args()
    run_beds("recovery", args.beds, args.work, lambda bed, work, save: bed_entry(bed, args, work, save))


if __name__ == "__main__":
    main()
