"""A layer as a grouped matrix product, y[g, r, o] = Σ_k rows[g, r, k] · w[g, o, k]: the form in which its weights
are fitted to its output. A convolution's rows are input patches at output positions (im2col, its zero padding
included), one group per convolution group; a Gemm's or MatMul's rows are its input's last-axis vectors.
Sampling rows instead of whole outputs bounds memory and time by the row count, whatever the layer's size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ...graph.layers import LayerInfo


@dataclass(frozen=True)
class LayerForm:
    op_type: str
    groups: int = 1
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    auto_pad: str = "NOTSET"
    spatial: int = 2  # a 1-D convolution is a 2-D one of height 1
    trans_b: bool = False  # Gemm: weight stored [out, in]
    alpha: float = 1.0  # Gemm: y = alpha · x·W + beta · C

    @classmethod
    def of(cls, node: onnx.NodeProto, layer: LayerInfo) -> LayerForm | None:
        """The form of `node` (the layer's node in the FP32 model); None for what it does not cover (3-D
        convolutions, transposed Gemm inputs, batched MatMul weights)."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            spatial = len(layer.weight_shape) - 2
            if spatial not in (1, 2):
                return None
            pads = list(attrs.get("pads", [0] * 2 * spatial))
            grow = (lambda v: (1, *v)) if spatial == 1 else tuple  # height 1 for 1-D
            pad4 = (0, pads[0], 0, pads[1]) if spatial == 1 else (pads[0], pads[1], pads[2], pads[3])
            auto = attrs.get("auto_pad", b"NOTSET")
            return cls("Conv", int(attrs.get("group", 1)), grow(tuple(layer.weight_shape[2:])),
                       grow(tuple(attrs.get("strides", [1] * spatial))), grow(tuple(attrs.get("dilations", [1] * spatial))),
                       pad4, auto.decode() if isinstance(auto, bytes) else auto, spatial)
        if node.op_type == "Gemm":
            if attrs.get("transA", 0):
                return None
            return cls("Gemm", trans_b=bool(attrs.get("transB", 0)), alpha=float(attrs.get("alpha", 1.0)))
        if node.op_type == "MatMul" and len(layer.weight_shape) == 2:
            return cls("MatMul")
        return None

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as [groups, outputs per group, inputs per row]."""
        if self.op_type == "Conv":
            return w.reshape(self.groups, w.shape[0] // self.groups, -1)
        return (w if self.trans_b else w.T)[None]

    def weight(self, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """matrix()'s inverse: the weight in the model's layout."""
        if self.op_type == "Conv":
            return m.reshape(shape)
        return m[0] if self.trans_b else m[0].T

    def _pads(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        if self.auto_pad in ("NOTSET", "VALID"):
            return self.pads if self.auto_pad == "NOTSET" else (0, 0, 0, 0)
        out = []
        for n, k, s, d in zip(size, self.kernel, self.strides, self.dilations):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            out.append((total - total // 2, total // 2) if self.auto_pad == "SAME_LOWER" else (total // 2, total - total // 2))
        return out[0][0], out[1][0], out[0][1], out[1][1]

    def rows(self, x: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
        """Up to `count` rows of input `x` (a batch of the layer's input), drawn without replacement, as
        [groups, rows, inputs per row]."""
        if self.op_type != "Conv":
            flat = x.reshape(-1, x.shape[-1])
            pick = rng.choice(len(flat), min(count, len(flat)), replace=False)
            return flat[np.sort(pick)][None].astype(np.float32)
        if self.spatial == 1:
            x = x[:, :, None, :]
        n, c, h, w = x.shape
        top, left, bottom, right = self._pads((h, w))
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        pick = np.sort(rng.choice(n * oh * ow, min(count, n * oh * ow), replace=False))
        b, rest = np.divmod(pick, oh * ow)
        r, q = np.divmod(rest, ow)
        hh = r[:, None] * sh + np.arange(kh) * dh
        ww = q[:, None] * sw + np.arange(kw) * dw
        patches = xp[b[:, None, None, None], np.arange(c)[None, :, None, None], hh[:, None, :, None], ww[:, None, None, :]]
        grouped = patches.reshape(len(pick), self.groups, -1)
        return np.ascontiguousarray(grouped.transpose(1, 0, 2), dtype=np.float32)

    def output_axis(self) -> int:
        """Where a layer output's channels are: 1 for a convolution, the last axis otherwise."""
        return 1 if self.op_type == "Conv" else -1
