"""`autoquant reoptimize EXP.yaml --registered-model NAME`: search again, compare with the deployed version, and
move the alias only to a better one."""

from __future__ import annotations

import time
from pathlib import Path

from .common import COUNT, number

NAME = "reoptimize"
HELP = "re-run the search, compare with the deployed version, promote if better"


def add_arguments(p) -> None:
    p.add_argument("experiment", type=Path)
    p.add_argument("--registered-model", required=True)
    p.add_argument("--alias", default="production")
    p.add_argument("--trials", type=COUNT)
    p.add_argument("--out", type=Path, help="run directory (default: runs/NAME-reopt-TIMESTAMP)")
    p.add_argument("--tracking-uri", help="MLflow store holding the registry (default: search.tracking_uri)")
    p.add_argument("--tolerance", type=number(float, 0), default=0.1,
                   help="accuracy points the candidate may lose and still win")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from ..api import reoptimize
    from ..config import load_experiment

    exp = load_experiment(args.experiment)
    out = args.out or Path("runs") / f"{exp.name}-reopt-{time.strftime('%Y%m%d-%H%M%S')}"
    r = reoptimize(exp, args.registered_model, out, alias=args.alias, trials=args.trials, tracking_uri=args.tracking_uri,
                   tolerance=args.tolerance)
    changed = "; source model changed since the deployed version" if r.source_changed else ""
    target = r.candidate_version if r.decision == "promoted" else r.deployed_version
    print(f"autoquant: {r.decision} — {r.reason}; '{args.alias}' -> version {target}{changed}; report {r.report}")
    return 0
