"""The search, in the order a study runs it:

- space.py — which choices each layer may take (a search space YAML), and Optuna's encoding of them;
- estimate/ — what a plan costs and how wrong it will be, without building it: the per-layer error table, the
  per-layer latency table, PlanCost (bitops or latency), the error model and its calibration;
- propose/ — which plans are tried, and why: proposers of one shape and the scheduler that enqueues their plans
  (its package docstring is the table of labels), and the sampler;
- objective.py — the Optuna objective: a trial's plan built, measured, and scored within the accuracy limit;
- select.py — the front, and the export chosen from it (re-timed side by side where latency decides);
- confirm.py — the export's drop confirmed on samples no trial saw, and what the eval set can resolve;
- export.py — the export written (the model and record rebuilt from the cache, swapped into place);
- study.py — Study, the one owner of a study's life: open or resume, fingerprint, estimates, run, select, export;
- storage.py, trial_attrs.py — where a study lives (the run directory's checked reader), what a trial stores;
- sensitivity.py — the exact one-layer-at-a-time sensitivity table (`autoquant sensitivity --full`).

Everything outside this package imports from here.
"""

from . import trial_attrs
from .confirm import Confirmation
from .estimate.error_model import ErrorModel
from .estimate.layer_errors import LayerErrors, layer_errors
from .export import FirstExport, check_export_target, export_plan, write_export
from .objective import PlanScorer, TrialFailed
from .select import ScoredPlan, Selection, choose, hypervolume, pareto_front, scored_points, select
from .sensitivity import LayerSensitivity, layer_sensitivity
from .space import SearchSpace, space_path
from .storage import RunPaths, complete_count, done_count
from .study import Estimates, Study

__all__ = [
    "Confirmation",
    "ErrorModel",
    "Estimates",
    "FirstExport",
    "LayerErrors",
    "LayerSensitivity",
    "PlanScorer",
    "RunPaths",
    "ScoredPlan",
    "SearchSpace",
    "Selection",
    "Study",
    "TrialFailed",
    "check_export_target",
    "choose",
    "complete_count",
    "done_count",
    "export_plan",
    "hypervolume",
    "layer_errors",
    "layer_sensitivity",
    "pareto_front",
    "scored_points",
    "select",
    "space_path",
    "trial_attrs",
    "write_export",
]
