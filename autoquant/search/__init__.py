"""The search, in the order a study runs it:

- space.py — which choices each layer may take (a search space YAML), and Optuna's encoding of them;
- estimate/ — what a plan costs and how wrong it will be, without building it: the per-layer error table, the
  per-layer latency table, PlanCost (bitops or latency), the error model and its calibration;
- propose/ — which plans are tried, and why (its package docstring is the table of labels);
- objective.py — the Optuna objective: a trial's plan built, measured, and scored within the accuracy limit;
- select.py — the front, and the export chosen from it (re-timed side by side where latency decides);
- storage.py, study.py, trial_attrs.py — where a study lives, how it is set up and run, what a trial stores.
"""

from .estimate.error_model import ErrorModel
from .estimate.layer_errors import LayerErrors, layer_errors
from .estimate.sensitivity import LayerSensitivity, layer_sensitivity
from .objective import PlanScorer, TrialFailed
from .select import ScoredPlan, Selection, choose, hypervolume, pareto_front, scored_points, select
from .space import SearchSpace, space_path
from .storage import RunPaths
from .study import StudySetup, optimize, setup_study

__all__ = [
    "ErrorModel",
    "LayerErrors",
    "LayerSensitivity",
    "PlanScorer",
    "RunPaths",
    "ScoredPlan",
    "SearchSpace",
    "Selection",
    "StudySetup",
    "TrialFailed",
    "choose",
    "hypervolume",
    "layer_errors",
    "layer_sensitivity",
    "optimize",
    "pareto_front",
    "scored_points",
    "select",
    "setup_study",
    "space_path",
]
