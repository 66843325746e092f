import numpy as np
import onnx
import pytest
from conftest import conv_model
from onnx import TensorProto, helper, numpy_helper

from autoquant import ModelError
from autoquant.graph.ingest import load_onnx, prepare
from autoquant.graph.layers import analyze


def test_conv_flops_are_two_macs_per_output_and_depthwise_is_recognised():
    rng = np.random.default_rng(0)
    model = conv_model([rng.normal(size=(8, 4, 3, 3)), rng.normal(size=(8, 1, 3, 3))], groups=[1, 8])
    g = analyze(model)
    dense, dw = g.layers
    assert dense.flops == 2 * (8 * 8 * 8) * (4 * 3 * 3)  # outputs (C·H·W) × MACs per output
    assert dw.flops == 2 * (8 * 8 * 8) * 9
    assert (dense.depthwise, dw.depthwise) == (False, True)
    assert g.total_flops == dense.flops + dw.flops
    assert dense.output_shape == (8, 8, 8) and dense.channel_axis == 0


def _linear_model(op: str, w: np.ndarray, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w"], ["y"], name="fc", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op, shape, attrs, axis", [("Gemm", (10, 16), {"transB": 1}, 0), ("Gemm", (16, 10), {}, 1),
                                                     ("MatMul", (16, 10), {}, 1)])
def test_gemm_and_matmul_channel_axis_and_flops(op, shape, attrs, axis):
    (layer,) = analyze(_linear_model(op, np.ones(shape), **attrs)).layers
    assert layer.channel_axis == axis and layer.out_channels == 10
    assert layer.flops == 2 * 16 * 10


def test_model_without_quantizable_layers_is_rejected():
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(ModelError, match="no quantizable layer"):
        analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_missing_and_non_onnx_files_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_onnx(junk)


def test_preprocessing_runs_once_per_model_hash(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.onnx"
    onnx.save(conv_model([rng.normal(size=(4, 3, 3, 3))]), str(path))
    first = prepare(path, tmp_path / "cache")
    stamp = first.preprocessed.stat().st_mtime_ns
    second = prepare(path, tmp_path / "cache")
    assert second.preprocessed == first.preprocessed and second.preprocessed.stat().st_mtime_ns == stamp
    assert [(i.name, i.shape) for i in first.inputs] == [("input", ("batch", 3, 8, 8))]


def test_resnet20_layers_and_flops(resnet20_ws):
    g = resnet20_ws.graph
    assert len(g.layers) == 20 and [layer.op_type for layer in g.layers].count("Conv") == 19
    assert g.layers[-1].op_type == "Gemm"
    assert g.total_flops == pytest.approx(2 * 40.55e6, rel=0.01)  # ResNet-20: 40.55 M MACs on 32×32


def test_recurrent_and_activation_matmuls_are_listed_as_float_compute_and_costed():
    """An LSTM (batch-first) and a MatMul between two activations are compute the engine leaves float: listed
    with their FLOPs and counted 32 × 32 in bitops, next to the quantizable MatMul."""
    from autoquant.evaluate.cost import bitops_fraction
    from autoquant.quantize.plan import LayerChoice, QuantPlan

    rng = np.random.default_rng(0)
    t, i, h = 5, 4, 6
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4 * h, i)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * h, h)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(size=(h, 3)).astype(np.float32), "proj"),
             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=h, layout=1),
             helper.make_node("Squeeze", ["y", "axes"], ["seq"], name="squeeze"),
             helper.make_node("MatMul", ["seq", "proj"], ["p"], name="proj_matmul"),
             helper.make_node("Transpose", ["p"], ["pt"], name="t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["pt", "p"], ["out"], name="gram")]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", t, i])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 3])], inits)
    g = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(layer.name, layer.flops) for layer in g.layers] == [("proj_matmul", 2 * t * h * 3)]
    assert [(op.name, op.op_type, op.flops) for op in g.float_ops] == [
        ("lstm", "LSTM", 2 * t * 4 * h * (i + h)), ("gram", "MatMul", 2 * 3 * 3 * t)]
    int8 = QuantPlan.uniform(g.names, LayerChoice.of())
    quantizable, floating = 2 * t * h * 3, 2 * t * 4 * h * (i + h) + 2 * 3 * 3 * t
    assert bitops_fraction(g, int8) == pytest.approx((quantizable * 64 + floating * 1024) / ((quantizable + floating) * 1024))
