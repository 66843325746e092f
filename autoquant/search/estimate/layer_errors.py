"""Cheap sensitivity: per layer and per choice the search space allows, the error that choice adds to the
model's output (relative MSE against FP32), estimated on a small fixed subset of the eval data.

Each layer runs alone (a one-node float model whose weight is an input), fed its FP32 input and weights
as the built model's kernel sees them — each mode emulates itself (quantize/modes/: for static, the activation
parameters of the range algorithm and symmetric weights per tensor or per channel in the CPU's weight range;
for dynamic, the batch's own input range; for int4, asymmetric 4-bit weight blocks and int8 input blocks) —
and its output is compared with the FP32 one: NMSE = Σ(y − y_fp)² / Σ y_fp². One pass over the
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
import time
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...calibrate.cache import cached_arrays
from ...calibrate.collect import augment
from ...errors import AutoquantError, PlanError
from ...graph.layers import LayerInfo
from ...progress import progress
from ...quantize import modes
from ...quantize.modes import EmulationContext
from ...quantize.plan import FLOAT, LayerChoice, QuantPlan
from ...runtime import Batches, session
from ...workspace import Workspace
from ..space import SearchSpace

LAYER_ERRORS_VERSION = 6
# Every sample contributes a whole activation tensor, so few samples pin the figures down (benchmarks/
# layer_errors.py compares tables from 16 and 64 samples).
DEFAULT_SAMPLES = 16
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerErrors:
    """`table[layer, choice]`: estimated relative output error of that choice alone (NaN: not offered)."""

    layers: tuple[str, ...]
    choices: tuple[LayerChoice, ...]  # every quantized choice of the space
    table: np.ndarray  # [layers, choices]; NaN where the space does not offer the choice to the layer

    def of(self, layer: str, choice: LayerChoice) -> float:
        """The choice's error at `layer` (0 for float)."""
        if not choice.quantize:
            return 0.0
        return float(self.table[self.layers.index(layer), self.choices.index(choice)])

    def best(self, layer: str, allowed: tuple[LayerChoice, ...]) -> LayerChoice:
        """The quantized choice with the least error among `allowed`."""
        quantized = [c for c in allowed if c.quantize]
        return min(quantized, key=lambda c: (self.of(layer, c), quantized.index(c)))


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
    )
    return helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])


def _subset(ws: Workspace, samples: int):
    fixed = ws.evaluator.batches if ws.evaluator.batches.fixed else None
    if fixed is not None:  # whole batches of the one size the model takes
        samples = fixed.size * max(1, round(samples / fixed.size))
    return ws.splits.eval.subset(np.arange(min(samples, len(ws.splits.eval))))


def layer_errors(ws: Workspace, space: SearchSpace, samples: int = DEFAULT_SAMPLES, *,
                 propagated: bool = True, deadline: float | None = None) -> LayerErrors:
    """Per layer and choice of the space, cached by model, eval subset, space and quantization settings.
    `propagated` False: each choice's error at its layer's own output, not scaled by how much of it reaches
    the model's output (what the table would be without the per-layer gains). Deferred choices (Mode.deferred:
    adaptive rounding, whose per-layer fit is costly) are left unpriced (NaN) here: `with_deferred` prices them for
    the layers a study names. `deadline` (time.perf_counter): the per-layer gains measured by then, the others' the
    median of their mode's (search.timeout_minutes covers the whole study); such a table is not cached."""
    choices = tuple(dict.fromkeys(c for layer in space.layers for c in layer.options if c.quantize))
    subset = _subset(ws, samples)
    q = ws.exp.quantization
    encoded = [modes.encode(c) for c in choices]  # the cache key: stable across autoquant versions
    # The calibration data sets the activation ranges and the recovery the table emulates
    key = (f"layer-errors-v{LAYER_ERRORS_VERSION}:{ws.model_key}:{subset.sha256()}:{ws.splits.calibration.sha256()}:"
           f"{tuple(encoded)}:{q}:{ws.weight_range}:{ws.recovery.version}:"
           f"{[(layer.name, tuple(layer.values)) for layer in space.layers]}:{'output' if propagated else 'local'}")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    offered = {layer.name: {c for c in layer.options if c.quantize and not modes.get(c.mode).deferred(c)}
               for layer in space.layers}

    def build():
        if not propagated:
            return {"table": _measure(ws, offered, choices, subset)}
        local = layer_errors(ws, space, samples, propagated=False).table  # cached: the ladder may have asked first
        gains, measured = _gains(ws, local, choices, subset, deadline)
        return {"table": local * gains, "measured": measured}

    arrays = cached_arrays(ws.exp.cache / "layer_errors" / f"{ws.model_key[:16]}-{digest}.npz", key, build,
                           keep=lambda arrays: "measured" not in arrays or bool(arrays["measured"].all()))
    return LayerErrors(ws.graph.names, choices, arrays["table"])


