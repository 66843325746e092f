"""Hostile and broken input: each case gets one line and exit code 2 (or a failed trial with its reason),
and no file from an earlier good run is damaged."""

import dataclasses
import errno
import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import conv_model, write_experiment
from onnx import TensorProto, helper, numpy_helper

import autoquant.fileio
import autoquant.progress
from autoquant import Workspace, load_experiment
from autoquant.cli import main


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, message):
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("autoquant: error:") and message in last, err
    assert "Traceback" not in err


def user_experiment(tmp, model: onnx.ModelProto | None = None, shape=(3, 8, 8), **sections):
    rng = np.random.default_rng(0)
    if model is not None:
        onnx.save(model, str(tmp / "model.onnx"))
    np.savez(tmp / "data.npz", x=rng.normal(size=(40, *shape)).astype(np.float32), y=np.zeros(40, np.int64))
    base = {"name": "hostile", "model": {"onnx": str(tmp / "model.onnx")},
            "data": {"source": "npz", "path": str(tmp / "data.npz"), "calibration_size": 20, "eval_size": 20},
            "eval": {"latency_repeats": 2},
            # these toy models run slower quantized than FP32: under bitops their exports are not vetoed
            "search": {"objective": "bitops"}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return write_experiment(tmp / "exp.yaml", **base)


def _graph(nodes, inputs, inits=(), opsets=(("", 17),), out_shape=("batch", 4, 8, 8)):
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))
    g = helper.make_graph(nodes, "g", inputs, [out], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


W = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
X = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])


def test_truncated_onnx_file(tmp_path, capsys):
    good = conv_model([np.ones((4, 3, 3, 3))]).SerializeToString()
    exp = user_experiment(tmp_path)
    (tmp_path / "model.onnx").write_bytes(good[: len(good) // 2])
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "o")[::2], "not a valid ONNX model")


def test_unsupported_op_in_a_quantizable_position(tmp_path, capsys):
    nodes = [helper.make_node("Mystery", ["input"], ["m"], name="mystery", domain="com.example"),
             helper.make_node("Conv", ["m", "w"], ["output"], name="conv", pads=[1, 1, 1, 1])]
    exp = user_experiment(tmp_path, _graph(nodes, [X], [W], (("", 17), ("com.example", 1))))
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "o")[::2], "com.example.Mystery")


def test_model_with_no_quantizable_layer(tmp_path, capsys):
    exp = user_experiment(tmp_path, _graph([helper.make_node("Relu", ["input"], ["output"], name="r")], [X],
                                                out_shape=("batch", 3, 8, 8)))
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "o")[::2], "no quantizable layer")


def test_yaml_with_wrong_types_in_the_search_section(tmp_path, capsys):
    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), search={"trials": "many"})
    assert_one_line_error(*cli(capsys, "search", exp, "--out", tmp_path / "o")[::2], "search.trials must be int")


def test_storage_url_that_cannot_be_reached(tmp_path, capsys):
    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]),
                          search={"storage": "sqlite:////nonexistent/dir/study.db"})
    assert_one_line_error(*cli(capsys, "search", exp, "--out", tmp_path / "o")[::2], "cannot open study storage")


def test_tracking_uri_that_cannot_be_written(tmp_path, capsys):
    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]),
                          search={"tracking_uri": "sqlite:////proc/forbidden/mlflow.db"})
    assert_one_line_error(*cli(capsys, "search", exp, "--out", tmp_path / "o", "--trials", "2")[::2],
                          "cannot use MLflow tracking store")


