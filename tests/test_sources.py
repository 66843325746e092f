"""Bring your own model and data: several inputs, integer inputs, dynamic axes, PyTorch modules, image
folders, Python loaders, labels of any shape, label-free metrics — and one line for each bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
from conftest import write_experiment
from onnx import TensorProto, helper, numpy_helper

from autoquant import Workspace, load_experiment
from autoquant.cli import main
from autoquant.evaluate.metrics import agreement, cosine, top5

TRANSFORMER = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads, self.qkv, self.out = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x, bias):
            b, t, d = x.shape
            q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).split(d, -1))
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias, -1) @ v
            x = self.ln1(x + self.out(a.transpose(1, 2).reshape(b, t, d)))
            return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


    class Encoder(nn.Module):
        """A two-block BERT-style encoder: token ids and an attention mask in, 8 class scores out."""

        def __init__(self, vocab=50, d=32):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(64, d)
            self.blocks = nn.ModuleList([Block(d, 2) for _ in range(2)])
            self.head = nn.Linear(d, 8)

        def forward(self, input_ids, attention_mask):
            h = self.emb(input_ids) + self.pos(torch.arange(input_ids.shape[1]).unsqueeze(0))
            # the huge "minus infinity" of real exports (finfo.min), which calibration must survive
            bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(torch.float32).min
            for block in self.blocks:
                h = block(h, bias)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1))


    def encoder():
        return Encoder()
''')


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, argv, message):
    code, _, err = cli(capsys, *argv)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("autoquant: error:") and message in last, err
    assert "Traceback" not in err


def token_data(path, n=96, seq=12, ids_dtype=np.int64, drop=None):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(n, seq)).astype(ids_dtype)
    lengths = rng.integers(4, seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    arrays = {"input_ids": ids * mask.astype(ids_dtype), "attention_mask": mask}
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return path


def encoder_workdir(tmp_path_factory, name: str, n: int = 96):
    """A directory with the test encoder's factory (encoder.py) and n token sequences (tokens.npz)."""
    d = tmp_path_factory.mktemp(name)
    (d / "encoder.py").write_text(TRANSFORMER)
    token_data(d / "tokens.npz", n=n)
    return d


@pytest.fixture(scope="module")
def transformer_dir(tmp_path_factory):
    return encoder_workdir(tmp_path_factory, "transformer")


def transformer_exp(d, name="encoder", data=None, **sections):
    return write_experiment(
        d / f"{name}.yaml", name=name,
        model={"torch": "encoder.py:encoder", "inputs": {"input_ids": {"shape": [2, 12], "dtype": "int64", "dynamic": [0, 1]},
                                                         "attention_mask": {"shape": [2, 12], "dtype": "int64", "dynamic": [0, 1]}}},
        data={"source": "npz", "path": "tokens.npz", "y_key": None, "calibration_size": 32, "eval_size": 64, **(data or {})},
        eval={"metric": "agreement", "latency_repeats": 2, "batch_size": 32, "latency_batch_size": 16},
        **sections,
    )


