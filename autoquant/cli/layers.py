"""`autoquant layers EXP.yaml`: the quantizable layers and the compute left float, with FLOPs."""

from __future__ import annotations

from pathlib import Path

from .common import workspace

NAME = "layers"
HELP = "list the quantizable layers of the experiment's model"


def add_arguments(p) -> None:
    p.add_argument("experiment", type=Path)


def run(args) -> int:
    g = workspace(args.experiment).graph
    print(f"{'layer':48s} {'op':6s} {'weight shape':16s} {'MFLOPs':>9s}  runs")
    for layer in g.layers:
        shape = "x".join(map(str, layer.weight_shape))
        kind = "quantizable" + (", depthwise" if layer.depthwise else "")
        print(f"{layer.name:48s} {layer.op_type:6s} {shape:16s} {layer.flops / 1e6:9.3f}  {kind}")
    for op in g.float_ops:
        print(f"{op.name:48s} {op.op_type:6s} {'-':16s} {op.flops / 1e6:9.3f}  float (not quantized; 32x32 in bitops)")
    seen = " at the data's shapes (from a calibration batch)" if g.observed else ""
    print(f"total {g.total_flops / 1e6:.2f} MFLOPs per sample{seen} (FLOPs = 2 x MACs): {len(g.layers)} quantizable "
          f"layers, {len(g.float_ops)} float compute ops ({g.unquantized_flops / max(g.total_flops, 1):.1%} of FLOPs)")
    return 0
