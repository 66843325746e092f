"""autoquant: find, unattended, the best mixed-precision INT8 quantization of a trained network."""

from .api import QuantizeResult, apply_record, evaluate, preset_plan, quantize
from .config import Experiment, load_experiment
from .errors import AutoquantError, ConfigError, DataError, ModelError, PlanError
from .graph.ingest import export_torch
from .measure import Measurement
from .quantize.plan import LayerChoice, QuantPlan
from .record import Record
from .workspace import Workspace

__all__ = [
    "AutoquantError",
    "ConfigError",
    "DataError",
    "Experiment",
    "LayerChoice",
    "Measurement",
    "ModelError",
    "PlanError",
    "QuantPlan",
    "QuantizeResult",
    "Record",
    "Workspace",
    "apply_record",
    "evaluate",
    "export_torch",
    "load_experiment",
    "preset_plan",
    "quantize",
]