def test_output_location_that_cannot_be_written(tmp_path, capsys):
    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]))
    (tmp_path / "a_file").write_text("not a directory")
    # Tests run as root, for whom permission bits do not stop writes: a path under a file does.
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "a_file" / "out")[::2], "cannot read or write")


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A 64 KiB tmpfs when this machine lets us mount one; otherwise every write fails with ENOSPC."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
        def no_space(*_):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(autoquant.fileio.os, "fsync", no_space)
    yield mnt, mounted
    if mounted:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_during_export_keeps_the_previous_export(tmp_path, capsys, full_disk, resnet20_yaml):
    mnt, mounted = full_disk
    out = mnt / "export"
    if mounted:  # a good export first, small enough to fit; then the big ResNet one cannot
        exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]))
        assert cli(capsys, "quantize", exp, "--out", out)[0] == 0
    else:  # the monkeypatch is already active: stage the previous export by hand
        out.mkdir()
        (out / "model.int8.onnx").write_bytes(b"previous model")
        (out / "record.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli(capsys, "quantize", resnet20_yaml, "--out", out)
    assert_one_line_error(code, err, "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_calibration_cache_is_rebuilt_with_a_message(digits_yaml, tmp_path, caplog):
    from autoquant import Workspace, load_experiment

    ws = Workspace(load_experiment(digits_yaml))
    assert ws.stats  # computed on first use (or read from the session's cache)
    stats_file = next(Path(ws.exp.cache, "stats").glob(f"{ws.sha[:16]}-*.npz"))
    stats_file.write_bytes(b"garbage")
    with caplog.at_level("INFO", logger="autoquant"):
        again = Workspace(load_experiment(digits_yaml))
        assert again.stats.keys() == ws.stats.keys()
    assert "unreadable (corrupt?); rebuilding it" in caplog.text
    assert again.timings.calibration > 0


def test_hung_trial_times_out_and_the_study_goes_on(tmp_path, monkeypatch):
    import time

    import optuna
    from optuna.trial import TrialState

    from autoquant import load_experiment
    from autoquant.api import search

    exp_path = write_experiment(
        tmp_path / "t.yaml", name="digits_timeout", model={"builtin": "digits_cnn"},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 2}, search={"trial_timeout_seconds": 2.0, "population_size": 4, "sensitivity_k": [], "early_stop": False},
    )
    from autoquant.workspace import Workspace

    real, hung = Workspace.build, []

    def hangs_once(self, plan, params=None, weights=None):
        if not hung:  # the study's first plan: a build that never returns
            hung.append(plan)
            time.sleep(30)
        return real(self, plan, params, weights)

    monkeypatch.setattr(Workspace, "build", hangs_once)
    t0 = time.time()
    result = search(load_experiment(exp_path), tmp_path / "run", trials=5)
    assert time.time() - t0 < 25
    trials = optuna.load_study(study_name="digits_timeout", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "timed out after 2 s" in failed[0].user_attrs["fail_reason"]
    assert result.completed == 5


# --- inputs real users bring (round 3) -----------------------------------------------------------------------


def folder_experiment(tmp, images: Path, **image):
    return write_experiment(tmp / "folder.yaml", name="folder", model={"onnx": str(tmp / "model.onnx")},
                            data={"source": "folder", "path": str(images), "calibration_size": 4, "eval_size": 4,
                                  "image": {"size": 8, "mean": [0, 0, 0], "std": [1, 1, 1], **image}},
                            eval={"metric": "agreement", "latency_repeats": 2})


def test_sixteen_bit_images_are_read_at_their_depth(tmp_path, capsys):
    """Pillow's RGB conversion clips 16-bit grey to 255: every image would be white. Pixels are brought to the
    scale of 8-bit ones (30000 of 65535 is 116.7 of 255), then divided by image.scale as any image is."""
    from PIL import Image

    onnx.save(conv_model([np.ones((4, 3, 3, 3))]), str(tmp_path / "model.onnx"))
    (tmp_path / "grey16").mkdir()
    levels = [20000, 30000, 40000, 50000, 25000, 35000, 45000, 55000]
    for i, level in enumerate(levels):
        Image.fromarray(np.full((12, 12), level, np.uint16)).save(tmp_path / "grey16" / f"{i}.png")
    assert Image.open(tmp_path / "grey16" / "0.png").mode.startswith("I")
    ws = Workspace(load_experiment(folder_experiment(tmp_path, tmp_path / "grey16")))
    x = np.concatenate([ws.source_splits.calibration.x, ws.source_splits.eval.x])
    np.testing.assert_allclose(sorted(x[:, :, 4, 4].mean(axis=1)), sorted(v / 65535 for v in levels), rtol=1e-5)
    assert (x == x[:, :1, :1, :1]).all()  # each image one grey level, the same in R, G and B
    (tmp_path / "float").mkdir()
    Image.fromarray(np.full((12, 12), 0.5, np.float32)).save(tmp_path / "float" / "0.tif")
    exp = folder_experiment(tmp_path, tmp_path / "float")
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "q")[::2], "has floating-point pixels, whose range autoquant cannot know")


def test_hidden_folders_are_not_samples_and_a_bad_image_leaves_no_cache_file(tmp_path, capsys, cache_dir):
    from PIL import Image

    onnx.save(conv_model([np.ones((4, 3, 3, 3))]), str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        for folder in (tmp_path / "images" / c, tmp_path / "images" / c / ".ipynb_checkpoints"):
            folder.mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    ws = Workspace(load_experiment(folder_experiment(tmp_path, tmp_path / "images")))
    assert len(ws.source_splits.eval) + len(ws.source_splits.calibration) == 8 and len(ws.splits.eval.y) == 4
    from autoquant.sources.data import image_folder

    assert len(image_folder._files(tmp_path / "images")[0]) == 10  # the checkpoint copies are not samples
    (tmp_path / "images" / "dogs" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    exp = folder_experiment(tmp_path, tmp_path / "images", resize=9)  # another cache entry: decoded again
    before = set((cache_dir / "images").iterdir())
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "q")[::2], "4.png is not a readable image")
    assert set((cache_dir / "images").iterdir()) - before <= {p for p in (cache_dir / "images").glob("*.lock")}


