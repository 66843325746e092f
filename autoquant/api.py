"""The public Python API, in one place (re-exported by `autoquant`): what the command line does, as functions.

Engine (one model at a time):   quantize, evaluate, apply_record, preset_plan, layer_sensitivity
Jobs (a study and after it):    search, export_from_run, finetune_run, register, reoptimize
Types a caller builds or reads: Experiment / load_experiment, Workspace, QuantPlan, LayerChoice, Measurement,
                                QuantizeResult, SearchResult, Record, Cost, and the errors.
"""

from __future__ import annotations

from .config import Cost, Experiment, load_experiment
from .engine import PRESETS, QuantizeResult, apply_record, evaluate, preset_plan, quantize
from .errors import AutoquantError, ConfigError, DataError, ModelError, PlanError
from .graph.ingest import export_torch
from .jobs.finetune import FinetuneResult, finetune_run
from .jobs.reoptimize import ReoptimizeResult, reoptimize
from .jobs.search import SearchResult, export_from_run, register, search
from .measure import Measurement
from .quantize.plan import LayerChoice, QuantPlan
from .record import Record
from .search import LayerSensitivity, layer_sensitivity
from .workspace import Workspace

__all__ = [
    "PRESETS",
    "AutoquantError",
    "ConfigError",
    "Cost",
    "DataError",
    "Experiment",
    "FinetuneResult",
    "LayerChoice",
    "LayerSensitivity",
    "Measurement",
    "ModelError",
    "PlanError",
    "QuantPlan",
    "QuantizeResult",
    "Record",
    "ReoptimizeResult",
    "SearchResult",
    "Workspace",
    "apply_record",
    "evaluate",
    "export_from_run",
    "export_torch",
    "finetune_run",
    "layer_sensitivity",
    "load_experiment",
    "preset_plan",
    "quantize",
    "register",
    "reoptimize",
    "search",
]
