"""Workers: processes that share one study through its storage — started by `search --workers N` on this
machine, or joining from elsewhere with `autoquant worker`."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from ..config import Experiment
from ..report.progress import Progress
from ..search import RunPaths, Study, complete_count


def with_threads(exp: Experiment, threads: int) -> Experiment:
    return replace(exp, eval=replace(exp.eval, threads=threads))


def spawn_worker(exp: Experiment, storage_url: str, target: int, index: int) -> subprocess.Popen:
    """A local worker process on the same study (the same thing `autoquant worker` runs elsewhere)."""
    cmd = [sys.executable, "-m", "autoquant.cli", "worker", str(exp.source_file), "--storage", storage_url,
           "--trials", str(target), "--threads", str(exp.eval.threads), "--seed-offset", str(index), "--quiet",
           "--parent-pid", str(os.getpid())]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when our parent dies, even by SIGKILL, so a killed `search --workers N`
    leaves no worker writing trials (Linux prctl PR_SET_PDEATHSIG). Set by the worker itself rather than
    in a preexec_fn, which is unsafe in a parent with threads; a parent already gone is caught by
    comparing the parent pid afterwards."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit(1)


def work(exp: Experiment, storage_url: str, *, trials: int | None = None, threads: int = 0,
         seed_offset: int = 0) -> tuple[int, int]:
    """Join a study as a worker: run trials until the study has `trials` complete ones.
    Returns (plans this worker evaluated, trials complete in the study). No export, no MLflow logging:
    the process that runs `search` logs every worker's trials when it finishes."""
    exp = replace(exp, search=replace(exp.search, seed=exp.search.seed + seed_offset))
    if threads:
        exp = with_threads(exp, threads)
    study = Study.open(exp, RunPaths(Path(".")), storage_url=storage_url)
    target = trials or exp.search.trials
    try:
        with Progress.of(study.optuna, target, exp.search.max_accuracy_drop, exp.search.objective) as progress:
            _, evaluated = study.run(target, callbacks=[progress])
    finally:
        study.close()
    return evaluated, complete_count(study.optuna)
