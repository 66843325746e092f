"""The search service on the embedded digits default: warm starts, MLflow, export, resume, kill -9."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml
from conftest import trial_states, write_experiment
from mlflow import MlflowClient
from optuna.trial import TrialState

from autoquant import evaluate, load_experiment
from autoquant.api import export_from_run, search
from autoquant.cli import main
from autoquant.config import Cost
from autoquant.evaluate.latency import not_slower
from autoquant.measure import Measurement
from autoquant.quantize.plan import LayerChoice, QuantPlan
from autoquant.search.objective import TrialFailed
from autoquant.search.select import ScoredPlan, choose


@pytest.fixture(scope="module")
def search_yaml(tmp_path_factory):
    return write_experiment(
        tmp_path_factory.mktemp("search") / "digits_search.yaml",
        name="digits_search", model={"builtin": "digits_cnn"},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 3},
        search={"trials": 10, "max_accuracy_drop": 0.5, "population_size": 6, "sensitivity_k": [1], "early_stop": False},
    )


@pytest.fixture(scope="module")
def finished(search_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return search(load_experiment(search_yaml), out, trials=10), out


def completed(out, name="digits_search"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}


def test_search_warm_starts_exports_and_writes_its_reports(finished):
    result, out = finished
    trials = completed(out)
    assert len(trials) == 10 == result.completed
    labels = {t.user_attrs.get("label") for t in trials.values()}
    # the ladder's first rung is all-INT8 per channel; the error model's plans at the limit follow it before the
    # fixed warm starts (all-float, the hand-made plans), so a budget of 10 runs them
    assert "ladder-0" in labels and any(label.startswith(("refined-0-", "guided-")) for label in labels), labels
    for name in ("pareto.csv", "pareto.png", "sensitivity.csv", "sensitivity.png", "best/model.int8.onnx",
                 "best/record.json"):
        assert (out / name).stat().st_size > 0, name
    assert result.met and result.chosen.result.accuracy_drop <= 0.5
    # The fastest plan within the constraint, whatever cost ranked the search: no plan within 0.5 pt timed
    # measurably faster (side-by-side rounds cannot tell plans within TIE_MAX of the fastest apart).
    from autoquant.evaluate.latency import TIE_MAX

    ok = [p for p in result.front if p.result.accuracy_drop <= 0.5 and p.plan.quantized]
    assert result.chosen.result.latency_ratio <= TIE_MAX * min(p.result.latency_ratio for p in ok)
    # a bitops study times its front after the trials, paired with FP32 in every round; the table says how many
    assert all(p.result.latency_ratio > 0 and p.result.latency_rounds == 3 for p in result.front)
    with open(out / "pareto.csv", newline="") as f:
        assert {row["latency_rounds"] for row in csv.DictReader(f)} == {"3"}


def test_exported_accuracy_equals_the_trial_accuracy(finished, search_yaml):
    result, out = finished
    measured = evaluate(out / "best" / "model.int8.onnx", load_experiment(search_yaml))
    assert measured.accuracy == result.chosen.result.accuracy == completed(out)[result.chosen.number].values[0]


def test_the_export_is_the_trials_model_byte_for_byte(finished, tmp_path, monkeypatch):
    import hashlib
    from dataclasses import replace

    from autoquant.errors import PlanError
    from autoquant.measure import Meter
    from autoquant.search import export_plan

    result, out = finished
    exported = (out / "best" / "model.int8.onnx").read_bytes()
    assert hashlib.sha256(exported).hexdigest() == result.chosen.result.model_sha256
    # Re-exporting keeps the trial's figures without running the model: it is the same model.
    monkeypatch.setattr(Meter, "__call__", lambda *a, **k: pytest.fail("the export measured its model again"))
    again = export_plan(result.workspace, result.chosen, tmp_path / "again")
    assert again.accuracy == result.chosen.result.accuracy and (tmp_path / "again" / "model.int8.onnx").read_bytes() == exported
    # A trial whose model is not the one the plan now builds (cache changed) is refused; nothing is written.
    stale = replace(result.chosen, result=replace(result.chosen.result, model_sha256="0" * 64))
    with pytest.raises(PlanError, match="not the model that was measured"):
        export_plan(result.workspace, stale, tmp_path / "stale")
    assert not (tmp_path / "stale").exists()


def test_mlflow_has_one_parent_and_one_nested_run_per_trial(finished):
    _, out = finished
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits_search")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 10
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert {"accuracy", "accuracy_drop", "bitops_fraction", "latency_ms", "size_bytes"} <= set(children[0].data.metrics)
    assert "layers_quantized" in children[0].data.params
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.csv", "pareto.png", "best"} <= artifacts


def test_rerun_resumes_the_same_study_and_parent_run(finished, search_yaml):
    _, out = finished
    before = {n: t.values for n, t in completed(out).items()}
    parent = optuna.load_study(study_name="digits_search", storage=f"sqlite:///{out / 'study.db'}").user_attrs[
        "mlflow_parent_run_id"]
    result = search(load_experiment(search_yaml), out, trials=14)
    after = completed(out)
    assert result.completed == 14 and len(after) == 14
    assert all(after[n].values == v for n, v in before.items())  # nothing finished was recomputed or lost
    study = optuna.load_study(study_name="digits_search", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["mlflow_parent_run_id"] == parent


def test_export_rechooses_without_rerunning_and_exit_3_when_nothing_qualifies(finished, tmp_path, capsys):
    _, out = finished
    r = export_from_run(out, tmp_path / "exp", max_drop=5.0, objective=Cost.SIZE)
    assert r.met and (tmp_path / "exp" / "record.json").is_file()
    code = main(["export", str(out), "--max-accuracy-drop", "-50", "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 3 and "no quantized plan meets the accuracy constraint; closest: trial" in err
    assert not (tmp_path / "none").exists()


def test_duplicate_plans_are_not_re_evaluated_and_failures_do_not_stop_the_study(search_yaml, tmp_path, monkeypatch):
    from autoquant.search import objective as objective_mod

    calls = []
    real = objective_mod.PlanScorer.__call__

    def flaky(self, plan, timing=None):
        calls.append(plan.key())
        if len(plan.quantized) == 3:
            raise TrialFailed("onnxruntime refused this plan (injected)")
        return real(self, plan, timing)

    monkeypatch.setattr(objective_mod.PlanScorer, "__call__", flaky)
    exp = load_experiment(search_yaml)
    out = tmp_path / "run"
    study = optuna.create_study(study_name="digits_search", storage=f"sqlite:///{out}/study.db" if out.mkdir() is None else "",
                                directions=["maximize", "minimize"])
    names = ["/features/features.0/Conv", "/features/features.3/Conv", "/features/features.6/Conv",
             "/features/features.9/Conv", "/features/features.12/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    for _ in range(2):
        study.enqueue_trial(dict.fromkeys(names, "float"))  # the same all-float plan twice
    study.enqueue_trial({n: "per_channel:minmax" if i < 3 else "float" for i, n in enumerate(names)})  # injected failure
    result = search(exp, out, trials=6)
    trials = optuna.load_study(study_name="digits_search", storage=f"sqlite:///{out}/study.db").get_trials()
    assert trials[1].user_attrs["duplicate_of"] == 0
    assert trials[2].state == TrialState.FAIL and "injected" in trials[2].user_attrs["fail_reason"]
    assert result.completed == 6 and len(calls) == len(set(calls))


def test_sigkill_mid_study_then_rerun_keeps_finished_trials(search_yaml, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "autoquant.cli", "search", str(search_yaml), "--trials", "30", "--out", str(out), "--quiet"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=os.environ.copy())
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and done < 6:
        time.sleep(0.3)
        done = trial_states(out / "study.db")["COMPLETE"]
    assert proc.poll() is None, f"the search finished before it could be killed: {log.read_text()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = {n: t.values for n, t in completed(out).items()}
    assert 6 <= len(killed_at) < 30
    rerun = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["completed"] == 30
    final = completed(out)
    assert len(final) == 30
    assert all(final[n].values == v for n, v in killed_at.items())
    assert (out / "best" / "model.int8.onnx").is_file()
    # MLflow: the trials that finished while nobody was logging them were back-filled, none twice.
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("digits_search").experiment_id], max_results=1000)
    logged = [r.data.tags["autoquant.trial"] for r in runs if "mlflow.parentRunId" in r.data.tags]
    study = optuna.load_study(study_name="digits_search", storage=f"sqlite:///{out / 'study.db'}")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL))
    assert sorted(logged) == sorted(str(t.number) for t in finished)


def test_search_rejects_a_bad_search_section_with_exit_2(tmp_path, capsys):
    exp = write_experiment(tmp_path / "e.yaml", name="x", model={"builtin": "digits_cnn"},
                           data={"source": "digits", "train_size": 1000}, search={"sampler": "cmaes"})
    assert main(["search", str(exp), "--out", str(tmp_path / "o")]) == 2
    assert "search.sampler 'cmaes' is unknown" in capsys.readouterr().err
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"choices": {"quantize": []}}))
    exp = write_experiment(tmp_path / "e2.yaml", name="y", model={"builtin": "digits_cnn"},
                           data={"source": "digits", "train_size": 1000, "eval_size": 497},
                           search={"space": str(space)})
    assert main(["search", str(exp), "--out", str(tmp_path / "o2")]) == 2
    assert "non-empty list" in capsys.readouterr().err


def test_report_compares_studies_side_by_side(finished, tmp_path, capsys):
    _, out = finished
    assert main(["report", str(out), str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("| digits_search") == 8  # 2 studies × 4 constraints
    assert (tmp_path / "rep" / "report.png").stat().st_size > 10_000
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep2")]) == 2
    assert "not an autoquant search directory" in capsys.readouterr().err


def test_plans_the_timing_cannot_tell_apart_from_the_fastest_are_equally_fast_and_the_most_accurate_wins():
    load = np.array([100, 110, 95, 105, 100, 120, 98, 102, 100, 104.0])  # the machine's, shared by a round's runs
    jitter = np.array([1.03, 0.99, 1.02, 1.04, 0.98, 1.03, 1.01, 0.99, 1.05, 1.02])
    rounds = np.column_stack([load, load * jitter, load * 1.03, load * 1.2])
    assert not_slower(rounds, 1, 0)  # ~2 % slower, the slower one in 7 of 10 rounds: not measurably slower
    assert not not_slower(rounds, 2, 0)  # 3 % slower in every round: the sign test tells
    assert not not_slower(rounds[:3], 3, 0)  # 3 rounds cannot reject anything; the 5 % median bound does
    assert not_slower(rounds[:3], 2, 0)

    names = ("a", "b")
    plan = QuantPlan.uniform(names, LayerChoice.of())
    fast, tied, slow = (ScoredPlan(n, "", plan, Measurement(acc, 100 - acc, 0.1, ms, ms / 100, 10, 0.01, ""))
                        for n, acc, ms in ((1, 80.0, 60.0), (2, 85.0, 61.0), (3, 90.0, 75.0)))
    points = [fast, tied, slow]
    assert choose(points, 25.0, Cost.LATENCY) == (fast, True)  # no side-by-side timing: the least figure
    assert choose(points, 25.0, Cost.LATENCY, frozenset({1, 2})) == (tied, True)
    assert choose(points, 25.0, Cost.LATENCY, frozenset({2, 3})) == (fast, True)  # ties are the fastest's only


def test_a_plan_slower_than_fp32_is_never_exported_and_the_message_says_so():
    """The fastest plan within the limit ran slower than FP32 beside it (its float layers pay transitions): a
    faster plan within the limit is exported instead; when there is none, nothing is, and the message names it.
    Under bitops or size (a cost on another machine) this CPU's timing vetoes nothing, and the export says so."""
    from types import SimpleNamespace

    from autoquant.cli.output import no_plan_message
    from autoquant.search.export import slower_note
    from autoquant.search.select import fastest_within

    plan = QuantPlan.uniform(("a", "b"), LayerChoice.of())

    def point(number: int, drop: float, ratio: float) -> ScoredPlan:
        return ScoredPlan(number, "", plan, Measurement(90 - drop, drop, 0.1, 100 * ratio, ratio, 10, 0.01, ""))

    slow, fast, accurate_slow = point(1, 0.2, 1.05), point(2, 0.4, 0.93), point(3, 0.0, 1.2)
    assert choose([slow, fast, accurate_slow], 0.5, Cost.LATENCY) == (fast, True)
    assert choose([slow, fast, accurate_slow], 0.5, Cost.BITOPS)[0] is fast
    assert fastest_within([slow, fast, accurate_slow], 0.5, Cost.LATENCY) == [fast]
    assert fastest_within([slow, fast, accurate_slow], 0.5, Cost.SIZE) == [fast, slow, accurate_slow]
    assert choose([slow, accurate_slow], 0.5, Cost.BITOPS) == (slow, True)
    assert "1.05x the FP32 model's latency on the machine that searched" in slower_note(slow)[0]
    assert slower_note(fast) == []
    chosen, met = choose([slow, accurate_slow], 0.5, Cost.LATENCY)
    assert not met
    result = SimpleNamespace(chosen=chosen, max_drop=0.5, refused=(), slower=(slow, accurate_slow), stopped_early=0)
    assert "2 plan(s) met the limit, but each ran slower than the FP32 model" in no_plan_message(result)
    assert "trial 1, at 1.05x" in no_plan_message(result)
