"""Running a study: one Optuna multi-objective study per experiment, in an RDB storage so that rerunning the same
command resumes it. The study starts with the ladder's first rung (all-INT8), which needs only calibration; what
estimating plans needs (the per-layer error and latency tables, the error model: estimate/) is made when the
ladder first asks for it, and the proposers (propose/) enqueue their plans as the ladder ends."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback

from ..config import Cost, Experiment
from ..quantize.plan import QuantPlan
from ..workspace import Workspace
from . import trial_attrs as attrs
from .estimate.cost import BitopsCost, LatencyCost
from .estimate.error_model import ErrorModel
from .estimate.latency_table import LatencyTable, latency_table
from .estimate.layer_errors import LayerErrors, layer_errors
from .objective import FailureGuard, Objective, PlanScorer, TrialFailed
from .propose import Ladder, Refine, first_rung, make_sampler, mapped, warm_starts
from .space import SearchSpace, space_path
from .storage import DONE, RunPaths, done_count, make_storage, open_study, study_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Estimates:
    """What a study estimates of plans without building them, once."""

    errors: LayerErrors
    latency: LatencyTable
    model: ErrorModel  # priced in the objective's cost: bitops (or size) or latency
    by_latency: ErrorModel  # priced in latency: the ladder's


class StudySetup:
    """Everything a process needs to run trials; the estimates are made when first asked for."""

    def __init__(self, exp: Experiment, study: optuna.Study, workspace: Workspace, space: SearchSpace, space_file: Path,
                 scorer: PlanScorer, storage_url: str):  # fmt: skip
        self.exp, self.study, self.workspace, self.space = exp, study, workspace, space
        self.space_file, self.scorer, self.storage_url = space_file, scorer, storage_url

    @functools.cached_property
    def estimates(self) -> Estimates:
        ws, space = self.workspace, self.space
        t0 = time.perf_counter()
        errors = layer_errors(ws, space)
        log.info("per-layer errors of %d layers x their options in %.1f s", len(space.layers), time.perf_counter() - t0)
        t1 = time.perf_counter()
        latency = latency_table(ws, space)
        log.info("per-layer latency of %d layers profiled in %.1f s", len(space.layers), time.perf_counter() - t1)
        ws.add_seconds("sensitivity", time.perf_counter() - t0)
        by_latency = ErrorModel.build(errors, space, LatencyCost(latency, ws.graph))
        model = by_latency if self.exp.search.objective is Cost.LATENCY else ErrorModel.build(errors, space, BitopsCost(ws.graph))
        return Estimates(errors, latency, model, by_latency)

    @functools.cached_property
    def local_errors(self) -> LayerErrors:
        """Each choice's error at its own layer: the ladder ranks equal-kernel variants by it before the estimates
        (which reuse it) are made."""
        t0 = time.perf_counter()
        local = layer_errors(self.workspace, self.space, propagated=False)
        self.workspace.add_seconds("sensitivity", time.perf_counter() - t0)
        return local

    def warm_starts(self) -> list:
        e, cfg = self.estimates, self.exp.search
        return warm_starts(self.workspace.graph.names, self.space, e.errors, e.model, cfg.sensitivity_k)

    def ladder(self) -> Ladder:
        return Ladder(self.space, self.exp.search.max_accuracy_drop, self.workspace.reference.accuracy,
                      lambda: self.estimates.by_latency, self.warm_starts, lambda: self.local_errors)  # fmt: skip


def setup_study(exp: Experiment, paths: RunPaths, *, storage_url: str | None = None,
                prior_plans: dict[str, QuantPlan] | None = None) -> StudySetup:  # fmt: skip
    """Open (or create) the study; on creation enqueue `prior_plans` (label → plan, e.g. what is deployed;
    mapped onto this model's layers by name) and the ladder's first rung. Heavy per-study work (calibration,
    FP32 reference, the estimates) comes from the on-disk cache when another process built it; with parallel
    workers one builds it and the others wait on its lock."""
    cfg = exp.search
    space_file = space_path(cfg)
    ws = Workspace(exp)
    space = SearchSpace.from_yaml(space_file, ws.graph)
    url = storage_url or cfg.storage or paths.storage
    paths.check_storage_file(url)
    own = url == paths.storage
    storage = make_storage(url, exp.cache / "stores" if own else None, own=paths.root / "study.db" if own else None)
    study = open_study(exp, storage, study_fingerprint(exp, ws))
    ws.precompute_ranges(space.algorithms() | {"minmax"})  # minmax: the uniform warm starts
    scorer = PlanScorer(ws, cfg.trial_timeout_seconds, timed=cfg.objective is Cost.LATENCY,
                        max_drop=cfg.max_accuracy_drop if cfg.early_stop else None)  # fmt: skip
    if not study.trials:
        priors = [(label, mapped(plan, ws.graph.names)) for label, plan in (prior_plans or {}).items()]
        for label, plan in priors + ([first_rung(ws.graph.layers)] if cfg.warm_start else []):
            study.enqueue_trial(space.params_for(plan), user_attrs=attrs.enqueue_attrs(label), skip_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return StudySetup(exp, study, ws, space, space_file, scorer, url)


def optimize(setup: StudySetup, exp: Experiment, target: int, *, callbacks=()) -> tuple[float, int]:
    """Run trials until `target` trials are done (complete or stopped early) in the storage, counting every
    worker's, or the time budget ends; `callbacks` see each finished trial first (tracking, the first export, a
    progress bar). Returns (seconds, plans this process evaluated)."""
    cfg = exp.search
    study = setup.study
    done = done_count(study)
    if done < target:
        log.info("%d of %d trials already done; searching %.3g plans with %s", done, target, setup.space.size(),
                 cfg.sampler)  # fmt: skip
    objective = Objective(setup.space, setup.scorer, cfg.objective, cfg.max_accuracy_drop)
    t0 = time.perf_counter()
    if done < target:
        timeout = cfg.timeout_minutes * 60 if cfg.timeout_minutes else None
        study.sampler = make_sampler(cfg, lambda: setup.estimates.model)
        proposers = []
        if cfg.warm_start:
            ladder = setup.ladder()
            ladder.advance(study)  # a resumed study whose ladder a kill interrupted goes on
            proposers.append(ladder)
        if cfg.refine:
            proposers.append(Refine(lambda: setup.estimates.model, cfg.max_accuracy_drop,
                                    setup.workspace.reference.accuracy))  # fmt: skip
        study.optimize(objective, timeout=timeout, catch=(TrialFailed,),
                       callbacks=[MaxTrialsCallback(target, states=DONE), FailureGuard(), *callbacks, *proposers])  # fmt: skip
    return time.perf_counter() - t0, objective.evaluated
