"""Cheap sensitivity and model-guided candidates: the per-layer, per-choice error table, its fake
quantization matching what onnxruntime's quantizer builds, its agreement with the full one-layer-at-a-time
table, and the plans it proposes."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from scipy.stats import spearmanr

from autoquant import LayerChoice, QuantPlan, Workspace
from autoquant.quantize.fake import fake_quant_weight
from autoquant.quantize.modes import decode
from autoquant.search import ErrorModel, layer_errors, layer_sensitivity
from autoquant.search.estimate.cost import BitopsCost
from autoquant.search.propose import guided_plans
from autoquant.search.space import SearchSpace, space_path


@pytest.fixture(scope="module")
def space20(resnet20_ws):
    return SearchSpace.from_yaml(space_path(resnet20_ws.exp.search), resnet20_ws.graph)


def dequantized_weight(model: onnx.ModelProto, layer_name: str) -> np.ndarray:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == layer_name)
    dq = producers[node.input[1]]
    q, scale = inits[dq.input[0]].astype(np.float32), inits[dq.input[1]]
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return q * scale.reshape(shape)


@pytest.mark.parametrize("granularity, weight_range, bits", [("per_channel", "full", 8), ("per_tensor", "full", 8),
                                                              ("per_channel", "reduced", 8), ("per_tensor", "reduced", 8),
                                                              ("per_channel", "full", 4)])
def test_fake_quantized_weights_are_the_ones_onnxruntime_builds(resnet20_ws, granularity, weight_range, bits):
    exp = resnet20_ws.exp
    ws = Workspace(dataclasses.replace(exp, quantization=dataclasses.replace(exp.quantization, weight_range=weight_range)))
    layer = ws.graph.layers[3]
    built = ws.build(QuantPlan.uniform(ws.graph.names, LayerChoice.of(weight_granularity=granularity, weight_bits=bits)))
    w = numpy_helper.to_array(next(i for i in ws.model.graph.initializer if i.name == layer.weight))
    np.testing.assert_allclose(fake_quant_weight(w, layer.channel_axis, granularity, bits, weight_range),
                               dequantized_weight(built, layer.name), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weight_range", ["full", "reduced"])
def test_table_ranks_layers_as_the_full_pass_does_at_a_fraction_of_its_work(resnet20_ws, weight_range):
    exp = resnet20_ws.exp
    ws = Workspace(dataclasses.replace(exp, quantization=dataclasses.replace(exp.quantization, weight_range=weight_range)))
    space = SearchSpace.from_yaml(space_path(ws.exp.search), ws.graph)
    errors = layer_errors(ws, space)
    assert errors.table.shape == (20, len(errors.choices))
    offered = ~np.isnan(errors.table)  # the convs are offered static choices only, the Gemm every mode
    assert np.isfinite(errors.table[offered]).all() and (errors.table[offered] > 0).all()
    full = [r.output_mse for r in layer_sensitivity(ws)]  # one whole-eval-set run per layer
    table = spearmanr([errors.of(n, LayerChoice.of()) for n in ws.graph.names], full)
    local = layer_errors(ws, space, propagated=False)
    alone = spearmanr([local.of(n, LayerChoice.of()) for n in ws.graph.names], full)
    # The bound is what the table is for, measured here rather than a figure from one CPU: on 16 samples it
    # ranks the layers as the full pass does (a rank correlation no chance ordering of 20 layers reaches at
    # p < 0.01), and better than the layers' local errors alone, which it scales by how much reaches the output.
    assert table.pvalue < 0.01 and table.statistic > alone.statistic, (table, alone)
    # a second call reads the cache: same table
    np.testing.assert_array_equal(layer_errors(ws, space).table, errors.table)


def test_guided_plans_follow_the_table(resnet20_ws, space20):
    errors = layer_errors(resnet20_ws, space20)
    model = ErrorModel.build(errors, space20, BitopsCost(resnet20_ws.graph))
    base = model.least_error()
    for layer in space20.layers:
        chosen = base[layer.name]
        errs = {o: errors.of(layer.name, o) for o in layer.options if o.quantize}
        assert chosen.quantize and errors.of(layer.name, min(errs, key=errs.get)) == min(errs.values())
    plans = dict(guided_plans(model))
    assert plans["guided-int8"] == base
    assert set(plans["guided-2-float"].names) == set(resnet20_ws.graph.names)
    # with bitops a float layer's cost is its own, so the greedy path keeps float the layers in order of
    # error per FLOP, each step adding one to the previous plan
    path = model.float_path(base, 4)
    floats = [{n for n, c in p.choices if not c.quantize} for p in path]
    assert [len(f) for f in floats] == [1, 2, 3, 4] and all(a < b for a, b in itertools.pairwise(floats))
    assert floats[1] == {n for n, c in plans["guided-2-float"].choices if not c.quantize}
    flops = {layer.name: layer.flops for layer in resnet20_ws.graph.layers}
    order = [next(iter(b - a)) for a, b in zip([set()] + floats, floats)]
    ratio = [errors.of(n, base[n]) / flops[n] for n in order]
    assert ratio == sorted(ratio, reverse=True)


def test_nsga2_draws_only_the_options_the_table_does_not_rule_out(resnet20_ws, space20):
    import optuna

    from autoquant.config import SearchConfig
    from autoquant.search.propose.sampler import GuidedNSGAII, make_sampler, plausible_options

    model = ErrorModel.build(layer_errors(resnet20_ws, space20), space20, BitopsCost(resnet20_ws.graph))
    plausible = plausible_options(model)
    for layer in space20.layers:
        kept = plausible[layer.name]
        assert "float" in kept and any(o != "float" for o in kept)  # float is never ruled out, nor the best INT8
        for o in set(layer.values) - set(kept):  # each ruled-out option: one that costs no more has < 1/4 its error
            o, cost = decode(o), model.cost.layer
            assert any(cost(layer.name, decode(q)) <= cost(layer.name, o)
                       and 4 * model.err[layer.name, decode(q)] < model.err[layer.name, o] for q in kept)
    ruled_out = sum(len(s.values) - len(plausible[s.name]) for s in space20.layers)
    assert ruled_out > 0  # per-tensor is far worse than per-channel on some of ResNet-20's layers
    sampler = make_sampler(SearchConfig(population_size=4, seed=3), lambda: model)
    assert isinstance(sampler, GuidedNSGAII)
    assert not isinstance(make_sampler(SearchConfig(guided_mutation=False), lambda: model), GuidedNSGAII)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (float(len(space20.plan(t.suggest_categorical).in_mode("static"))), 0.0), n_trials=12)
    drawn = {(name, value) for t in study.trials for name, value in t.params.items()}
    assert drawn and all(value in plausible[name] for name, value in drawn)


def test_latency_objective_times_each_trial_interleaved_with_fp32(resnet20_ws, monkeypatch):
    """Under objective latency a trial's ratio comes from rounds that alternate the plan's session with FP32's
    (not from an FP32 figure measured once at study start); the all-float plan then reads about 1. A plan
    that cannot be the export — slower than the bar in each of the first rounds, or over the accuracy limit —
    is timed with FEW_ROUNDS only."""
    from autoquant.evaluate.latency import slower_than
    from autoquant.evaluate.timer import FEW_ROUNDS
    from autoquant.measure import Timing
    from autoquant.quantize.plan import FLOAT
    from autoquant.search import PlanScorer

    exp = resnet20_ws.exp
    ws = Workspace(dataclasses.replace(exp, eval=dataclasses.replace(exp.eval, latency_repeats=15)))
    timed, rounds = [], []
    real = type(ws.evaluator).latency_rounds

    def spy(self, *sessions, **kwargs):
        timed.append(len(sessions))
        rounds.append(real(self, *sessions, **kwargs))
        return rounds[-1]

    def about_one(ratio: float, i: int) -> bool:
        """The same model timed as a plan and as FP32 reads 1 within the noise: 0.3, or twice the spread
        (interquartile range) of its per-round ratios where this machine's rounds scatter more (a loaded CPU)."""
        per_round = rounds[-1][:, i] / rounds[-1][:, -1]
        q1, q3 = np.percentile(per_round, [25, 75])
        return abs(ratio - 1) < max(0.3, 2 * (q3 - q1))

    monkeypatch.setattr(type(ws.evaluator), "latency_rounds", spy)
    scorer, all_float = PlanScorer(ws, timed=True), QuantPlan.uniform(ws.graph.names, FLOAT)
    result = scorer(all_float)
    assert timed == [2]  # the plan and FP32, in the same rounds
    assert about_one(result.latency_ratio, 0) and result.latency_rounds == 15
    # all-float against a bar of half FP32's time: slower in the first rounds, so timing stops early — after
    # FEW_ROUNDS on a quiet machine; a round that a loaded CPU disturbs only delays the sign test's verdict
    assert FEW_ROUNDS <= scorer(all_float, Timing(max_drop=1.0, bar=0.5)).latency_rounds < 15
    assert scorer(all_float, Timing(max_drop=-1.0, bar=3.0)).latency_rounds == FEW_ROUNDS  # breaks the limit
    # Might be the export: every round, unless a disturbed CPU made its rounds show it 3x slower than FP32
    rounds_taken = scorer(all_float, Timing(max_drop=1.0, bar=3.0)).latency_rounds
    assert rounds_taken == 15 or slower_than(rounds[-1], 0, 1, 3.0)
    # plans timed after a study share their rounds: three sessions and one FP32 run per round
    from autoquant.measure import Meter

    timed.clear()
    int8 = QuantPlan.uniform(ws.graph.names, LayerChoice.of())
    together = Meter(ws).latencies([ws.build(p).SerializeToString() for p in (all_float, int8, all_float)])
    assert timed == [4] and [n for _, _, n in together] == [15, 15, 15]
    assert about_one(together[0][1], 0) and about_one(together[2][1], 2)
    assert together[1][1] < min(together[0][1], together[2][1])  # INT8 is faster than float on ResNet-20
