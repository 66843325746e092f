"""The per-layer latency table: onnxruntime's profiled node times traced back to layers, a float layer's
transitions charged only where a neighbour is INT8, the table cached, and the error model pricing plans
with it under objective latency."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autoquant import LayerChoice, QuantPlan
from autoquant.quantize.plan import FLOAT
from autoquant.runtime import session_options
from autoquant.search import ErrorModel, layer_errors
from autoquant.search.estimate.cost import BitopsCost, LatencyCost
from autoquant.search.estimate.latency_table import LatencyTable, _owners, _plans, columns, latency_table
from autoquant.search.space import SearchSpace, space_path


@pytest.fixture(scope="module")
def space20(resnet20_ws):
    return SearchSpace.from_yaml(space_path(resnet20_ws.exp.search), resnet20_ws.graph)


@pytest.fixture(scope="module")
def table20(resnet20_ws, space20):
    resnet20_ws.precompute_ranges({"minmax"})
    return latency_table(resnet20_ws, space20)


def profiled_nodes(model: onnx.ModelProto, feed, tmp_path: Path) -> tuple[onnx.ModelProto, dict[str, float]]:
    opts = session_options(2)
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "p")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    times: dict[str, float] = {}
    for e in json.loads(Path(sess.end_profiling()).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"][: -len("_kernel_time")]] = e["dur"]
    return onnx.load(str(tmp_path / "opt.onnx")), times


def test_profiled_time_of_a_mixed_plan_is_traced_to_its_layers(resnet20_ws, space20, tmp_path):
    # the plan that alternates float and INT8 layers: the one with the most transitions to attribute
    plan = next(p for k, p in _plans(resnet20_ws, space20) if k == "float")
    model = resnet20_ws.build(plan)
    optimized, times = profiled_nodes(model, resnet20_ws.evaluator.latency_feed(), tmp_path)
    owners = _owners(optimized, model, resnet20_ws.graph.names)
    assert set(owners.values()) == set(resnet20_ws.graph.names)  # every layer owns its kernels
    attributed = sum(t for n, t in times.items() if n in owners)
    assert attributed >= 0.9 * sum(times.values())
    # a float layer owns the dequantization in front of it
    float_inputs = {n.name for n in optimized.graph.node if "/float_input" in n.name}
    assert float_inputs and all(owners[n] == n.split("/float_input")[0] for n in float_inputs)


def test_table_charges_a_float_layers_transitions_only_next_to_int8(resnet20_ws, table20):
    names = resnet20_ws.graph.names
    assert np.isfinite(table20.ms[:, [columns().index(c) for c in ("float", "float_in", "float_out", "static")]]).all()
    assert table20.producer[0] == -1 and table20.consumers[-1] == ()
    # inside the network, a float layer between INT8 ones pays for dequantizing and re-quantizing
    assert (table20.ms[1:-1, 1] + table20.ms[1:-1, 2] > 0).mean() > 0.8
    int8 = QuantPlan.uniform(names, LayerChoice.of())
    i = next(i for i in range(1, len(names) - 1) if table20.consumers[i] == (i + 1,) and table20.producer[i + 1] == i)

    def with_float(*idx):
        return QuantPlan(tuple((n, FLOAT if j in idx else c) for j, (n, c) in enumerate(int8.choices)))

    row_i, row_j = table20.ms[i], table20.ms[i + 1]
    alone = table20.predict(with_float(i)) - table20.predict(int8)
    assert alone == pytest.approx(row_i[0] + row_i[1] + row_i[2] - row_i[3])
    # two neighbours float: the transition between them is not charged
    pair = table20.predict(with_float(i, i + 1)) - table20.predict(int8)
    assert pair == pytest.approx(row_i[0] + row_i[1] + row_j[0] + row_j[2] - row_i[3] - row_j[3])
    assert table20.predict(QuantPlan.uniform(names, FLOAT)) == pytest.approx(table20.ms[:, 0].sum())


def test_table_is_cached_and_prices_the_error_model(resnet20_ws, space20, table20, monkeypatch):
    import importlib

    module = importlib.import_module("autoquant.search.estimate.latency_table")
    monkeypatch.setattr(module, "_profile", lambda *a, **k: pytest.fail("profiled again"))
    again = latency_table(resnet20_ws, space20)
    np.testing.assert_array_equal(again.ms, table20.ms)
    errors = layer_errors(resnet20_ws, space20)
    by_bitops = ErrorModel.build(errors, space20, BitopsCost(resnet20_ws.graph))
    by_latency = ErrorModel.build(errors, space20, LatencyCost(table20, resnet20_ws.graph))
    name = resnet20_ws.graph.names[3]
    all_float = table20.ms[:, 0].sum()
    assert by_latency.cost.layer(name, FLOAT) == pytest.approx(table20.ms[3, 0] / all_float)  # transitions: per edge
    assert by_latency.cost.table.transition_shares(name) == pytest.approx(tuple(table20.ms[3, 1:3] / all_float))
    assert by_latency.cost.layer(name, LayerChoice.of()) == pytest.approx(table20.ms[3, 3] / all_float)
    assert by_bitops.cost.layer(name, FLOAT) == pytest.approx(resnet20_ws.graph.layers[3].flops / sum(
        layer.flops for layer in resnet20_ws.graph.layers))


def test_float_path_prices_each_step_against_the_plan_so_far(resnet20_ws, space20, table20):
    """Transitions dominate (10 ms each side, 1 ms per kernel either way): once layer i is float, its
    neighbour i+1 costs nothing more (the transition moves), so it is kept float before a layer elsewhere
    with a larger error; priced alone, it would not be."""
    names = resnet20_ws.graph.names
    i = next(i for i in range(1, len(names) - 3) if table20.consumers[i] == (i + 1,) and table20.producer[i + 1] == i)
    far = len(names) - 2
    ms = np.zeros_like(table20.ms)
    ms[:, :4] = [1.0, 10.0, 10.0, 1.0]
    table = LatencyTable(names, ms, table20.producer, table20.consumers)
    errors = layer_errors(resnet20_ws, space20)
    model = ErrorModel.build(errors, space20, LatencyCost(table, resnet20_ws.graph))
    weights = {names[i]: 1.0, names[i + 1]: 0.3, names[far]: 0.5}
    model = replace(model, err={(n, o): (0.0 if not o.quantize else weights.get(n, 1e-6)) for n, o in model.err})
    first, second = model.float_path(model.least_error(), 2)
    assert {n for n, c in first.choices if not c.quantize} == {names[i]}
    assert {n for n, c in second.choices if not c.quantize} == {names[i], names[i + 1]}
    assert model.plan_cost(second) == pytest.approx(model.plan_cost(first))  # the transition moved, no more


def test_lagrangian_plan_with_transitions_is_the_exact_minimum(digits_ws):
    """On a chain of layers the dynamic programme's plan minimises error + λ · predicted latency over every
    float/INT8 assignment (brute force over all 2^6 of the digits CNN)."""
    import itertools

    # float or INT8 per layer, nothing else: the brute force below covers every plan of this space
    space = SearchSpace.from_dict({"choices": {"quantize": [True, False], "weight_granularity": ["per_channel"],
                                               "activation_algorithm": ["minmax"]}}, digits_ws.graph)
    digits_ws.precompute_ranges(space.algorithms())
    model = ErrorModel.build(layer_errors(digits_ws, space), space, LatencyCost(latency_table(digits_ws, space), digits_ws.graph))
    base = model.least_error()
    names = digits_ws.graph.names
    assert model.cost.table.producer == (-1, *range(len(names) - 1))  # a chain
    every = [QuantPlan(tuple((n, FLOAT if f else c) for f, (n, c) in zip(mask, base.choices)))
             for mask in itertools.product((False, True), repeat=len(names))]
    finite = [e for e in model.err.values() if 0 < e < np.inf]
    def objective(p, lam):
        return model.predict(p) + lam * model.plan_cost(p)

    for lam in np.geomspace(min(finite), max(finite) * 100, 7):
        assert objective(model.at(lam), lam) == pytest.approx(min(objective(p, lam) for p in every), rel=1e-9, abs=1e-12)


def test_a_latency_priced_round_proposes_untried_plans_where_its_sweep_collapses(resnet20_ws, space20, table20):
    """Transitions dominate (10 ms each side of a float run, 1 ms per kernel): the latency-priced λ sweep jumps
    between a few plans, so the candidates also hold the bitops-priced sweep and the whole float path. A round whose
    cheapest candidate within the limit is measured already proposes the next cheapest rather than nothing (a
    latency-ranked study at 0.25 pt on the photo bed ended without a plan within the limit that way), and a trial
    stopped early calibrates the round with its prefix's figures."""
    import optuna

    from autoquant.measure import Measurement
    from autoquant.search.propose import Refine

    names = resnet20_ws.graph.names
    ms = np.zeros_like(table20.ms)
    ms[:, :4] = [1.0, 10.0, 10.0, 1.0]
    table = LatencyTable(names, ms, table20.producer, table20.consumers)
    model = ErrorModel.build(layer_errors(resnet20_ws, space20), space20, LatencyCost(table, resnet20_ws.graph))
    by_bitops = replace(model, cost=model.cost.bitops)
    candidates = {p.key() for p in model.candidates(64)}
    assert {p.key() for p in model.sweep(64)} < candidates
    assert {p.key() for p in by_bitops.sweep(64)} <= candidates
    assert {p.key() for p in model.float_path(model.least_error(), len(names))} <= candidates

    def trial(plan, drop: float, *, stopped: bool = False):
        nmse = model.predict(plan)
        attrs = {"plan": plan.to_spec()}
        if stopped:
            attrs["pruned"] = {"prefix_accuracy": 90.0 - drop, "prefix_samples": 100, "reason": "", "prefix_nmse": nmse}
        else:
            attrs["result"] = Measurement(90.0 - drop, drop, 0.5, 1.0, 0.5, 1, nmse, "").to_dict()
        state = optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.COMPLETE
        return optuna.trial.create_trial(state=state, values=None if stopped else [0.5, drop], user_attrs=attrs)

    least = model.least_error()
    miss = trial(least, 3.0)  # all at the least-error choice misses a 1-point limit: the allowed NMSE is below it
    refine = Refine(model, 1.0, 90.0)
    first = refine.proposals([miss], set())
    assert first and all(model.predict(p) < model.predict(least) for p in first)
    again = refine.proposals([miss], {first[0].key()})
    assert again and first[0].key() not in {p.key() for p in again}
    # a stopped trial counts as one that broke the limit, at its prefix's NMSE, even where its prefix's drop is not
    stopped = trial(first[0], 0.5, stopped=True)
    cal = refine.calibrated([miss, stopped])
    assert len(cal.trials) == 2 and not cal.feasible(1.0)
    assert cal.allowed == pytest.approx(0.5 * model.predict(first[0]))