def test_transformer_with_integer_inputs_and_dynamic_axes_is_searched_label_free(transformer_dir, capsys):
    # a toy encoder runs about as fast quantized as FP32: under bitops its export is not vetoed by this CPU's timing
    exp = transformer_exp(transformer_dir, search={"trials": 8, "sensitivity_k": [1], "max_accuracy_drop": 10.0,
                                                   "objective": "bitops"})
    ws = Workspace(load_experiment(exp))
    assert [(i.name, str(i.dtype), i.shape) for i in ws.prepared.inputs] == [  # in forward() order
        ("input_ids", "int64", ("batch", "input_ids_dim1")), ("attention_mask", "int64", ("batch", "attention_mask_dim1"))]
    assert ws.graph.float_tensors and "input_ids" not in ws.graph.float_tensors  # token ids are fed, never quantized
    g = ws.graph
    assert [layer.op_type for layer in g.layers] == ["MatMul"] * 8 + ["Gemm"]  # qkv, out, ff1, ff2 per block; head
    assert sorted(op.op_type for op in g.float_ops) == ["MatMul"] * 4  # q·kᵀ and ·v per block stay float
    assert ws.reference.accuracy == 100.0  # agreement of FP32 with itself

    code, out, err = cli(capsys, "layers", exp)
    assert code == 0 and "float (not quantized; 32x32 in bitops)" in out and "4 float compute ops" in out, err
    code, out, err = cli(capsys, "search", exp, "--out", transformer_dir / "run", "--quiet", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["met"] and result["chosen"]["accuracy"] >= 90.0
    model = transformer_dir / "run" / "best" / "model.int8.onnx"
    code, out, err = cli(capsys, "inspect", model, "--record", transformer_dir / "run" / "best" / "record.json")
    assert code == 0 and "integer" in out, err


def test_transformer_bad_inputs_are_one_line(transformer_dir, capsys):
    missing = transformer_exp(transformer_dir, "missing", data={"path": str(token_data(transformer_dir / "m.npz", drop="attention_mask"))})
    one_line_error(capsys, ["quantize", missing, "--out", transformer_dir / "o"], "has no array named after the model input 'attention_mask' (it has input_ids)")
    floats = transformer_exp(transformer_dir, "floats", data={"path": str(token_data(transformer_dir / "f.npz", ids_dtype=np.float32))})
    one_line_error(capsys, ["quantize", floats, "--out", transformer_dir / "o"], "'input_ids' is float32 but the model input is int64")
    top1 = transformer_exp(transformer_dir, "top1")
    text = top1.read_text().replace("metric: agreement", "metric: top1")
    top1.write_text(text)
    one_line_error(capsys, ["quantize", top1, "--out", transformer_dir / "o"], "top1 needs class-id labels and the data has none")
    assert not (transformer_dir / "o").exists()


def two_input_model():
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "other"], ["sum"], name="add"),
             helper.make_node("GlobalAveragePool", ["sum"], ["pool"], name="pool"),
             helper.make_node("Flatten", ["pool"], ["output"], name="flat")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8]),
                                             helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_two_float_inputs_are_both_fed_and_calibrated(tmp_path, capsys):
    onnx.save(two_input_model(), str(tmp_path / "two.onnx"))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "two.npz", input=rng.normal(size=(60, 3, 8, 8)).astype(np.float32),
             other=rng.normal(size=(60, 4, 8, 8)), y=rng.integers(0, 4, 60))  # float64 'other': converted losslessly
    exp = write_experiment(tmp_path / "two.yaml", name="two", model={"onnx": "two.onnx"},
                           data={"source": "npz", "path": "two.npz", "calibration_size": 30, "eval_size": 30},
                           eval={"metric": "agreement", "latency_repeats": 2})
    ws = Workspace(load_experiment(exp))
    assert {"input", "other"} <= set(ws.stats)  # both graph inputs are activations: calibrated
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] > 80.0


def test_dynamic_spatial_shapes_are_taken_from_a_calibration_batch(tmp_path, capsys):
    """ONNX shape inference cannot size a conv on an [N, 3, h, w] input; one calibration batch does, and
    FLOPs are those of the data's 8×8 images."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], name="conv", pads=[1, 1, 1, 1])], "dyn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, "h", "w"])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dyn.onnx"))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(40, 3, 8, 8)).astype(np.float32))
    exp = write_experiment(tmp_path / "dyn.yaml", name="dyn", model={"onnx": "dyn.onnx"},
                           data={"source": "npz", "path": "d.npz", "calibration_size": 20, "eval_size": 20},
                           eval={"metric": "cosine", "latency_repeats": 2})
    ws = Workspace(load_experiment(exp))
    assert ws.graph.observed and ws.graph.layers[0].flops == 2 * 4 * 8 * 8 * 27
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 99.0, err


def test_model_whose_symbolic_shape_inference_fails(tmp_path, capsys):
    """A stride-2 branch upsampled and added back: onnxruntime's symbolic inference cannot prove h == 2·⌈h/2⌉
    and stops ("Incomplete symbolic shape inference"); pre-processing goes on without it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), n) for n in ("w", "wd")]
    inits.append(numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"))
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["input", "wd"], ["d"], name="down", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Resize", ["d", "", "scales"], ["u"], name="up", mode="nearest"),
             helper.make_node("Add", ["c", "u"], ["output"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, "h", "w"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "sym.onnx"))
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3, 8, 8)).astype(np.float32))
    exp = write_experiment(tmp_path / "sym.yaml", name="sym", model={"onnx": "sym.onnx"},
                           data={"source": "npz", "path": "d.npz", "calibration_size": 20, "eval_size": 20},
                           eval={"metric": "cosine", "latency_repeats": 2})
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 99.0, err
    assert "symbolic shape inference failed" in err
    assert not list(tmp_path.glob("sym_shape_infer_temp*"))  # its debug file never lands in the user's tree


