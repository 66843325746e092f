"""Plan + cached activation parameters → one ONNX model that onnxruntime runs with the intended kernel per
layer: each mode (quantize/modes/) builds the plan's layers in it, in the modes' order, with onnxruntime's own
quantizer for that mode; float layers are kept float (float_layers.py). Deterministic: the same inputs always
produce the same model, whether they come from a trial or from a record file.
"""

from __future__ import annotations

import onnx

from ..graph.layers import GraphInfo
from . import modes
from .float_layers import isolate_float_layers
from .modes.static import WeightParams
from .plan import QuantPlan
from .recovery import Recovery, substitute
from .scales import ActivationParams, activation_qtype


def build_model(
    model: onnx.ModelProto,
    graph: GraphInfo,
    plan: QuantPlan,
    activations: dict[str, ActivationParams],
    activation_type: str,
    weight_range: str = "full",
    weights: WeightParams | None = None,
    recovery: Recovery | None = None,
) -> onnx.ModelProto:
    """Compile the plan into one model (`model` is not changed). `activations` holds the static layers' (and
    glue's) activation parameters; `weight_range` "reduced" keeps 8-bit weights in [-64, 64] (see
    weight_range.py: CPUs whose kernels saturate); `weights` keeps weight parameters across builds of the same
    model; `recovery` gives the rounding and bias shifts of layers whose choice has them (recovery/)."""
    modes.check_plan(graph.layers, plan)
    activation_qtype(activation_type)  # an unknown activation type fails before anything is built
    # The weight grids come from the FP32 weights, which recovered layers no longer read
    weights = weights if weights is not None else WeightParams(model)
    ctx = modes.BuildContext(graph, activations, activation_type, weight_range, weights)
    qmodel = onnx.ModelProto()
    qmodel.CopyFrom(model)
    substitute(qmodel, graph, plan, weight_range, recovery)
    for mode in modes.modes():
        if plan.in_mode(mode.name):
            qmodel = mode.build(qmodel, plan, ctx)
    isolate_float_layers(qmodel, graph, plan)
    return qmodel