def with_deferred(ws: Workspace, local: LayerErrors, output: LayerErrors, wanted: list[tuple[str, LayerChoice]],
                  samples: int = DEFAULT_SAMPLES) -> tuple[LayerErrors, LayerErrors]:
    """The local and the output tables with the deferred choices `wanted` ((layer, choice) pairs) priced: each choice's
    local error emulated on its layer alone (one pass over the table's eval subset that fetches only these layers'
    tensors; the choice's per-layer data made now, or read from its cache), its output error scaled by the gain its
    layer's other choices of the same mode have in `output`. Only the named layers' data is made."""
    names = {n for n, _ in wanted}
    offered = {layer.name: {c for n, c in wanted if n == layer.name} for layer in ws.graph.layers if layer.name in names}
    measured = _measure(ws, offered, local.choices, _subset(ws, samples))
    local_table, output_table = local.table.copy(), output.table.copy()
    for name, choice in wanted:
        i, j = local.layers.index(name), local.choices.index(choice)
        same_mode = [k for k, c in enumerate(local.choices) if c.mode == choice.mode and k != j
                     and np.isfinite(local.table[i, k]) and local.table[i, k] > 0 and np.isfinite(output.table[i, k])]
        gain = float(np.median([output.table[i, k] / local.table[i, k] for k in same_mode])) if same_mode else 1.0
        local_table[i, j] = measured[i, j]
        output_table[i, j] = measured[i, j] * gain
    return replace(local, table=local_table), replace(output, table=output_table)


def _measure(ws: Workspace, offered: dict[str, set[LayerChoice]], choices: tuple[LayerChoice, ...], subset) -> np.ndarray:
    """The local NMSE of each layer's `offered` choices ([layers, choices]; NaN where not offered); only the layers
    offered something are run."""
    model, q = ws.model, ws.exp.quantization
    index = {layer.name: i for i, layer in enumerate(ws.graph.layers)}
    layers = [layer for layer in ws.graph.layers if offered.get(layer.name)]
    table = np.full((len(ws.graph.layers), len(choices)), np.nan)
    if not layers:
        return table
    threads = ws.exp.eval.threads or os.cpu_count() or 1
    wanted = list(dict.fromkeys(t for layer in layers for t in (layer.input, layer.output)))
    fed = {i.name for i in ws.prepared.inputs}
    fetch = [t for t in wanted if t not in fed]
    full = session(augment(model, tuple(fetch)), threads)
    singles = [session(_single_layer(model, layer), threads) for layer in layers]
    inits = {i.name: i for i in model.graph.initializer}
    weights = [numpy_helper.to_array(inits[layer.weight]).astype(np.float32) for layer in layers]
    emulation = EmulationContext(ws.range_params, q.activation_type, ws.weight_range, ws.recovery)
    ws.recovery.prepare([(layer, c) for layer in layers for c in choices if c in offered[layer.name]])
    fq_weights: dict[tuple, np.ndarray] = {}  # per weight emulation: shared by the choices that have it
    for i, layer in enumerate(layers):
        for c in (c for c in choices if c in offered[layer.name]):
            key = modes.get(c.mode).weight_key(c)
            if (i, key) not in fq_weights:
                fq_weights[i, key] = modes.get(c.mode).emulate_weight(weights[i], layer, c, emulation)
    num = np.zeros((len(layers), len(choices)))
    den = np.zeros(len(layers))
    batches = (ws.evaluator.batches if ws.evaluator.batches.fixed else Batches(16)).within(full, fetch, subset, "eval")
    for outputs, batch, _ in batches.run(full, fetch, subset, "eval", shown="per-layer errors"):
        values = dict(zip(fetch, outputs))
        values.update({k: v for k, v in batch.items() if k in fed})
        for i, layer in enumerate(layers):
            x, y_fp = values[layer.input], values[layer.output]
            den[i] += float(np.square(y_fp, dtype=np.float64).sum())
            fq_inputs: dict[tuple, np.ndarray] = {}  # per input emulation: shared by the choices that have it
            runs: dict[tuple, np.ndarray] = {}  # per (input, weight) emulation: choices differing in output only share it
            for j, c in enumerate(choices):
                if c not in offered[layer.name]:
                    continue
                mode = modes.get(c.mode)
                key = mode.input_key(c)
                if key not in fq_inputs:
                    try:
                        fq_inputs[key] = mode.emulate_input(x, layer, c, emulation)
                    except PlanError:  # a tensor that cannot be quantized (mask constants): the worst option
                        num[i, j] = np.inf
                        continue
                run = (key, mode.weight_key(c))
                if run not in runs:
                    (runs[run],) = singles[i].run(None, {"x": fq_inputs[key], "w": fq_weights[i, run[1]]})
                y = mode.emulate_output(runs[run], layer, c, emulation)
                num[i, j] += float(np.square(y - y_fp, dtype=np.float64).sum())
    for i, layer in enumerate(layers):
        for j, c in enumerate(choices):
            if c in offered[layer.name]:
                table[index[layer.name], j] = num[i, j] / max(den[i], 1e-30)
    return table


