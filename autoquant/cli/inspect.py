"""`autoquant inspect MODEL.onnx [--record RECORD.json]`: per layer, the kernel a default onnxruntime session runs,
against what the file's Q/DQ (or the record) says; exit 1 when they disagree."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from ..errors import AutoquantError
from .common import log

NAME = "inspect"
HELP = "per layer, the kernel a default onnxruntime session runs (exit 1 if it contradicts the file or record)"


def add_arguments(p) -> None:
    p.add_argument("model", type=Path)
    p.add_argument("--record", type=Path, help="compare with this record file instead of the model's own Q/DQ")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..evaluate.executed import (
        disagreements,
        executed_layers,
        intended,
        other_compute,
        record_disagreements,
    )
    from ..graph.ingest import load_onnx
    from ..quantize.weight_range import saturating_layers, uint8_kernels_saturate
    from ..record import Record

    model = load_onnx(args.model)
    stored = intended(model)
    if not stored:
        raise AutoquantError(f"{args.model} has no Conv, Gemm or MatMul with constant weights: nothing to inspect")
    labels = {name: layer.label for name, layer in stored.items()}
    runs = {name: layer.runs for name, layer in stored.items()}
    wrong = []
    if args.record:
        plan = Record.load(args.record).plan()
        extra, missing = sorted(set(plan.names) - set(stored)), sorted(set(stored) - set(plan.names))
        if extra or missing:
            which = (f"layer {extra[0]} is in the record, not in the model" if extra else
                     f"layer {missing[0]} is in the model, not in the record")
            raise AutoquantError(f"{args.record} describes other layers than {args.model} ({which}): give the record "
                                 "made with it")
        labels = {n: c.label for n, c in plan.choices}
        runs = plan.runs()
        wrong = record_disagreements(labels, stored)
    executed = executed_layers(model)
    wrong += disagreements(runs, executed)
    others = other_compute(model)
    if args.json:
        print(json.dumps({"layers": [{"name": e.name, "intended": labels[e.name], "kernel": e.kernel, "runs": e.mode}
                                     for e in executed],
                          "other_compute": [{"name": n, "op_type": op, "runs": "float"} for n, op in others],
                          "disagreements": wrong}))
    else:
        print(f"{'layer':56s} {'intended':>8s}  {'kernel':20s} runs")
        for e in executed:
            print(f"{e.name:56s} {labels[e.name]:>8s}  {e.kernel or '-':20s} {e.mode}")
        for name, op in others:
            print(f"{name:56s} {'-':>8s}  {op:20s} float (compute no plan quantizes)")
        modes = collections.Counter(e.mode for e in executed)
        print(f"{len(executed)} layers in a default onnxruntime session: "
              + ", ".join(f"{n} {mode}" for mode, n in sorted(modes.items()))
              + (f"; {len(others)} other compute op(s) float" if others else ""))
    for line in wrong:
        log.info("%s", line)
    saturating = saturating_layers(model) if uint8_kernels_saturate() else []
    if saturating:
        log.warning("warning: this CPU's uint8 x int8 kernels saturate (no VNNI) and %d layer(s) (e.g. %s) have weights "
                    "beyond ±64: they compute wrong sums here; rebuild with quantization.weight_range: reduced (or "
                    "auto) for this CPU", len(saturating), saturating[0])
    if wrong:
        log.info("%d layer(s) do not run as %s states", len(wrong), "the record" if args.record else "the file")
        return 1
    return 0