def fixed_batch_model(batch: int) -> onnx.ModelProto:
    """conv → flatten → classifier on an input whose batch is fixed to `batch` (an export with batch 1, say)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(256, 5)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["output"], name="fc")]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def hidden_batch_model() -> onnx.ModelProto:
    """A dynamic batch on the input, and a Reshape inside that hard-codes 32 (seen in real exports)."""
    model = fixed_batch_model(32)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    flat.CopyFrom(helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([32, 256], np.int64), "shape"))
    return model


@pytest.mark.parametrize("batch", [1, 7])
def test_a_model_with_a_fixed_batch_is_fed_at_that_batch(tmp_path, capsys, batch):
    onnx.save(fixed_batch_model(batch), str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(45, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", input=x)
    exp = write_experiment(tmp_path / "fixed.yaml", name=f"fixed{batch}", model={"onnx": "model.onnx"},
                           data={"source": "npz", "path": "data.npz", "calibration_size": 20, "eval_size": 25},
                           eval={"metric": "cosine", "latency_repeats": 2}, search={"trials": 4, "objective": "bitops"})
    ws = Workspace(load_experiment(exp))
    # every eval sample scored once, as the model computes it alone
    sess = ws.evaluator.session(ws.fp32_model)
    alone = np.concatenate([sess.run(None, {"input": x[i : i + batch]})[0][:1] if batch == 1 else
                            sess.run(None, {"input": np.repeat(x[i : i + 1], batch, 0)})[0][:1] for i in range(45)])
    order = ws.splits.eval.rows
    np.testing.assert_allclose(ws.reference.outputs, alone[order], rtol=1e-5, atol=1e-5)
    for command in (["quantize", exp, "--out", tmp_path / "q"], ["search", exp, "--out", tmp_path / "run"],
                    ["evaluate", tmp_path / "run" / "best" / "model.int8.onnx", exp]):
        code, _, err = cli(capsys, *command)
        assert code == 0 and "Traceback" not in err, err


def test_a_batch_fixed_inside_the_model_pads_short_batches_or_names_the_setting(tmp_path, capsys):
    onnx.save(hidden_batch_model(), str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "data.npz", input=np.random.default_rng(1).normal(size=(90, 3, 8, 8)).astype(np.float32))
    data = {"source": "npz", "path": "data.npz", "calibration_size": 44, "eval_size": 46}
    exp = write_experiment(tmp_path / "hidden.yaml", name="hidden", model={"onnx": "model.onnx"}, data=data,
                           eval={"metric": "cosine", "latency_repeats": 2})
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "q")[::2],
                          "cannot run the model on a batch of 46 eval sample(s)")  # the eval batch of 100
    exp = write_experiment(tmp_path / "hidden32.yaml", name="hidden32", model={"onnx": "model.onnx"}, data=data,
                           quantization={"calibration_batch_size": 32},
                           eval={"metric": "cosine", "latency_repeats": 2, "batch_size": 32, "latency_batch_size": 32})
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0 and "short batches are padded" in err, err
    assert json.loads(out)["accuracy"] > 99.0


def test_a_loader_that_never_ends_is_read_until_the_splits_have_their_samples(tmp_path, capsys):
    onnx.save(conv_model([np.ones((4, 3, 3, 3))]), str(tmp_path / "model.onnx"))
    (tmp_path / "stream.py").write_text(textwrap.dedent('''
        import itertools
        from pathlib import Path

        import numpy as np


        def forever():
            rng = np.random.default_rng(0)
            for i in itertools.count():
                with open(Path(__file__).with_name("batches.txt"), "a") as f:
                    f.write(f"{i}\\n")
                yield {"input": rng.normal(size=(7, 3, 8, 8)).astype(np.float32)}
    '''))
    exp = write_experiment(tmp_path / "stream.yaml", name="stream", model={"onnx": "model.onnx"},
                           data={"source": "python", "loader": "stream.py:forever", "calibration_size": 20,
                                 "eval_size": 30}, eval={"metric": "cosine", "latency_repeats": 2})
    ws = Workspace(load_experiment(exp))
    assert len(ws.splits.calibration) == 20 and len(ws.splits.eval) == 30 and len(ws.splits.confirm) == 15
    # 10 batches of 7 hold the 65 samples needed (the confirmation's 15 after the others): not one more is asked for
    assert len((tmp_path / "batches.txt").read_text().split()) == 10
    code, _, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q")
    assert code == 0, err


def empty_and_nan_model() -> onnx.ModelProto:
    """conv → [an empty slice of it, concatenated back] → classifier, plus a side Gemm with NaN weights whose
    output the model masks out (IsNaN → Where): zero-element and all-NaN tensors inside, finite outputs."""
    rng = np.random.default_rng(0)
    nan_w = rng.normal(size=(256, 5)).astype(np.float32)
    nan_w[3, 2] = np.nan
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(256, 5)).astype(np.float32), "fc"),
             numpy_helper.from_array(nan_w, "nan_fc"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
             *(numpy_helper.from_array(np.array([v], np.int64), n) for v, n in ((0, "s"), (0, "e"), (1, "ax")))]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Slice", ["r", "s", "e", "ax"], ["empty"], name="empty_slice"),
             helper.make_node("Concat", ["r", "empty"], ["joined"], name="join", axis=1),
             helper.make_node("Flatten", ["joined"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc"),
             helper.make_node("Gemm", ["f", "nan_fc"], ["nan_out"], name="nan_fc"),
             helper.make_node("IsNaN", ["nan_out"], ["is_nan"], name="is_nan"),
             helper.make_node("Where", ["is_nan", "zero", "nan_out"], ["masked"], name="mask"),
             helper.make_node("Add", ["logits", "masked"], ["output"], name="add")]
    graph = helper.make_graph(nodes, "holes", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_empty_and_nan_tensors_are_calibrated_around(tmp_path, capsys):
    """Empty tensors have nothing to quantize (every range algorithm answers (0, 0) for them); a layer with NaN
    weights can only stay float: the default search runs, every range algorithm included."""
    exp = user_experiment(tmp_path, empty_and_nan_model(), eval={"metric": "agreement"}, search={"trials": 16})
    code, _out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--algorithm", "histogram", "--json")
    assert code == 0 and "Traceback" not in err, err
    assert "held no values on the calibration data (e.g. empty)" in err and "NaN or Inf in their weights" in err
    record = json.loads((tmp_path / "q" / "record.json").read_text())
    assert {la["name"]: la["quantized"] for la in record["layers"]} == {"conv": True, "fc": True, "nan_fc": False}
    code, _, err = cli(capsys, "search", exp, "--out", tmp_path / "run")
    assert code == 0 and "Traceback" not in err, err
    code, _, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q2", "--plan", write_plan(tmp_path))
    assert_one_line_error(code, err, "layer nan_fc has NaN or Inf in its weights: it can only stay float")


def write_plan(tmp: Path) -> Path:
    (tmp / "plan.yaml").write_text("default: {quantize: true}\n")
    return tmp / "plan.yaml"


def test_agreement_on_an_output_with_one_entry_per_position_is_refused(tmp_path, capsys):
    """A per-sample probability map [N, T, 1]: its arg-max is 0 everywhere, agreement 100 % for any plan."""
    w = numpy_helper.from_array(np.ones((1, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["output"], name="map")]
    model = _graph(nodes, [X], [w, numpy_helper.from_array(np.array([0, 64, 1], np.int64), "shape")], out_shape=("batch", 64, 1))
    exp = user_experiment(tmp_path, model, eval={"metric": "agreement"})
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "q")[::2],
                          "which has 1 entry here (shape (64, 1) per sample): every plan would agree 100 %")


def lstm_and_deconv_model() -> onnx.ModelProto:
    """A MatMul and a Conv (the plan's layers) around an LSTM and a ConvTranspose (compute no plan quantizes)."""
    rng = np.random.default_rng(0)
    f = lambda *shape: rng.normal(size=shape).astype(np.float32) * 0.5
    inits = [numpy_helper.from_array(f(4, 4), "wm"), numpy_helper.from_array(f(1, 24, 4), "wx"),
             numpy_helper.from_array(f(1, 24, 6), "wr"), numpy_helper.from_array(f(6, 2, 2, 2), "wt"),
             numpy_helper.from_array(f(3, 2, 1, 1), "wc"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0, 6, 1, 8], np.int64), "to_map")]
    nodes = [helper.make_node("MatMul", ["input", "wm"], ["m"], name="proj"),
             helper.make_node("Transpose", ["m"], ["tm"], name="time_major", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["tm", "wx", "wr"], ["y"], name="lstm", hidden_size=6),
             helper.make_node("Squeeze", ["y", "one"], ["ys"], name="squeeze"),
             helper.make_node("Transpose", ["ys"], ["yb"], name="batch_major", perm=[1, 2, 0]),
             helper.make_node("Reshape", ["yb", "to_map"], ["img"], name="to_map"),
             helper.make_node("ConvTranspose", ["img", "wt"], ["up"], name="up", strides=[2, 2]),
             helper.make_node("Conv", ["up", "wc"], ["out4"], name="head"),
             helper.make_node("Flatten", ["out4"], ["output"], name="flat")]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 96])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compute_no_plan_quantizes_is_reported_apart_everywhere(tmp_path, capsys):
    """ConvTranspose and LSTM: listed by `layers`, left out of `layers_run_as`, reported on their own by `inspect`
    — which accepts the export's own record and refuses one whose modes the file does not build."""
    exp = user_experiment(tmp_path, lstm_and_deconv_model(), shape=(8, 4), eval={"metric": "cosine"})
    code, out, err = cli(capsys, "layers", exp)
    assert code == 0 and "float (not quantized" in out and "LSTM" in out and "ConvTranspose" in out, err
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0, err
    assert json.loads(out)["layers_run_as"] == {"integer": 2}
    code, out, err = cli(capsys, "inspect", tmp_path / "q" / "model.int8.onnx", "--record", tmp_path / "q" / "record.json",
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [la["name"] for la in report["layers"]] == ["proj", "head"] and report["disagreements"] == []
    assert {(o["name"], o["op_type"]) for o in report["other_compute"]} == {("lstm", "LSTM"), ("up", "ConvTranspose")}
    record = json.loads((tmp_path / "q" / "record.json").read_text())
    proj = next(la for la in record["layers"] if la["name"] == "proj")
    proj.update(mode="dynamic", data=None, choice={"weight_granularity": "per_channel"})  # the file has static Q/DQ
    (tmp_path / "dynamic.json").write_text(json.dumps(record))
    code, _, err = cli(capsys, "inspect", tmp_path / "q" / "model.int8.onnx", "--record", tmp_path / "dynamic.json")
    assert code == 1 and "proj: the record says dynamic, the file builds it as int8" in err, err


def test_a_sequence_typed_output_is_one_line(tmp_path, capsys):
    """The scored output is a sequence of tensors (SplitToSequence): nothing to score as one array."""
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("SplitToSequence", ["c"], ["output"], name="split", axis=1)]
    out = helper.make_tensor_sequence_value_info("output", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "seq", [X], [out], [W]), opset_imports=[helper.make_opsetid("", 17)])
    exp = user_experiment(tmp_path, model, eval={"metric": "cosine"})
    assert_one_line_error(*cli(capsys, "quantize", exp, "--out", tmp_path / "q")[::2],
                          "output 'output' is a list, not a tensor: set eval.output to a tensor output of the model")


