import pytest

from autoquant import ConfigError, LayerChoice, PlanError, QuantPlan
from autoquant.quantize.plan import FLOAT

NAMES = ["/conv1/Conv", "/layer1/conv1/Conv", "/layer1/conv2/Conv", "/linear/Gemm"]


def test_default_then_patterns_then_exact_names_later_entries_win():
    plan = QuantPlan.from_spec(
        {"default": {"activation_algorithm": "percentile"},
         "layers": {"re:/layer1/.*": {"weight_granularity": "per_tensor"}, "/linear/Gemm": {"quantize": False}}},
        NAMES,
    )
    assert plan["/conv1/Conv"] == LayerChoice.of(activation_algorithm="percentile")
    assert plan["/layer1/conv2/Conv"].weight_granularity == "per_tensor"
    assert plan["/layer1/conv2/Conv"].activation_algorithm == "percentile"  # inherited from default
    assert not plan["/linear/Gemm"].quantize
    assert plan.quantized == tuple(NAMES[:3])


def test_plan_round_trips_through_its_spec_and_keys_are_stable():
    plan = QuantPlan.from_spec({"layers": {"/conv1/Conv": {"weight_bits": 4}}}, NAMES)
    again = QuantPlan.from_spec(plan.to_spec(), NAMES)
    assert again == plan and again.key() == plan.key()
    assert QuantPlan.uniform(NAMES, LayerChoice.of()).key() != plan.key()


def test_a_layer_that_does_not_exist_is_an_error_naming_it():
    with pytest.raises(PlanError, match=r"layer '/conv9/Conv' does not exist.*did you mean"):
        QuantPlan.from_spec({"layers": {"/conv9/Conv": {"quantize": False}}}, NAMES)


def test_a_pattern_matching_nothing_warns():
    with pytest.warns(UserWarning, match="matches no layer"):
        QuantPlan.from_spec({"layers": {"re:.*attention.*": {"quantize": False}}}, NAMES)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"defaults": {}}, "unknown key"),
        ({"default": {"quantise": True}}, "unknown key"),
        ({"default": {"activation_algorithm": "kl"}}, "activation algorithm 'kl' is unknown"),
        ({"default": {"weight_granularity": "per_row"}}, "weight_granularity"),
        ({"default": {"quantize": "yes"}}, "'quantize' must be bool"),
        ({"default": {"weight_bits": 4, "weight_granularity": "per_tensor"}}, "4-bit weights need"),
        ({"default": {"weight_bits": 2}}, "weight_bits 2"),
        ({"layers": {"re:[": {}}}, "bad pattern"),
    ],
)
def test_bad_plans_raise_config_errors_that_say_what_to_fix(spec, message):
    with pytest.raises(ConfigError, match=message):
        QuantPlan.from_spec(spec, NAMES)


def test_cost_bits_count_float_layers_as_32x32():
    assert FLOAT.cost_bits == (32, 32)
    assert LayerChoice.of(weight_bits=4).cost_bits == (8, 4)
