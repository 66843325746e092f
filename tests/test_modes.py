"""Transformer-grade modes per MatMul/Gemm layer: static INT8 (Q/DQ), dynamic INT8 (DynamicQuantizeLinear +
MatMulInteger) and int4 weight-only (MatMulNBits), alone and mixed in one model — each run by the kernel
meant for it in a default onnxruntime session, close to FP32, recorded and rebuilt exactly."""

from __future__ import annotations

import collections
import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import write_experiment
from onnx import numpy_helper
from test_sources import cli, encoder_workdir, one_line_error, transformer_exp

from autoquant import Workspace, load_experiment
from autoquant.config import Cost, SearchConfig
from autoquant.engine import apply_record, quantize
from autoquant.evaluate.cost import bitops_fraction
from autoquant.evaluate.executed import disagreements, executed_layers, kernel_counts, optimized_graph
from autoquant.measure import Meter
from autoquant.quantize.fake import fake_quant_blockwise
from autoquant.quantize.modes import decode
from autoquant.quantize.plan import FLOAT, LayerChoice, QuantPlan
from autoquant.quantize.smoothing import smoothable
from autoquant.record import Record
from autoquant.search import ErrorModel
from autoquant.search.estimate.cost import BitopsCost
from autoquant.search.propose import first_rung, warm_starts
from autoquant.search.space import SearchSpace, space_path

