"""`autoquant report DIR [DIR ...] --out OUT`: studies compared side by side."""

from __future__ import annotations

from pathlib import Path

from ..config import Cost
from .common import add_cost

NAME = "report"
HELP = "compare studies: Pareto fronts, best plans per constraint, per-layer heat map"


def add_arguments(p) -> None:
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("report"))
    add_cost(p, "--objective", default=Cost.BITOPS)


def run(args) -> int:
    from ..report.compare import write_report

    md, png = write_report(args.run_dirs, args.out, args.objective)
    print(f"wrote {md} and {png}")
    return 0
