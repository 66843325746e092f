"""Crash safety: SIGKILL during a worker's trial and during an export."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import optuna
import pytest
from conftest import trial_states, write_experiment
from optuna.trial import TrialState

from autoquant import load_experiment
from autoquant.api import search
from autoquant.fileio import recover_dir


@pytest.fixture
def finished_run(tmp_path):
    exp = write_experiment(
        tmp_path / "c.yaml", name="digits_crash", model={"builtin": "digits_cnn"},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 2}, search={"population_size": 6, "sensitivity_k": [1], "max_accuracy_drop": 2.0, "early_stop": False},
    )
    out = tmp_path / "run"
    # in another process: a study this process opened would hold SQLite connections that can read a stale WAL
    # snapshot while the worker below writes the same file
    subprocess.run([sys.executable, "-m", "autoquant.cli", "search", str(exp), "--out", str(out), "--trials", "8",
                    "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return exp, out


def snapshot(best: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(best.iterdir())}


def wait_for(predicate, timeout=60.0, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# Runs `autoquant export` with a pause injected at the given point of the directory swap, so that the
# test can SIGKILL it exactly there.
PAUSED_EXPORT = """
import os, sys, time
import autoquant.fileio as fio
where = sys.argv[1]
real_replace = os.replace
calls = {"n": 0}
def paused_replace(src, dst):
    calls["n"] += 1
    if where == "mid-swap" and calls["n"] == 2:   # the old export moved aside, the new one not yet in
        open(sys.argv[3] + "/.paused", "w").close(); time.sleep(60)
    return real_replace(src, dst)
real_swap = fio.replace_dir
def paused_swap(new, target):
    if where == "before-swap":                    # the new export fully written, not yet swapped in
        open(sys.argv[3] + "/.paused", "w").close(); time.sleep(60)
    fio.os.replace = paused_replace
    return real_swap(new, target)
import autoquant.search.export
sys.modules["autoquant.search.export"].replace_dir = paused_swap  # autoquant.search is also the API's function
from autoquant.cli import main
sys.exit(main(["export", sys.argv[2], "--max-accuracy-drop", "50", "--objective", "size", "--out", sys.argv[2] + "/best"]))
"""


@pytest.mark.parametrize("where", ["before-swap", "mid-swap"])
def test_sigkill_during_export_leaves_the_last_good_export_intact(finished_run, where):
    exp, out = finished_run
    best = out / "best"
    good = snapshot(best)
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_EXPORT, where, str(out), str(out)])
    assert wait_for(lambda: (out / ".paused").exists()), "export never reached the pause"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out / ".paused").unlink()
    if where == "before-swap":
        assert snapshot(best) == good  # untouched
    else:
        assert not best.exists() and (out / ".best.old").exists()  # killed between the two renames
    # Every command that writes the export first restores the last good one, byte for byte.
    recover_dir(best)
    assert snapshot(best) == good and not list(out.glob(".best.*"))
    ort.InferenceSession(str(best / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    search(load_experiment(exp), out, trials=10)  # and the study goes on to its target
    assert (best / "model.int8.onnx").is_file() and not list(out.glob(".best.*"))


def test_sigkill_a_worker_during_a_trial_then_the_study_completes(finished_run):
    exp, out = finished_run
    storage = f"sqlite:///{out / 'study.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "autoquant.cli", "worker", str(exp), "--storage", storage,
                             "--trials", "200", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    base = trial_states(out / "study.db")["COMPLETE"]

    def mid_trial():  # a plan the study measured before completes at once: a running trial is a short window
        states = trial_states(out / "study.db")
        return states["COMPLETE"] >= base + 4 and states["RUNNING"] > 0

    caught = wait_for(mid_trial, timeout=120, interval=0.01)
    assert caught or trial_states(out / "study.db")["COMPLETE"] >= base + 4, "the worker ran no trial in 120 s"
    assert proc.poll() is None, "the worker ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.values for t in optuna.load_study(study_name="digits_crash", storage=storage).get_trials(
        states=(TrialState.COMPLETE,))}
    result = search(load_experiment(exp), out, trials=len(before) + 6)
    after = {t.number: t.values for t in optuna.load_study(study_name="digits_crash", storage=storage).get_trials(
        states=(TrialState.COMPLETE,))}
    assert result.completed == len(before) + 6 == len(after)
    assert all(after[n] == v for n, v in before.items())
    ort.InferenceSession(str(out / "best" / "model.int8.onnx"), providers=["CPUExecutionProvider"])