def test_a_checkpoint_with_other_keys_names_them(tmp_path, capsys):
    import torch

    (tmp_path / "net.py").write_text("import torch\n\ndef net():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
                                     "torch.nn.Flatten(), torch.nn.Linear(144, 5))\n")
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "head.bias": torch.zeros(5)}, tmp_path / "other.pt")
    exp = user_experiment(tmp_path)
    sections = yaml.safe_load(exp.read_text())
    sections["model"] = {"torch": "net.py:net", "checkpoint": "other.pt", "inputs": {"input": {"shape": [1, 3, 8, 8]}}}
    exp.write_text(yaml.safe_dump(sections))
    code, _, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q")
    assert_one_line_error(code, err, 'Missing key(s) in state_dict: "0.weight", "0.bias"')
    assert 'Unexpected key(s) in state_dict: "conv.weight", "head.bias"' in err


def test_sensitivity_full_with_a_metric_the_data_cannot_score_is_one_line(tmp_path, capsys):
    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), data={"y_key": None})
    code, _out, err = cli(capsys, "sensitivity", exp, "--full", "--out", tmp_path / "sens")
    assert_one_line_error(code, err, "top1 needs class-id labels and the data has none")
    assert err.count("top1 needs") == 1 and not (tmp_path / "sens").exists()


