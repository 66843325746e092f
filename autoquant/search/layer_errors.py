"""Cheap sensitivity: per layer and per choice the search space allows, the error that choice adds to the
model's output (relative MSE against FP32), estimated on a small fixed subset of the eval data.

Each layer runs alone (a one-node float model whose weight is an input), fed its FP32 input and weights
fake-quantized as the built model quantizes them (static: the activation parameters of the range
algorithm, symmetric weights per tensor or per channel, 8 or 4 bits, the CPU's weight range; dynamic:
the batch's own input range; int4: asymmetric 4-bit weight blocks and, at accuracy level 4, int8 input
blocks), and its output is compared with the FP32 one: NMSE = Σ(y − y_fp)² / Σ y_fp². One pass over the
subset serves every layer and choice without rebuilding anything through onnxruntime's quantizers. How
much of a layer's error reaches the model's output is then measured once per layer and mode (the real
model with only that layer quantized, on the same subset) and scales those options. One model build and
a 16-sample run per layer and mode, where the full table runs the whole eval set per layer. Cached on disk
by model, data, space and quantization settings.

Why not onnxruntime's own tooling: its QDQ debugger (`qdq_loss_debug`) compares whole quantized models
tensor by tensor, one model per plan — exactly the per-choice rebuilds this avoids.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..calibrate.cache import cached_arrays
from ..calibrate.collect import augment
from ..errors import AutoquantError, PlanError
from ..graph.layers import LayerInfo
from ..quantize import modes
from ..quantize.modes import EmulationContext, decode
from ..quantize.plan import FLOAT, QuantPlan
from ..runtime import Batches, session
from ..workspace import Workspace
from .space import SearchSpace

LAYER_ERRORS_VERSION = 4
# Every sample contributes a whole activation tensor, so few samples pin the figures down: on
# EfficientNet-Lite1 the table from 16 samples ranks its entries as the one from 64 does (Spearman 0.997,
# same least-error option for all 65 layers, gains within 9 % at the median) in 38 s instead of 122 s.
DEFAULT_SAMPLES = 16
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerErrors:
    """`table[layer, option]`: estimated relative output error of that option alone (NaN: not offered)."""

    layers: tuple[str, ...]
    options: tuple[str, ...]  # every option of the space, encoded as in SearchSpace
    table: np.ndarray  # [layers, options]; NaN where the space does not offer the option to the layer

    def of(self, layer: str, option: str) -> float:
        return float(self.table[self.layers.index(layer), self.options.index(option)])

    def best(self, layer: str, allowed: tuple[str, ...]) -> str:
        """The quantized option with the least error among `allowed`."""
        quantized = [o for o in allowed if o != "float"]
        return min(quantized, key=lambda o: (self.of(layer, o), quantized.index(o)))


def _single_layer(model: onnx.ModelProto, layer: LayerInfo) -> onnx.ModelProto:
    """The layer alone, its weight an input (fed fake-quantized), bias and attributes as in the model."""
    node = next(n for n in model.graph.node if n.name == layer.name)
    inits = {i.name: i for i in model.graph.initializer}
    rest = [numpy_helper.to_array(inits[t]) for t in node.input[2:] if t]
    inputs = ["x", "w"] + [f"const{i}" for i in range(len(rest))]
    copy = helper.make_node(node.op_type, inputs, ["y"], name=node.name)
    copy.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [copy], "layer",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(layer.weight_shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, f"const{i}") for i, a in enumerate(rest)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])


def layer_errors(ws: Workspace, space: SearchSpace, samples: int = DEFAULT_SAMPLES, *,
                 propagated: bool = True) -> LayerErrors:  # fmt: skip
    """Per layer and option of the space, cached by model, eval subset, space and quantization settings.
    `propagated` False: each option's error at its layer's own output, not scaled by how much of it reaches
    the model's output (what the table would be without the per-layer gains)."""
    options = tuple(dict.fromkeys(o for layer in space.layers for o in layer.options))
    fixed = ws.evaluator.batches if ws.evaluator.batches.fixed else None
    if fixed is not None:  # whole batches of the one size the model takes
        samples = fixed.size * max(1, round(samples / fixed.size))
    subset = ws.splits.eval.subset(np.arange(min(samples, len(ws.splits.eval))))
    q = ws.exp.quantization
    key = (f"layer-errors-v{LAYER_ERRORS_VERSION}:{ws.model_key}:{subset.sha256()}:{options}:{q}:{ws.weight_range}:"
           f"{[(layer.name, layer.options) for layer in space.layers]}:{'output' if propagated else 'local'}")  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]

    def build():
        local = _measure(ws, space, options, subset)
        return {"table": local * _gains(ws, local, options, {s.name: s.options for s in space.layers}, subset)
                if propagated else local}  # fmt: skip

    arrays = cached_arrays(ws.exp.cache / "layer_errors" / f"{ws.model_key[:16]}-{digest}.npz", key, build)
    return LayerErrors(ws.graph.names, options, arrays["table"])