def test_opset_11_model_gets_per_channel_weights(tmp_path, capsys):
    from conftest import conv_model

    rng = np.random.default_rng(0)
    model = conv_model([rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(4, 4, 3, 3))])
    model.opset_import[0].version = 11
    onnx.save(model, str(tmp_path / "old.onnx"))
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3, 8, 8)).astype(np.float32))
    exp = write_experiment(tmp_path / "old.yaml", name="old", model={"onnx": "old.onnx"},
                           data={"source": "npz", "path": "d.npz", "calibration_size": 20, "eval_size": 20},
                           eval={"metric": "cosine", "latency_repeats": 2})
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--plan", "int8-per-channel", "--json")
    assert code == 0, err
    q = onnx.load(str(tmp_path / "q" / "model.int8.onnx"))
    assert q.opset_import[0].version >= 13 and json.loads(out)["layers_run_as"] == {"integer": 2}


SEQUENCE_LOADER = textwrap.dedent('''
    import numpy as np


    def batches():
        rng = np.random.default_rng(0)
        for _ in range(5):
            x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
            yield {"input": x}, (x[:, 0].reshape(16, 64) > 0).astype(np.int64)  # labels (N, T)
''')
SEQUENCE_METRIC = textwrap.dedent('''
    def per_step_accuracy(outputs, labels):
        return float((outputs.argmax(-1) == labels).mean() * 100)
''')


def time_major_model():
    """[N, 3, 8, 8] → 2-class scores per pixel, time-major: [T=64, N, 2] (batch on axis 1)."""
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1, 0], w[0, 0] = 1.0, -1.0
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["output"], name="time_major", perm=[2, 0, 1])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [64, "batch", 2])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0, 2, 64]), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_python_loader_sequence_labels_and_a_metric_file_beside_the_experiment(tmp_path, capsys):
    (tmp_path / "loader.py").write_text(SEQUENCE_LOADER)
    (tmp_path / "seqmetric.py").write_text(SEQUENCE_METRIC)
    onnx.save(time_major_model(), str(tmp_path / "seq.onnx"))
    exp = write_experiment(tmp_path / "seq.yaml", name="seq", model={"onnx": "seq.onnx"},
                           data={"source": "python", "loader": "loader.py:batches", "calibration_size": 30, "eval_size": 50},
                           eval={"metric": "seqmetric.py:per_step_accuracy", "output_batch_axis": 1, "latency_repeats": 2})
    ws = Workspace(load_experiment(exp))
    assert ws.splits.eval.y.shape == (50, 64) and ws.reference.outputs.shape == (50, 64, 2)
    assert ws.reference.accuracy == 100.0
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 97.0, err

    axis0 = exp.read_text().replace("output_batch_axis: 1", "output_batch_axis: 0")
    (tmp_path / "axis0.yaml").write_text(axis0.replace("name: seq", "name: seq0"))
    one_line_error(capsys, ["quantize", tmp_path / "axis0.yaml", "--out", tmp_path / "o"], "set eval.output_batch_axis")
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "broken.yaml").write_text(axis0.replace("seqmetric.py:per_step_accuracy", "broken.py:f").replace("name: seq", "name: b"))
    one_line_error(capsys, ["quantize", tmp_path / "broken.yaml", "--out", tmp_path / "o"], "'broken.py:f' cannot be imported (SyntaxError")


IMAGE_NET = textwrap.dedent('''
    import torch
    from torch import nn


    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
''')


def test_image_folder_with_class_subfolders_and_a_torch_module(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("cats", "dogs")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, size=(20 + i, 24, 3), dtype=np.uint8) // (1 + c)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "net.py").write_text(IMAGE_NET)
    exp = write_experiment(tmp_path / "img.yaml", name="img",
                           model={"torch": "net.py:net", "inputs": {"image": {"shape": [1, 3, 16, 16]}}},
                           data={"source": "folder", "path": "images", "image": {"size": 16, "resize": 18},
                                 "calibration_size": 8, "eval_size": 16},
                           eval={"metric": "agreement", "latency_repeats": 2})
    ws = Workspace(load_experiment(exp))
    x = ws.splits.eval.column("image")
    assert x.shape == (16, 3, 16, 16) and x.dtype == np.float32 and sorted(set(ws.splits.eval.y)) == [0, 1]
    # the split selects rows of the decoded cache (memory-mapped), it does not copy the folder into memory
    assert isinstance(ws.splits.eval.inputs["image"], np.memmap) and len(ws.splits.eval.rows) == 16
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0 and json.loads(out)["fp32_accuracy"] == 100.0, err
    (tmp_path / "images" / "cats" / "0.jpg").write_bytes(b"not an image")
    (tmp_path / "bad.yaml").write_text(exp.read_text().replace("name: img", "name: bad"))
    one_line_error(capsys, ["quantize", tmp_path / "bad.yaml", "--out", tmp_path / "o"], "0.jpg is not a readable image")


