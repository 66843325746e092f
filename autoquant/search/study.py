"""Running a study: one Optuna multi-objective study per experiment, in an RDB storage so that rerunning the same
command resumes it. Setting it up estimates once per study what plans cost and how wrong they will be
(estimate/), enqueues the proposers' first plans (propose/), and hands Optuna the objective, the sampler and the
rounds of calibrated proposals."""

from __future__ import annotations

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
from .propose import Refine, make_sampler, mapped, warm_starts
from .space import SearchSpace, space_path
from .storage import DONE, RunPaths, done_count, make_storage, open_study, study_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudySetup:
    """Everything a process needs before its first trial: done once per process, cached across them."""

    study: optuna.Study
    workspace: Workspace
    space: SearchSpace
    space_file: Path
    scorer: PlanScorer
    errors: LayerErrors
    model: ErrorModel  # the error model, its cost bitops or (under objective latency) the latency table
    storage_url: str
    latency: LatencyTable | None = None


def setup_study(exp: Experiment, paths: RunPaths, *, storage_url: str | None = None,
                prior_plans: dict[str, QuantPlan] | None = None) -> StudySetup:  # fmt: skip
    """Open (or create) the study; on creation enqueue `prior_plans` (label → plan, e.g. what is deployed;
    mapped onto this model's layers by name) and the warm-start plans. Heavy per-study work
    (calibration, FP32 reference, per-layer errors) comes from the on-disk cache when another process
    built it; with parallel workers one builds it and the others wait on its lock."""
    cfg = exp.search
    space_file = space_path(cfg)
    ws = Workspace(exp)
    space = SearchSpace.from_yaml(space_file, ws.graph)
    url = storage_url or cfg.storage or paths.storage
    paths.check_storage_file(url)
    study = open_study(exp, make_storage(url), study_fingerprint(exp, ws))
    ws.precompute_ranges(space.algorithms() | {"minmax"})  # minmax: the uniform warm starts
    scorer = PlanScorer(ws, cfg.trial_timeout_seconds, timed=cfg.objective is Cost.LATENCY,
                        max_drop=cfg.max_accuracy_drop if cfg.early_stop else None)  # fmt: skip
    t0 = time.perf_counter()
    errors = layer_errors(ws, space)
    ws.add_seconds("sensitivity", time.perf_counter() - t0)
    log.info("per-layer errors of %d layers x their options in %.1f s", len(space.layers), time.perf_counter() - t0)
    latency = None
    if cfg.objective is Cost.LATENCY:  # the error model then prices plans in milliseconds, not bitops
        t0 = time.perf_counter()
        latency = latency_table(ws, space)
        ws.add_seconds("sensitivity", time.perf_counter() - t0)
        log.info("per-layer latency of %d layers profiled in %.1f s", len(space.layers), time.perf_counter() - t0)
    model = ErrorModel.build(errors, space, LatencyCost(latency, ws.graph) if latency else BitopsCost(ws.graph))
    if not study.trials:
        priors = [(label, mapped(plan, ws.graph.names)) for label, plan in (prior_plans or {}).items()]
        proposed = warm_starts(ws.graph.names, space, errors, model, cfg.sensitivity_k) if cfg.warm_start else []
        for label, plan in priors + proposed:
            study.enqueue_trial(space.params_for(plan), user_attrs=attrs.enqueue_attrs(label), skip_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return StudySetup(study, ws, space, space_file, scorer, errors, model, url, latency)


def optimize(setup: StudySetup, exp: Experiment, target: int, *, callbacks=()) -> tuple[float, int]:
    """Run trials until `target` trials are done (complete or stopped early) in the storage, counting every
    worker's, or the time budget ends; `callbacks` see each finished trial (tracking, a progress bar). Returns
    (seconds, plans this process evaluated)."""
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
        study.sampler = make_sampler(cfg, setup.model)
        refine = [Refine(setup.model, cfg.max_accuracy_drop)] if cfg.refine else []
        study.optimize(objective, timeout=timeout, catch=(TrialFailed,),
                       callbacks=[MaxTrialsCallback(target, states=DONE), FailureGuard(), *refine, *callbacks])  # fmt: skip
    return time.perf_counter() - t0, objective.evaluated
