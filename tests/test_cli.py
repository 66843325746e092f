"""The command line on the embedded digits default, and every bad input of the engine's contract."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from conftest import conv_model, write_experiment

from autoquant.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_json_then_evaluate_and_apply_agree(digits_yaml, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "quantize", digits_yaml, "--plan", "int8-per-channel", "--out", tmp_path, "--json")
    assert code == 0
    r = json.loads(out)
    assert {"accuracy", "latency_ms", "fp32_accuracy", "accuracy_drop", "bitops_fraction", "latency_ratio"} <= set(r)
    # the digits default has outlier channels: all-INT8 loses points there (the quickstart's search has work to do)
    assert r["fp32_accuracy"] > 95 and 0 < r["accuracy_drop"] < 20
    assert r["bitops_fraction"] == pytest.approx(1 / 16)
    # The exported model, re-measured by `evaluate`, has exactly the accuracy quantize reported.
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "model.int8.onnx", digits_yaml, "--json")
    assert code == 0 and json.loads(out)["accuracy"] == r["accuracy"]
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["activation_type"] == "uint8" and len(record["layers"]) == 7
    code, out, err = run_cli(capsys, "apply", _builtin_onnx(), tmp_path / "record.json", "--out", tmp_path / "again.onnx")
    assert code == 0, err
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "model.int8.onnx").read_bytes()


def _builtin_onnx():
    import os
    from pathlib import Path

    return next(Path(os.environ["AUTOQUANT_CACHE_DIR"]).rglob("digits_cnn-*.onnx"))


def test_console_script_prints_a_human_summary(digits_yaml, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autoquant.cli", "quantize", str(digits_yaml), "--plan",
                           "int8-per-tensor", "--algorithm", "percentile", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "quant accuracy" in proc.stdout and "bitops 6.25 % of FP32" in proc.stdout


def test_plan_file_with_a_float_layer(digits_yaml, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"default": {"activation_algorithm": "mse"}, "layers": {"/fc2/Gemm": {"quantize": False}}}))
    code, out, _ = run_cli(capsys, "quantize", digits_yaml, "--plan", plan, "--out", tmp_path / "o", "--json")
    assert code == 0 and json.loads(out)["bitops_fraction"] > 1 / 16


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A user's own ONNX model and .npz data (3×8×8 inputs), to feed it broken variants."""
    tmp = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    onnx.save(conv_model([rng.normal(size=(4, 3, 3, 3))]), str(tmp / "model.onnx"))
    np.savez(tmp / "data.npz", x=rng.normal(size=(40, 3, 8, 8)).astype(np.float32), y=np.zeros(40, np.int64))
    return tmp


def _exp(tmp, **over):
    sections = {"name": "user", "model": {"onnx": str(tmp / "model.onnx")},
                "data": {"source": "npz", "path": str(tmp / "data.npz"), "calibration_size": 20, "eval_size": 20}}
    for key, value in over.items():
        sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
    return write_experiment(tmp / "exp.yaml", **sections)


def _bad_npz(tmp, name, x, y=None):
    np.savez(tmp / name, x=x, y=np.zeros(len(x), np.int64) if y is None else y)
    return {"data": {"path": str(tmp / name)}}


BAD_INPUTS = {
    "missing model file": (lambda t: {"model": {"onnx": str(t / "nope.onnx")}}, [], "not found"),
    "non-ONNX model file": (lambda t: ((t / "junk.onnx").write_text("hello"), {"model": {"onnx": str(t / "junk.onnx")}})[1],
                            [], "not a valid ONNX model"),
    "data shape does not match": (lambda t: _bad_npz(t, "s.npz", np.zeros((40, 3, 16, 16), np.float32)), [],
                                  "expects (3, 8, 8)"),
    "data dtype is not float": (lambda t: _bad_npz(t, "d.npz", np.zeros((40, 3, 8, 8), np.uint8)), [], "is uint8 but the model input is float32: save it as float32"),
    "empty calibration set": (lambda t: {"data": {"calibration_size": 0}}, [], "data.calibration_size must be at least 1"),
    "NaN in calibration data": (lambda t: _bad_npz(t, "n.npz", np.full((40, 3, 8, 8), np.nan, np.float32)), [], "NaN or Inf"),
    "unknown algorithm": (lambda t: {}, ["--algorithm", "kl"], "activation algorithm 'kl' is unknown"),
    "unknown YAML key": (lambda t: {"calibration": {"size": 3}}, [], "unknown key"),
    "labels of the wrong length": (lambda t: _bad_npz(t, "l.npz", np.zeros((40, 3, 8, 8), np.float32), np.zeros(7, np.int64)),
                                   [], "40 inputs but 7 labels"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_and_exit_code_2(case, user_model, tmp_path, capsys):
    make, extra, message = BAD_INPUTS[case]
    exp = _exp(user_model, **make(user_model))
    code, _, err = run_cli(capsys, "quantize", exp, "--out", tmp_path, *extra)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("autoquant: error:") and message in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "model.int8.onnx").exists()


def test_plan_naming_a_missing_layer(user_model, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"layers": {"conv7": {"quantize": False}}}))
    code, _, err = run_cli(capsys, "quantize", _exp(user_model), "--plan", plan, "--out", tmp_path)
    assert code == 2 and "layer 'conv7' does not exist" in err and "Traceback" not in err


def test_user_model_works_end_to_end(user_model, tmp_path, capsys):
    code, out, err = run_cli(capsys, "quantize", _exp(user_model), "--out", tmp_path, "--json")
    assert code == 0, err
    assert json.loads(out)["bitops_fraction"] == pytest.approx(1 / 16)


def test_apply_refuses_a_different_model(user_model, digits_yaml, tmp_path, capsys):
    assert run_cli(capsys, "quantize", _exp(user_model), "--out", tmp_path)[0] == 0
    code, _, err = run_cli(capsys, "apply", _builtin_onnx(), tmp_path / "record.json", "--out", tmp_path / "x.onnx")
    assert code == 2 and "is not the model the record was made for" in err
    (tmp_path / "broken.json").write_text("{")
    code, _, err = run_cli(capsys, "apply", user_model / "model.onnx", tmp_path / "broken.json", "--out", tmp_path / "x.onnx")
    assert code == 2 and "not an autoquant record file" in err


def test_sensitivity_and_layers_commands(digits_yaml, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "sensitivity", digits_yaml, "--out", tmp_path)
    assert code == 0 and (tmp_path / "sensitivity.png").stat().st_size > 0
    rows = (tmp_path / "sensitivity.csv").read_text().splitlines()
    assert rows[0].startswith("layer,per_channel:minmax:bc,") and rows[0].endswith(",float") and len(rows) == 8
    code, out, _ = run_cli(capsys, "sensitivity", digits_yaml, "--out", tmp_path, "--full")
    rows = (tmp_path / "sensitivity_full.csv").read_text().splitlines()
    assert code == 0 and rows[0] == "layer,accuracy_drop_pt,relative_output_mse" and len(rows) == 8
    code, out, _ = run_cli(capsys, "layers", digits_yaml)
    assert code == 0 and "quantizable, depthwise" in out and "FLOPs = 2 x MACs" in out