def test_required_settings_of_a_source_are_named(tmp_path, capsys):
    exp = write_experiment(tmp_path / "e.yaml", name="e", model={"builtin": "digits_cnn"}, data={"source": "npz"})
    one_line_error(capsys, ["layers", exp], "data.path is required for data.source 'npz'")
    exp = write_experiment(tmp_path / "f.yaml", name="f", model={"builtin": "digits_cnn"}, data={"source": "tfrecord"})
    one_line_error(capsys, ["layers", exp], "data.source 'tfrecord' is unknown: use one of cifar10, digits, folder, npz, python")


def test_label_free_and_top5_metrics():
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert agreement(ref[::-1], None, ref) == 0.0 and agreement(ref, None, ref) == 100.0
    assert cosine(ref, None, ref) == pytest.approx(100.0) and cosine(-ref, None, ref) == pytest.approx(-100.0)
    logits = np.arange(20, dtype=np.float32).reshape(2, 10)
    assert top5(logits, np.array([9, 0]), None) == 50.0


def test_separate_calibration_data(tmp_path, capsys):
    """The user's calibration file and eval file: calibration samples come only from the first."""
    onnx.save(two_input_model(), str(tmp_path / "two.onnx"))
    rng = np.random.default_rng(2)
    for name, n, scale in (("eval", 50, 1.0), ("calib", 20, 3.0)):
        np.savez(tmp_path / f"{name}.npz", input=(scale * rng.normal(size=(n, 3, 8, 8))).astype(np.float32),
                 other=(scale * rng.normal(size=(n, 4, 8, 8))).astype(np.float32))
    exp = write_experiment(tmp_path / "sep.yaml", name="sep", model={"onnx": "two.onnx"},
                           data={"source": "npz", "path": "eval.npz", "calibration": {"source": "npz", "path": "calib.npz"},
                                 "calibration_size": 20, "eval_size": 50},
                           eval={"metric": "cosine", "latency_repeats": 2})
    ws = Workspace(load_experiment(exp))
    calib = np.load(tmp_path / "calib.npz")["input"]
    assert np.array_equal(np.sort(ws.splits.calibration.column("input").ravel()), np.sort(calib.ravel()))
    assert len(ws.splits.eval) == 50
    code, out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 95.0, err
    too_many = exp.read_text().replace("calibration_size: 20", "calibration_size: 30").replace("name: sep", "name: sep2")
    (tmp_path / "many.yaml").write_text(too_many)
    one_line_error(capsys, ["quantize", tmp_path / "many.yaml", "--out", tmp_path / "o"],
                   "data.calibration_size is 30 but the calibration data has 20 samples")
    same = exp.read_text().replace("path: calib.npz", "path: eval.npz").replace("name: sep", "name: sep3")
    (tmp_path / "same.yaml").write_text(same)
    one_line_error(capsys, ["quantize", tmp_path / "same.yaml", "--out", tmp_path / "o"],
                   "data.calibration reads the same data as data")


