"""Peak memory of calibration on CIFAR-10 ResNet-56 with 1,000 calibration images: our one pass
(statistics for all five algorithms, bounded histograms) against onnxruntime's calibrators, each in
a fresh process (peak RSS = VmHWM).

    python benchmarks/calibration_memory.py [--calibration-size 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result
from engine_ptq import calibration_comparison

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", type=Path, default=REPO / "experiments" / "cifar10_resnet56.yaml")
    p.add_argument("--calibration-size", type=int, default=1000)
    args = p.parse_args()
    rows = calibration_comparison(args.experiment, args.calibration_size)
    path = write_result("calibration_memory", {"command": "python " + " ".join(sys.argv), "machine": machine(),
                                               "experiment": args.experiment.stem, "rows": rows})
    print(f"## Calibration of {args.experiment.stem} on {args.calibration_size} images\n")
    print("| method | wall s | peak RSS MB | RSS before MB |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
