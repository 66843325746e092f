"""Per-layer latency: what each layer costs, in milliseconds of the default onnxruntime session, as INT8 in
each mode the space offers and as a float layer between INT8 ones — measured once per study by profiling a
few whole models, so the search can price a plan's latency without timing it.

Bitops price a float layer by its FLOPs alone. On a CPU the float layer also pays for its surroundings:
the DequantizeLinear in front of it, a QuantizeLinear behind it and the layout changes between onnxruntime's
NHWC integer kernels and its NCHWc float ones — on depthwise networks often more than the float
convolution itself, most for depthwise layers whose FLOPs are few and whose activations are large. The
table catches that: per layer, the time of every kernel of the optimized graph that belongs to it.

How: onnxruntime's profiler (`SessionOptions.enable_profiling`) times each node of the graph it runs;
nodes are traced back to layers (by the names onnxruntime derives from ours, else by the tensors they
read). Profiled: one plan per mode with every layer that may take it in it, and two plans that alternate
float and INT8 layers so that each layer is seen once as a float layer between INT8 neighbours; a float
layer's time is split into its own kernels and the transitions before and after them. A plan's latency
is then predicted as the sum of its layers' kernels plus, for each float layer, the input-side transition
when the layer it reads is INT8 and the output-side one when a layer reading it is INT8: a run of float
layers pays one transition in and one out. The sum leaves out what no layer owns (the model input's
quantization, reshapes), so it ranks plans; ratios to FP32 are always measured.

Why our own: onnxruntime's profiler gives node times but knows nothing of layers or plans; the attribution
and the additive model are the part it lacks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ...calibrate.cache import cached_arrays
from ...machine import cpu_model
from ...progress import progress
from ...quantize import modes
from ...quantize.plan import FLOAT, LayerChoice, QuantPlan
from ...runtime import session_options
from ...workspace import Workspace
from ..space import SearchSpace

LATENCY_TABLE_VERSION = 2
# columns: a float layer's own kernels, its input-side and output-side transitions; each mode's kernels
FLOAT_COLUMNS = ("float", "float_in", "float_out")


def columns() -> tuple[str, ...]:
    """The table's columns: a float layer's kernel and its transitions in and out, then one per registered mode."""
    return (*FLOAT_COLUMNS, *modes.names())
# what a float layer between INT8 ones adds around its own kernel
TRANSITION_OPS = {"DequantizeLinear", "QuantizeLinear", "Transpose", "ReorderInput", "ReorderOutput"}
RUNS = 3  # profiled runs per model after one warm-up; the median per node
# onnxruntime names the nodes it creates after the node or tensor they replace, plus one of these
SUFFIXES = ("_nchwc", "_QuantizeLinear", "_DequantizeLinear", "/float_input")


@dataclass(frozen=True)
class LatencyTable:
    """`ms[layer, column]`: milliseconds per batch of eval.latency_batch_size (NaN: not measured, the space
    does not offer it). A float layer pays its input-side transition when the layer it reads from is INT8,
    its output-side one when a layer reading it is INT8."""

    layers: tuple[str, ...]
    ms: np.ndarray  # [layers, columns()]
    producer: tuple[int, ...]  # per layer, the layer its input comes from (-1: a model input)
    consumers: tuple[tuple[int, ...], ...]

    @classmethod
    def of_model(cls, ws: Workspace, ms: np.ndarray) -> LatencyTable:
        layers = ws.graph.names
        index = {n: i for i, n in enumerate(layers)}
        layer_of, _ = _tracer(ws.model, set(layers))
        producer = tuple(index.get(layer_of(layer.input), -1) for layer in ws.graph.layers)
        consumers = tuple(tuple(j for j, p in enumerate(producer) if p == i) for i in range(len(layers)))
        return cls(layers, ms, producer, consumers)

    def share(self, layer: str, choice: LayerChoice, fallback: float) -> float:
        """The layer's own kernels in that choice (float: without its transitions) as a share of the
        all-float model's milliseconds; `fallback` where the table has no figure (a kind not profiled)."""
        row = self.ms[self.layers.index(layer)]
        value = row[0] if not choice.quantize else row[columns().index(choice.mode)]
        return float(value) / self.all_float_ms if np.isfinite(value) and self.all_float_ms > 0 else fallback

    def transition_shares(self, layer: str) -> tuple[float, float]:
        """(input side, output side) a float layer pays next to INT8 ones, as shares of all-float."""
        row = self.ms[self.layers.index(layer)]
        return float(row[1]) / self.all_float_ms, float(row[2]) / self.all_float_ms

    @functools.cached_property
    def all_float_ms(self) -> float:
        return float(np.nansum(self.ms[:, 0]))

    def predict(self, plan: QuantPlan) -> float:
        by_name = dict(plan.choices)
        choices = [by_name[n] for n in self.layers]
        total = 0.0
        for i, c in enumerate(choices):
            row = self.ms[i]
            if c.quantize:
                total += row[columns().index(c.mode)]
                continue
            total += row[0]
            if self.producer[i] >= 0 and choices[self.producer[i]].quantize:
                total += row[1]
            if any(choices[j].quantize for j in self.consumers[i]):
                total += row[2]
        return float(total)


