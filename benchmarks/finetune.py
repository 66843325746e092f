"""Quantization-aware fine-tuning (autoquant finetune): what it recovers of post-training quantization's loss on a
uniform plan, what it costs on 2 cores, and whether the fine-tuned model meets a limit the plan misses after PTQ.

Per bed (benchmarks/beds.py) and its plan — CIFAR ResNet-20 and ResNet-56 with 4-bit weights everywhere, the
MobileNet-style net all-INT8 per tensor, EfficientNet-Lite1 on the photos all-INT8 per channel:
- the plan after post-training quantization and after fine-tuning (distillation from FP32, no labels; the CIFAR
  beds on their 5,000 reserved training images, the photo bed on its 100 calibration photos): the metric's drop
  and output NMSE on the eval split the fine-tuning never saw, the seconds fine-tuning took, and latency as a
  ratio to FP32, both models and FP32 timed side by side in the same interleaved rounds;
- with --search, a fresh default study at the same limit: its export, timed in the same rounds as the fine-tuned
  model (evaluate/latency.py: not_slower).

    pip install -e ".[bench]" && python benchmarks/finetune.py [--beds resnet20 resnet56 mobilenet efficientnet-lite1]
        [--limit 1.0] [--search]

Writes benchmarks/results/finetune.json (each bed's entry replaced as it goes).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import beds
import onnx
from common import run_beds
from studies import cold_study, kernels

from autoquant import Workspace, load_experiment
from autoquant.config import FinetuneConfig
from autoquant.engine import preset_plan
from autoquant.evaluate.latency import not_slower
from autoquant.jobs.finetune import finetune_plan
from autoquant.measure import Meter, paired_figures
from autoquant.quantize.plan import QuantPlan

PLANS = {"resnet20": "int4-weights", "resnet56": "int4-weights", "mobilenet": "int8-per-tensor",
         "efficientnet-lite1": "int8-per-channel", "efficientnet-lite2": "int8-per-channel"}
# The photo beds have no reserved training photos: their 100 calibration photos, in smaller batches
SETTINGS = {"photos": FinetuneConfig(steps=200, batch_size=16, lr=1e-5, data="calibration"),
            "cifar": FinetuneConfig(steps=300, batch_size=32, data="train")}


def uniform_plan(ws: Workspace, name: str) -> QuantPlan:
    if name == "int4-weights":  # every layer's weights on the 4-bit per-channel grid, activations INT8
        plan = preset_plan(ws, "int8-per-channel")
        return QuantPlan(tuple((n, dataclasses.replace(c, weight_bits=4) if c.quantize else c) for n, c in plan.choices))
    return preset_plan(ws, name)


def bed_entry(bed: str, args, work: Path, save) -> dict:
    exp = beds.experiment(bed)
    exp["cache_dir"] = str(work / "cache")
    ws = Workspace(load_experiment(beds.write(exp, work)))
    meter = Meter(ws)
    plan = uniform_plan(ws, PLANS[bed])
    settings = SETTINGS["photos" if bed in beds.PHOTO_SIZES else "cifar"]
    print(f"{bed}: {PLANS[bed]}", flush=True)
    ptq_model = ws.build(plan)
    ptq = meter(ptq_model, plan)
    print(f"  after PTQ: drop {ptq.accuracy_drop:+.2f}, output NMSE {ptq.output_mse:.3g}", flush=True)
    tuned = finetune_plan(ws, plan, settings, work / "finetuned", work / "finetune.ckpt", ptq.to_dict())
    after = tuned.after
    print(f"  fine-tuned in {tuned.seconds:.0f} s: drop {after.accuracy_drop:+.2f}, output NMSE {after.output_mse:.3g}",
          flush=True)
    models = {"ptq": ptq_model.SerializeToString(), "finetuned": after.model_path.read_bytes()}
    entry = {**beds.describe(exp), "fp32_metric": ws.reference.accuracy, "layers": len(ws.graph.layers),
             "plan": PLANS[bed], "limit": args.limit, "settings": dataclasses.asdict(settings),
             "ptq": {"metric": ptq.accuracy, "drop": ptq.accuracy_drop, "output_nmse": ptq.output_mse,
                     "feasible": ptq.accuracy_drop <= args.limit, "runs": kernels(ptq_model)},
             "finetuned": {"metric": after.accuracy, "drop": after.accuracy_drop, "output_nmse": after.output_mse,
                           "feasible": after.accuracy_drop <= args.limit, "seconds": tuned.seconds,
                           "loss_first": tuned.losses[0], "loss_last": tuned.losses[-1],
                           "runs": kernels(onnx.load(str(after.model_path)))}}
    if args.search:
        model, info, _ = cold_study(exp, work, f"{args.limit:g}", max_accuracy_drop=args.limit)
        entry["search"] = info
        if model is not None:
            m = meter(model)
            entry["search"] |= {"metric": m.accuracy, "drop": m.accuracy_drop, "runs": kernels(model)}
            models["search"] = model.SerializeToString()
    rounds = meter.paired_rounds(list(models.values()))
    for key, (ms, ratio, n) in zip(models, paired_figures(rounds)):
        target = entry["search"] if key == "search" else entry[key]
        target |= {"latency_ms": ms, "latency_ratio": ratio, "latency_rounds": n}
    if "search" in models:
        keys = list(models)
        entry["finetuned"]["not_slower_than_search"] = not_slower(rounds, keys.index("finetuned"), keys.index("search"))
    save(entry)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beds", nargs="+", default=["resnet20", "resnet56", "mobilenet", "efficientnet-lite1"],
                   choices=sorted(PLANS))
    p.add_argument("--limit", type=float, default=1.0, help="points of the metric (default 1.0)")
    p.add_argument("--search", action="store_true", help="also run a default study at the limit and time its export")
    p.add_argument("--work", help="keep models here instead of a temporary directory")
    args = p.parse_args()
    run_beds("finetune", args.beds, args.work, lambda bed, work, save: bed_entry(bed, args, work, save))


if __name__ == "__main__":
    main()