INTEGER = {"static": {"QLinearMatMul", "QGemm"}, "dynamic": {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"},
           "int4": {"MatMulNBits"}}
FLOAT_KERNELS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm"}
MIX = [LayerChoice.of(), LayerChoice.of("dynamic"), LayerChoice.of("int4", block_size=16), FLOAT, LayerChoice.of("dynamic", weight_granularity="per_tensor")]
# Output NMSE against FP32 each mode must stay under on the test encoder (measured: static 1.7e-3,
# dynamic 1.5e-4, int4 blocks of 16 7.0e-3, the mix 1.9e-3): run-time activation ranges are the most
# exact, 4-bit weights the least.
BOUND = {"static": 1e-2, "dynamic": 1e-3, "int4": 3e-2, "mix": 1e-2}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace(load_experiment(transformer_exp(encoder_workdir(tmp_path_factory, "modes"))))


def plans(names):
    return {
        "static": QuantPlan.uniform(names, LayerChoice.of()),
        "dynamic": QuantPlan.uniform(names, LayerChoice.of("dynamic")),
        "int4": QuantPlan.uniform(names, LayerChoice.of("int4", block_size=16)),
        "mix": QuantPlan(tuple((n, MIX[i % len(MIX)]) for i, n in enumerate(names))),
    }


@pytest.mark.parametrize("name", ["static", "dynamic", "int4", "mix"])
def test_each_mode_and_a_mix_run_their_kernels_close_to_fp32(ws, name):
    plan = plans(ws.graph.names)[name]
    qmodel = ws.build(plan)
    executed = {e.name: e for e in executed_layers(qmodel)}
    assert disagreements(plan.runs(), list(executed.values())) == []
    for layer, choice in plan.choices:
        kernel = executed[layer].kernel
        assert kernel in (INTEGER[choice.mode] if choice.quantize else FLOAT_KERNELS), (layer, choice.label, kernel)
    # the fully default session (layout passes included) runs the same number of integer kernels
    integer = sum(c.runs == "integer" for _, c in plan.choices)
    assert kernel_counts(optimized_graph(qmodel))["integer"] == integer
    measured = Meter(ws)(qmodel, plan)
    assert measured.output_mse < BOUND[name], measured
    assert measured.accuracy >= 85.0


def test_head_gemm_takes_every_mode(ws):
    head = ws.graph.names[-1]
    assert ws.graph.layers[-1].op_type == "Gemm"
    for choice, kernels in ((LayerChoice.of("dynamic"), INTEGER["dynamic"]), (LayerChoice.of("int4", block_size=16), INTEGER["int4"])):
        plan = QuantPlan(tuple((n, choice if n == head else FLOAT) for n in ws.graph.names))
        executed = {e.name: e.kernel for e in executed_layers(ws.build(plan))}
        assert executed[head] in kernels
        assert {executed[n] for n in ws.graph.names[:-1]} <= FLOAT_KERNELS


def test_record_holds_each_mode_and_apply_rebuilds_the_same_bytes(ws, tmp_path):
    plan = plans(ws.graph.names)["mix"]
    result = quantize(ws, plan, tmp_path / "q")
    record = Record.load(result.record_path)
    assert record.plan() == plan
    by_name = {lr.name: lr for lr in record.layers}
    model = onnx.load(result.model_path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fp32 = {i.name: numpy_helper.to_array(i) for i in ws.model.graph.initializer}
    for info in ws.graph.layers:
        lr, choice = by_name[info.name], plan[info.name]
        assert lr.mode == choice.mode and lr.kernel in (INTEGER[choice.mode] if choice.quantize else FLOAT_KERNELS)
        if choice.quantize and choice.mode == "int4":
            # the recorded blocks dequantize the stored 4-bit weights to what the search's emulation uses
            k, n = fp32[info.weight].shape
            blocks = -(-k // lr.weight.block_size)
            scale = np.array(lr.weight.scale_w).reshape(n, blocks, 1)
            zero = np.array(lr.weight.offset_w).reshape(n, blocks, 1)
            node = next(x for x in model.graph.node if x.name == info.name)
            packed = inits[node.input[1]].reshape(n, blocks, -1)
            values = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks, -1)
            dequantized = ((values - zero) * scale).reshape(n, -1)[:, :k].T
            emulated = fake_quant_blockwise(fp32[info.weight], 1 - info.channel_axis, lr.weight.block_size)
            assert np.abs(dequantized - emulated).max() < 1e-6
            assert np.abs(dequantized - fp32[info.weight]).max() <= scale.max() / 2 + 1e-6
        if choice.quantize and choice.mode == "dynamic":
            assert lr.data is None and len(lr.weight.scale_w) == (info.out_channels if choice.weight_granularity ==
                                                                  "per_channel" else 1)
    applied = apply_record(ws.prepared.source, result.record_path, tmp_path / "applied.onnx", ws.exp.cache)
    assert applied.read_bytes() == result.model_path.read_bytes()


def test_bitops_per_mode(ws):
    names = ws.graph.names
    static = bitops_fraction(ws.graph, QuantPlan.uniform(names, LayerChoice.of()))
    assert bitops_fraction(ws.graph, QuantPlan.uniform(names, LayerChoice.of("dynamic"))) == static  # 8 x 8
    int4 = bitops_fraction(ws.graph, QuantPlan.uniform(names, LayerChoice.of("int4")))  # 8 x 4
    int4_float = bitops_fraction(ws.graph, QuantPlan.uniform(names, LayerChoice.of("int4", accuracy_level=1)))  # 32 x 4
    float_share = ws.graph.unquantized_flops / (sum(la.flops for la in ws.graph.layers) + ws.graph.unquantized_flops)
    assert int4 - float_share == pytest.approx((static - float_share) / 2)
    assert int4_float - float_share == pytest.approx((static - float_share) * 2)


def test_transformer_space_offers_the_modes_and_warm_starts_use_them(ws):
    space = SearchSpace.from_yaml(space_path(SearchConfig(space=Path("transformer"))), ws.graph)
    options = space.layers[0].values
    assert {decode(o).mode for o in options if o != "float"} == {"static", "dynamic", "int4"} and "float" in options
    from autoquant.search import layer_errors

    errors = layer_errors(ws, space)
    labels = dict(warm_starts(ws.graph.names, space, errors, ErrorModel.build(errors, space, BitopsCost(ws.graph)), [1]))
    assert labels["all-dynamic"].modes() == {"dynamic"} and labels["all-int4-b32"].modes() == {"int4"}
    budget = [p for label, p in labels.items() if label.startswith("guided-budget")]
    assert budget and any("int4" in p.modes() for p in budget)  # the cheap mode enters across the cost range


def test_the_first_rung_is_dynamic_on_a_model_without_convolutions(ws, digits_yaml, tmp_path):
    """onnxruntime's recipe per kind of model: the study's first plan on the encoder runs every layer dynamic; on
    the digits CNN (a Gemm head after convolutions) every layer static."""
    from autoquant.api import search

    def rung(w):
        return first_rung(SearchSpace.from_yaml(space_path(w.exp.search), w.graph), w.graph.layers)

    label, plan = rung(ws)
    assert label == "ladder-0" and plan.modes() == {"dynamic"}
    assert rung(Workspace(load_experiment(digits_yaml)))[1].modes() == {"static"}
    # bitops: the toy encoder may run slower quantized than FP32 here, which would veto it under latency
    exp = dataclasses.replace(ws.exp, search=dataclasses.replace(ws.exp.search, max_accuracy_drop=50.0, objective=Cost.BITOPS))
    result = search(exp, tmp_path / "run", trials=1)
    assert result.met and result.chosen.label == "ladder-0" and result.chosen.plan.modes() == {"dynamic"}
    assert {e.kernel for e in result.export.executed} <= INTEGER["dynamic"]  # what a default session runs


def test_cnn_layers_keep_static_options(digits_yaml):
    ws = Workspace(load_experiment(digits_yaml))
    space = SearchSpace.from_yaml(space_path(SearchConfig(space=Path("transformer"))), ws.graph)
    for layer, info in zip(space.layers, ws.graph.layers):
        modes = {decode(o).mode for o in layer.values if o != "float"}
        assert modes == ({"static"} if info.op_type == "Conv" else {"static", "dynamic", "int4"}), layer


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({"re:.*": {"mode": "int4", "block_size": 20}}, "mode int4 needs block_size in"),
        ({"re:.*": {"mode": "dynamic", "activation_algorithm": "mse"}}, "mode dynamic fixes activation_algorithm"),
        ({"re:.*": {"mode": "fast"}}, "mode 'fast' is unknown"),
        ({"re:.*": {"block_size": 32}}, "block_size and accuracy_level belong to mode int4"),
    ],
)
def test_bad_mode_settings_are_one_line(digits_yaml, tmp_path, capsys, layers, message):
    plan = write_experiment(tmp_path / "plan.yaml", layers=layers)
    one_line_error(capsys, ["quantize", digits_yaml, "--plan", plan, "--out", tmp_path / "o"], message)
    assert not (tmp_path / "o").exists()