def _tracer(model: onnx.ModelProto, layers: set[str]):
    """tensor → the layer it comes from, through the activations and other glue that follow a layer (first
    non-constant input of each), or None (a model input)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}

    def layer_of(tensor: str) -> str | None:
        for _ in range(16):
            node = producer.get(tensor)
            if node is None:
                return None
            if node.name in layers:
                return node.name
            data = [t for t in node.input if t and t not in inits]
            if not data:
                return None
            tensor = data[0]
        return None

    return layer_of, producer


def _owners(optimized: onnx.ModelProto, source: onnx.ModelProto, layers: tuple[str, ...]) -> dict[str, str]:
    """Node of the optimized graph → the layer it belongs to. A node onnxruntime made from a layer carries its
    name; one named after a tensor belongs to the layer that tensor comes from; a node named after neither
    (a Transpose, a layout reorder) belongs to the layer of what it reads."""
    names = set(layers)
    layer_of, producer = _tracer(source, names)

    def by_name(name: str) -> str | None:
        if name in names:
            return name
        for cut in ("_token_", *SUFFIXES):
            if cut in name:
                stem = name[: name.index(cut)]
                if stem in names:
                    return stem
                if stem in producer:
                    return layer_of(stem)
        return layer_of(name) if name in producer else None

    owners: dict[str, str] = {}
    opt_producer = {o: n for n in optimized.graph.node for o in n.output}
    for node in optimized.graph.node:  # topological: what a node reads is attributed before it
        owner = next((o for o in map(by_name, [node.name, *node.output]) if o), None)
        if owner is None:
            owner = next((owners[opt_producer[t].name] for t in node.input
                          if t in opt_producer and opt_producer[t].name in owners), None)
        if owner is not None:
            owners[node.name] = owner
    return owners


def _profile(ws: Workspace, model: onnx.ModelProto, feed: dict[str, np.ndarray], workdir: Path) -> dict[str, np.ndarray]:
    """Per layer, median kernel milliseconds in a default session: [before, own, after] its own first kernel,
    where before/after count only transition nodes (nodes of no layer are dropped)."""
    opts = session_options(ws.exp.eval.threads or os.cpu_count() or 1)
    opts.optimized_model_filepath = str(workdir / "optimized.onnx")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / "profile")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for _ in range(RUNS + 1):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1000.0)
    optimized = onnx.load(str(workdir / "optimized.onnx"))
    owners = _owners(optimized, model, ws.graph.names)
    out: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
    seen_own: set[str] = set()
    for node in optimized.graph.node:
        layer = owners.get(node.name)
        if layer is None or node.name not in per_node:
            continue
        transition = node.op_type in TRANSITION_OPS
        part = 1 if not transition else (2 if layer in seen_own else 0)
        if not transition:
            seen_own.add(layer)
        out[layer][part] += float(np.median(per_node[node.name][-RUNS:]))
    return out


def _plans(ws: Workspace, space: SearchSpace) -> list[tuple[str, QuantPlan]]:
    """(kind, plan) to profile: per mode, the layers that may take it in it (the others static INT8);
    float: two plans alternating float and static INT8 along the graph."""
    plans = [(mode, plan) for mode in modes.names() if (plan := space.mode_plan(mode)) is not None]
    for parity in (0, 1):
        plans.append(("float", QuantPlan(tuple((s.name, FLOAT if i % 2 == parity else s.usual)
                                               for i, s in enumerate(space.layers)))))
    return plans


def latency_table(ws: Workspace, space: SearchSpace) -> LatencyTable:
    """Measured once per model, space, quantization settings, CPU and thread count; cached on disk."""
    plans = _plans(ws, space)
    cfg = ws.exp.eval
    key = (f"latency-table-v{LATENCY_TABLE_VERSION}:{ws.model_key}:{[(k, p.key()) for k, p in plans]}:"
           f"{ws.exp.quantization}:{ws.weight_range}:{cfg.latency_batch_size}:{cfg.threads}:{os.cpu_count()}:"
           f"{ort.__version__}:{cpu_model()}")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]

    def build():
        feed = ws.evaluator.latency_feed()
        ms = np.full((len(ws.graph.names), len(columns())), np.nan)
        with tempfile.TemporaryDirectory(prefix="autoquant-profile-") as tmp:
            for kind, plan in progress(plans, "per-layer latency", unit="model"):
                times = _profile(ws, ws.build(plan), feed, Path(tmp))
                for i, (name, choice) in enumerate(plan.choices):
                    if (choice.mode if choice.quantize else "float") != kind or name not in times:
                        continue
                    if kind == "float":
                        ms[i, :3] = times[name][[1, 0, 2]]
                    else:
                        ms[i, columns().index(kind)] = times[name].sum()
        return {"ms": ms}

    arrays = cached_arrays(ws.exp.cache / "latency_table" / f"{ws.model_key[:16]}-{digest}.npz", key, build)
    return LatencyTable.of_model(ws, arrays["ms"])
