"""Plan + cached activation parameters → one ONNX model that onnxruntime runs with the intended kernel per
layer: each mode (quantize/modes/) builds the plan's layers in it, in the modes' order, with onnxruntime's own
quantizer for that mode; float layers are kept float (float_layers.py). Deterministic: the same inputs always
produce the same model, whether they come from a trial or from a record file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx

from ..graph.layers import GraphInfo
from . import modes
from .float_layers import isolate_float_layers
from .plan import QuantPlan
from .recovery import Recovery
from .scales import ActivationParams, activation_qtype


def build_model(
    model: onnx.ModelProto,
    graph: GraphInfo,
    plan: QuantPlan,
    activations: dict[str, ActivationParams],
    activation_type: str,
    weight_range: str = "full",
    cache: modes.BuildCache | None = None,
    recovery: Recovery | None = None,
    recorded: Mapping[str, Mapping[str, Any]] | None = None,
) -> onnx.ModelProto:
    """Compile the plan into one model (`model` is not changed). `activations` holds the calibrated layers' (and
    glue's) activation parameters; `weight_range` "reduced" keeps 8-bit weights in [-64, 64] (see weight_range.py:
    CPUs whose kernels saturate); `cache` keeps what modes compute once per model across its builds (made from
    `model` when not given); `recovery` gives a study's per-layer fitted data, `recorded` a record's (by layer,
    Mode.record_extra), for the choices that need them."""
    modes.check_plan(graph.layers, plan)
    activation_qtype(activation_type)  # an unknown activation type fails before anything is built
    ctx = modes.BuildContext(graph, activations, activation_type, weight_range, cache or modes.BuildCache(model),
                             recovery, recorded or {})
    qmodel = onnx.ModelProto()
    qmodel.CopyFrom(model)
    for mode in modes.modes():
        if plan.in_mode(mode.name):
            qmodel = mode.build(qmodel, plan, ctx)
    isolate_float_layers(qmodel, graph, plan)
    return qmodel
