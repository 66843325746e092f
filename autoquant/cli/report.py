"""`autoquant report DIR [DIR ...] [--out OUT]`: a study's page, or studies compared side by side."""

from __future__ import annotations

from pathlib import Path

from ..config import Cost
from .common import add_cost

NAME = "report"
HELP = "a study's page (DIR/report.html), or studies compared (OUT/report.html, report.md and report.png)"


def add_arguments(p) -> None:
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None,
                   help="one study: default its run directory; several: default ./report")
    add_cost(p, "--objective", default=Cost.BITOPS)


def run(args) -> int:
    from ..report.compare import write_report
    from ..report.html import write_comparison_page, write_study_page

    if len(args.run_dirs) == 1:
        print(f"wrote {write_study_page(args.run_dirs[0], args.out)}")
        return 0
    out = args.out or Path("report")
    page = write_comparison_page(args.run_dirs, out)
    md, png = write_report(args.run_dirs, out, args.objective)
    print(f"wrote {page}, {md} and {png}")
    return 0