def test_a_full_disk_is_named_with_the_file_it_stopped(tmp_path, capsys, monkeypatch):
    def no_space(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]))
    monkeypatch.setattr(autoquant.fileio.os, "fsync", no_space)
    code, _, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q")
    assert_one_line_error(code, err, "No space left on device")
    assert re.search(r"cannot read or write /\S+: No space left on device", err.strip().splitlines()[-1]), err


def test_mlflow_failing_mid_study_is_reported_once(tmp_path, capsys, monkeypatch):
    """A tracking store that fails on every write (a full disk): the study and its export go on, one warning."""
    from mlflow import MlflowClient

    calls = []
    log_batch = MlflowClient.log_batch

    def full(*args, **kwargs):  # the study's own run is written; then the disk is full
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return log_batch(*args, **kwargs)

    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), search={"trials": 6, "sensitivity_k": []})
    monkeypatch.setattr(MlflowClient, "log_batch", full)
    code, _, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--quiet")
    assert code == 0 and "Traceback" not in err, err
    full = [line for line in err.splitlines() if "No space left" in line]
    assert len(full) == 1 and full[0].startswith("autoquant: warning: MLflow tracking store") and "are complete" in full[0]
    assert (tmp_path / "run" / "best" / "model.int8.onnx").is_file()


def test_a_trial_run_a_kill_left_running_is_logged_again_on_resume(tmp_path, capsys):
    from mlflow import MlflowClient

    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), search={"trials": 4, "sensitivity_k": []})
    assert cli(capsys, "search", exp, "--out", tmp_path / "run", "--quiet")[0] == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "hostile"]
    trial_runs = lambda: [r for r in client.search_runs([experiment.experiment_id], max_results=100)
                          if "autoquant.trial" in r.data.tags]
    killed = next(r for r in trial_runs() if r.data.tags["autoquant.trial"] == "1")
    client.update_run(killed.info.run_id, "RUNNING")  # created, never finished: what a kill -9 mid-log leaves
    assert cli(capsys, "search", exp, "--out", tmp_path / "run", "--quiet", "--trials", "6")[0] == 0
    runs = trial_runs()
    assert all(r.info.status != "RUNNING" for r in runs)
    assert sorted(int(r.data.tags["autoquant.trial"]) for r in runs) == list(range(6))


def test_a_model_the_checker_refuses_but_onnxruntime_runs_is_taken_and_so_are_its_exports(tmp_path, capsys, cache_dir):
    """An export whose output type has no shape (the PP-OCRv5 recognizer's, after pre-processing): onnx's checker
    refuses it, onnxruntime runs it. Every command takes it and autoquant's own export of it; pre-processing leaves
    nothing in the cache but its model."""
    model = fixed_batch_model(1)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(model)
    exp = user_experiment(tmp_path, model, eval={"metric": "cosine"})
    assert cli(capsys, "quantize", exp, "--out", tmp_path / "q")[0] == 0
    for argv in (["evaluate", tmp_path / "q" / "model.int8.onnx", exp],
                 ["inspect", tmp_path / "q" / "model.int8.onnx", "--record", tmp_path / "q" / "record.json"]):
        code, _, err = cli(capsys, *argv)
        assert code == 0 and "unreadable" not in err, err
    sha = Workspace(load_experiment(exp)).sha
    assert {p.name for p in (cache_dir / "models" / sha[:16]).iterdir()} == {"preprocessed.onnx", "preprocessed.lock"}


def test_a_built_in_model_is_the_same_model_in_every_fresh_cache(tmp_path):
    """Another worker, machine or a cleared cache resumes the same study: the trained digits CNN's hash is one."""
    exp = write_experiment(tmp_path / "digits.yaml", name="digits", model={"builtin": "digits_cnn"},
                           data={"source": "digits", "train_size": 1000, "calibration_size": 100, "eval_size": 100})
    shas = {Workspace(dataclasses.replace(load_experiment(exp), cache_dir=tmp_path / f"cache{i}")).sha for i in range(2)}
    assert len(shas) == 1


# --- the new stages' files (round 4) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A finished digits study (its run directory), shared by the round's cases that read one."""
    tmp = tmp_path_factory.mktemp("quick")
    exp = write_experiment(tmp / "digits.yaml", name="digits_quick", model={"builtin": "digits_cnn"},
                           data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
                           eval={"latency_repeats": 2}, search={"trials": 4, "sensitivity_k": [], "max_accuracy_drop": 5.0})
    assert main([str(a) for a in ("search", exp, "--out", tmp / "run", "--quiet")]) == 0
    return exp, tmp / "run"


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_report_never_replaces_a_report_of_the_users(quick_run, tmp_path, capsys):
    _, run = quick_run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("my notes")
    assert_one_line_error(*cli(capsys, "report", run, "--out", tmp_path / "out")[::2], "exists and autoquant did not write it")
    assert (tmp_path / "out" / "report.html").read_text() == "my notes"
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "report.md").write_text("my notes")  # comparing studies writes report.md too
    assert_one_line_error(*cli(capsys, "report", run, run, "--out", tmp_path / "both")[::2], "did not write it")
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["report.md"]
    code, _, err = cli(capsys, "report", run, "--out", tmp_path / "fresh")
    assert code == 0, err
    assert cli(capsys, "report", run, "--out", tmp_path / "fresh")[0] == 0  # its own report is replaced


@pytest.mark.parametrize("content", ["not json", '{"x": 1}', '["experiment"]'])
def test_a_damaged_run_json_is_one_line_naming_it(quick_run, tmp_path, capsys, content):
    _, run = quick_run
    broken = copy_run(run, tmp_path / "run")
    (broken / "run.json").write_text(content)
    for argv in (["finetune", broken, "--steps", "1"], ["report", broken, "--out", tmp_path / "r"],
                 ["export", broken, "--out", tmp_path / "e"]):
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, "run.json")
        assert "experiment.yaml" in err.strip().splitlines()[-1]


