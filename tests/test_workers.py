"""Several processes on one study: SQLite locally (PostgreSQL in test_postgres.py)."""

import optuna
from conftest import write_experiment
from optuna.trial import TrialState

from autoquant import load_experiment
from autoquant.api import search


def test_two_workers_reach_the_target_together_without_evaluating_a_plan_twice(tmp_path):
    exp = write_experiment(
        tmp_path / "w.yaml", name="digits_workers", model={"builtin": "digits_cnn"},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 3}, search={"population_size": 6, "sensitivity_k": [1], "early_stop": False},
    )
    result = search(load_experiment(exp), tmp_path / "run", trials=24, workers=2)
    study = optuna.load_study(study_name="digits_workers", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert 24 <= len(complete) <= 26  # both stop at the target; one may finish its trial in flight
    evaluated = [t for t in complete if "duplicate_of" not in t.user_attrs]
    keys = [str(sorted(t.user_attrs["plan"]["layers"].items())) for t in evaluated]
    assert len(keys) == len(set(keys))
    assert result.completed == len(complete) and result.export is not None