def test_dynamic_on_a_conv_is_refused_with_the_layer_named(digits_yaml, tmp_path, capsys):
    plan = write_experiment(tmp_path / "plan.yaml", layers={"re:.*Conv.*": {"mode": "dynamic"}})
    code, _, err = cli(capsys, "quantize", digits_yaml, "--plan", plan, "--out", tmp_path / "o")
    assert code == 2 and "applies to MatMul/Gemm layers with 2-D weights; use mode static" in err and "Traceback" not in err


PRE_LN = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        """Pre-LN: each LayerNorm feeds only the Linear after it. One LayerNorm channel is an outlier, as in
        trained transformers, where it sets the per-tensor activation scale."""

        def __init__(self, d):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.fc1, self.fc2, self.fc3 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.Linear(d, d)
            with torch.no_grad():
                self.ln1.weight[3] = 40.0
                self.ln2.weight[5] = -30.0

        def forward(self, x):
            x = x + self.fc2(torch.relu(self.fc1(self.ln1(x))))
            return x + self.fc3(self.ln2(x))


    class Net(nn.Module):
        def __init__(self, d=32):
            super().__init__()
            torch.manual_seed(0)
            self.inp, self.blocks, self.head = nn.Linear(16, d), nn.Sequential(Block(d), Block(d)), nn.Linear(d, 10)

        def forward(self, x):
            return self.head(self.blocks(self.inp(x)).mean(1))


    def net():
        return Net()
