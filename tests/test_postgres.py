"""Two workers on one study stored in a real PostgreSQL server: a throwaway cluster on a local port
(initdb + pg_ctl in a temp dir), torn down afterwards. .ci/run installs Debian's postgresql."""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
from conftest import write_experiment
from optuna.trial import TrialState

from autoquant import load_experiment
from autoquant.api import search
from autoquant.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bindirs:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    bindir = bindirs[-1]
    # Not under pytest's tmp dir: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="autoquant-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    # initdb refuses to run as root: run the server as the postgres user when we are root.
    prefix = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for p in (root, sockets):
            os.chown(p, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                        "CREATE DATABASE autoquant"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/autoquant"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_study_in_postgresql(postgres_url, tmp_path):
    exp = write_experiment(
        tmp_path / "pg.yaml", name="digits_pg", model={"builtin": "digits_cnn"},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 2},
        search={"storage": postgres_url, "population_size": 6, "sensitivity_k": [1], "early_stop": False},
    )
    result = search(load_experiment(exp), tmp_path / "run", trials=16, workers=2)
    study = optuna.load_study(study_name="digits_pg", storage=postgres_url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert 16 <= len(complete) <= 18 and result.export is not None
    assert not (tmp_path / "run" / "study.db").exists()  # the study lives in PostgreSQL only


def test_a_worker_joins_from_elsewhere_and_an_unreachable_server_is_exit_2(postgres_url, tmp_path, capsys):
    exp = write_experiment(
        tmp_path / "pg2.yaml", name="digits_pg2", model={"builtin": "digits_cnn"},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 2}, search={"storage": postgres_url, "sensitivity_k": [], "early_stop": False},
    )
    assert main(["worker", str(exp), "--storage", postgres_url, "--trials", "4", "--quiet"]) == 0
    assert "the study has 4 complete trials" in capsys.readouterr().out
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/autoquant"
    assert main(["worker", str(exp), "--storage", dead, "--trials", "4", "--quiet"]) == 2
    assert "cannot open study storage" in capsys.readouterr().err
