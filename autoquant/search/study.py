"""One owner of a study's life: `Study` opens (creates or resumes) an experiment's Optuna study in its storage and
checks its fingerprint, makes what estimating plans needs when first asked (the per-layer error and latency tables,
the error model: estimate/), runs trials with the proposers (propose/) and the sampler, and selects and exports.
Every command that touches a study goes through it: search and worker (Study.open), export and finetune
(Study.existing). A study starts with the ladder's first rung (all-INT8), which needs only calibration."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.study import MaxTrialsCallback

from ..config import Cost, Experiment
from ..engine import QuantizeResult
from ..errors import ConfigError
from ..evaluate.metrics import HITS
from ..machine import machine
from ..quantize.plan import QuantPlan
from ..workspace import Workspace
from . import trial_attrs as attrs
from .confirm import Confirmation, Confirmer, confirm_choice, resolution
from .estimate.cost import BitopsCost, LatencyCost
from .estimate.deciding import deciding_layers, deferred_options
from .estimate.error_model import ErrorModel
from .estimate.latency_table import LatencyTable, latency_table
from .estimate.latency_table import columns as latency_columns
from .estimate.layer_errors import LayerErrors, layer_errors, with_deferred
from .export import export_plan
from .objective import FailureGuard, Objective, PlanScorer, TrialFailed
from .propose import After, Ladder, Once, Refine, Scheduler, make_sampler, mapped, warm_starts
from .propose.ladder import PREFIX
from .select import ScoredPlan, Selection, scored_points, select
from .space import SearchSpace, space_path
from .storage import DONE, RunPaths, done_count, make_storage, study_fingerprint

log = logging.getLogger(__name__)
ROUNDED = "rounded_layers"  # study attribute: the layers whose deferred choices were made and priced (fit_deciding)


@dataclass(frozen=True)
class Estimates:
    """What a study estimates of plans without building them, once."""

    errors: LayerErrors
    latency: LatencyTable
    model: ErrorModel  # priced in the objective's cost: bitops (or size) or latency
    by_latency: ErrorModel  # priced in latency: the ladder's


class Study:
    """An experiment's study in its storage, and everything per study it needs: its workspace (calibration, the FP32
    reference), its search space, its estimates, its sampler (built once) and its proposers."""

    def __init__(self, exp: Experiment, paths: RunPaths, study: optuna.Study, workspace: Workspace, space: SearchSpace,
                 space_file: Path, storage_url: str, sampler: optuna.samplers.BaseSampler | None = None):
        """Use Study.open or Study.existing."""
        self.exp, self.paths, self.optuna, self.workspace = exp, paths, study, workspace
        self.space, self.space_file, self.storage_url, self.sampler = space, space_file, storage_url, sampler
        self.priors: list[tuple[str, QuantPlan]] = []
        self.deadline: float | None = None  # time.perf_counter() at which search.timeout_minutes ends (run sets it)

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, exp: Experiment, paths: RunPaths, *, storage_url: str | None = None,
             prior_plans: dict[str, QuantPlan] | None = None) -> Study:
        """Create or resume the study (search, worker). A new one starts with `prior_plans` (label → plan, e.g. what
        is deployed, mapped onto this model's layers by name) and the ladder's first rung. Resuming with another
        model, data, metric or objective would mix trials scored on different things: refused, naming what differs.
        Heavy per-study work (calibration, FP32 reference, the estimates) comes from the on-disk cache when another
        process built it; with parallel workers one builds it and the others wait on its lock."""
        cfg = exp.search
        space_file = space_path(cfg)
        ws = Workspace(exp)
        space = SearchSpace.from_yaml(space_file, ws.graph)
        url = storage_url or cfg.storage or paths.storage
        paths.check_storage_file(url)
        own = url == paths.storage
        storage = make_storage(url, exp.cache / "stores" if own else None, own=paths.root / "study.db" if own else None)
        holder: list[Study] = []
        sampler = make_sampler(cfg, lambda: holder[0].estimates.model)  # the error table is made when first asked
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported one line each (FailureGuard)
        study = optuna.create_study(study_name=exp.name, storage=storage, sampler=sampler,
                                    directions=["maximize", "minimize"], load_if_exists=True)
        self = cls(exp, paths, study, ws, space, space_file, url, sampler)
        holder.append(self)
        changed = attrs.fingerprint_changes(study, study_fingerprint(exp, ws), record=True)
        if changed:
            key = changed[0]
            raise ConfigError(f"the study '{exp.name}' in this storage was run with another {key.replace('_', ' ')} "
                              f"({attrs.stored(study, key)[:12]} here, {study_fingerprint(exp, ws)[key][:12]} now): its "
                              "trials would not be comparable; use a new --out directory")
        attrs.name_metrics(study, f"{exp.eval.metric} accuracy (%)", cfg.objective.label)
        ws.precompute_ranges(space.algorithms() | {"minmax"})  # minmax: the uniform warm starts
        self.priors = [(label, mapped(plan, ws.graph.names)) for label, plan in (prior_plans or {}).items()]
        if not study.trials:
            self.scheduler(study)  # the priors and the ladder's first rung
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return self

    @classmethod
    def existing(cls, exp: Experiment, paths: RunPaths) -> Study:
        """A study that ran (export, finetune): read from its storage, its fingerprint checked against `exp` now."""
        study = paths.study(exp)
        ws = Workspace(exp)
        changed = attrs.fingerprint_changes(study, study_fingerprint(exp, ws))
        if changed:
            ws.close()
            raise ConfigError(f"the {changed[0].replace('_', ' ')} of {exp.source_file} changed since the study in "
                              f"{paths.root} ran: re-run the search")
        space_file = space_path(exp.search)
        return cls(exp, paths, study, ws, SearchSpace.from_yaml(space_file, ws.graph), space_file,
                   exp.search.storage or paths.storage)

    def close(self) -> None:
        self.workspace.close()

    # -- what estimating plans needs, made once when first asked --------------------------------------------
    @functools.cached_property
    def latency(self) -> LatencyTable:
        t0 = time.perf_counter()
        table = latency_table(self.workspace, self.space)
        log.info("per-layer latency of %d layers profiled in %.1f s", len(self.space.layers), time.perf_counter() - t0)
        self.workspace.add_seconds("sensitivity", time.perf_counter() - t0)
        return table

    @functools.cached_property
    def estimates(self) -> Estimates:
        ws, space = self.workspace, self.space
        t0 = time.perf_counter()
        errors = layer_errors(ws, space, deadline=self.deadline)
        log.info("per-layer errors of %d layers x their options in %.1f s", len(space.layers), time.perf_counter() - t0)
        ws.add_seconds("sensitivity", time.perf_counter() - t0)
        estimates = self._estimates(errors)
        # a resumed study prices the layers it fitted before (the fits are cached on disk)
        if self._price_deferred(self.optuna.user_attrs.get(ROUNDED) or [], estimates):
            return self.__dict__["estimates"]
        return estimates

    def _estimates(self, errors: LayerErrors) -> Estimates:
        ws = self.workspace
        by_latency = ErrorModel.build(errors, self.space, LatencyCost(self.latency, ws.graph))
        model = by_latency if self.exp.search.objective is Cost.LATENCY else ErrorModel.build(errors, self.space,
                                                                                               BitopsCost(ws.graph))
        return Estimates(errors, self.latency, model, by_latency)

    @functools.cached_property
    def local_errors(self) -> LayerErrors:
        """Each choice's error at its own layer: the ladder ranks equal-kernel variants by it before the estimates
        (which reuse it) are made."""
        t0 = time.perf_counter()
        local = layer_errors(self.workspace, self.space, propagated=False)
        self.workspace.add_seconds("sensitivity", time.perf_counter() - t0)
        return local

    def fit_deciding(self, plan: QuantPlan) -> bool:
        """Once per study: make and price the deferred choices (adaptive rounding) of the layers that decide `plan`
        (estimate/deciding.py; at most `search.rounding_layers`), kept in the study attribute `rounded_layers`. True
        when the estimates changed (the proposers' plans may then differ)."""
        count = self.exp.search.rounding_layers
        if not count or ROUNDED in self.optuna.user_attrs or self.past_deadline():
            return False
        names = deciding_layers(self.estimates.by_latency, plan, count)
        self.optuna.set_user_attr(ROUNDED, names)
        return bool(names) and self._price_deferred(names, self.estimates)

    def _price_deferred(self, names: list[str], estimates: Estimates) -> bool:
        wanted = [(n, c) for n in names if n in self.workspace.graph.names
                  for c in deferred_options(estimates.by_latency, n)]
        if not wanted:
            return False
        t0 = time.perf_counter()
        local, output = with_deferred(self.workspace, self.local_errors, estimates.errors, wanted)
        self.__dict__["local_errors"], self.__dict__["estimates"] = local, self._estimates(output)
        self.workspace.add_seconds("sensitivity", time.perf_counter() - t0)
        log.info("adaptive rounding fitted and priced for the %d layer(s) deciding the plan in %.1f s", len(names),
                 time.perf_counter() - t0)
        return True

    @property
    def predicted(self) -> Callable[[QuantPlan], float]:
        """A plan's latency as the latency table prices it (a share of all-float)."""
        return LatencyCost(self.latency, self.workspace.graph).plan

    # -- running -------------------------------------------------------------------------------------------
    @functools.cached_property
    def scorer(self) -> PlanScorer:
        cfg = self.exp.search
        return PlanScorer(self.workspace, cfg.trial_timeout_seconds, timed=cfg.objective is Cost.LATENCY,
                          max_drop=cfg.max_accuracy_drop if cfg.early_stop else None)

    @functools.cached_property
    def scheduler(self) -> Scheduler:
        """The proposers, in the order they are asked (propose/__init__.py has the table)."""
        cfg, ws = self.exp.search, self.workspace
        fp32 = ws.reference.accuracy
        proposers = [Once("priors", self.priors)] if self.priors else []
        if cfg.warm_start:
            proposers.append(Ladder(self.space, ws.graph.layers, cfg.max_accuracy_drop, fp32,
                                    lambda: self.estimates.by_latency, lambda: self.local_errors, self.fit_deciding))
        if cfg.refine:  # its first round when the ladder ends, before the fixed warm starts
            proposers.append(Refine(lambda: self.estimates.model, cfg.max_accuracy_drop, fp32,
                                    after=Ladder.name if cfg.warm_start else None))
        if cfg.warm_start:
            proposers.append(After("warm-starts", Ladder.name, lambda: warm_starts(
                ws.graph.names, self.space, self.estimates.errors, self.estimates.model, cfg.sensitivity_k)))
        return Scheduler(self.space, proposers)

    def run(self, target: int, *, callbacks=(), started: float | None = None) -> tuple[float, int]:
        """Run trials until `target` trials are done (complete or stopped early) in the storage, counting every
        worker's, or the time budget ends; `callbacks` see each finished trial first (tracking, the first export, a
        progress bar). `started` (time.perf_counter()): when the study's command started, what
        search.timeout_minutes counts from (calibration and the per-study tables included; the first trial runs
        whatever is left). Returns (seconds, plans this process evaluated)."""
        cfg, study = self.exp.search, self.optuna
        done = done_count(study)
        if done < target:
            log.info("%d of %d trials already done; searching %.3g plans with %s", done, target, self.space.size(),
                     cfg.sampler)
        objective = Objective(self.space, self.scorer, cfg.objective, cfg.max_accuracy_drop)
        t0 = time.perf_counter()
        if cfg.timeout_minutes:
            self.deadline = (t0 if started is None else started) + cfg.timeout_minutes * 60
        if done < target:
            self.scheduler(study)  # a resumed study whose ladder a kill interrupted goes on
            self.resolution()
            left = None if self.deadline is None else max(0.0, self.deadline - time.perf_counter())
            first_only = left == 0 and not done  # the first rung runs, whatever the budget left
            study.optimize(objective, timeout=None if first_only else left, n_trials=1 if first_only else None,
                           catch=(TrialFailed,),
                           callbacks=[MaxTrialsCallback(target, states=DONE), FailureGuard(), *callbacks,
                                      lambda _, trial: self.resolution(trial), self.scheduler])
        return time.perf_counter() - t0, objective.evaluated

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    # -- reading, selecting, exporting ---------------------------------------------------------------------
    def points(self) -> list[ScoredPlan]:
        return scored_points(self.optuna)

    def select(self, max_drop: float | None = None, objective: Cost | None = None) -> Selection:
        """The front and the export under `max_drop` (default: the experiment's), plans timed where the choice
        depends on it (search/select.py), the export confirmed on the confirmation split (search/confirm.py)."""
        cfg = self.exp.search
        max_drop = cfg.max_accuracy_drop if max_drop is None else max_drop
        selection = select(self.workspace, self.optuna, max_drop, objective or cfg.objective, self.predicted)
        return confirm_choice(self.optuna, self.confirmer, selection, max_drop, objective or cfg.objective)

    def export(self, chosen: ScoredPlan, out: Path, notes: list[str] = (),
               confirmation: Confirmation | None = None) -> QuantizeResult:
        return export_plan(self.workspace, chosen, out, notes, confirmation)

    @functools.cached_property
    def confirmer(self) -> Confirmer:
        return Confirmer(self.workspace)

    def resolution(self, trial: optuna.trial.FrozenTrial | None = None) -> None:
        """State what the eval set can resolve (search/confirm.py: resolution) once the first rung is measured, as an
        Optuna callback and when a resumed study starts; a warning when the limit is below it."""
        said = self.resolution_sentence(trial)
        if said is not None:
            text, warn = said
            (log.warning if warn else log.info)("%s%s", "warning: " if warn else "", text)

    def resolution_sentence(self, trial: optuna.trial.FrozenTrial | None = None) -> tuple[str, bool] | None:
        """(the sentence, whether it warns), from the first rung (None before it is measured, or when `trial` is
        another one)."""
        ws = self.workspace
        first = next((t for t in self.optuna.get_trials(deepcopy=False) if attrs.label(t) == f"{PREFIX}0"
                      and attrs.drop_and_stderr(t, ws.reference.accuracy, len(ws.splits.eval))), None)
        if first is None or (trial is not None and trial.number != first.number):
            return None
        drop, stderr = attrs.drop_and_stderr(first, ws.reference.accuracy, len(ws.splits.eval))
        return resolution(len(ws.splits.eval), drop, stderr, self.exp.search.max_accuracy_drop,
                          per_sample=self.exp.eval.metric in HITS)

    def keep_page_facts(self, export_trial: int | None, max_drop: float, first_feasible_seconds: float | None = None,
                        seconds: float | None = None) -> None:
        """Store what the study page (report/) shows that no trial holds: the machine, the weight range, the
        one-time phases' seconds, the first feasible export's time, each layer's milliseconds per kernel kind (when
        the latency table was made), what the eval set resolves."""
        ws, exp = self.workspace, self.exp
        facts = attrs.page_facts(self.optuna)
        phases = {k: round(v, 3) for k, v in dataclasses.asdict(ws.timings).items()}
        facts |= {"machine": machine(), "weight_range": ws.weight_range, "fp32_accuracy": ws.reference.accuracy,
                  "eval_samples": len(ws.splits.eval), "metric": exp.eval.metric, "export_trial": export_trial,
                  "max_drop": max_drop, "resolution": self.resolution_sentence()}
        if seconds is not None:  # a search (not an export from its study): this run's phases and first export
            facts |= {"phases": phases, "trial_seconds": round(seconds, 3),
                      "first_feasible_seconds": first_feasible_seconds}
        if "latency" in self.__dict__:  # made by this process: the page does not time the model again
            t = self.latency
            facts["layer_ms"] = {"columns": list(latency_columns()),
                                 "ms": {n: [None if not np.isfinite(v) else round(float(v), 5) for v in row]
                                        for n, row in zip(t.layers, t.ms)}}
        attrs.set_page_facts(self.optuna, facts)

    @property
    def parent_run(self) -> str | None:
        """The MLflow run the study is tracked under."""
        return attrs.parent_run(self.optuna)