''')


@pytest.fixture(scope="module")
def pre_ln(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre_ln")
    (d / "net.py").write_text(PRE_LN)
    np.savez(d / "feats.npz", x=np.random.default_rng(0).normal(size=(160, 8, 16)).astype(np.float32))

    def experiment(alpha=None, name="pre_ln"):
        return write_experiment(
            d / f"{name}.yaml", name=name, model={"torch": "net.py:net", "inputs": {"x": {"shape": [2, 8, 16]}}},
            data={"source": "npz", "path": "feats.npz", "y_key": None, "calibration_size": 64, "eval_size": 96},
            eval={"metric": "agreement", "latency_repeats": 2},
            quantization={"smoothquant_alpha": alpha} if alpha is not None else {},
        )

    return experiment


def test_smoothquant_folds_into_layernorm_and_flattens_outliers(pre_ln, tmp_path):
    plain, smoothed = Workspace(load_experiment(pre_ln())), Workspace(load_experiment(pre_ln(0.5, "pre_ln_sq")))
    ev = smoothed.evaluator
    fp32 = plain.reference.outputs
    assert np.abs(ev.outputs(ev.session(smoothed.model)) - fp32).max() < 1e-5 * np.abs(fp32).max()  # same function
    report = smoothed.smoothing
    assert len(report.folded) == 4 and all("LayerNormalization" in t for t in report.folded)
    # the LayerNorm-fed layers read their LayerNorm directly: no op added in front of them
    added = collections.Counter(n.op_type for n in smoothed.model.graph.node) - collections.Counter(
        n.op_type for n in plain.model.graph.node)
    assert added == collections.Counter({"Mul": len(report.inserted)})
    # static INT8 of the LayerNorm-fed layers (measured: NMSE 1.23e-3 → 7.3e-4 per tensor, 1.54e-3 → 6.5e-4 per channel)
    for granularity in ("per_tensor", "per_channel"):
        errors = []
        for ws in (plain, smoothed):
            plan = QuantPlan(tuple((n, LayerChoice.of(weight_granularity=granularity) if ("fc1" in n or "fc3" in n) else FLOAT)
                                   for n in ws.graph.names))
            errors.append(Meter(ws)(ws.build(plan), plan).output_mse)
        assert errors[1] < 0.7 * errors[0], (granularity, errors)
    # the record carries the divisors; apply smooths the FP32 model the same way and rebuilds the same bytes
    plan = QuantPlan(tuple((n, MIX[i % len(MIX)]) for i, n in enumerate(smoothed.graph.names)))
    result = quantize(smoothed, plan, tmp_path / "q")
    record = Record.load(result.record_path)
    assert record.smoothquant_alpha == 0.5 and set(record.smoothing) == set(report.scales)
    applied = apply_record(smoothed.prepared.source, result.record_path, tmp_path / "applied.onnx", smoothed.exp.cache)
    assert applied.read_bytes() == result.model_path.read_bytes()


def test_smoothquant_on_post_ln_blocks_inserts_a_mul(ws, tmp_path):
    exp = load_experiment(ws.exp.source_file)
    smoothed = Workspace(dataclasses.replace(exp, quantization=dataclasses.replace(exp.quantization, smoothquant_alpha=0.5)))
    # BERT-style: every LayerNorm output also feeds a residual Add, so nothing folds
    assert smoothed.smoothing.folded == () and len(smoothed.smoothing.inserted) == len(smoothable(ws.graph))
    fp32 = ws.reference.outputs
    ev = smoothed.evaluator
    assert np.abs(ev.outputs(ev.session(smoothed.model)) - fp32).max() < 1e-5 * np.abs(fp32).max()
    assert smoothed.model_key != ws.model_key  # its statistics and layer errors are cached apart


@pytest.mark.parametrize("alpha", [0, 1.5, "half", True])
def test_bad_smoothquant_alpha_is_one_line(pre_ln, capsys, alpha, tmp_path):
    exp = pre_ln(alpha, "bad_alpha")
    one_line_error(capsys, ["quantize", exp, "--out", tmp_path / "o"], "quantization.smoothquant_alpha")