def test_an_empty_or_damaged_study_db_is_one_line_and_left_as_it_is(quick_run, tmp_path, capsys):
    _, run = quick_run
    broken = copy_run(run, tmp_path / "run")
    for f in broken.glob("study.db-*"):
        f.unlink()
    (broken / "study.db").write_bytes(b"")
    for argv in (["report", broken, "--out", tmp_path / "r"], ["export", broken, "--out", tmp_path / "e"]):
        assert_one_line_error(*cli(capsys, *argv)[::2], "study.db is empty (0 bytes)")
    assert (broken / "study.db").stat().st_size == 0  # no command made a new, empty study of it
    good = (run / "study.db").read_bytes()
    (broken / "study.db").write_bytes(good[:4096] + b"\0" * 4096 + good[8192:])
    code, _, err = cli(capsys, "report", broken, "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err and "search.storage" not in err, err
    assert str(broken / "study.db") in err.strip().splitlines()[-1]


def test_a_storage_that_fails_as_a_trial_ends_is_one_line(tmp_path, capsys, monkeypatch):
    """Optuna asserts ("Should not reach.") when the write that ends a trial fails: a full disk mid-study."""
    import sqlalchemy
    from optuna.storages import RDBStorage

    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), search={"trials": 4, "sensitivity_k": []})

    def full(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database or disk is full"))

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", full)
    code, _, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(code, err, "database or disk is full")
    assert f"{tmp_path / 'run' / 'study.db'} failed" in err and f"free space on the disk holding {tmp_path / 'run'}" in err


def test_a_full_output_disk_is_named_not_the_caches_template(tmp_path, capsys, monkeypatch):
    """The run directory's stores start as copies of templates in the cache: shutil names its source on ENOSPC."""
    import shutil

    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), search={"trials": 2, "sensitivity_k": []})
    assert cli(capsys, "search", exp, "--out", tmp_path / "first", "--quiet")[0] == 0  # the templates exist now
    real = shutil.copyfile

    def full(src, dst, *args, **kwargs):
        if "stores" in str(src):
            raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full)
    code, _, err = cli(capsys, "search", exp, "--out", tmp_path / "second", "--quiet")
    assert_one_line_error(code, err, "No space left on device")
    last = err.strip().splitlines()[-1]
    assert str(tmp_path / "second") in last and "stores" not in last, last


def test_onnxruntimes_own_error_log_stays_off_a_one_line_error(tmp_path, capsys):
    """A Reshape that hard-codes the batch: onnxruntime logs each refused run (several lines with its source file)
    before autoquant reports it in one line."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(64, 5)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([32, 64], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["output"], name="fc")]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])
    exp = user_experiment(tmp_path, _graph(nodes, [x], inits, out_shape=("batch", 5)), shape=(3, 4, 4),
                          eval={"metric": "cosine"})
    code, _, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q")
    assert_one_line_error(code, err, "cannot run the model on a batch")
    assert "onnxruntime_src" not in err and "[E:onnxruntime" not in err, err


def test_presets_are_words_in_any_order_and_limits_are_numbers(digits_yaml, tmp_path, capsys):
    from autoquant.engine import preset_choice

    assert preset_choice("int8-per-tensor+adaround+bc") == preset_choice("int8-per-tensor+bc+adaround")
    assert_one_line_error(*cli(capsys, "quantize", digits_yaml, "--plan", "int8-per-tensor+bc+fast", "--out",
                               tmp_path / "q")[::2], "unknown word '+fast'")
    for value in ("-inf", "nan", "-1e999"):
        assert_one_line_error(*cli(capsys, "search", digits_yaml, "--max-accuracy-drop", value)[::2],
                              "must be a finite number")


def test_a_limit_no_plan_can_meet_says_the_trials_were_stopped_early(tmp_path, capsys):
    exp = write_experiment(tmp_path / "beat.yaml", name="digits_beat", model={"builtin": "digits_cnn"},
                           data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
                           eval={"latency_repeats": 2}, search={"trials": 3, "sensitivity_k": [], "warm_start": False})
    code, _, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--max-accuracy-drop", "-20", "--quiet")
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert "stopped early" in last and "beat FP32 by 20 points" in last and "every trial failed" not in last, last


def test_a_quiet_search_with_int4_layers_and_its_export_print_no_library_chatter(quick_run, tmp_path, capsys):
    """onnxruntime's int4 quantizer logs a line per MatMul it skips (its import sets the root logger to INFO)."""
    exp, run = quick_run
    resumed = copy_run(run, tmp_path / "run")
    plan = tmp_path / "int4.yaml"
    plan.write_text("layers:\n  re:.*fc.*:\n    mode: int4\n")
    code, _, err = cli(capsys, "quantize", exp, "--plan", plan, "--out", tmp_path / "q", "--json")
    assert code == 0, err
    assert json.loads(Path(tmp_path / "q" / "record.json").read_text())["layers"][-1]["mode"] == "int4"
    code, _, err = cli(capsys, "search", exp, "--out", resumed, "--trials", "12", "--quiet")
    code2, _, err2 = cli(capsys, "export", resumed, "--out", tmp_path / "e", "--quiet")
    assert code == 0 and code2 == 0, err + err2
    for text in (err, err2):
        assert "[INFO]" not in text and "skip to quantize" not in text, text


