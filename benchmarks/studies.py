"""A fresh autoquant study on a bed from cold per-study caches, and what any tool's model runs per layer: shared by
the benchmarks that compare exports (limit_sweep.py, recovery.py)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import beds
import onnx

from autoquant import SearchResult, load_experiment, search
from autoquant.evaluate.executed import kernel_counts, optimized_graph

# What a study computes for itself; a user's second study on the same model and data finds these cached. The
# decoded data stays cached; so does nothing else: the recovery (bias shifts, adaptive rounding) is made again.
PER_STUDY_CACHES = ("stats", "reference", "layer_errors", "latency_table", "sensitivity", "smoothing", "recovery")


def kernels(model: onnx.ModelProto) -> dict[str, int]:
    """Layers a default session runs with integer and with float kernels (any tool's model: counted on the graph
    onnxruntime optimized, not on autoquant's own layer names)."""
    return dict(kernel_counts(optimized_graph(model.SerializeToString())))


def cold_study(exp: dict, work: Path, tag: str, **search_cfg) -> tuple[onnx.ModelProto | None, dict, SearchResult]:
    """Run a new study of `exp` with its search section updated by `search_cfg`: (the export or None, its figures
    as the results JSON records them, the result)."""
    cache = Path(exp["cache_dir"])
    for kind in PER_STUDY_CACHES:
        shutil.rmtree(cache / kind, ignore_errors=True)
    loaded = load_experiment(beds.write(beds.experiment_with(exp, **search_cfg), work, tag))
    shutil.rmtree(work / f"run-{tag}", ignore_errors=True)  # a fresh study, not the resumption of an earlier one
    t0 = time.perf_counter()
    result = search(loaded, work / f"run-{tag}")
    seconds = time.perf_counter() - t0
    phases = dataclasses.asdict(result.workspace.timings) | {"trials": result.seconds}
    plan = result.chosen.plan if result.met else None
    info = {"seconds": seconds, "first_feasible_seconds": result.first_export_seconds, "trials": result.completed,
            "objective": result.objective.value, "phases": phases, "met": result.met,
            "closest_drop": None if result.chosen is None else result.chosen.result.accuracy_drop,
            "trial_latency_ratio": result.chosen.result.latency_ratio if result.met else None,
            "label": result.chosen.label if result.met else None,
            "float_layers": None if plan is None else len(plan.names) - len(plan.quantized)}
    return (onnx.load(str(result.export.model_path)) if result.met else None), info, result
