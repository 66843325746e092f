"""Writing the pages: RUN/report.html for a study (search, export, finetune and reoptimize write it; `autoquant
report DIR` rebuilds it) and OUT/report.html comparing studies."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import AutoquantError
from ..fileio import atomic_write_bytes
from .compare import FILES, claim_report_dir
from .page import comparison_page, study_page
from .view import load_view

log = logging.getLogger(__name__)
PAGE = "report.html"


def write_study_page(run_dir: Path, out_dir: Path | None = None) -> Path:
    """The study page of the run in `run_dir`, into it (or into `out_dir`, a folder of the user's: never over a file
    autoquant did not write)."""
    view = load_view(run_dir)
    target = Path(run_dir) if out_dir is None else Path(out_dir)
    if out_dir is not None:
        claim_report_dir(target, (PAGE,))
    return atomic_write_bytes(target / PAGE, study_page(view).encode())


def refresh_study_page(run_dir: Path) -> Path | None:
    """write_study_page for a command that just changed the run: a page it cannot write is a warning, never a
    failure of the work it reports on."""
    try:
        return write_study_page(run_dir)
    except (AutoquantError, OSError) as exc:
        log.warning("warning: %s not written: %s", Path(run_dir) / PAGE, exc)
        return None


def study_names(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, with as much of its path as tells it apart from the others."""
    paths = [Path(d).resolve() for d in run_dirs]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [f"{p} #{i + 1}" for i, p in enumerate(paths)]  # the same run given twice


def write_comparison_page(run_dirs: list[Path], out_dir: Path) -> Path:
    """The comparison page into `out_dir`, which write_report's files share: all are claimed before any is written."""
    views = [load_view(d) for d in run_dirs]
    claim_report_dir(out_dir, (PAGE, *FILES))
    return atomic_write_bytes(Path(out_dir) / PAGE, comparison_page(views, study_names(run_dirs)).encode())
