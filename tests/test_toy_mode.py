"""A mode is one module: a toy mode written in a temporary file — its choice type with a field of its own, its Mode —
and registered there works end to end without another file of autoquant changing: a plan file names it, a search
space offers it, the error table emulates it, the builder builds it, onnxruntime runs the kernel it says, the record
holds it, `apply` rebuilds the same bytes, and the table of modes lists it."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest
from conftest import write_experiment

from autoquant import ConfigError, QuantPlan, Workspace, apply_record, load_experiment, quantize
from autoquant.measure import Meter
from autoquant.quantize import registry
from autoquant.record import Record
from autoquant.search import SearchSpace, layer_errors

TOY = textwrap.dedent('''
    """Weight-only INT8 with a clipped grid: each output channel's weights on a symmetric grid whose range is `clip`
    × their largest magnitude, dequantized for a float kernel (a DequantizeLinear the runtime keeps)."""

    from __future__ import annotations

    from dataclasses import dataclass
    from typing import ClassVar

    import numpy as np
    from onnx import helper, numpy_helper

    from autoquant.errors import ConfigError, PlanError
    from autoquant.quantize.modes import Mode, Recognized, RecordedWeights
    from autoquant.quantize.plan import LayerChoice
    from autoquant.quantize.registry import register


    @dataclass(frozen=True)
    class ToyChoice(LayerChoice):
        mode: ClassVar[str] = "toy"
        clip: float = 1.0

        def __post_init__(self):
            if not 0 < self.clip <= 1:
                raise ConfigError(f"clip {self.clip} must be in (0, 1]")


    def grid(w, axis, clip):
        others = tuple(a for a in range(w.ndim) if a != axis)
        scale = (clip * np.abs(w).max(axis=others, keepdims=True) / 127).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1))
        return scale, np.clip(np.round(w / scale), -127, 127).astype(np.int8)


    class Toy(Mode):
        choice = ToyChoice
        scope = "every Conv, Gemm and MatMul with constant weights"
        built_by = "the toy's own weight-only Q/DQ"
        runs_as = "a float kernel on dequantized weights"
        stores = "8 bit"
        order = 90

        def applies_to(self, layer):
            return True

        def cost_bits(self, choice):
            return 32, 8

        def runs(self, choice):
            return "dequantized"

        def choices(self, allowed):
            return [ToyChoice(c) for c in allowed["clip"]]

        def encode(self, choice):
            return f"toy:{choice.clip:g}"

        def decode(self, value):
            head, *rest = value.split(":")
            return ToyChoice(float(rest[0])) if head == "toy" and rest else None

        def emulate_weight(self, w, layer, choice, ctx):
            scale, q = grid(w, layer.channel_axis, choice.clip)
            return q.astype(np.float32) * scale

        def emulate_input(self, x, layer, choice, ctx):
            return x

        def build(self, model, plan, ctx):
            inits = {i.name: i for i in model.graph.initializer}
            nodes = list(model.graph.node)
            layers = {layer.name: layer for layer in ctx.graph.layers}
            for name in plan.in_mode(self.name):
                node, axis = next(n for n in nodes if n.name == name), layers[name].channel_axis
                scale, q = grid(numpy_helper.to_array(inits[node.input[1]]), axis, plan[name].clip)
                model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}/toy_w"),
                                                numpy_helper.from_array(scale.reshape(-1), f"{name}/toy_scale"),
                                                numpy_helper.from_array(np.zeros(scale.size, np.int8), f"{name}/toy_zero")])
                dq = helper.make_node("DequantizeLinear", [f"{name}/toy_w", f"{name}/toy_scale", f"{name}/toy_zero"],
                                      [f"{name}/toy_dq_out"], name=f"{name}/toy_dq", axis=axis)
                model.graph.node.insert(list(model.graph.node).index(node), dq)
                node.input[1] = dq.output[0]
            return model

        def recorded_weights(self, qmodel, node, choice):
            inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
            dq = next(n for n in qmodel.graph.node if n.output[0] == node.input[1])
            return RecordedWeights(8, "per_channel", inits[dq.input[1]].astype(float).tolist(),
                                   inits[dq.input[2]].astype(int).tolist())

        def from_record(self, bits, granularity, block_size, algorithm, accuracy_level):
            raise PlanError("toy layers are recorded in format 6 only")

        def recognize(self, node, inits, producers):
            dq = producers.get(node.input[1]) if len(node.input) > 1 else None
            if dq is None or not dq.name.endswith("/toy_dq"):
                return None
            return Recognized(node.op_type, dq.input[0], 8, "dequantized", self.name)


    register(Toy())
''')


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_mode.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_mode", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_mode"] = module
    spec.loader.exec_module(module)
    yield module
    registry._MODES.pop("toy", None)
    sys.modules.pop("toy_mode", None)


def test_a_mode_in_a_module_of_its_own_works_end_to_end(toy, digits_yaml, tmp_path, capsys):
    ws = Workspace(load_experiment(digits_yaml))
    names = ws.graph.names
    # a plan file: the toy's own field, validated by its own choice type
    plan = QuantPlan.from_spec({"default": {"mode": "toy", "clip": 0.9}, "layers": {names[0]: {"quantize": False}}}, names)
    assert plan[names[1]] == toy.ToyChoice(0.9) and plan[names[1]].label == "toy" and plan[names[1]].runs == "dequantized"
    with pytest.raises(ConfigError, match=r"clip 1\.5 must be in \(0, 1\]"):
        QuantPlan.from_spec({"default": {"mode": "toy", "clip": 1.5}}, names)
    with pytest.raises(ConfigError, match="clip belongs to mode toy"):
        QuantPlan.from_spec({"default": {"clip": 0.5}}, names)  # the default mode has no such field
    # a search space offers it, and the error table emulates it
    space = SearchSpace.from_dict({"choices": {"mode": ["static", "toy"], "clip": [1.0, 0.5]}}, ws.graph)
    assert {"toy:1", "toy:0.5"} <= set(space.layers[1].values)
    errors = layer_errors(ws, space)
    assert np.isfinite(errors.of(names[1], toy.ToyChoice(0.5))) and errors.of(names[1], toy.ToyChoice(0.5)) > 0
    # built, run as it says in a default onnxruntime session (the measurement checks every layer's kernel), recorded
    measured = Meter(ws)(ws.build(plan), plan)
    assert measured.accuracy_drop < 5
    r = quantize(ws, plan, tmp_path / "q")
    record = json.loads(r.record_path.read_text())
    layer = next(la for la in record["layers"] if la["name"] == names[1])
    assert layer["mode"] == "toy" and layer["choice"] == {"clip": 0.9} and layer["data"] is None
    assert Record.load(r.record_path).plan() == plan
    assert {e.name: e.kernel for e in r.executed}[names[1]] in ("Conv", "FusedConv")
    # apply rebuilds the same bytes from the FP32 model and the record alone
    applied = apply_record(ws.prepared.source, r.record_path, tmp_path / "applied.onnx", ws.exp.cache)
    assert applied.read_bytes() == r.model_path.read_bytes()


def test_the_table_of_modes_lists_a_registered_mode(toy, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tables

    row = next(line for line in tables.modes_table().splitlines() if line.startswith("| toy"))
    assert "`clip` (1.0)" in row and "FLOPs × 32 × 8" in row


def test_the_toy_is_gone_after_its_test(digits_yaml):
    assert "toy" not in registry.names()
    _ = write_experiment  # the fixture module is shared with the other tests
