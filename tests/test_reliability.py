"""Reliability, round 2: what a hostile user and an unlucky operator do.

Every case asserts the exit code, a single line on stderr and no traceback, and — where something
existed before — that nothing was lost: the study's trials, the previous best/, the user's own files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import write_experiment

from autoquant.cli import main
from autoquant.config import Cost
from autoquant.measure import Measurement
from autoquant.quantize.plan import FLOAT, LayerChoice, QuantPlan
from autoquant.search.select import ScoredPlan, choose

DIGITS = {"name": "digits_rel", "model": {"builtin": "digits_cnn"},
          "data": {"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
          "eval": {"latency_repeats": 2}, "search": {"trials": 6, "population_size": 4, "sensitivity_k": [1], "early_stop": False}}


def experiment(tmp: Path, filename: str = "exp.yaml", **overrides) -> Path:
    sections = json.loads(json.dumps(DIGITS))
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
    return write_experiment(tmp / filename, **sections)


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def one_line(code: int, err: str, expected_code: int, message: str) -> None:
    """The failure is one line; anything else on stderr is autoquant's own progress, never a traceback."""
    lines = err.strip().splitlines()
    failures = [line for line in lines if line.startswith("autoquant: error:") or "no quantized plan" in line]
    assert code == expected_code, err
    assert "Traceback" not in err and all(line.startswith("autoquant") for line in lines), err
    assert len(failures) == 1 and message in failures[0], err


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its content hash (the study database is compared by its trials)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "study.db" not in p.name and "mlflow" not in p.name
            and not p.name.endswith(".lock")}