def _gains(ws: Workspace, local: np.ndarray, choices: tuple[LayerChoice, ...], subset,
           deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """How much of a layer's own error reaches the model's output: for each layer and mode, the real model
    with only that layer quantized (the mode's least-error choice) is run on the subset once, and the ratio
    of its output NMSE against FP32 to the layer's local error scales the choices of that mode. A local
    error alone ranks a classifier's last Gemm as harmless; its error reaches the logits undiminished. Per
    mode, because a static layer also quantizes the glue around it, which the others do not. Past `deadline`, the
    layers not measured yet take the median gain of their mode's measured ones (1 where none is). Returns the gains
    and, per layer, whether they were measured."""
    ev = ws.evaluator
    reference = ws.reference.outputs[: len(subset)]
    power = float(np.square(reference, dtype=np.float64).mean()) or 1.0
    gains = np.ones_like(local)
    measured = np.zeros(len(ws.graph.layers), bool)
    for i, layer in enumerate(progress(ws.graph.layers, "per-layer error gains", unit="layer")):
        if deadline is not None and time.perf_counter() > deadline:
            break
        measured[i] = True
        for mode in sorted({c.mode for c in choices}):
            finite = {j: local[i, j] for j, c in enumerate(choices)
                      if c.mode == mode and np.isfinite(local[i, j]) and local[i, j] > 0}
            if not finite:
                continue
            best = min(finite, key=finite.get)
            plan = QuantPlan(tuple((n, choices[best] if n == layer.name else FLOAT) for n in ws.graph.names))
            try:
                out = ev.outputs(ev.session(ws.build(plan)), subset)
            except AutoquantError as exc:  # a plan that cannot be built or run alone: leave the local figure
                log.warning("per-layer error of %s: %s", layer.name, exc)
                continue
            gain = float(np.square(out - reference, dtype=np.float64).mean()) / power / finite[best]
            gains[i, [j for j, c in enumerate(choices) if c.mode == mode]] = gain
    if not measured.all():
        log.warning("the time budget ended the per-layer gains after %d of %d layers: the others take their mode's "
                    "median", measured.sum(), len(measured))
        for mode in {c.mode for c in choices}:
            cols = [j for j, c in enumerate(choices) if c.mode == mode]
            seen = gains[measured][:, cols[0]] if measured.any() else np.array([])
            gains[np.ix_(~measured, cols)] = float(np.median(seen)) if seen.size else 1.0
    return gains, measured
