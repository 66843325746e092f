"""A regular (non-editable) install works: the wheel carries the default search spaces and the trained embedded
models.

Builds the wheel, installs it without dependencies into a fresh virtual environment, and runs a search
whose experiment names no search.space, from a directory outside the repository. The new environment
sees the packages of the interpreter running the tests (torch, onnxruntime, … are not downloaded again)
through a .pth file listing that interpreter's site-packages: `venv --system-site-packages` would expose
the *base* interpreter's packages instead, which inside a virtual environment hold none of them. Paths in
a .pth are added as they are, their own .pth files (the editable install of the repository) are not run,
so the wheel's copy is the one imported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_searches_with_the_default_space(tmp_path):
    # from a copy: setuptools' build/ directory in the repository would carry modules the sources no longer have
    src = tmp_path / "src"
    def leave_out(folder: str, names: list[str]) -> list[str]:
        own = {"build", "runs", "report"} if Path(folder) == REPO else set()  # run outputs at the top level
        return [n for n in names if n in own | {".git", "__pycache__", ".autoquant_cache"} or n.endswith(".egg-info")]

    shutil.copytree(REPO, src, ignore=leave_out)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("autoquant-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib) / "parent_packages.pth").write_text("".join(f"{p}\n" for p in ours if Path(p).is_dir()))
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import autoquant.search_spaces as s; print(s.__file__)"], cwd=work,
                           check=True, capture_output=True, text=True).stdout
    assert str(venv) in where, where  # the installed wheel, not the repository's editable copy
    # every module of the package is in the wheel (a package missing from pyproject's list is not)
    walk = ("import importlib, pkgutil, autoquant; [importlib.import_module(m.name) for m in "
            "pkgutil.walk_packages(autoquant.__path__, 'autoquant.')]")
    imported = subprocess.run([str(python), "-c", walk], cwd=work, capture_output=True, text=True, check=False)
    assert imported.returncode == 0, imported.stderr
    (work / "exp.yaml").write_text(yaml.safe_dump({
        "name": "wheel", "model": {"builtin": "digits_cnn"},
        "data": {"source": "digits", "train_size": 1000, "calibration_size": 100, "eval_size": 200},
        "eval": {"latency_repeats": 2}, "search": {"trials": 3, "sensitivity_k": []},
    }))
    run = subprocess.run([str(venv / "bin" / "autoquant"), "search", "exp.yaml", "--out", "run", "--quiet", "--json"],
                         cwd=work, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    assert (work / "run" / "best" / "model.int8.onnx").is_file()
    # the wheel carries the trained embedded default: the study's model is the shipped one, not one trained here
    (shipped,) = (REPO / "autoquant" / "zoo" / "shipped").glob("digits_cnn-*.onnx")
    record = json.loads((work / "run" / "best" / "record.json").read_text())
    assert record["model_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
