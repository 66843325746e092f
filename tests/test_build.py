"""Plan → QDQ model on tiny onnx.helper graphs: op counts, INT8 kernels, weight scales, closeness to FP32."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import conv_model

from autoquant.calibrate.collect import collect_stats
from autoquant.data import Dataset
from autoquant.graph.ingest import prepare
from autoquant.graph.layers import analyze
from autoquant.quantize.build import build_model
from autoquant.quantize.modes import BuildCache
from autoquant.quantize.modes.static import tensor_algorithms
from autoquant.quantize.modes.weight_params import WeightParams
from autoquant.quantize.plan import FLOAT, LayerChoice, QuantPlan
from autoquant.quantize.scales import params_from_range
from autoquant.record import make_record
from autoquant.runtime import Batches


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(8, 3, 3, 3)) * np.array([0.01, 0.1, 1, 3, 0.05, 0.5, 2, 0.2])[:, None, None, None]
    w1 = rng.normal(size=(8, 8, 3, 3)) * 0.3
    tmp = tmp_path_factory.mktemp("tiny")
    onnx.save(conv_model([w0, w1]), str(tmp / "m.onnx"))
    prepared = prepare(tmp / "m.onnx", tmp / "cache")
    model = prepared.load()
    graph = analyze(model)
    data = Dataset({"input": rng.normal(size=(64, 3, 8, 8)).astype(np.float32)}, np.zeros(64, np.int64))
    stats = collect_stats(model, prepared.inputs, graph.float_tensors, data, batches=Batches(16), threads=1)
    return model, graph, stats, data, w0.astype(np.float32)


def build(tiny, plan, weight_range="full", weights=None):
    model, graph, stats, _, _ = tiny
    algos = tensor_algorithms(model, graph, plan)
    acts = {t: params_from_range(stats[t].min, stats[t].max, "uint8") for t in algos}
    return build_model(model, graph, plan, acts, "uint8", weight_range, weights), acts, algos


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def optimized_ops(model, tmp_path) -> Counter:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


def test_float_layers_stay_float_and_quantized_ones_run_int8_kernels(tiny, tmp_path):
    plan = QuantPlan((("conv0", LayerChoice.of()), ("conv1", FLOAT)))
    q, _, _ = build(tiny, plan)
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 2
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    assert conv1.input[1] in {i.name for i in q.graph.initializer}  # float weight, no DequantizeLinear
    opt = optimized_ops(q, tmp_path)
    assert opt["QLinearConv"] == 1 and opt["Conv"] + opt["FusedConv"] == 1


def test_all_int8_is_close_to_fp32(tiny, tmp_path):
    model, graph, _, data, _ = tiny
    q, _, _ = build(tiny, QuantPlan.uniform(graph.names, LayerChoice.of()))
    assert optimized_ops(q, tmp_path)["QLinearConv"] == 2
    ref, out = run(model, data.x), run(q, data.x)
    assert np.abs(out - ref).mean() / np.abs(ref).mean() < 0.03


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_weight_scales_round_trip_into_the_record(tiny, granularity):
    _, graph, _, _, w0 = tiny
    plan = QuantPlan.uniform(graph.names, LayerChoice.of(weight_granularity=granularity))
    q, acts, algos = build(tiny, plan)
    rec = make_record(q, graph, plan, acts, algos, model_sha256="x", activation_type="uint8")
    scale_w = np.array(rec.layers[0].weight.scale_w)
    # Symmetric INT8 weights: scale = max|w| / 127, per output channel or over the whole tensor.
    expected = np.abs(w0).reshape(8, -1).max(axis=1) / 127 if granularity == "per_channel" else [np.abs(w0).max() / 127]
    np.testing.assert_allclose(scale_w, expected, rtol=1e-6)
    assert set(rec.layers[0].weight.offset_w) == {0}
    # The activation scale recorded for the layer input is the one the model actually uses.
    assert rec.layers[0].data.scale_d == pytest.approx(acts["input"].scale)
    assert rec.layers[0].data.offset_d == acts["input"].zero_point


def test_weight_parameters_and_quantized_weights_kept_across_builds_give_the_same_bytes_as_a_fresh_build(tiny):
    _, graph, _, _, _ = tiny
    choices = [LayerChoice.of(), LayerChoice.of(weight_granularity="per_tensor"), LayerChoice.of(weight_bits=4)]
    cases = [(QuantPlan.uniform(graph.names, c), r) for c in choices for r in ("full", "reduced")]
    cases.append((QuantPlan((("conv0", LayerChoice.of(weight_bits=4)), ("conv1", FLOAT))), "full"))
    cache = BuildCache(tiny[0])
    for _ in range(2):  # the second pass reads every layer's parameters from the cache
        for plan, weight_range in cases:
            fresh, kept = build(tiny, plan, weight_range)[0], build(tiny, plan, weight_range, cache)[0]
            assert kept.SerializeToString() == fresh.SerializeToString()
    shared = cache.get("static", WeightParams)
    assert isinstance(shared, WeightParams)
    assert len(shared._memo) == 2 * 5  # two weights × (per-channel, per-tensor) × (full, reduced) + 4-bit
    assert len(shared._quantized) >= 2 * 5  # ... each quantized once (the int32-bias adjustment may add scales)


def test_per_channel_beats_per_tensor_when_channel_ranges_differ(tiny):
    model, graph, _, data, _ = tiny
    ref = run(model, data.x)
    err = {}
    for g in ("per_channel", "per_tensor"):
        q, _, _ = build(tiny, QuantPlan.uniform(graph.names, LayerChoice.of(weight_granularity=g)))
        err[g] = float(np.square(run(q, data.x) - ref).mean())
    assert err["per_channel"] < 0.8 * err["per_tensor"]


def test_int8_activations_build_and_run(tiny):
    model, graph, stats, data, _ = tiny
    plan = QuantPlan.uniform(graph.names, LayerChoice.of())
    acts = {t: params_from_range(stats[t].min, stats[t].max, "int8") for t in tensor_algorithms(model, graph, plan)}
    q = build_model(model, graph, plan, acts, "int8")
    assert np.abs(run(q, data.x) - run(model, data.x)).mean() < 0.05 * np.abs(run(model, data.x)).mean()
