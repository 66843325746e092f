"""The weight scales and quantized initializers static builds share (WeightParams): made once per model, reused by
every trial's Q/DQ build."""

from __future__ import annotations

import contextlib
import unittest.mock

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, qdq_quantizer
from onnxruntime.quantization.quant_utils import compute_data_quant_params


class WeightParams:
    """Each weight's scale and zero point per (bits, axis, range), computed once per model and handed to
    the quantizer as overrides; and each weight's quantized initializer, kept once made.

    QDQQuantizer computes both itself on every build, each one Python call per output channel, repeated
    identically in every trial: on a network with tens of thousands of channels that is most of a build's
    time. The parameters come from
    onnxruntime's own `compute_data_quant_params` with the arguments its quantizer would pass (symmetric,
    no minimum range); the initializers are what its own `quantize_onnx_initializer` returned for the same
    weight, type, scale, zero point and axis. So the model is byte-identical to one built without this cache.
    """

    def __init__(self, model: onnx.ModelProto):
        self._inits = {i.name: i for i in model.graph.initializer}
        self._memo: dict[tuple, list[dict]] = {}
        self._quantized: dict[tuple, onnx.TensorProto] = {}

    @contextlib.contextmanager
    def reuse_quantized(self):
        """While open, QDQQuantizer's weight quantization returns the initializer it made before for the same
        arguments. Why a patch: the quantizer has no hook for quantized weights made elsewhere (given an
        already-quantized weight it skips its int32-bias scale adjustment, which would change the model)."""
        make = qdq_quantizer.quantize_onnx_initializer

        def reused(weight, quant_type, zero_point, scale, axis=None, quant_weight_name=None, block_size=0):
            args = (weight, quant_type, zero_point, scale, axis, quant_weight_name, block_size)
            if weight.name not in self._inits or self._inits[weight.name].dims != weight.dims:
                return make(*args)  # not this model's weight: nothing to reuse
            zp, sc = np.asarray(zero_point), np.asarray(scale)
            key = (weight.name, quant_type, zp.dtype.str, zp.tobytes(), sc.dtype.str, sc.tobytes(), axis,
                   quant_weight_name, block_size)
            if key not in self._quantized:
                self._quantized[key] = make(*args)
            out = onnx.TensorProto()
            out.CopyFrom(self._quantized[key])
            return out

        with unittest.mock.patch.object(qdq_quantizer, "quantize_onnx_initializer", reused):
            yield

    def overrides(self, weight: str, qtype: QuantType, axis: int | None, reduce_range: bool,
                  clip: np.ndarray | None = None) -> list[dict]:
        """`clip`: the bound (per channel, or one) the layer's weights are clipped to (recovery/clipping.py): the
        grid is then the clipped weights', whose largest |weight| is the bound."""
        key = (weight, qtype, axis, reduce_range, None if clip is None else clip.tobytes())
        if key not in self._memo:
            data = numpy_helper.to_array(self._inits[weight])
            if clip is not None:
                data = np.stack([-clip, clip], axis=-1).astype(data.dtype)  # [channels or 1, 2]
                parts = [data[0]] if axis is None else list(data)
            else:
                parts = [data] if axis is None else [data.take(c, axis) for c in range(data.shape[axis])]
            params = [compute_data_quant_params(p.ravel(), qtype.tensor_type, True, reduce_range=reduce_range)
                      for p in parts]
            entries = [{"scale": scale, "zero_point": zp} for zp, scale in params]
            entries[0] = {**entries[0], "quant_type": qtype} | ({} if axis is None else {"axis": axis})
            self._memo[key] = entries
        return self._memo[key]
