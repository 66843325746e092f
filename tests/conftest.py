"""Shared fixtures: one cache directory per test session (so built-in models are trained/exported and
calibrated once), real data from ../shared/data and the embedded digits default."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUTOQUANT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def library_logging():
    """Each test starts with the "autoquant" logger as the library leaves it (no handler of its own, propagating):
    a test, or a module fixture, that runs the CLI in-process sets it up as a command line does (its own stderr
    handler, not propagating), and caplog would then see none of the library's messages."""
    own = logging.getLogger("autoquant")
    own.handlers[:], own.propagate = [], True
    own.setLevel(logging.NOTSET)
    yield


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["AUTOQUANT_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "cifar10_test.npz").is_file():
        raise FileNotFoundError(f"tests need the CIFAR-10 file and checkpoints in {SHARED} (set AUTOQUANT_SHARED_DATA)")
    return SHARED


def write_experiment(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture(scope="session")
def digits_yaml(tmp_path_factory) -> Path:
    return write_experiment(
        tmp_path_factory.mktemp("exp") / "digits.yaml",
        name="digits", model={"builtin": "digits_cnn"},
        data={"source": "digits", "train_size": 1000, "calibration_size": 300, "eval_size": 497},
        eval={"latency_repeats": 3},
        search={"early_stop": False},  # tests that count complete trials: every trial runs to the end
    )


@pytest.fixture(scope="session")
def resnet20_yaml(shared_data, tmp_path_factory) -> Path:
    return write_experiment(
        tmp_path_factory.mktemp("exp") / "resnet20.yaml",
        name="resnet20",
        model={"builtin": "cifar10_resnet20", "checkpoint": str(shared_data / "resnet20-12fca82f.th")},
        data={"source": "cifar10", "path": str(shared_data / "cifar10_test.npz"), "train_size": 5000,
              "calibration_size": 500, "eval_size": 1000},
        eval={"latency_repeats": 3},
    )


@pytest.fixture(scope="session")
def digits_ws(digits_yaml):
    from autoquant import Workspace, load_experiment

    return Workspace(load_experiment(digits_yaml))


@pytest.fixture(scope="session")
def resnet20_ws(resnet20_yaml):
    from autoquant import Workspace, load_experiment

    return Workspace(load_experiment(resnet20_yaml))


def conv_model(weights: list[np.ndarray], *, relu: bool = True, groups: list[int] | None = None) -> onnx.ModelProto:
    """A chain of 3x3 Convs (+ReLU) on a 1x?x8x8 input, built with onnx.helper: the unit-test workhorse."""
    nodes, inits = [], []
    x = "input"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(w.shape[0], np.float32), f"b{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                      group=(groups or [1] * len(weights))[i]))
        x = f"c{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["output"], name="out"))
    cin = weights[0].shape[1] * (groups or [1])[0]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", cin, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", weights[-1].shape[0], 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def error_rate(outputs: np.ndarray, labels: np.ndarray) -> float:
    """A user metric for tests (higher is better, so the negated error rate in percent)."""
    return -float((outputs.argmax(axis=1) != labels).mean() * 100)


def trial_states(db: Path) -> collections.Counter:
    """How many trials of a study database are in each state (COMPLETE, RUNNING, ...), while another process may be
    creating or writing it: plain SQL, since opening it with Optuna would manage its tables too, and two processes
    doing that at once fail. Not `mode=ro`: a read-only connection to a WAL database may not see the WAL and reads
    the main file while a checkpoint writes it ("database disk image is malformed"). `mode=rw` never creates it."""
    if not db.exists():
        return collections.Counter()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=1)) as con:
            return collections.Counter(dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall()))
    except sqlite3.DatabaseError:  # no tables yet, or locked for a moment
        return collections.Counter()
