"""`autoquant search EXP.yaml`: run or resume the study and export the fastest plan within the limit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .common import COUNT, DROP, log
from .output import register_if_asked, report_search

NAME = "search"
HELP = "run or resume the study; export the best plan within the constraint"


def add_arguments(p) -> None:
    p.add_argument("experiment", type=Path)
    p.add_argument("--trials", type=COUNT, help="complete trials to reach (default: search.trials)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/EXPERIMENT_NAME)")
    p.add_argument("--max-accuracy-drop", type=DROP, help="override search.max_accuracy_drop (points)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (for scheduled runs)")
    p.add_argument("--json", action="store_true", help="print one JSON line with the outcome")
    p.add_argument("--workers", type=COUNT, default=1, help="processes sharing the study on this machine")
    p.add_argument("--register", metavar="NAME", help="register the export as a new version of NAME (MLflow registry)")
    p.add_argument("--alias", help="with --register: point this alias (e.g. production) at the new version")


def run(args) -> int:
    from ..api import search
    from ..config import load_experiment

    exp = load_experiment(args.experiment)
    if args.max_accuracy_drop is not None:
        exp = replace(exp, search=replace(exp.search, max_accuracy_drop=args.max_accuracy_drop))
    out = args.out or Path("runs") / exp.name
    log.info("study %s in %s (rerun the same command to resume it)", exp.name, out)
    result = search(exp, out, trials=args.trials, workers=args.workers)
    log.info("%d plans evaluated in %.1f s this run; MLflow: mlflow ui --backend-store-uri sqlite:///%s", result.evaluated,
             result.seconds, (out / "mlflow.db").resolve())
    register_if_asked(result, args)
    return report_search(result, exp.search.objective, args)
