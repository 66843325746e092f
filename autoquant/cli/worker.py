"""`autoquant worker EXP.yaml --storage URL`: join a running study from another process or machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import COUNT, NON_NEGATIVE

NAME = "worker"
HELP = "join a running study (e.g. from another machine) through its storage"


def add_arguments(p) -> None:
    p.add_argument("experiment", type=Path)
    p.add_argument("--storage", required=True, help="the study's SQLAlchemy URL, e.g. postgresql+psycopg://…")
    p.add_argument("--trials", type=COUNT, help="stop when the study has this many complete trials")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--seed-offset", type=NON_NEGATIVE, default=0, help="added to search.seed so workers sample differently")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--parent-pid", type=NON_NEGATIVE, help=argparse.SUPPRESS)  # set by `search --workers`


def run(args) -> int:
    from ..config import load_experiment
    from ..jobs.workers import die_with_parent, work

    if args.parent_pid:
        die_with_parent(args.parent_pid)
    exp = load_experiment(args.experiment)
    evaluated, complete = work(exp, args.storage, trials=args.trials, threads=args.threads, seed_offset=args.seed_offset)
    print(f"worker: evaluated {evaluated} plans; the study has {complete} complete trials")
    return 0