def test_a_truncated_cached_built_in_model_is_made_again(tmp_path, caplog):
    from autoquant.zoo import catalog

    exp = write_experiment(tmp_path / "digits.yaml", name="digits", model={"builtin": "digits_cnn"},
                           data={"source": "digits", "train_size": 1000, "calibration_size": 100, "eval_size": 100},
                           cache_dir=str(tmp_path / "cache"))
    first = Workspace(load_experiment(exp)).prepared.source
    assert first.read_bytes() == next(catalog.SHIPPED.glob("digits_cnn-*.onnx")).read_bytes()
    first.write_bytes(first.read_bytes()[:1000])
    with caplog.at_level("WARNING", logger="autoquant"):
        again = Workspace(load_experiment(exp))
        assert again.sha == autoquant.graph.ingest.file_sha256(next(catalog.SHIPPED.glob("digits_cnn-*.onnx")))
    assert "is unreadable" in caplog.text and "making it again" in caplog.text


def test_the_built_in_mobilenet_is_the_shipped_model(shared_data, tmp_path):
    """The MobileNet experiment's model is shipped trained: every fresh cache, on any machine, has its bytes."""
    from autoquant.graph.ingest import file_sha256
    from autoquant.zoo import catalog

    sections = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "cifar10_mobilenet.yaml").read_text())
    sections["data"]["path"] = str(shared_data / "cifar10_test.npz")
    exp = write_experiment(tmp_path / "m.yaml", **sections, cache_dir=str(tmp_path / "cache"))
    ws = Workspace(load_experiment(exp))
    shipped = catalog.shipped_model(catalog.trained_tag("cifar10_mobilenet", ws.source_splits.train.sha256(), 0))
    assert shipped is not None and ws.sha == file_sha256(shipped)


def test_apply_out_an_existing_directory_or_the_source_is_refused(quick_run, tmp_path, capsys):
    _, run = quick_run
    record = run / "best" / "record.json"
    source = json.loads(record.read_text())["source_model"]
    (tmp_path / "dir").mkdir()
    assert_one_line_error(*cli(capsys, "apply", source, record, "--out", tmp_path / "dir")[::2],
                          f"--out {tmp_path / 'dir'} is a directory")
    before = Path(source).read_bytes()
    assert_one_line_error(*cli(capsys, "apply", source, record, "--out", source)[::2], "is the FP32 model itself")
    assert Path(source).read_bytes() == before


