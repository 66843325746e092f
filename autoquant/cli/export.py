"""`autoquant export RUN_DIR --out OUT`: re-choose the export of a finished study, e.g. at another limit."""

from __future__ import annotations

from pathlib import Path

from .common import DROP, add_cost
from .output import register_if_asked, report_search

NAME = "export"
HELP = "re-choose and export a plan from a finished study"


def add_arguments(p) -> None:
    p.add_argument("run_dir", type=Path)
    p.add_argument("--max-accuracy-drop", type=DROP)
    add_cost(p, "--objective")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--register", metavar="NAME", help="register the export as a new version of NAME")
    p.add_argument("--alias", help="with --register: point this alias at the new version")


def run(args) -> int:
    from ..api import export_from_run

    result = export_from_run(args.run_dir, args.out, max_drop=args.max_accuracy_drop, objective=args.objective)
    register_if_asked(result, args)
    return report_search(result, args.objective or result.objective, args)
