import pytest
import yaml

from autoquant import ConfigError, LayerChoice, QuantPlan
from autoquant.graph.layers import GraphInfo, LayerInfo
from autoquant.search.space import SearchSpace

REPO_SPACES = __import__("pathlib").Path(__file__).resolve().parents[1] / "search_spaces"


def _layer(name, op="Conv", depthwise=False):
    return LayerInfo(name, op, f"{name}_in", f"{name}_w", f"{name}_out", (8, 1 if depthwise else 4, 3, 3), (8, 4, 4), 0,
                     depthwise, 1000)


GRAPH = GraphInfo((_layer("stem"), _layer("dw", depthwise=True), _layer("pw"), _layer("fc", "Gemm")), ())


def test_default_space_file_resolves_rules_for_depthwise():
    space = SearchSpace.from_yaml(REPO_SPACES / "default.yaml", GRAPH)
    by = {ls.name: tuple(ls.values) for ls in space.layers}
    assert not any(o.startswith("per_tensor") for o in by["dw"])
    assert "per_tensor:entropy" in by["stem"] and "float" in by["stem"]
    assert space.algorithms() == {"minmax", "percentile", "mse", "entropy", "histogram"}
    # per layer: float, or 2 granularities × 5 algorithms (depthwise: 1 × 5), with and without bias
    # correction, rounded to nearest or adaptively
    assert space.size() == 41 * 21 * 41 * 41
    assert "per_channel:minmax:bc" in by["dw"]


def test_pinned_layers_are_not_searched_and_params_round_trip():
    space = SearchSpace.from_dict({"choices": {"quantize": [True, False], "activation_algorithm": ["minmax", "mse"]},
                                   "pinned": {"fc": {"quantize": False}, "re:s.*": {"activation_algorithm": "mse"}}},
                                  GRAPH)
    asked = []
    plan = space.plan(lambda name, choices: (asked.append((name, choices)), choices[-1])[1])
    assert dict(asked)["stem"] == ["per_channel:mse", "float"]  # one parameter per layer; fc is pinned
    assert [name for name, _ in asked] == ["stem", "dw", "pw"]
    assert not plan["fc"].quantize and not plan["dw"].quantize  # the last option is float
    target = QuantPlan.from_spec({"layers": {"fc": {"quantize": False}, "stem": {"activation_algorithm": "mse"},
                                             "pw": {"activation_algorithm": "mse"}}}, GRAPH.names)
    params = space.params_for(target)
    assert space.plan(lambda name, choices: params[name]) == target


def test_four_bit_weights_force_per_channel():
    space = SearchSpace.from_yaml(REPO_SPACES / "int4_weights.yaml", GRAPH)
    plan = space.plan(lambda name, choices: next(c for c in choices if c.endswith(":w4")))
    assert all(c.weight_bits == 4 and c.weight_granularity == "per_channel" for _, c in plan.choices)
    assert not any(o.startswith("per_tensor") and o.endswith(":w4") for ls in space.layers for o in ls.values)
    assert space.params_for(plan)["stem"] == "per_channel:minmax:w4"


def test_plans_outside_the_space_are_projected_to_the_nearest_allowed_choice():
    space = SearchSpace.from_yaml(REPO_SPACES / "default.yaml", GRAPH)
    params = space.params_for(QuantPlan.uniform(GRAPH.names, LayerChoice.of(weight_granularity="per_tensor",
                                                                         activation_algorithm="mse")))
    assert params["dw"] == "per_channel:mse" and params["stem"] == "per_tensor:mse"


@pytest.mark.parametrize("raw, message", [
    ({"choice": {}}, "unknown key"),
    ({"choices": {"activation_algorithm": []}}, "non-empty list"),
    ({"choices": {"activation_algorithm": ["kl"]}}, "'kl' is unknown"),
    ({"choices": {"bits": [8]}}, "unknown option 'bits'"),
    ({"rules": [{"match": {"kind": "dw"}, "choices": {}}]}, "'match' takes"),
    ({"pinned": {"nope": {"quantize": False}}}, "layer 'nope' does not exist"),
    ({"pinned": {"fc": {"quantise": False}}}, "unknown key"),
])
def test_bad_spaces_name_the_problem(raw, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict(raw, GRAPH)


def test_rule_whose_name_pattern_matches_nothing_warns(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"rules": [{"match": {"name": "re:/decoder/.*"}, "choices": {"quantize": [False]}}]}))
    with pytest.warns(UserWarning, match="matches no layer"):
        SearchSpace.from_yaml(path, GRAPH)


def test_generic_rule_that_does_not_apply_is_silent(tmp_path):
    """The shipped space's depthwise rule on a model without depthwise convs is not a mistake."""
    import warnings

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"rules": [{"match": {"op_type": "MatMul"}, "choices": {"quantize": [False]}}]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SearchSpace.from_yaml(path, GRAPH)
