"""Register an export, change the source model, re-optimize: the alias moves only to a better version."""

import shutil
from dataclasses import replace

import numpy as np
import onnx
import yaml
from conftest import write_experiment
from mlflow import MlflowClient
from onnx import numpy_helper

from autoquant import Workspace, load_experiment
from autoquant.api import reoptimize
from autoquant.cli import main
from autoquant.config import Cost
from autoquant.jobs.reoptimize import RACE_ROUNDS, Race, decide
from autoquant.measure import Measurement


def test_alias_moves_only_to_a_better_version(digits_yaml, tmp_path, capsys):
    source = Workspace(load_experiment(digits_yaml)).prepared.source
    model_path = tmp_path / "model.onnx"
    shutil.copy(source, model_path)
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    exp_path = write_experiment(
        tmp_path / "prod.yaml", name="digits_prod", model={"onnx": str(model_path)},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 3},
        # bitops: which plan a study exports, and whether it is cheaper, do not depend on the CPU's timing
        # (the latency race is tested below).
        search={"tracking_uri": registry, "population_size": 6, "sensitivity_k": [1], "max_accuracy_drop": 6.0,
                "objective": "bitops"},
    )
    # v1: a study whose space keeps three of the five convs float (the all-float plan is never exported), so a
    # later study on the default space has cheaper plans to offer — whichever of its plans the export's
    # side-by-side timing picks on a loaded CPU.
    floats = {f"/features/features.{i}/Conv": {"quantize": False} for i in (3, 6, 9)}
    (tmp_path / "v1_space.yaml").write_text(yaml.safe_dump({"pinned": floats}))
    v1 = yaml.safe_load(exp_path.read_text())
    v1["search"]["space"] = str(tmp_path / "v1_space.yaml")
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(v1))
    assert main(["search", str(tmp_path / "v1.yaml"), "--trials", "3", "--out", str(tmp_path / "run1"), "--quiet",
                 "--register", "digits", "--alias", "production"]) == 0
    assert "registered digits version 1, alias 'production'" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)

    # The production model is retrained: one layer's weights change, so does the model's hash.
    m = onnx.load(str(model_path))
    w = next(i for i in m.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.02), w.name))
    onnx.save(m, str(model_path))

    exp = load_experiment(exp_path)
    # The export is the fastest plan within the 6-point limit, whatever the objective: on a CPU with 7-bit weights
    # it is an all-INT8 plan up to 3 points less accurate than v1. Any plan within the limit is accurate enough
    # here (tolerance = the limit), so the decision rests on cost alone, as a test of it must.
    r = reoptimize(exp, "digits", tmp_path / "run2", trials=10, tolerance=6.0)
    assert r.decision == "promoted" and r.source_changed, r.reason
    assert r.candidate.bitops_fraction < r.deployed.bitops_fraction
    assert str(client.get_model_version_by_alias("digits", "production").version) == r.candidate_version == "2"
    report = r.report.read_text()
    assert "Decision: promoted" in report and "**changed**" in report and r.plot.stat().st_size > 0

    # A candidate that cannot meet its constraint never moves the alias.
    impossible = replace(exp, search=replace(exp.search, max_accuracy_drop=-50.0))
    r = reoptimize(impossible, "digits", tmp_path / "run3", trials=3)
    assert r.decision == "kept" and r.candidate_version is None
    assert str(client.get_model_version_by_alias("digits", "production").version) == "2"
    assert "Decision: kept" in r.report.read_text()

    # Nor does one that is merely as good as what is deployed (it is still registered, tagged "kept"): a one-trial
    # study runs the deployed plan alone (enqueued first), on the unchanged model.
    code = main(["reoptimize", str(exp_path), "--registered-model", "digits", "--trials", "1", "--quiet", "--tolerance", "0.5",
                 "--out", str(tmp_path / "run4")])
    out = capsys.readouterr().out
    assert code == 0 and "kept" in out and "'production' -> version 2" in out
    assert str(client.get_model_version_by_alias("digits", "production").version) == "2"
    assert client.get_model_version("digits", "3").tags["autoquant.decision"] == "kept"

    # Under objective latency, a re-run that exports the deployed plan on the unchanged model is kept, whatever
    # its timing says: the one trial of a one-trial study is the deployed plan (enqueued first).
    fastest = replace(exp, search=replace(exp.search, objective=Cost.LATENCY))
    r = reoptimize(fastest, "digits", tmp_path / "run5", trials=1)
    assert r.decision == "kept" and "deployed plan" in r.reason and not r.source_changed, r.reason
    assert str(client.get_model_version_by_alias("digits", "production").version) == "2"


