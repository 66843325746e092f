"""Helpers shared by the benchmark scripts: onnxruntime's quantize_static baseline, machine facts, output."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from autoquant.search.select import hypervolume as pareto_hypervolume
from autoquant.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The machine a result was measured on: CPU model, the flags that decide which integer kernels
    onnxruntime picks, cores, versions, and what weight_range auto resolves to here."""
    from autoquant.machine import machine as cpu
    from autoquant.quantize.weight_range import resolve, uint8_kernels_saturate

    return {**cpu(), "uint8_kernels_saturate": uint8_kernels_saturate(), "weight_range_auto": resolve("auto", "uint8"),
            **versions()}


def machine_line(m: dict) -> str:
    """One line naming the machine of a results JSON, for the tables generated from it."""
    flags = ", ".join(m.get("flags", [])) or ("VNNI" if m.get("vnni") else "no VNNI")
    return (f"{m.get('cores', '?')}-core {m.get('cpu', '?')} ({flags}), onnxruntime {m.get('onnxruntime_version', '?')}, "
            f"weight_range auto → {m.get('weight_range_auto', 'reduced' if m.get('uint8_kernels_saturate') else 'full')}")


def data_reader(data, batch: int):
    """onnxruntime's CalibrationDataReader over a Dataset (inputs by name), in batches of `batch`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data.batches(batch))

        def get_next(self):
            return next(self.it, None)

    return Reader()


def ort_quantize_static(ws, *, per_channel: bool, method: str = "MinMax", activation_type: str = "QInt8") -> onnx.ModelProto:
    """What a user gets today: quant_pre_process'd model → quantize_static (QDQ) with its defaults."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calib = ws.splits.calibration
    batch = 25 if len(calib) % 25 == 0 else 1  # its histogram calibrators reject a ragged last batch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(ws.prepared.preprocessed), str(out), data_reader(calib, batch), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, calibrate_method=getattr(CalibrationMethod, method),
                        activation_type=getattr(QuantType, activation_type))
        return onnx.load(str(out))


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def run_beds(name: str, bed_names: list[str], work: str | None, measure: Callable[[str, Path, Callable], dict]) -> None:
    """`measure(bed, its work directory, save)` for each bed, `save(entry)` replacing the bed's entry of
    results/NAME.json (with the machine and the command) as the measurement goes."""
    previous = RESULTS / f"{name}.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {"beds": {}}
    command = " ".join([f"python benchmarks/{name}.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as scratch:
        for bed in bed_names:
            where = Path(work or scratch) / bed
            where.mkdir(parents=True, exist_ok=True)

            def save(entry: dict, bed: str = bed) -> None:
                results["beds"][bed] = entry | {"machine": machine(), "command": command}
                write_result(name, results)

            measure(bed, where, save)
    print(f"wrote {previous}")


def hypervolume(points: list[tuple[float, float]], ref_acc: float, ref_cost: float = 1.0) -> float:
    """2-D hypervolume of (accuracy, cost) points (accuracy up, cost down) from the reference point."""
    return pareto_hypervolume([(c, -a) for a, c in points], ref_cost, -ref_acc)


def save_figure(fig, name: str) -> Path:
    """Write a benchmark's figure to benchmarks/results/NAME.png."""
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
