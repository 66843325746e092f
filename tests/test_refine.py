"""The search on a problem that needs one: a constraint all-INT8 breaks. The error model, calibrated against
finished trials, proposes plans at the constraint, and the export beats every uniform plan and every
"INT8 but the k most sensitive layers" plan that meets it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from test_sources import cli, encoder_workdir, transformer_exp

from autoquant import Workspace, load_experiment
from autoquant.config import SearchConfig
from autoquant.search.guided import ErrorModel
from autoquant.search.layer_errors import layer_errors
from autoquant.search.refine import Refine, allowed_error
from autoquant.search.space import SearchSpace
from autoquant.search.study import space_path


def test_allowed_error_sits_between_the_plans_that_meet_and_break_the_constraint():
    points = [(1e-4, 0.2), (4e-4, 0.8), (1.6e-3, 1.5), (1e-2, 6.0), (2e-4, 1.2)]  # (NMSE, drop); limit 1.0
    assert allowed_error(points, 1.0) == pytest.approx(math.sqrt(4e-4 * 1.6e-3))
    assert allowed_error([(1e-4, 0.2), (4e-4, 0.8)], 1.0) == pytest.approx(8e-4)  # nothing broke it yet: look higher
    assert allowed_error([(1e-3, 2.0), (4e-3, 5.0)], 1.0) == pytest.approx(5e-4)  # nothing met it: look lower
    assert allowed_error([], 1.0) is None


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return encoder_workdir(tmp_path_factory, "refine", n=560)


def test_search_where_all_int8_fails_beats_every_hand_made_plan(encoder_dir, capsys):
    # Agreement limit 1.5 points on 480 token sequences, static INT8 or float per layer (the default space):
    # every all-INT8 plan breaks it (minmax by about 7 points, percentile by 2.5), so the search has to find
    # which layers to keep float.
    exp = transformer_exp(encoder_dir, data={"calibration_size": 64, "eval_size": 480},
                          search={"trials": 40, "max_accuracy_drop": 1.5, "sensitivity_k": [1, 2, 4]})  # fmt: skip
    code, out, err = cli(capsys, "search", exp, "--out", encoder_dir / "run", "--json")
    assert code == 0, err
    assert "meets the limit: exported to" in err  # the first feasible plan was exported while the study went on
    result = json.loads(out.strip().splitlines()[-1])
    study = optuna.load_study(study_name="encoder", storage=f"sqlite:///{encoder_dir / 'run' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_label = {t.user_attrs.get("label", ""): t.user_attrs["result"] for t in done}
    uniform = [t for t in study.trials if t.user_attrs.get("label", "").startswith("int8-")]
    assert uniform and all(t.state == optuna.trial.TrialState.PRUNED or t.user_attrs["result"]["accuracy_drop"] > 1.5
                           for t in uniform)  # the problem needs a search  # fmt: skip
    # the export is strictly cheaper than every hand-made plan that meets the constraint
    hand_made = [r for label, r in by_label.items()
                 if label.startswith(("int8-", "sensitive-")) and r["accuracy_drop"] <= 1.5]  # fmt: skip
    assert hand_made, sorted(by_label)
    chosen = result["chosen"]
    assert chosen["accuracy_drop"] <= 1.5
    assert all(chosen["bitops_fraction"] < r["bitops_fraction"] for r in hand_made), (chosen, hand_made)
    # a refine round on these trials proposes quantized plans from its calibrated model
    ws = Workspace(load_experiment(exp))
    space = SearchSpace.from_yaml(space_path(ws.exp.search), ws.graph)
    model = ErrorModel.build(ws, layer_errors(ws, space), space)
    proposals = Refine(model, 1.5).proposals(done)
    assert proposals and all(p.quantized for p in proposals)


def test_error_model_sweep_runs_from_least_error_to_cheapest(encoder_dir):
    exp = load_experiment(transformer_exp(encoder_dir, name="calib", data={"calibration_size": 64, "eval_size": 480}))
    ws = Workspace(exp)
    space = SearchSpace.from_yaml(space_path(SearchConfig(space=Path("transformer"))), ws.graph)
    model = ErrorModel.build(ws, layer_errors(ws, space), space)
    # the sweep runs from the least-error plan to the cheapest one, predicted error rising as bitops fall
    sweep = model.sweep(16)
    predicted = [model.predict(p) for p in sweep]
    assert len(sweep) >= 4 and predicted == sorted(predicted)
    assert model.cheapest_within(predicted[2], sweep) is not None
    assert model.predict(model.cheapest_within(predicted[2], sweep)) <= predicted[2]
