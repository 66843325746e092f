"""Weights are kept in [-64, 64] where this CPU's uint8 x int8 kernels saturate, and only there; the
exported model then computes what its QDQ simulation says, on this machine."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from autoquant import LayerChoice, QuantPlan, Record, Workspace, quantize
from autoquant.api import apply_record
from autoquant.cli import main
from autoquant.errors import ConfigError
from autoquant.quantize.weight_range import (
    REDUCED_MAX,
    TARGET_ENV,
    resolve,
    saturating_layers,
    uint8_kernels_saturate,
)


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.square(a - b).mean() / np.square(b).mean())


def int8_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]


def ws_with(ws: Workspace, weight_range: str) -> Workspace:
    exp = ws.exp
    return Workspace(dataclasses.replace(exp, quantization=dataclasses.replace(exp.quantization, weight_range=weight_range)))


def outputs(data: bytes, x: np.ndarray, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_the_probe_predicts_whether_full_range_weights_compute_wrong_sums_here(resnet20_ws):
    """The probe is one QLinearConv; the real consequence is a whole network drifting from its simulation.
    Both must agree on this machine, whichever kind it is (saturating AVX2 or VNNI)."""
    plan = QuantPlan.uniform(resnet20_ws.graph.names, LayerChoice.of())
    data = ws_with(resnet20_ws, "full").build(plan).SerializeToString()
    x = resnet20_ws.splits.eval.x[:128]
    simulated = outputs(data, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    fp32 = outputs(resnet20_ws.model.SerializeToString(), x)
    drift, quant_error = nmse(outputs(data, x), simulated), nmse(simulated, fp32)
    # measured: 3.9e-2 vs 1.5e-3 on an AVX2 EPYC (saturating); ~1e-4 vs 1.4e-3 on a VNNI Xeon
    assert (drift > quant_error) == uint8_kernels_saturate(), (drift, quant_error)


def test_reduced_range_weights_fit_seven_bits_and_run_as_simulated(resnet20_ws):
    plan = QuantPlan.uniform(resnet20_ws.graph.names, LayerChoice.of())
    full, reduced = ws_with(resnet20_ws, "full").build(plan), ws_with(resnet20_ws, "reduced").build(plan)
    assert max(int(np.abs(w.astype(int)).max()) for w in int8_weights(full)) == 127
    assert max(int(np.abs(w.astype(int)).max()) for w in int8_weights(reduced)) == REDUCED_MAX
    assert saturating_layers(full) and saturating_layers(reduced) == []
    x = resnet20_ws.splits.eval.x[:128]
    data = reduced.SerializeToString()
    simulated = outputs(data, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    fp32 = outputs(resnet20_ws.model.SerializeToString(), x)
    # integer kernels round once to the output grid: about one step per tensor, well under the quantization error
    assert nmse(outputs(data, x), simulated) < 0.25 * nmse(simulated, fp32)


def test_auto_resolves_from_the_probe_or_the_target_and_int8_activations_never_reduce(monkeypatch):
    monkeypatch.delenv(TARGET_ENV, raising=False)
    assert resolve("auto", "uint8") == ("reduced" if uint8_kernels_saturate() else "full")
    assert resolve("auto", "int8") == "full"
    assert (resolve("full", "uint8"), resolve("reduced", "int8")) == ("full", "reduced")
    for target in ("full", "reduced"):  # building for the other kind of CPU than this one
        monkeypatch.setenv(TARGET_ENV, target)
        assert (resolve("auto", "uint8"), resolve("auto", "int8"), resolve("full", "uint8")) == (target, "full", "full")
    monkeypatch.setenv(TARGET_ENV, "7bit")
    with pytest.raises(ConfigError, match="AUTOQUANT_WEIGHT_RANGE='7bit' is unknown"):
        resolve("auto", "uint8")


def test_record_carries_the_weight_range_and_apply_rebuilds_it(resnet20_ws, tmp_path):
    ws = ws_with(resnet20_ws, "reduced")
    plan = QuantPlan.uniform(ws.graph.names, LayerChoice.of())
    r = quantize(ws, plan, tmp_path / "q")
    record = Record.load(r.record_path)
    assert record.weight_range == "reduced"
    assert max(max(abs(o) for o in lr.weight.offset_w) for lr in record.layers) == 0  # symmetric
    out = apply_record(ws.prepared.source, r.record_path, tmp_path / "applied.onnx", ws.exp.cache)
    assert out.read_bytes() == r.model_path.read_bytes()


def test_inspect_warns_about_full_range_weights_on_a_saturating_cpu(resnet20_ws, tmp_path, capsys):
    path = tmp_path / "full.onnx"
    onnx.save(ws_with(resnet20_ws, "full").build(QuantPlan.uniform(resnet20_ws.graph.names, LayerChoice.of())), str(path))
    assert main(["inspect", str(path)]) == 0
    err = capsys.readouterr().err
    assert ("kernels saturate (no VNNI) and 20 layer(s)" in err) == uint8_kernels_saturate()


def test_bad_weight_range_is_one_line(tmp_path, capsys):
    from conftest import write_experiment

    exp = write_experiment(tmp_path / "e.yaml", name="e", model={"builtin": "digits_cnn"},
                           quantization={"weight_range": "7bit"})
    assert main(["layers", str(exp)]) == 2
    assert capsys.readouterr().err.strip() == ("autoquant: error: quantization.weight_range '7bit' is unknown: use "
                                               "auto, full or reduced")


@pytest.mark.parametrize("bad", ["7bit", None])
def test_record_with_a_bad_weight_range_is_refused(resnet20_ws, tmp_path, capsys, bad):
    import json

    ws = ws_with(resnet20_ws, "reduced")
    r = quantize(ws, QuantPlan.uniform(ws.graph.names, LayerChoice.of()), tmp_path / "q")
    raw = json.loads(r.record_path.read_text())
    raw["weight_range"] = bad
    r.record_path.write_text(json.dumps(raw))
    assert main(["apply", str(ws.prepared.source), str(r.record_path), "--out", str(tmp_path / "x.onnx"),
                 "--cache-dir", str(ws.exp.cache)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"weight_range {bad!r} must be full or reduced" in err[0]