def test_conv_transpose_stays_float_and_does_not_count_against_the_plan(tmp_path, capsys):
    """A detector's upsampling ConvTranspose is float compute: all-INT8 and mixed plans of its Convs build
    and pass the executed-kernel check, and it is costed 32 × 32."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4, 2, 2, 2)).astype(np.float32), "wt")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "wt"], ["output"], name="up", strides=[2, 2])]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "det.onnx"))
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3, 8, 8)).astype(np.float32))
    exp = write_experiment(tmp_path / "det.yaml", name="det", model={"onnx": "det.onnx"},
                           data={"source": "npz", "path": "d.npz", "calibration_size": 20, "eval_size": 20},
                           eval={"metric": "cosine", "latency_repeats": 2},
                           search={"trials": 4, "sensitivity_k": [], "objective": "bitops"})  # slower than FP32 here
    ws = Workspace(load_experiment(exp))
    assert [(op.name, op.op_type, op.flops) for op in ws.graph.float_ops] == [("up", "ConvTranspose", 2 * 4 * 64 * 2 * 4)]
    code, out, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--quiet", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["met"], err


def test_npz_reads_only_the_model_inputs_and_the_labels(tmp_path, capsys, caplog):
    """A common layout: the inputs and labels next to file names, class names, a 0-d metadata string and an
    object array. Only the arrays named after the model inputs and the labels are read; the others are named
    in one info line. Two inputs here: the single-input case is the one below."""
    onnx.save(two_input_model(), str(tmp_path / "two.onnx"))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "mixed.npz", input=rng.normal(size=(60, 3, 8, 8)).astype(np.float32),
             other=rng.normal(size=(60, 4, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 60),
             files=np.array([f"img{i}.png" for i in range(60)]), class_names=np.array(["a", "b", "c", "d"]),
             meta=np.array("exported 2026-11-30 by prepare.py"))
    with np.load(tmp_path / "mixed.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["objects"] = np.array([{"id": i} for i in range(60)], dtype=object)
    np.savez(tmp_path / "mixed.npz", **arrays)  # np.savez pickles object arrays; np.load refuses to read them
    exp = write_experiment(tmp_path / "mixed.yaml", name="mixed", model={"onnx": "two.onnx"},
                           data={"source": "npz", "path": "mixed.npz", "calibration_size": 30, "eval_size": 30},
                           eval={"metric": "top1", "latency_repeats": 2})
    with caplog.at_level("INFO", logger="autoquant"):
        ws = Workspace(load_experiment(exp))
        assert set(ws.splits.eval.inputs) == {"input", "other"} and len(ws.splits.eval.y) == 30
    assert "not reading files, class_names, meta, objects (not a model input nor the labels 'y')" in caplog.text
    code, _out, err = cli(capsys, "quantize", exp, "--out", tmp_path / "q", "--json")
    assert code == 0 and "Traceback" not in err, err


def test_npz_of_a_single_input_model_takes_x_or_its_only_array_and_names_what_is_missing(tmp_path, capsys):
    onnx.save(two_input_model(), str(tmp_path / "two.onnx"))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=images, meta=np.array("v1"), names=np.array(["a"] * 40))
    np.savez(tmp_path / "only.npz", pixels=images, y=np.zeros(40, np.int64))
    np.savez(tmp_path / "two.npz", pixels=images, more=images)
    np.savez(tmp_path / "objects.npz", input=np.array([object()] * 40, dtype=object), other=images)
    for name, npz in (("x", "x.npz"), ("only", "only.npz")):
        exp = write_experiment(tmp_path / f"{name}.yaml", name=name, model={"builtin": "digits_cnn"},
                               data={"source": "npz", "path": npz, "calibration_size": 20, "eval_size": 20})
        np.testing.assert_array_equal(Workspace(load_experiment(exp)).source_splits.calibration.x,
                                      images[np.sort(np.random.default_rng(0).permutation(40)[:20])])
    exp = write_experiment(tmp_path / "two.yaml", name="two", model={"builtin": "digits_cnn"},
                           data={"source": "npz", "path": "two.npz", "calibration_size": 20, "eval_size": 20})
    one_line_error(capsys, ["quantize", exp, "--out", tmp_path / "q"], "has arrays pixels, more besides the labels but "
                   "none named 'x': name the model input's array (or set data.x_key)")
    exp = write_experiment(tmp_path / "obj.yaml", name="obj", model={"onnx": "two.onnx"},
                           data={"source": "npz", "path": "objects.npz", "calibration_size": 20, "eval_size": 20})
    one_line_error(capsys, ["quantize", exp, "--out", tmp_path / "q"], "array 'input' holds Python objects")
    exp = write_experiment(tmp_path / "miss.yaml", name="miss", model={"onnx": "two.onnx"},
                           data={"source": "npz", "path": "only.npz", "calibration_size": 20, "eval_size": 20})
    one_line_error(capsys, ["quantize", exp, "--out", tmp_path / "q"], "has no array named after the model input "
                   "'input' (it has pixels): name one array after each model input")
