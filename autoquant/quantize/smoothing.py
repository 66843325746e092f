"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before quantizing.

For a MatMul/Gemm layer y = x·W, each input channel k is divided by s_k and the k-th row of W multiplied by
it — the product is unchanged in exact arithmetic — with s_k = max|x_k|^α / max|W_k|^(1−α). Static INT8
then quantizes a flatter activation (one outlier channel no longer sets the per-tensor scale) at the price
of a slightly harder weight. Layers that read the same tensor share one s (their weight rows are
maxed together).

Where 1/s goes: into the producer when that is exact and adds nothing — a LayerNormalization whose output
feeds only the smoothed layers (pre-LN transformers) gets gamma/s and beta/s. Where it is not (post-LN
BERT-style blocks, whose LayerNorm output also feeds the residual Add; a GELU in front of FC2), a
per-channel Mul in front of the layers: one elementwise float op, counted in the report.

Why not onnxruntime's tooling: its quantizer has no SmoothQuant; Neural Compressor's ONNX SmoothQuant
calibrates and inserts its own Mul ops inside its own quantization flow, which autoquant's per-layer
builder and cached statistics cannot reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..calibrate.collect import augment
from ..data import Dataset
from ..graph.layers import GraphInfo, LayerInfo
from ..runtime import Batches, session

SCALE_LIMITS = (1e-5, 1e5)  # a dead channel (max 0) or a zero weight row must not give 0 or inf


@dataclass(frozen=True)
class Smoothing:
    """The per-channel divisors of each smoothed tensor, and where they went."""

    alpha: float
    scales: dict[str, list[float]]  # smoothed tensor → s per input channel
    folded: tuple[str, ...]  # tensors whose 1/s went into their LayerNormalization
    inserted: tuple[str, ...]  # tensors that got a Mul by 1/s in front of their layers


def smoothable(graph: GraphInfo) -> dict[str, list[LayerInfo]]:
    """Tensors read by MatMul/Gemm layers with 2-D weights (without transA), grouped by the tensor."""
    groups: dict[str, list[LayerInfo]] = {}
    for layer in graph.layers:
        if layer.op_type in ("MatMul", "Gemm") and len(layer.weight_shape) == 2:
            groups.setdefault(layer.input, []).append(layer)
    return groups


def _input_axis(layer: LayerInfo) -> int:
    """The weight axis that meets the input channels."""
    return 1 - layer.channel_axis


def channel_absmax(model: onnx.ModelProto, tensors: list[str], data: Dataset, batches: Batches,
                   threads: int) -> dict[str, np.ndarray]:
    """max |x_k| over the calibration data, per channel (last axis) of each tensor."""
    fed = set(data.inputs)
    fetch = [t for t in tensors if t not in fed]
    sess = session(augment(model, tuple(fetch)), threads)
    out: dict[str, np.ndarray] = {}
    for outputs, feed, _ in batches.run(sess, fetch, data, "calibration", drop_short=True, shown="SmoothQuant statistics"):
        values = dict(zip(fetch, outputs))
        values.update({t: feed[t] for t in tensors if t in fed})
        for t in tensors:
            v = np.abs(values[t].reshape(-1, values[t].shape[-1])).max(axis=0)
            out[t] = v if t not in out else np.maximum(out[t], v)
    return out


def smoothing_scales(model: onnx.ModelProto, graph: GraphInfo, absmax: dict[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    scales = {}
    for tensor, layers in smoothable(graph).items():
        w_max = np.max([np.abs(numpy_helper.to_array(inits[la.weight])).max(axis=1 - _input_axis(la)) for la in layers],
                       axis=0)
        s = np.power(np.maximum(absmax[tensor], 1e-12), alpha) / np.power(np.maximum(w_max, 1e-12), 1 - alpha)
        scales[tensor] = np.clip(s, *SCALE_LIMITS).astype(np.float32)
    return scales


def smooth(model: onnx.ModelProto, graph: GraphInfo, scales: dict[str, list[float]] | dict[str, np.ndarray],
           alpha: float) -> tuple[onnx.ModelProto, Smoothing]:
    """A copy of `model` with the given divisors applied: weights scaled, 1/s folded or inserted."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    g = smoothed.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    groups = smoothable(graph)
    folded, inserted = [], []
    for tensor, raw in scales.items():
        s = np.asarray(raw, np.float32)
        layers = groups[tensor]
        names = {la.name for la in layers}
        # New initializers, not edits: exporters share identical constants between nodes (every LayerNorm's
        # zero beta, equal gains), and only this layer's copy may change.
        nodes = {n.name: n for n in g.node}
        for la in layers:
            w = numpy_helper.to_array(inits[la.weight]).astype(np.float32)
            shape = [-1, 1] if _input_axis(la) == 0 else [1, -1]
            g.initializer.append(numpy_helper.from_array(w * s.reshape(shape), f"{la.name}/smoothed_weight"))
            nodes[la.name].input[1] = f"{la.name}/smoothed_weight"
        producer = producers.get(tensor)
        only_layers = all(c.name in names for c in consumers.get(tensor, []))
        if producer is not None and producer.op_type == "LayerNormalization" and only_layers \
                and all(t in inits for t in producer.input[1:3] if t):
            for i, t in enumerate(producer.input[1:3], start=1):
                if t:
                    v = numpy_helper.to_array(inits[t]).astype(np.float32)
                    g.initializer.append(numpy_helper.from_array(v / s, f"{tensor}/smoothed_{i}"))
                    producer.input[i] = f"{tensor}/smoothed_{i}"
            folded.append(tensor)
            continue
        divisor, out = f"{tensor}/smooth_divisor", f"{tensor}/smoothed"
        g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), divisor))
        mul = helper.make_node("Mul", [tensor, divisor], [out], name=f"{tensor}/smooth")
        first = min(list(g.node).index(c) for c in consumers[tensor] if c.name in names)
        g.node.insert(first, mul)
        for c in consumers[tensor]:
            if c.name in names:
                c.input[0] = out
        inserted.append(tensor)
    used = {t for n in g.node for t in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    report = Smoothing(alpha, {t: np.asarray(v, np.float32).tolist() for t, v in scales.items()}, tuple(folded),
                       tuple(inserted))
    return smoothed, report