def trials(run_dir: Path) -> list[tuple]:
    study = optuna.load_study(study_name="digits_rel", storage=f"sqlite:///{run_dir / 'study.db'}")
    return [(t.number, t.state.name, t.values) for t in study.trials]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 6-trial study (copied per test, so a test may damage its copy)."""
    root = tmp_path_factory.mktemp("finished")
    exp = experiment(root)
    assert main(["search", str(exp), "--out", str(root / "run"), "--quiet"]) == 0
    return exp, root / "run"


@pytest.fixture
def study(finished, tmp_path):
    exp, run_dir = finished
    shutil.copytree(run_dir, tmp_path / "run")
    return exp, tmp_path / "run"


# --- data loss --------------------------------------------------------------------------------------


def test_export_into_the_run_directory_is_refused(study, capsys):
    _, run_dir = study
    before, done = tree(run_dir), trials(run_dir)
    one_line(*run(capsys, "export", run_dir, "--out", run_dir), 2, "holds files autoquant did not write")
    assert tree(run_dir) == before and trials(run_dir) == done


def test_export_into_a_users_folder_is_refused(study, tmp_path, capsys):
    _, run_dir = study
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    one_line(*run(capsys, "export", run_dir, "--out", docs), 2, "thesis.tex")
    assert (docs / "thesis.tex").read_text() == "years of work" and len(list(docs.iterdir())) == 1


def test_export_onto_a_file_is_refused(study, tmp_path, capsys):
    _, run_dir = study
    target = tmp_path / "model.onnx"
    target.write_bytes(b"mine")
    one_line(*run(capsys, "export", run_dir, "--out", target), 2, "is a file")
    assert target.read_bytes() == b"mine"


def test_export_replaces_its_own_earlier_export(study, tmp_path, capsys):
    _, run_dir = study
    out = tmp_path / "shipped"
    assert run(capsys, "export", run_dir, "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [".autoquant-export", "model.int8.onnx", "record.json"]
    assert run(capsys, "export", run_dir, "--out", out, "--max-accuracy-drop", "2")[0] == 0


def test_export_of_a_directory_without_a_study(tmp_path, capsys):
    exp = experiment(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run.json").write_text(json.dumps({"experiment": str(exp)}))
    one_line(*run(capsys, "export", tmp_path / "empty", "--out", tmp_path / "o"), 2, "has no study.db")
    assert not (tmp_path / "empty" / "study.db").exists()


def test_export_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    one_line(*run(capsys, "export", tmp_path, "--out", tmp_path / "o"), 2, "not an autoquant search directory")


@pytest.mark.parametrize("content, state", [(b"", "is empty (0 bytes)"), (b"garbage" * 100, "is not a SQLite database")])
def test_damaged_study_db_is_not_silently_restarted(study, capsys, content, state):
    exp, run_dir = study
    best = tree(run_dir / "best")
    (run_dir / "study.db").write_bytes(content)
    one_line(*run(capsys, "search", exp, "--out", run_dir, "--quiet"), 2, state)
    assert tree(run_dir / "best") == best and (run_dir / "study.db").read_bytes() == content


@pytest.mark.parametrize("change, key", [({"data": {"eval_size": 400}}, "eval sha256"),
                                         ({"data": {"calibration_size": 200}}, "calibration sha256"),
                                         ({"eval": {"metric": "conftest:error_rate"}}, "metric")])
def test_resuming_with_other_data_or_metric_is_refused(study, tmp_path, capsys, change, key):
    _, run_dir = study
    done, best = trials(run_dir), tree(run_dir / "best")
    changed = experiment(tmp_path, filename="changed.yaml", **change)
    one_line(*run(capsys, "search", changed, "--out", run_dir, "--trials", "8", "--quiet"), 2,
             f"was run with another {key}")
    assert trials(run_dir) == done and tree(run_dir / "best") == best


def test_bad_calibration_batch_size_never_reaches_the_cache(tmp_path, capsys):
    bad = experiment(tmp_path, filename="bad.yaml", quantization={"calibration_batch_size": 0})
    one_line(*run(capsys, "quantize", bad, "--out", tmp_path / "q"), 2, "calibration_batch_size must be at least 1")
    good = experiment(tmp_path, filename="good.yaml")
    assert run(capsys, "quantize", good, "--out", tmp_path / "q")[0] == 0
    assert json.loads((tmp_path / "q" / "record.json").read_text())["objectives"]["fp32_accuracy"] > 95


def test_two_searches_on_one_directory(study, capsys):
    exp, run_dir = study
    done = trials(run_dir)
    with open(run_dir / ".search.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        one_line(*run(capsys, "search", exp, "--out", run_dir, "--trials", "8", "--quiet"), 2,
                 "another autoquant search is running")
    assert trials(run_dir) == done


def test_all_float_is_never_exported_as_int8():
    names = ("a", "b")
    float_plan = QuantPlan.uniform(names, FLOAT)
    int8_plan = QuantPlan.uniform(names, LayerChoice.of())
    result = Measurement(90.0, 0.0, 1.0, 1.0, 1.0, 100, 0.0, "")
    worse = Measurement(88.0, 2.0, 0.0625, 0.5, 0.5, 30, 0.1, "")
    chosen, met = choose([ScoredPlan(0, "all-float", float_plan, result), ScoredPlan(1, "", int8_plan, worse)], 0.5, Cost.BITOPS)
    assert (chosen.number, met) == (1, False)
    assert choose([ScoredPlan(0, "all-float", float_plan, result)], 0.5, Cost.BITOPS) == (None, False)


def test_only_failed_trials_exit_3_with_one_line(tmp_path, capsys):
    exp = experiment(tmp_path, search={"trials": 3, "trial_timeout_seconds": 0.0001, "warm_start": False})
    code, err = run(capsys, "search", exp, "--out", tmp_path / "run", "--quiet")
    one_line(code, err, 3, "no quantized plan completed")
    assert not (tmp_path / "run" / "best").exists()


# --- records given to apply ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(finished):
    _, run_dir = finished
    record = json.loads((run_dir / "best" / "record.json").read_text())
    return record, Path(record["source_model"])


def _first_quantized(record):
    return next(lr for lr in record["layers"] if lr["quantized"])


def _set(path: str, value):
    def edit(record):
        target, *keys = path.split(".")
        obj = _first_quantized(record) if target == "layer" else record
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value

    return edit


def _first_activation(edit):
    def apply(record):
        tensor = next(iter(record["activations"]))
        edit(record["activations"][tensor])

    return apply


RECORD_CASES = {
    "negative activation scale": (_first_activation(lambda a: a.update(scale=-0.1)), "must be a positive"),
    "zero activation scale": (_first_activation(lambda a: a.update(scale=0.0)), "must be a positive"),
    "non-numeric activation scale": (_first_activation(lambda a: a.update(scale="big")), "must be a number"),
    "NaN activation scale": (_first_activation(lambda a: a.update(scale=float("nan"))), "finite number"),
    "zero point out of range": (_first_activation(lambda a: a.update(zero_point=300)), "outside the uint8 range"),
    "missing activation entry": (lambda r: r["activations"].pop(next(iter(r["activations"]))), "activations has no entry"),
    "activations is a list": (_set("record.activations", []), "activations"),
    "wrong scale_w count": (lambda r: _first_quantized(r)["weight"]["scale_w"].append(1.0), "scale_w and offset_w"),
    "negative scale_w": (lambda r: _first_quantized(r)["weight"]["scale_w"].__setitem__(0, -1.0), "scale_w[0]"),
    "weight null": (_set("layer.weight", None), "has no weight entry"),
    "quantized not a bool": (_set("layer.quantized", "no"), "'quantized' must be true or false"),
    "weight bits 3": (lambda r: _first_quantized(r)["choice"].update(weight_bits=3), "weight_bits 3 is not supported: use 8 or 4"),
    "weight entry of other bits": (lambda r: _first_quantized(r)["weight"].update(bits=4), "its weight bits are not those"),
    "scale_d negative": (lambda r: _first_quantized(r)["data"].update(scale_d=-2.0), "scale_d"),
    "int4 mode on a conv": (lambda r: _first_quantized(r).update(mode="int4"), "mode 'int4' must be one of static for a Conv"),
    "unknown smoothing tensor": (lambda r: r.update(smoothquant_alpha=0.5, smoothing={"nope": [1.0]}),
                                 "smoothing names 'nope', which no MatMul/Gemm layer of the model reads"),
}


@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_apply_validates_the_record(exported, tmp_path, capsys, case):
    record, model = exported
    edit, message = RECORD_CASES[case]
    broken = json.loads(json.dumps(record))
    edit(broken)
    path = tmp_path / "record.json"
    path.write_text(json.dumps(broken))
    one_line(*run(capsys, "apply", model, path, "--out", tmp_path / "out.onnx"), 2, message)
    assert not (tmp_path / "out.onnx").exists()


# --- experiment files, plans, spaces and flags ----------------------------------------------------------


EXPERIMENT_CASES = {
    "population_size 0": ({"search": {"population_size": 0}}, "search.population_size must be at least 2"),
    "data.seed -1": ({"data": {"seed": -1}}, "data.seed must be at least 0"),
    "eval.threads -3": ({"eval": {"threads": -3}}, "eval.threads must be at least 0"),
    "train_size -100": ({"data": {"train_size": -100}}, "data.train_size must be at least 0"),
    "max_accuracy_drop nan": ({"search": {"max_accuracy_drop": float("nan")}}, "must be a finite number"),
    "timeout_minutes -1": ({"search": {"timeout_minutes": -1}}, "search.timeout_minutes must be greater than 0"),
    "trial_timeout_seconds 0": ({"search": {"trial_timeout_seconds": 0}}, "must be greater than 0"),
    "name is an absolute path": ({"name": "/tmp/elsewhere"}, "not a path"),
    "name with ..": ({"name": "../up"}, "not a path"),
    "calibration_batch_size -4": ({"quantization": {"calibration_batch_size": -4}}, "calibration_batch_size"),
}


@pytest.mark.parametrize("case", sorted(EXPERIMENT_CASES))
def test_bad_numbers_and_names_in_the_experiment(tmp_path, capsys, case):
    overrides, message = EXPERIMENT_CASES[case]
    exp = experiment(tmp_path, **overrides)
    one_line(*run(capsys, "search", exp, "--out", tmp_path / "run", "--quiet"), 2, message)
    assert not (tmp_path / "run" / "study.db").exists()


def test_binary_file_as_experiment(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_bytes(bytes(range(256)) * 4)
    one_line(*run(capsys, "layers", tmp_path / "exp.yaml"), 2, "is not a YAML text file")


def test_metric_that_cannot_score(tmp_path, capsys):
    exp = experiment(tmp_path, eval={"metric": "numpy:mean"})
    one_line(*run(capsys, "quantize", exp, "--out", tmp_path / "q"), 2, "eval.metric 'numpy:mean' failed")


def test_labels_outside_the_class_range(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(60, 1, 8, 8)).astype(np.float32), y=np.full(60, 12))
    exp = experiment(tmp_path, data={"source": "npz", "path": str(tmp_path / "d.npz"), "train_size": 0,
                                     "calibration_size": 20, "eval_size": 20})
    exp_raw = yaml.safe_load(exp.read_text())
    exp_raw["model"] = {"onnx": str(_digits_onnx(tmp_path))}
    exp.write_text(yaml.safe_dump(exp_raw))
    one_line(*run(capsys, "quantize", exp, "--out", tmp_path / "q"), 2, "labels run from 12 to 12")


def _digits_onnx(tmp_path: Path) -> Path:
    from autoquant import Workspace, load_experiment

    ws = Workspace(load_experiment(experiment(tmp_path, filename="digits.yaml")))
    return ws.prepared.source


def test_garbage_checkpoint(tmp_path, capsys):
    (tmp_path / "r.th").write_bytes(b"\x80\x02not a pickle at all" * 10)
    exp = experiment(tmp_path, model={"builtin": "cifar10_resnet20", "checkpoint": str(tmp_path / "r.th")},
                     data={"source": "cifar10", "path": str(tmp_path / "none.npz")})
    np_data = tmp_path / "none.npz"
    import numpy as np

    np.savez(np_data, x=np.zeros((40, 3, 32, 32), np.float32), y=np.zeros(40, np.int64))
    code, err = run(capsys, "layers", exp)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) >= 1


@pytest.mark.parametrize("content, message", [
    ("layers:\n  5: {quantize: false}\n", "must be a string"),
    ("layers:\n  - /fc1/Gemm\n", "'layers' must map layer names"),
    ("- default: {quantize: true}\n- layers: {}\n", "is a list"),
    ("", "is empty"),
    ("layers:\n  're:[': {quantize: false}\n", "bad pattern"),
])
def test_bad_plan_files(tmp_path, capsys, content, message):
    exp = experiment(tmp_path)
    (tmp_path / "plan.yaml").write_text(content)
    one_line(*run(capsys, "quantize", exp, "--plan", tmp_path / "plan.yaml", "--out", tmp_path / "q"), 2, message)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("space, message", [
    ({"rules": [{"match": {"name": "re:["}, "choices": {"quantize": [True]}}]}, "bad pattern"),
    ({"pinned": {"re:[": {"quantize": False}}}, "bad pattern"),
    ({"pinned": {7: {"quantize": False}}}, "must be a string"),
    ({"pinned": ["/fc2/Gemm"]}, "'pinned' must map"),
])
def test_bad_search_spaces(tmp_path, capsys, space, message):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    exp = experiment(tmp_path, search={"space": str(tmp_path / "space.yaml")})
    one_line(*run(capsys, "search", exp, "--out", tmp_path / "run", "--quiet"), 2, message)


@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "--trials: must be a finite number of at least 1"),
    (["--trials", "-5"], "--trials"),
    (["--workers", "0"], "--workers"),
    (["--max-accuracy-drop", "nan"], "--max-accuracy-drop: must be a finite number"),
    (["--trials", "many"], "'many' is not an integer"),
])
def test_bad_flags(tmp_path, capsys, flags, message):
    one_line(*run(capsys, "search", experiment(tmp_path), "--out", tmp_path / "run", *flags), 2, message)
    assert not (tmp_path / "run").exists()


# --- caches ---------------------------------------------------------------------------------------------


def test_corrupt_preprocessed_model_is_rebuilt(tmp_path, capsys, cache_dir):
    exp = experiment(tmp_path)
    assert run(capsys, "layers", exp)[0] == 0
    for pre in (cache_dir / "models").rglob("preprocessed.onnx"):
        pre.write_bytes(b"truncated")
    code, err = run(capsys, "layers", exp)
    assert code == 0 and "unreadable (corrupt?); rebuilding it" in err and "Traceback" not in err


# --- processes and tracking -----------------------------------------------------------------------------


def _workers_of(parent: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in cmd and b"--parent-pid" in cmd and cmd[cmd.index(b"--parent-pid") + 1] == str(parent).encode():
                found.append(int(proc.name))
    return found


def test_workers_die_with_a_killed_search(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    exp = experiment(tmp_path, search={"trials": 500})
    parent = subprocess.Popen([sys.executable, "-m", "autoquant.cli", "search", str(exp), "--out", str(tmp_path / "run"),
                               "--workers", "2", "--quiet"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not _workers_of(parent.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert _workers_of(parent.pid), "search --workers 2 started no worker"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while _workers_of(parent.pid) and time.time() < deadline:  # a dead worker's cmdline is empty, even as a zombie
        time.sleep(0.2)
    assert not _workers_of(parent.pid), "a worker outlived its killed parent"


def test_mlflow_failing_after_the_study_does_not_fail_the_export(tmp_path, capsys, monkeypatch):
    from autoquant.track.tracker import Tracker

    def broken(self, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Tracker, "finish", broken)
    exp = experiment(tmp_path, search={"trials": 4})
    code, err = run(capsys, "search", exp, "--out", tmp_path / "run", "--quiet")
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("autoquant: warning: MLflow")]
    assert len(warnings) == 1 and "Read-only file system" in warnings[0] and "are complete" in warnings[0]
    assert (tmp_path / "run" / "best" / "model.int8.onnx").is_file()


def test_unreachable_tracking_server_fails_fast(tmp_path, capsys):
    import time

    exp = experiment(tmp_path, search={"tracking_uri": "http://127.0.0.1:9"})
    t0 = time.perf_counter()
    one_line(*run(capsys, "search", exp, "--out", tmp_path / "run", "--quiet"), 2, "cannot use MLflow tracking store")
    assert time.perf_counter() - t0 < 30


def test_a_moved_run_directory_keeps_its_artifacts_beside_it(finished, tmp_path):
    import subprocess
    import sys

    from mlflow import MlflowClient

    exp, run_dir = finished
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    original = tree(run_dir / "mlartifacts")
    # A new process, as a user's resume is: MLflow caches each run's artifact location within a process.
    subprocess.run([sys.executable, "-m", "autoquant.cli", "search", str(exp), "--out", str(moved), "--trials", "8",
                    "--quiet"], check=True, capture_output=True)
    assert tree(run_dir / "mlartifacts") == original  # the original directory was not written to
    client = MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits_rel")
    assert experiment.artifact_location == (moved / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert runs and all(r.info.artifact_uri.startswith(experiment.artifact_location) for r in runs)
    assert any((moved / "mlartifacts").rglob("model.int8.onnx"))


def test_storage_failing_mid_study_is_one_line(study, capsys, monkeypatch):
    """A full disk under study.db (reproduced by hand on a 300 KiB tmpfs: sqlite 'database or disk is full'
    surfaces as optuna's StorageInternalError); the trials committed before it stay."""
    import sqlite3

    import sqlalchemy

    from autoquant.search import Study

    exp, run_dir = study
    done = trials(run_dir)

    def full(*args, **kwargs):
        cause = sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause

    monkeypatch.setattr(Study, "run", full)
    one_line(*run(capsys, "search", exp, "--out", run_dir, "--trials", "8", "--quiet"), 2, "database or disk is full")
    assert trials(run_dir) == done


def test_layers_needs_no_labels_and_no_fp32_pass(tmp_path, capsys, cache_dir):
    """Per-experiment state is computed on first use: listing layers reads neither the data nor the labels."""
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((60, 1, 8, 8), np.float32), y=np.zeros(7, np.int64))  # 7 labels for 60
    exp = experiment(tmp_path, data={"source": "npz", "path": str(tmp_path / "d.npz"), "train_size": 0,
                                     "calibration_size": 20, "eval_size": 20})
    raw = yaml.safe_load(exp.read_text())
    raw["model"] = {"onnx": str(_digits_onnx(tmp_path))}
    exp.write_text(yaml.safe_dump(raw))
    references = set((cache_dir / "reference").glob("*"))
    code = main(["layers", str(exp)])
    out = capsys.readouterr().out
    assert code == 0 and "/features/features.6/Conv" in out and "7 quantizable layers" in out
    assert set((cache_dir / "reference").glob("*")) == references
    one_line(*run(capsys, "quantize", exp, "--out", tmp_path / "q"), 2, "60 inputs but 7 labels")
