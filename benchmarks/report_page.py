"""The study page of a finished study: its size, and how long headless Chromium takes to open it (network cut off),
against an empty page opened the same way in alternating rounds (the browser's own start-up is subtracted).

    python benchmarks/report_page.py RUN_DIR [RUN_DIR ...] [--rounds 7]

RUN_DIR: a search's --out (e.g. the photo bed's, from benchmarks/budgets.py --work W: W/efficientnet-lite1/...).
The page is rebuilt (autoquant report DIR) and timed. Writes benchmarks/results/report_page.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_result

from autoquant.report.html import write_study_page
from autoquant.report.view import load_view

OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND"]


def open_seconds(chromium: str, page: Path, profile: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([chromium, *OFFLINE, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    entries = {}
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.html"
        empty.write_text("<!DOCTYPE html><html><head><title>empty</title></head><body></body></html>")
        for run in args.run_dirs:
            t0 = time.perf_counter()
            page = write_study_page(run)
            written = time.perf_counter() - t0
            view = load_view(run)
            opened, baseline = [], []
            for _ in range(args.rounds):  # alternating: the same load on both
                opened.append(open_seconds(chromium, page, Path(tmp) / "profile"))
                baseline.append(open_seconds(chromium, empty, Path(tmp) / "profile"))
            entries[str(run)] = {"study": view.study_name, "layers": len(view.record.layers) if view.record else None,
                                 "trials": len(view.trials), "bytes": page.stat().st_size, "write_seconds": written,
                                 "open_seconds_median": statistics.median(opened),
                                 "empty_page_seconds_median": statistics.median(baseline),
                                 "page_over_empty_seconds": statistics.median(o - b for o, b in zip(opened, baseline))}
            e = entries[str(run)]
            print(f"{run}: {e['bytes'] / 1e6:.2f} MB, {e['layers']} layers, {e['trials']} trials; written in "
                  f"{written:.1f} s; opens in {e['open_seconds_median']:.2f} s ({e['page_over_empty_seconds']:+.2f} s "
                  f"over an empty page)", flush=True)
    write_result("report_page", {"pages": entries, "machine": machine(),
                                 "command": " ".join(["python benchmarks/report_page.py", *sys.argv[1:]])})


if __name__ == "__main__":
    main()
