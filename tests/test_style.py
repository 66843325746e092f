"""The code stays linted: ruff (the version the test extra pins, with its default rules and pyproject's line length)
finds nothing in the package, the tests or the benchmarks. There is no formatter: the code keeps the layout its
authors gave it, within the line length."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "autoquant", "tests", "benchmarks"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_would_see_a_mistake(tmp_path):
    (tmp_path / "bad.py").write_text("import os\n")  # an unused import
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
                           str(tmp_path / "bad.py")], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "F401" in proc.stdout


def test_no_formatter_markers():
    """No formatter runs (see the module docstring): markers that would only speak to one are noise."""
    marked = [f"{p.relative_to(REPO)}:{i}" for d in ("autoquant", "tests", "benchmarks") for p in sorted((REPO / d).rglob("*.py"))
              for i, line in enumerate(p.read_text().splitlines(), 1) if line.rstrip().endswith("# fmt: " + "skip")]
    assert marked == []
