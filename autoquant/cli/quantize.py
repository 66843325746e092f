"""`autoquant quantize EXP.yaml --plan PRESET|PLAN.yaml --out OUT`: one plan's model, scored against FP32."""

from __future__ import annotations

import collections
import json
from dataclasses import asdict
from pathlib import Path

from .common import workspace

NAME = "quantize"
HELP = "build one plan's INT8 model from cached calibration; score it vs FP32"


def add_arguments(p) -> None:
    p.add_argument("experiment", type=Path)
    p.add_argument("--plan", default="int8-per-channel", help="int8-per-channel or int8-per-tensor, with +bc (bias "
                   "correction) and/or +adaround (adaptive rounding) in any order; or PLAN.yaml")
    p.add_argument("--algorithm", help="activation range algorithm for every layer (minmax, percentile, mse, entropy, "
                   "histogram)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="print one JSON line")


def run(args) -> int:
    from ..config import load_yaml
    from ..engine import is_preset, preset_choice, preset_plan, quantize
    from ..quantize.plan import QuantPlan

    spec = None
    if is_preset(args.plan):
        preset_choice(args.plan)  # an unknown word fails before any work
    else:
        spec = load_yaml(Path(args.plan))
        # A plan's own mistakes are reported before calibration and the FP32 reference are prepared.
        QuantPlan.from_spec(spec, None, where=Path(args.plan).name)
        if args.algorithm:
            spec = {**spec, "default": {**(spec.get("default") or {}), "activation_algorithm": args.algorithm}}
    ws = workspace(args.experiment)
    if spec is None:
        plan = preset_plan(ws, args.plan, args.algorithm or "minmax")
    else:
        plan = QuantPlan.from_spec(spec, ws.graph.names, where=Path(args.plan).name)
    r = quantize(ws, plan, args.out)
    if args.json:
        keys = ("accuracy", "fp32_accuracy", "accuracy_drop", "bitops_fraction", "latency_ms", "fp32_latency_ms",
                "latency_ratio", "size_bytes", "fp32_size_bytes")
        d = asdict(r)
        runs = dict(collections.Counter(e.mode for e in r.executed))
        print(json.dumps({**{k: d[k] for k in keys}, "layers_run_as": runs, "model": str(r.model_path),
                          "record": str(r.record_path)}))
        return 0
    n = ws.exp.eval.latency_batch_size
    print(f"FP32  accuracy {r.fp32_accuracy:6.2f} %   latency {r.fp32_latency_ms:7.2f} ms per batch of {n}")
    print(f"quant accuracy {r.accuracy:6.2f} %   latency {r.latency_ms:7.2f} ms ({r.latency_ratio:.2f}x FP32)"
          f"   drop {r.accuracy_drop:+.2f} pt   bitops {r.bitops_fraction * 100:.2f} % of FP32")
    print(f"size  {r.fp32_size_bytes / 1e6:.2f} MB -> {r.size_bytes / 1e6:.2f} MB"
          f"   ({len(ws.splits.eval)} eval samples, {len(plan.quantized)}/{len(plan.names)} layers quantized)")
    print(f"wrote {r.model_path} and {r.record_path}")
    return 0
