"""Int4 weight-only: each weight column quantized in blocks of `block_size` input channels (asymmetric
4-bit, one scale and zero point per block), activations left float and, at accuracy level 4, quantized
to int8 per block inside the kernel. onnxruntime's MatMulNBitsQuantizer writes one MatMulNBits node per
layer, which has fast CPU kernels; 4-bit Q/DQ weights (static mode) have none.
"""

from __future__ import annotations

import onnx
from onnxruntime.quantization import QuantFormat

from ..plan import QuantPlan


def apply(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """`model` with the plan's int4 layers as MatMulNBits, one quantizer pass per (block size, accuracy level)."""
    # Imported here: importing that module calls logging.basicConfig(level=INFO), configuring the root logger
    # of whatever program imports autoquant; only a plan with int4 layers pays for it.
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    groups: dict[tuple[int, int], list[str]] = {}
    for name in plan.in_mode("int4"):
        groups.setdefault((plan[name].block_size, plan[name].accuracy_level), []).append(name)
    for (block_size, level), names in sorted(groups.items()):
        # The quantizer takes every MatMul unless excluded: exclude all but this group's layers.
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in names]
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=level,
                                              quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",))  # fmt: skip
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
        for node in model.graph.node:  # named "<layer>_Q4" by the quantizer; give it the layer's name back
            if node.op_type == "MatMulNBits" and node.name.endswith("_Q4") and node.name[:-3] in names:
                node.name = node.name[:-3]
    return model
