"""Recovery without training (quantize/recovery/): bias correction removes a known mean shift; adaptive rounding
lowers a layer's output error on held-out inputs; both are choices the space, the error table, the builder, the
record and `apply` agree on; bad values are one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
import yaml
from conftest import conv_model, write_experiment

from autoquant import LayerChoice, QuantPlan, Workspace, load_experiment
from autoquant.config import SearchConfig
from autoquant.engine import apply_record, preset_plan, quantize
from autoquant.errors import ConfigError, PlanError
from autoquant.quantize.fake import REDUCED_MAX
from autoquant.quantize.recovery.rounding import RoundingSettings, adaround, nearest_mask, rounded_weight
from autoquant.record import FORMAT_VERSION, Record, validate_record
from autoquant.search.space import SearchSpace, space_path

# One depthwise 3x3 conv over 4 channels: the centre weight 1 sets each channel's grid (scale 1/qmax: 1/127 with
# full 8-bit weights, 1/REDUCED_MAX with reduced); the eight others are 1.4/127, which on the full grid round to
# 1 step (each loses 0.4/127 times its input) and on the reduced grid round up (each gains).
SHIFTED = 1.4 / 127


def _shift_bed(tmp_path, weight_range: str = "full"):
    w = np.full((4, 1, 3, 3), SHIFTED, np.float32)
    w[:, :, 1, 1] = 1.0
    onnx.save(conv_model([w], relu=False, groups=[4]), tmp_path / "dw.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (600, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", input=x)
    return write_experiment(tmp_path / "dw.yaml", name="dw", model={"onnx": "dw.onnx"},
                            data={"source": "npz", "path": "x.npz", "y_key": None, "calibration_size": 200,
                                  "eval_size": 400},
                            eval={"metric": "cosine", "latency_repeats": 2},
                            quantization={"weight_range": weight_range})


@pytest.mark.parametrize("weight_range", ["full", "reduced"])  # both grids on every machine, whatever auto picks
def test_bias_correction_removes_a_known_mean_shift(tmp_path, weight_range):
    ws = Workspace(load_experiment(_shift_bed(tmp_path, weight_range)))
    layer = ws.graph.layers[0]
    # Inputs uniform on [0, 1] (mean 1/2); with padding 1 on 8 x 8, an output position has on average
    # (36·8 + 24·5 + 4·3) / 64 = 6.5625 neighbours inside the image, each losing SHIFTED minus its rounded value.
    qmax = {"full": 127, "reduced": REDUCED_MAX}[weight_range]
    expected = 6.5625 * 0.5 * (SHIFTED - round(SHIFTED * qmax) / qmax)
    shift = ws.recovery.shift(layer, LayerChoice.of(bias_correction=True))
    assert shift == pytest.approx(np.full(4, expected), rel=0.05)

    ev, data = ws.evaluator, ws.splits.eval
    fp32 = ev.outputs(ev.session(ws.fp32_model), data)
    plain = ev.outputs(ev.session(ws.build(preset_plan(ws, "int8-per-channel"))), data)
    corrected = ev.outputs(ev.session(ws.build(preset_plan(ws, "int8-per-channel+bc"))), data)

    def per_channel(out):
        return (out - fp32).mean(axis=(0, 2, 3))

    assert per_channel(plain) == pytest.approx(np.full(4, -expected), rel=0.1)
    assert np.abs(per_channel(corrected)).max() < 0.1 * abs(expected)


def test_adaptive_rounding_lowers_a_layers_error_on_held_out_inputs():
    rng = np.random.default_rng(1)
    # A layer whose inputs are correlated (as real activations are): the rounding errors of a row add up unless
    # their directions are chosen together.
    mix = rng.normal(size=(24, 48)).astype(np.float32)
    train = (rng.normal(size=(1, 1024, 24)) @ mix).astype(np.float32)
    held = (rng.normal(size=(1, 256, 24)) @ mix).astype(np.float32)
    w = rng.normal(size=(1, 16, 48)).astype(np.float32)
    scale = (np.abs(w).max(axis=2, keepdims=True) / 7).astype(np.float32)  # 4-bit grid, per output
    mask, nearest, learned = adaround(w, np.broadcast_to(scale, w.shape), (-7, 7), train, held, RoundingSettings())
    assert learned < 0.7 * nearest
    target = np.einsum("grk,gok->gro", held, w)
    errors = [float(np.square(np.einsum("grk,gok->gro", held, rounded_weight(w, scale, (-7, 7), m)) - target).sum())
              for m in (nearest_mask(w, scale), mask)]
    assert errors == pytest.approx([nearest, learned])
    assert set(np.unique(mask)) <= {0, 1}
    # every weight stays on the grid, at most one step from the nearest grid point
    assert np.abs(rounded_weight(w, scale, (-7, 7), mask) - rounded_weight(w, scale, (-7, 7), nearest_mask(w, scale))).max() <= scale.max() + 1e-7


def test_recovered_model_runs_integer_kernels_and_apply_rebuilds_its_bytes(digits_ws, tmp_path):
    # Per-tensor weights, where rounding to nearest is coarsest: the rounding learnt per layer takes most of the
    # error away (measured: output NMSE 1.59 -> 0.25). Recovery is fitted layer by layer on its own inputs; it
    # promises nothing of the whole model's error where nearest rounding is already fine (per channel here: within
    # 3 % either way).
    plain = quantize(digits_ws, preset_plan(digits_ws, "int8-per-tensor"), tmp_path / "plain")
    r = quantize(digits_ws, preset_plan(digits_ws, "int8-per-tensor+bc+adaround"), tmp_path / "recovered")
    assert all(e.integer for e in r.executed)  # the same kernels: recovery changes values, not which kernel runs
    assert r.output_mse < 0.5 * plain.output_mse
    record = Record.load(r.record_path)
    assert record.format_version == FORMAT_VERSION
    assert all(lr.choice["weight_rounding"] == "adaptive" and lr.choice["bias_correction"] and lr.extra["rounding_mask"]
               for lr in record.layers)
    out = apply_record(digits_ws.prepared.source, r.record_path, tmp_path / "applied.onnx", digits_ws.exp.cache)
    assert out.read_bytes() == r.model_path.read_bytes()
    # with the weights clipped by output error first: a finer grid per tensor (measured: NMSE 1.58 -> 0.88 alone)
    clipped = quantize(digits_ws, preset_plan(digits_ws, "int8-per-tensor+clip+bc+adaround"), tmp_path / "clipped")
    assert all(e.integer for e in clipped.executed) and clipped.output_mse < plain.output_mse
    record = Record.load(clipped.record_path)
    assert all(len(lr.extra["clip_bounds"]) == 1 for lr in record.layers)
    qmax = REDUCED_MAX if digits_ws.weight_range == "reduced" else 127
    for lr in record.layers:  # the grid is the clipped weights': its step is the bound over qmax
        assert lr.weight.scale_w[0] == pytest.approx(lr.extra["clip_bounds"][0] / qmax, rel=1e-6)
    out = apply_record(digits_ws.prepared.source, clipped.record_path, tmp_path / "clipped.onnx", digits_ws.exp.cache)
    assert out.read_bytes() == clipped.model_path.read_bytes()


def test_bias_correction_is_on_by_default_and_apply_rebuilds_the_export(digits_yaml, tmp_path):
    """The default space offers it, the first rung takes it on every layer with a bias: the export of a study at a
    limit that rung meets is corrected, its record holds the shifts, and `apply` rebuilds it byte for byte."""
    from autoquant.api import search

    exp = load_experiment(digits_yaml)
    exp = replace(exp, search=replace(exp.search, max_accuracy_drop=50.0))
    result = search(exp, tmp_path / "run", trials=1)
    assert result.met and result.chosen.label == "ladder-0"
    assert all(c.bias_correction for _, c in result.chosen.plan.choices)
    record = Record.load(result.export.record_path)
    assert all(lr.choice["bias_correction"] and len(lr.extra["bias_shift"]) for lr in record.layers)
    out = apply_record(result.workspace.prepared.source, result.export.record_path, tmp_path / "applied.onnx",
                       exp.cache)
    assert out.read_bytes() == result.export.model_path.read_bytes()
    assert any(lr.extra["bias_shift"] != [0.0] * len(lr.extra["bias_shift"]) for lr in record.layers)


def test_clipping_by_output_error_trades_an_outlier_for_a_finer_grid():
    """A channel of small weights and one outlier, on inputs where the outlier's input is rare: the bound chosen
    clips the outlier and lowers the output error; a channel without an outlier keeps its largest weight."""
    from autoquant.quantize.recovery.clipping import RATIOS, output_error_bounds

    rng = np.random.default_rng(0)
    w = rng.uniform(-0.1, 0.1, (1, 2, 64)).astype(np.float32)
    w[0, 0, 0] = 1.0  # channel 0's outlier
    x = rng.normal(size=(1, 2048, 64)).astype(np.float32)
    x[..., 0] *= 0.001  # ...reads an input that is mostly small
    bounds = output_error_bounds(w, x, 8, "full", per_channel=True)
    assert bounds[0] < 0.9 and bounds[1] == pytest.approx(np.abs(w[0, 1]).max())

    def error(bound, channel):
        scale = bound / 127
        q = np.clip(np.round(np.clip(w[0, channel], -bound, bound) / scale), -127, 127) * scale
        return float(np.square(x[0] @ (w[0, channel] - q)).sum())

    assert error(bounds[0], 0) < error(1.0, 0)
    assert min(error(r, 0) for r in RATIOS) == pytest.approx(error(bounds[0], 0), rel=1e-4)


def test_the_error_table_prices_recovery_and_the_space_offers_it_where_it_fits(digits_ws):
    from autoquant.search.estimate.layer_errors import layer_errors, with_deferred

    space = SearchSpace.from_dict({"choices": {"quantize": [True], "mode": ["static"], "activation_algorithm": ["minmax"],
                                               "weight_granularity": ["per_tensor"], "bias_correction": [False, True],
                                               "weight_rounding": ["nearest", "adaptive"],
                                               "weight_clipping": ["none", "mse"]}}, digits_ws.graph)
    assert all(len(layer.options) == 8 for layer in space.layers)
    table = layer_errors(digits_ws, space)
    plain = LayerChoice.of(weight_granularity="per_tensor")
    clipped = plain.with_fields(weight_clipping="mse")
    both = plain.with_fields(bias_correction=True, weight_rounding="adaptive")
    names = digits_ws.graph.names
    assert all(np.isnan(table.of(n, both)) for n in names)  # adaptive rounding: priced where a study asks (deferred)
    _, table = with_deferred(digits_ws, layer_errors(digits_ws, space, propagated=False), table,
                             [(n, both) for n in names])
    errors = np.array([[table.of(n, plain), table.of(n, both), table.of(n, clipped)] for n in names])
    assert np.all(np.isfinite(errors)) and (errors[:, 1] < errors[:, 0]).sum() >= len(errors) - 1
    assert (errors[:, 2] <= errors[:, 0] * 1.01).all()  # clipping by output error: never a worse grid


def _matmul_without_bias():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    w = onnx.numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    return onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y], [w]),
                                  opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_bias_correction_is_not_offered_where_there_is_no_bias_to_correct(tmp_path):
    from autoquant.graph.layers import analyze
    from autoquant.quantize import modes

    graph = analyze(_matmul_without_bias())
    assert graph.layers[0].bias_slot == ""
    for offered in ([False, True], [True]):  # a space asking for it only still offers the layer static INT8
        space = SearchSpace.from_dict({"choices": {"bias_correction": offered}}, graph)
        assert not any(getattr(c, "bias_correction", False) for c in space.layers[0].options)
        assert any(c.quantize and c.mode == "static" for c in space.layers[0].options)
    default = SearchSpace.from_yaml(space_path(SearchConfig()), graph)
    assert not any(getattr(c, "bias_correction", False) for c in default.layers[0].options)
    with pytest.raises(PlanError, match="nowhere to put a bias correction"):
        modes.check_plan(graph.layers, QuantPlan((("mm", LayerChoice.of(bias_correction=True)),)))


def test_bad_recovery_values_are_one_line_errors(digits_yaml, digits_ws, tmp_path):
    with pytest.raises(ConfigError, match="weight_rounding 'sometimes' is unknown"):
        LayerChoice.parse({"weight_rounding": "sometimes"}, "plan")
    with pytest.raises(ConfigError, match="'bias_correction' must be bool"):
        LayerChoice.parse({"bias_correction": "yes"}, "plan")
    with pytest.raises(ConfigError, match="weight_rounding"):
        SearchSpace.from_dict({"choices": {"weight_rounding": ["sometimes"]}}, digits_ws.graph)
    with pytest.raises(ConfigError, match="belong|fixes"):
        LayerChoice.parse({"mode": "dynamic", "bias_correction": True}, "plan")

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"default": {"weight_rounding": "sometimes"}}))
    proc = subprocess.run([sys.executable, "-m", "autoquant.cli", "quantize", str(digits_yaml), "--plan", str(plan),
                           "--out", str(tmp_path / "q")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "weight_rounding" in proc.stderr

    r = quantize(digits_ws, preset_plan(digits_ws, "int8-per-channel+bc+adaround"), tmp_path / "r")
    raw = json.loads(r.record_path.read_text())
    for damage, message in ((lambda lr: lr["extra"].update(rounding_mask="!!"), "not base64"),
                            (lambda lr: lr["extra"].update(rounding_mask="AAAA"), "one bit per weight"),
                            (lambda lr: lr["extra"].update(bias_shift=[1.0]), "bias_shift needs"),
                            (lambda lr: lr["extra"].update(bias_shift=[float("nan")] * len(lr["extra"]["bias_shift"])), "finite"),
                            (lambda lr: lr["extra"].pop("bias_shift"), "needs bias_shift, rounding_mask")):
        broken = json.loads(json.dumps(raw))
        damage(broken["layers"][0])
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(PlanError, match=message):
            validate_record(Record.load(path), digits_ws.model, digits_ws.graph, "record")