def test_an_edited_record_is_refused_not_applied_with_the_edit_ignored(tmp_path, capsys):
    """An int4 zero point outside 0..15, or weight parameters that are not the ones the FP32 weights give."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(64, 32)).astype(np.float32), "w")]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])
    model = _graph([helper.make_node("MatMul", ["input", "w"], ["output"], name="fc")], [x], inits,
                   out_shape=("batch", 32))
    exp = user_experiment(tmp_path, model, shape=(64,), eval={"metric": "cosine"})
    (tmp_path / "int4.yaml").write_text("default: {mode: int4, block_size: 32}\n")
    assert cli(capsys, "quantize", exp, "--plan", tmp_path / "int4.yaml", "--out", tmp_path / "q")[0] == 0
    record = json.loads((tmp_path / "q" / "record.json").read_text())
    assert record["layers"][0]["mode"] == "int4"
    for value, message in ((99, "offset_w[0] 99 is outside [0, 15]"), (None, "its weight offset_w are not those")):
        edited = json.loads(json.dumps(record))
        offsets = edited["layers"][0]["weight"]["offset_w"]
        offsets[0] = value if value is not None else (offsets[0] + 1) % 16
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        assert_one_line_error(*cli(capsys, "apply", tmp_path / "model.onnx", tmp_path / "edited.json", "--out",
                                   tmp_path / "a.onnx")[::2], message)
        assert not (tmp_path / "a.onnx").exists()


def test_fine_tuned_weights_that_are_not_finite_are_refused(digits_ws, tmp_path, capsys):
    """A weights file whose values are NaN, its hash in the record matching: apply refuses it by name."""
    from autoquant.engine import Tuned, preset_plan, quantize
    from autoquant.finetune import weights as tuned_weights
    from autoquant.record import FinetuneRecord

    plan = preset_plan(digits_ws, "int8-per-channel")
    layer = digits_ws.graph.layers[0]
    w = numpy_helper.to_array(next(i for i in digits_ws.model.graph.initializer if i.name == layer.weight))
    info = FinetuneRecord(1, 1e-4, 8, 0, "calibration", False, 0.0, "", 1, 0.1, 0.1, 1, None, 0.1, "", "")
    r = quantize(digits_ws, plan, tmp_path / "q", tuned=Tuned({layer.weight: w.copy()}, info))
    blob = tuned_weights.to_bytes({layer.weight: np.full_like(w, np.nan)})
    (tmp_path / "q" / tuned_weights.FILE).write_bytes(blob)
    record = json.loads(r.record_path.read_text())
    record["finetune"]["weights_sha256"] = tuned_weights.sha256(blob)
    r.record_path.write_text(json.dumps(record))
    code, _, err = cli(capsys, "apply", digits_ws.prepared.source, r.record_path, "--out", tmp_path / "a.onnx")
    assert_one_line_error(code, err, f"fine-tuned weight '{layer.weight}' holds")
    assert "NaN or Inf" in err and not (tmp_path / "a.onnx").exists()


def planted_checkpoint(path: Path, witness: Path) -> None:
    """A pickle that runs code when loaded with the full unpickler (what torch.load(weights_only=False) is)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    path.write_bytes(pickle.dumps({"key": Payload()}))


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "planted"])
def test_a_damaged_or_planted_finetune_checkpoint_is_set_aside_never_run(quick_run, tmp_path, capsys, damage):
    from autoquant.jobs.finetune import CHECKPOINT

    _, run = quick_run
    work = copy_run(run, tmp_path / "run")
    ckpt, witness = work / CHECKPOINT, tmp_path / "pwned"
    code, _, err = cli(capsys, "finetune", work, "--steps", "30", "--out", tmp_path / "whole")
    assert code == 0, err
    if damage == "planted":
        planted_checkpoint(ckpt, witness)
    else:
        good = tmp_path / "good.ckpt"
        import torch

        torch.save({"key": "x", "step": 1, "losses": [1.0]}, good)
        blob = good.read_bytes()
        ckpt.write_bytes({"random": os.urandom(4096), "truncated": blob[: len(blob) // 2], "empty": b""}[damage])
    code, out, err = cli(capsys, "finetune", work, "--steps", "30", "--out", tmp_path / "again", "--json")
    assert code == 0 and "Traceback" not in err, err
    assert not witness.exists()  # the planted code never ran
    assert "cannot be read as a fine-tuning checkpoint" in err and "going on without it" in err
    aside = list(work.glob(f"{CHECKPOINT}.damaged-*"))
    assert len(aside) == 1 and not ckpt.exists()
    # the run went on from scratch and finished: the next one needs no user action
    assert json.loads(out)["resumed_at"] == 0
    assert cli(capsys, "finetune", work, "--steps", "30", "--out", tmp_path / "third")[0] == 0


def test_ctrl_c_during_fine_tuning_keeps_the_steps_done(quick_run, tmp_path, capsys, monkeypatch):
    """Interrupted before its first periodic checkpoint: the steps done are saved, and the rerun resumes after them."""
    import torch

    from autoquant.jobs.finetune import CHECKPOINT

    _, run = quick_run
    work = copy_run(run, tmp_path / "run")
    steps = {"n": 0}
    real = torch.optim.Adam.step

    def interrupted(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted)
    code, _, err = cli(capsys, "finetune", work, "--steps", "40", "--out", tmp_path / "k")
    assert code == 130 and "rerun the same command to resume" in err
    assert (work / CHECKPOINT).is_file()
    monkeypatch.setattr(torch.optim.Adam, "step", real)
    code, out, err = cli(capsys, "finetune", work, "--steps", "40", "--out", tmp_path / "k", "--json")
    assert code == 0, err
    assert json.loads(out)["resumed_at"] == 3


def children() -> list[int]:
    """This process's live child processes (Linux /proc)."""
    me = str(os.getpid())
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == me and fields.get("State", "").strip()[:1] not in ("Z", "X"):
            out.append(int(status.parent.name))
    return out


def test_no_process_outlives_an_in_process_search(tmp_path):
    from autoquant.api import search

    before = set(children())
    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), search={"trials": 3, "sensitivity_k": []})
    result = search(load_experiment(exp), tmp_path / "run")
    assert result.completed == 3
    assert set(children()) - before == set()


def test_sigterm_ends_a_search_like_ctrl_c_and_leaves_no_temporary_files(digits_yaml, tmp_path):
    import signal
    import sys
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "autoquant.cli", "search", str(digits_yaml), "--out",
                             str(tmp_path / "run"), "--trials", "200", "--quiet"], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp.glob("autoquant-measure-*")):
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"rerun the same command to resume" in err, err
    # onnxruntime (a session id file) and torch (a compiler cache) keep their own files there: not ours to remove
    assert [p.name for p in tmp.iterdir() if "autoquant" in p.name] == []


def test_a_quantized_model_far_better_than_fp32_is_flagged(digits_yaml, tmp_path, capsys):
    """A metric where lower is better (an error rate, given as a score): every worse model 'gains' points."""
    (tmp_path / "metric.py").write_text("def error_rate(outputs, labels, reference):\n"
                                        "    return float((outputs.argmax(axis=1) != labels).mean() * 100)\n")
    sections = yaml.safe_load(digits_yaml.read_text())
    sections["eval"]["metric"] = "metric.py:error_rate"
    exp = write_experiment(tmp_path / "lower.yaml", **sections)
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy_drop"] < -2
    assert "points above the FP32 model" in err and "metric" in err
    assert any("points above the FP32 model" in n for n in json.loads((tmp_path / "q" / "record.json").read_text())["notes"])


def test_an_npz_without_labels_says_so(tmp_path, caplog):
    exp = user_experiment(tmp_path, conv_model([np.ones((4, 3, 3, 3))]), data={"y_key": None}, eval={"metric": "cosine"})
    with caplog.at_level("INFO", logger="autoquant"):
        assert len(Workspace(load_experiment(exp)).splits.eval) == 20
    assert "data.y_key is null" in caplog.text and "'None'" not in caplog.text


def test_recovery_fitting_shows_progress_and_a_default_search_shows_no_empty_bar(digits_yaml, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.setattr(autoquant.progress, "_terminal", lambda: True)  # as on a terminal: bars are drawn
    sections = yaml.safe_load(digits_yaml.read_text())
    exp = write_experiment(tmp_path / "fresh.yaml", **sections, cache_dir=str(tmp_path / "cache"))  # nothing fitted yet
    code, _, err = cli(capsys, "quantize", exp, "--plan", "int8-per-channel+adaround", "--out", tmp_path / "q")
    assert code == 0, err
    assert "recovery fitting" in err and "adaptive rounding and bias correction of 7 layer choice(s)" in err, err
    code, _, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--trials", "2")
    assert code == 0, err
    # the default space fits bias correction and rounding as the study needs them: every bar has a total
    assert "recovery fitting" in err and not re.search(r"(?<![\d.])0choice", err), err
