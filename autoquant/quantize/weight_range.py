"""Weight range for the CPU that runs the model: full int8 ([-127, 127]) or reduced to 7 bits ([-64, 64]).

On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), onnxruntime's integer GEMM for uint8 activations × int8 weights multiplies adjacent pairs with
VPMADDUBSW, which saturates the pair's sum at int16: 255 × 127 × 2 = 64,770 > 32,767. Every
QLinearConv / QGemm then computes wrong sums wherever large activations meet large weights (a network's
stem most of all), far beyond the quantization error itself, while the same model on a VNNI CPU matches
its QDQ simulation. Weights in [-64, 64] cannot
saturate (255 × 64 × 2 = 32,640). int8 activations (s8s8) take another kernel that does not saturate.

onnxruntime documents the remedy (`reduce_range`) and leaves the choice to the user; Intel Neural
Compressor turns it on when the CPU lacks VNNI by reading CPU flags. We ask the runtime instead: one
QLinearConv whose exact answer a saturating kernel cannot produce. That covers CPUs whose flags we
would not know to read (and ARM, whose dot-product kernels do not saturate).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..errors import ConfigError

WEIGHT_RANGES = ("auto", "full", "reduced")
# What `auto` resolves to for uint8 activations, whatever this CPU's probe says: to build on one kind of CPU
# for another (and to run the test suite as each kind of CPU would).
TARGET_ENV = "AUTOQUANT_WEIGHT_RANGE"
REDUCED_MAX = 64  # onnxruntime's reduce_range for symmetric int8 weights: [-64, 64]


@functools.cache
def uint8_kernels_saturate() -> bool:
    """Whether this CPU's uint8 × int8 QLinearConv saturates a pair of products at int16."""
    inits = [
        numpy_helper.from_array(np.full((1, 2, 1, 1), 127, np.int8), "w"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(1000.0, np.float32), "y_scale"),
    ]
    node = helper.make_node("QLinearConv", ["x", "one", "x_zero", "w", "one", "w_zero", "y_scale", "x_zero"], ["y"])
    graph = helper.make_graph([node], "saturation_probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.full((1, 2, 1, 1), 255, np.uint8)})
    return int(y.reshape(())) != round(2 * 255 * 127 / 1000)  # exact: 65; saturated: 33


def resolve(setting: str, activation_type: str) -> str:
    """`auto` → `reduced` where this CPU's kernels for these activations saturate (or $AUTOQUANT_WEIGHT_RANGE
    says so), else `full`."""
    if setting not in WEIGHT_RANGES:
        raise ConfigError(f"quantization.weight_range '{setting}' is unknown: use one of {', '.join(WEIGHT_RANGES)}")
    if setting != "auto":
        return setting
    if activation_type != "uint8":
        return "full"
    target = os.environ.get(TARGET_ENV, "")
    if target:
        if target not in ("full", "reduced"):
            raise ConfigError(f"{TARGET_ENV}={target!r} is unknown: set it to full or reduced, or unset it")
        return target
    return "reduced" if uint8_kernels_saturate() else "full"


def saturating_layers(model: onnx.ModelProto) -> list[str]:
    """Layers of a QDQ model whose uint8 input meets int8 weights beyond ±64: the ones a saturating CPU
    computes wrongly."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def dequantized_from(tensor: str) -> onnx.TensorProto | None:
        """The quantized initializer (weights) or zero point (activations) behind a DequantizeLinear."""
        dq = producers.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        return inits.get(dq.input[0]) if dq.input[0] in inits else inits.get(dq.input[2] if len(dq.input) > 2 else "")

    out = []
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in inits:  # dynamic mode: its input is always uint8
            w = inits[node.input[1]]
            if w.data_type == TensorProto.INT8 and int(np.abs(numpy_helper.to_array(w).astype(np.int16)).max()) > REDUCED_MAX:
                out.append(node.name)
            continue
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w, x_zero = dequantized_from(node.input[1]), dequantized_from(node.input[0])
        if w is None or x_zero is None or w.data_type != TensorProto.INT8 or x_zero.data_type != TensorProto.UINT8:
            continue
        if int(np.abs(numpy_helper.to_array(w).astype(np.int16)).max()) > REDUCED_MAX:
            out.append(node.name)
    return out
