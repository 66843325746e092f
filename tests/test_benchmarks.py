"""The benchmarks stay runnable and their tables stay true: every script imports against the current package
(an API that moved fails here, not months later on the machine that reruns it), and every table in README.md,
docs/ and benchmarks/README.md is what benchmarks/tables.py generates from benchmarks/results/."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Scripts that run inside the peers' own virtual environment (another numpy/onnx), or only import a package of
# the optional bench extra at call time.
OTHER_ENVIRONMENT = {"peers/run_peer.py"}
SCRIPTS = sorted(str(p.relative_to(BENCHMARKS)) for p in BENCHMARKS.rglob("*.py")
                 if str(p.relative_to(BENCHMARKS)) not in OTHER_ENVIRONMENT)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_imports_against_the_current_package(script, monkeypatch):
    path = BENCHMARKS / script
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top-level imports only: no main()


def test_generated_tables_are_up_to_date():
    # The package is importable from the checkout whether or not it is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCHMARKS.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "tables.py"), "--check"], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr or proc.stdout


def test_a_stale_table_is_reported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import tables

    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- table: baselines -->\nsomething typed by hand\n<!-- /table -->\n")
    rendered = tables.render(doc.read_text())
    assert "something typed by hand" not in rendered and "| bed |" in rendered
    assert tables.render(rendered) == rendered  # generating twice changes nothing
    with pytest.raises(SystemExit, match="unknown table"):
        tables.render("<!-- table: nonsense -->\n<!-- /table -->\n")