def test_a_latency_promotion_needs_a_significant_paired_gain():
    """The race is a sign test over paired rounds: noise between equal models, a gain too small to matter, or
    too few rounds to be significant never promotes; a consistent gain of more than PROMOTE_GAIN does."""
    rng = np.random.default_rng(0)
    equal = 1.0 + 0.2 * rng.random((RACE_ROUNDS, 2))  # the same model timed twice, 20 % jitter per run
    assert not Race.of(equal).faster and Race.of(equal).not_slower
    gain = np.column_stack([1.1 + 0.01 * rng.random(RACE_ROUNDS), np.ones(RACE_ROUNDS)])
    assert Race.of(gain).faster
    assert not Race.of(gain[:3]).faster  # three rounds cannot be significant at 1/16
    marginal = np.column_stack([np.full(RACE_ROUNDS, 1.01), np.ones(RACE_ROUNDS)])
    assert not Race.of(marginal).faster  # 1 % faster in every round: below the 2 % a promotion asks
    old = Measurement(accuracy=99.0, accuracy_drop=0.0, bitops_fraction=0.1, latency_ms=2.0, latency_ratio=0.6,
                      size_bytes=1000, output_mse=1e-4, model_sha256="")
    new = replace(old, latency_ratio=0.3)
    assert decide(old, new, 1.0, Cost.LATENCY, 0.1, Race(faster=False, not_slower=True))[0] is False
    assert decide(old, new, 1.0, Cost.LATENCY, 0.1, Race(faster=True, not_slower=True))[0] is True
    assert decide(old, new, 1.0, Cost.LATENCY, 0.1, Race(faster=True, not_slower=True), same_plan=True)[0] is False


def test_reoptimize_without_a_registry_or_alias_is_exit_2(digits_yaml, tmp_path, capsys):
    assert main(["reoptimize", str(digits_yaml), "--registered-model", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "needs the registry's store" in capsys.readouterr().err
    code = main(["reoptimize", str(digits_yaml), "--registered-model", "nope", "--out", str(tmp_path / "r"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert code == 2 and "has no alias 'production'" in capsys.readouterr().err


def test_an_unreachable_registry_fails_fast_and_a_moved_study_is_one_line(digits_yaml, tmp_path, capsys):
    import time

    t0 = time.perf_counter()
    code = main(["reoptimize", str(digits_yaml), "--registered-model", "digits", "--out", str(tmp_path / "r"),
                 "--tracking-uri", "http://127.0.0.1:9"])
    assert code == 2 and "cannot use the MLflow registry at http://127.0.0.1:9" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    exp = yaml.safe_load(digits_yaml.read_text())
    exp["search"] = {"tracking_uri": registry, "sensitivity_k": []}
    (tmp_path / "prod.yaml").write_text(yaml.safe_dump(exp))
    assert main(["search", str(tmp_path / "prod.yaml"), "--trials", "3", "--out", str(tmp_path / "run1"), "--quiet",
                 "--register", "digits", "--alias", "production"]) == 0
    capsys.readouterr()
    shutil.move(tmp_path / "run1", tmp_path / "elsewhere")
    code = main(["reoptimize", str(tmp_path / "prod.yaml"), "--registered-model", "digits", "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "cannot fetch version 1 of 'digits'" in err and "moved or deleted" in err
