"""A layer the plan keeps float runs float in a default onnxruntime session; a quantized one runs an integer kernel.

Checked on the graph onnxruntime itself optimized (SessionOptions.optimized_model_filepath), on ResNet-20
and on the digits CNN (which has a depthwise conv), for several mixed plans.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autoquant import LayerChoice, QuantPlan
from autoquant.cli import main
from autoquant.evaluate.executed import FLOAT_KERNELS, INTEGER_KERNELS, disagreements, executed_layers
from autoquant.quantize.plan import FLOAT
from autoquant.search.objective import PlanScorer, TrialFailed

BUILD = importlib.import_module("autoquant.quantize.build")  # `autoquant.quantize` is the function re-exported by the package


def plans(names: tuple[str, ...], middle: str) -> dict[str, QuantPlan]:
    def keep_float(pred):
        return QuantPlan(tuple((n, FLOAT if pred(i, n) else LayerChoice.of()) for i, n in enumerate(names)))

    return {
        "first float": keep_float(lambda i, n: i == 0),
        "middle float": keep_float(lambda i, n: n == middle),
        "classifier float": keep_float(lambda i, n: i == len(names) - 1),
        "every other float": keep_float(lambda i, n: i % 2 == 1),
        "every other float, from the first": keep_float(lambda i, n: i % 2 == 0),
    }


def assert_runs_as_planned(model: onnx.ModelProto, plan: QuantPlan) -> None:
    executed = {e.name: e for e in executed_layers(model)}
    assert set(executed) == set(plan.names)
    for name, choice in plan.choices:
        e = executed[name]
        if choice.quantize:
            assert e.integer and e.kernel in INTEGER_KERNELS, (name, e)
        else:
            assert not e.integer and e.float_weights and e.kernel in FLOAT_KERNELS, (name, e)
    assert disagreements(plan.runs(), list(executed.values())) == []


@pytest.mark.parametrize("which", ["first float", "middle float", "classifier float", "every other float",
                                   "every other float, from the first"])
def test_resnet20_mixed_plans_run_as_planned(resnet20_ws, which):
    plan = plans(resnet20_ws.graph.names, "/layer2/layer2.0/conv1/Conv")[which]
    assert_runs_as_planned(resnet20_ws.build(plan), plan)


@pytest.mark.parametrize("which", ["first float", "middle float", "classifier float", "every other float",
                                   "every other float, from the first"])
def test_depthwise_mixed_plans_run_as_planned(digits_ws, which):
    depthwise = next(layer.name for layer in digits_ws.graph.layers if layer.depthwise)
    plan = plans(digits_ws.graph.names, depthwise)[which]
    assert_runs_as_planned(digits_ws.build(plan), plan)


@pytest.fixture
def plain_build(monkeypatch):
    """Builds the graph as QDQQuantizer alone writes it: float layers read the shared per-tensor DequantizeLinear."""
    monkeypatch.setattr(BUILD, "isolate_float_layers", lambda *args: None)


def test_without_the_construction_onnxruntime_requantizes_the_float_layer(resnet20_ws, plain_build):
    """Why the construction exists, and that the check sees the difference: the plain QDQ graph of the same
    plan makes onnxruntime run the "float" conv as QLinearConv (its WeightBiasQuantization pass)."""
    middle = "/layer2/layer2.0/conv1/Conv"
    plan = plans(resnet20_ws.graph.names, middle)["middle float"]
    assert disagreements(plan.runs(), executed_layers(resnet20_ws.build(plan))) == [
        f"{middle}: meant to run float, runs QLinearConv (integer)"
    ]


def test_scorer_fails_a_trial_whose_float_layer_onnxruntime_requantizes(resnet20_ws, plain_build):
    plan = plans(resnet20_ws.graph.names, "/layer2/layer2.0/conv1/Conv")["middle float"]
    scorer = PlanScorer(resnet20_ws)
    with pytest.raises(TrialFailed, match="conv1/Conv: meant to run float, runs QLinearConv"):
        scorer(plan)


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.square(a - b).mean() / np.square(b).mean())


def test_default_session_matches_the_qdq_simulation(resnet20_ws):
    """The optimized session runs integer kernels where the unoptimized one simulates them in float (DQ →
    float op → Q). The kernels round their int32 accumulators once to the same output grid the simulation's
    QuantizeLinear rounds to, so they may differ by about one quantization step per tensor: well under the
    quantization error itself. Bound asserted: output NMSE between the two below a quarter of the
    simulation's NMSE to FP32 (measured: 1.4e-4 vs 1.4e-3), and ≥ 98 % top-1 agreement (measured 98.8 % and
    99.6 % on two draws of 256 eval images: a few samples sit within one rounding step of a tie)."""
    plan = plans(resnet20_ws.graph.names, "/layer2/layer2.0/conv1/Conv")["every other float"]
    data = resnet20_ws.build(plan).SerializeToString()
    x = resnet20_ws.splits.eval.x[:256].astype(np.float32)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    simulated = ort.InferenceSession(data, plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    deployed = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    fp32 = resnet20_ws.evaluator.session(resnet20_ws.model).run(None, {"input": x})[0]
    assert nmse(deployed, simulated) < 0.25 * nmse(simulated, fp32)
    assert (deployed.argmax(1) == simulated.argmax(1)).mean() >= 0.98


def test_float_layer_changes_what_is_costed(resnet20_ws, tmp_path):
    """Record and bitops describe the model that runs: the float conv is costed 32 x 32 and recorded as a Conv."""
    from autoquant import Record, quantize

    plan = plans(resnet20_ws.graph.names, "/layer2/layer2.0/conv1/Conv")["middle float"]
    r = quantize(resnet20_ws, plan, tmp_path)
    layers = {lr.name: lr for lr in Record.load(r.record_path).layers}
    assert (layers["/layer2/layer2.0/conv1/Conv"].quantized, layers["/layer2/layer2.0/conv1/Conv"].kernel) == (False, "Conv")
    assert {lr.kernel for n, lr in layers.items() if lr.quantized} == {"QLinearConv", "QGemm"}
    layer = next(x for x in resnet20_ws.graph.layers if x.name == "/layer2/layer2.0/conv1/Conv")
    int8_floor = 64 / 1024
    assert r.bitops_fraction == pytest.approx(int8_floor + layer.flops / resnet20_ws.graph.total_flops * (1 - int8_floor))


def test_inspect_cli(resnet20_ws, tmp_path, capsys, monkeypatch):
    from autoquant import Record, quantize

    plan = plans(resnet20_ws.graph.names, "/layer2/layer2.0/conv1/Conv")["middle float"]
    r = quantize(resnet20_ws, plan, tmp_path / "q")
    assert main(["inspect", str(r.model_path), "--record", str(r.record_path)]) == 0
    out = capsys.readouterr().out
    assert "/layer2/layer2.0/conv1/Conv" in out and "20 layers in a default onnxruntime session: 1 float, 19 integer" in out

    plain = tmp_path / "plain.onnx"
    monkeypatch.setattr(BUILD, "isolate_float_layers", lambda *args: None)
    onnx.save(resnet20_ws.build(plan), str(plain))
    assert main(["inspect", str(plain), "--record", str(r.record_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autoquant: /layer2/layer2.0/conv1/Conv: meant to run float, runs QLinearConv (integer)",
                   "autoquant: 1 layer(s) do not run as the record states"]
    assert Record.load(r.record_path).plan() == plan

    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("hello")
    assert main(["inspect", str(not_onnx)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
