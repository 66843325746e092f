"""Which plans a study tries, and why. Every proposer has one shape (scheduler.py: history in, labelled plans out)
and the scheduler asks them in this order after every finished trial and enqueues what they return. Every
proposed plan carries a label (the trial table, pareto.csv, MLflow):

| label | proposer | when | why |
|---|---|---|---|
| `deployed-vN` | scheduler.Once (a re-optimization's) | when the study starts | the version it may replace is on the front |
| `ladder-K`, `ladder-K-ranges` | ladder.Ladder | first, one rung at a time | a first plan within the limit, fast: all-INT8, then the cheapest plan (in latency) the calibrated error model puts within it; when it ends (past its first rung), adaptive rounding is fitted for the layers that decide the plan (estimate/deciding.py) |
| `refined-R-I`, `front-R-I`, `descent-R-I` (round 0) | refine.Refine | when the ladder ends, before the plans below | the calibrated error model's plans at the limit first: a small trial budget runs them |
| `guided-int8`, `guided-K-float` | guided.guided_plans (scheduler.After the ladder) | when the ladder ends | the error model across the cost range: least error, the greedy float path |
| `all-float`, `int8-per-channel`, `int8-per-tensor`, `int8-per-channel-ALGORITHM`, `all-MODE` | baselines.uniform_plans (idem) | when the ladder ends | the uniform plans a user tries by hand (each mode's own: Mode.hand_made): the export must beat them |
| `sensitive-K-float` | baselines.sensitive_plans (idem) | when the ladder ends | the hand-made mixed plan: all INT8 but the K most sensitive layers (`search.sensitivity_k`) |
| `guided-budget-I` | guided.guided_plans (idem) | last of those | the error model's λ sweep |
| `refined-R-I` | refine.Refine | every `every` finished trials | the cheapest plans the calibrated model puts at the accuracy limit |
| `front-R-I` | refine.Refine | every `every` finished trials | the plans predicted to add the most hypervolume to the front |
| `descent-R-I` | refine.Refine | every `every` finished trials | local search a move or two below the cheapest plan that meets the limit |
| (none) | sampler.GuidedNSGAII | between | NSGA-II breeding from the plans above, drawing fresh choices among the plausible ones |

Switches: `search.warm_start` (the ladder and the plans enqueued when it ends), `search.refine` (the rounds),
`search.guided_mutation` (plausible draws), `search.sensitivity_k`. Every constant: settings.ProposeSettings.
"""

from __future__ import annotations

from ...quantize.plan import QuantPlan
from ..estimate.error_model import ErrorModel
from ..estimate.layer_errors import LayerErrors
from ..space import SearchSpace
from .baselines import sensitive_layers, sensitive_plans, uniform_plans
from .guided import guided_plans
from .ladder import Ladder, first_rung
from .refine import Refine
from .sampler import make_sampler, plausible_options
from .scheduler import After, History, Labelled, Once, Proposal, Proposer, Scheduler
from .settings import SETTINGS, ProposeSettings

__all__ = ["SETTINGS", "After", "History", "Labelled", "Ladder", "Once", "Proposal", "ProposeSettings", "Proposer",
           "Refine", "Scheduler", "first_rung", "guided_plans", "make_sampler", "mapped", "plausible_options",
           "sensitive_layers", "sensitive_plans", "uniform_plans", "warm_starts"]


def warm_starts(names: tuple[str, ...], space: SearchSpace, errors: LayerErrors, model: ErrorModel,
                sensitivity_k: list[int]) -> list[Labelled]:
    """The plans enqueued when the ladder ends (after the refine round it starts), in the order a small budget gets
    most from: the error model's least-error and float-path plans, all-float (the front's reference), the hand-made
    mixed plans, the other uniform plans (per-tensor, each range algorithm, each mode), the error model's λ sweep."""
    uniform = uniform_plans(names, space)
    guided = guided_plans(model)
    budget = [lp for lp in guided if lp[0].startswith("guided-budget-")]
    return ([lp for lp in guided if lp not in budget] + uniform[:1] + sensitive_plans(names, errors, sensitivity_k)
            + uniform[1:] + budget)


def mapped(plan: QuantPlan, names: tuple[str, ...]) -> QuantPlan:
    """A plan made for another version of the model (a deployed one), by layer name: layers that no longer exist
    are dropped, new layers start from the default choice (INT8, per-channel, minmax)."""
    from ...quantize.plan import LayerChoice

    old = dict(plan.choices)
    return QuantPlan(tuple((n, old.get(n, LayerChoice.default())) for n in names))