def _measure(ws: Workspace, space: SearchSpace, options: tuple[str, ...], subset) -> np.ndarray:
    model, graph, q = ws.model, ws.graph, ws.exp.quantization
    layers = graph.layers
    allowed = {layer.name: layer.options for layer in space.layers}
    threads = ws.exp.eval.threads or os.cpu_count() or 1
    wanted = list(dict.fromkeys(t for layer in layers for t in (layer.input, layer.output)))
    fed = {i.name for i in ws.prepared.inputs}
    fetch = [t for t in wanted if t not in fed]
    full = session(augment(model, tuple(fetch)), threads)
    singles = [session(_single_layer(model, layer), threads) for layer in layers]
    inits = {i.name: i for i in model.graph.initializer}
    weights = [numpy_helper.to_array(inits[layer.weight]).astype(np.float32) for layer in layers]
    fq_weights: dict[tuple, np.ndarray] = {}  # per weight emulation: shared by the choices that have it
    for i, layer in enumerate(layers):
        for c in (decode(o) for o in allowed[layer.name] if o != "float"):
            key = modes.get(c.mode).weight_key(c)
            if (i, key) not in fq_weights:
                fq_weights[i, key] = modes.get(c.mode).emulate_weight(weights[i], layer, c, ws.weight_range)
    emulation = EmulationContext(ws.range_params, q.activation_type, ws.weight_range)
    num = np.zeros((len(layers), len(options)))
    den = np.zeros(len(layers))
    batches = (ws.evaluator.batches if ws.evaluator.batches.fixed else Batches(16)).within(full, fetch, subset, "eval")
    for outputs, batch, _ in batches.run(full, fetch, subset, "eval"):
        values = dict(zip(fetch, outputs))
        values.update({k: v for k, v in batch.items() if k in fed})
        for i, layer in enumerate(layers):
            x, y_fp = values[layer.input], values[layer.output]
            den[i] += float(np.square(y_fp, dtype=np.float64).sum())
            fq_inputs: dict[tuple, np.ndarray] = {}  # per input treatment: shared by the options that have it
            for j, o in enumerate(options):
                if o not in allowed[layer.name] or o == "float":
                    continue
                c = decode(o)
                mode = modes.get(c.mode)
                key = mode.input_key(c)
                if key not in fq_inputs:
                    try:
                        fq_inputs[key] = mode.emulate_input(x, layer, c, emulation)
                    except PlanError:  # a tensor that cannot be quantized (mask constants): the worst option
                        num[i, j] = np.inf
                        continue
                (y,) = singles[i].run(None, {"x": fq_inputs[key], "w": fq_weights[i, mode.weight_key(c)]})
                num[i, j] += float(np.square(y - y_fp, dtype=np.float64).sum())
    table = num / np.maximum(den, 1e-30)[:, None]
    for i, layer in enumerate(layers):
        for j, o in enumerate(options):
            if o not in allowed[layer.name]:
                table[i, j] = np.nan
    return table


def _gains(ws: Workspace, local: np.ndarray, options: tuple[str, ...], allowed, subset) -> np.ndarray:
    """How much of a layer's own error reaches the model's output: for each layer and mode, the real model
    with only that layer quantized (the mode's least-error option) is run on the subset once, and the ratio
    of its output NMSE against FP32 to the layer's local error scales the options of that mode. A local
    error alone ranks a classifier's last Gemm as harmless; its error reaches the logits undiminished. Per
    mode, because a static layer also quantizes the glue around it, which the others do not."""
    ev = ws.evaluator
    reference = ws.reference.outputs[: len(subset)]
    power = float(np.square(reference, dtype=np.float64).mean()) or 1.0
    gains = np.ones_like(local)
    modes = [decode(o).mode if o != "float" else "" for o in options]
    for i, layer in enumerate(ws.graph.layers):
        for mode in sorted({m for o, m in zip(options, modes) if m and o in allowed[layer.name]}):
            row = {o: local[i, j] for j, o in enumerate(options) if modes[j] == mode and o in allowed[layer.name]}
            finite = {o: e for o, e in row.items() if np.isfinite(e) and e > 0}
            if not finite:
                continue
            option = min(finite, key=finite.get)
            plan = QuantPlan(tuple((n, decode(option) if n == layer.name else FLOAT) for n in ws.graph.names))
            try:
                out = ev.outputs(ev.session(ws.build(plan)), subset)
            except AutoquantError as exc:  # a plan that cannot be built or run alone: leave the local figure
                log.warning("per-layer error of %s: %s", layer.name, exc)
                continue
            gain = float(np.square(out - reference, dtype=np.float64).mean()) / power / finite[option]
            gains[i, [j for j, m in enumerate(modes) if m == mode]] = gain
    return gains
