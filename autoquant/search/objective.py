"""The Optuna objective: a trial's parameters → its plan → its model, built from the workspace cache and measured
in time → (accuracy, cost), with the accuracy limit as Optuna's trial constraint."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading

import optuna
from optuna.trial import TrialState

from ..config import Cost
from ..errors import AutoquantError, runtime_reason
from ..evaluate.early_stop import EarlyStop, Hopeless
from ..evaluate.metrics import HITS
from ..measure import Measurement, Meter, Timing
from ..quantize.plan import QuantPlan
from ..workspace import Workspace
from . import trial_attrs as attrs
from .select import RETIME_BAND
from .space import SearchSpace

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 20
ACCURACY_CONSTRAINT = "accuracy_drop_over_limit"


class TrialFailed(AutoquantError):
    """A plan whose model cannot be built or run, or gives non-finite outputs: that trial fails, the study goes on."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise TrialFailed in this (main) thread after `seconds`. onnxruntime releases the GIL between
    batches, so a slow or hung trial is interrupted at the next batch boundary."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TrialFailed(f"trial timed out after {seconds:g} s (search.trial_timeout_seconds)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PlanScorer:
    """Builds a plan's model from the workspace cache and measures it, within the trial's deadline: any
    failure is the plan's (TrialFailed), so the study goes on."""

    def __init__(self, ws: Workspace, timeout: float | None = None, timed: bool = False,
                 max_drop: float | None = None):
        """`timed`: time every trial interleaved with FP32 in the same rounds (when latency is what the study
        minimises; otherwise only the final front is timed, jobs/search.py). `max_drop`: stop plans a prefix
        of the eval set shows cannot meet it (evaluate/early_stop.py)."""
        self.ws, self.timeout, self.timed = ws, timeout, timed
        self.meter = Meter(ws)
        self.screen = None
        if max_drop is not None:
            self.screen = EarlyStop.make(ws.splits.eval, ws.reference.outputs, HITS.get(ws.exp.eval.metric), max_drop,
                                         ws.evaluator.batches.size)

    def __call__(self, plan: QuantPlan, timing: Timing | None = None) -> Measurement:
        try:
            with deadline(self.timeout):
                return self.meter(self.ws.build(plan), plan, timed=self.timed, screen=self.screen, timing=timing)
        except (TrialFailed, Hopeless):
            raise
        except AutoquantError as exc:
            raise TrialFailed(str(exc)) from exc
        except Exception as exc:  # onnxruntime's own error types: the plan is the problem, not the user
            raise TrialFailed(f"{exc.__class__.__name__}: {runtime_reason(exc)}") from exc


class Objective:
    """Optuna objective: trial → plan → (accuracy, cost). A plan measured before — by this process or
    by another worker on the same storage — is not re-evaluated: its result is reused and the trial
    records which trial it duplicates."""

    def __init__(self, space: SearchSpace, scorer: PlanScorer, objective: Cost, max_drop: float):
        self.space, self.scorer, self.objective, self.max_drop = space, scorer, objective, max_drop
        self.known: dict[str, tuple[int, Measurement]] = {}
        self.seen: set[int] = set()
        self.evaluated = 0

    def _refresh(self, study: optuna.Study) -> None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number not in self.seen:
                self.seen.add(t.number)
                self.known.setdefault(attrs.plan(t).key(), (t.number, attrs.result(t)))

    def timing(self) -> Timing:
        """Trials need precise latency only within the band retime_fastest re-times: RETIME_BAND × the fastest
        plan known to meet the constraint (all-float, 1×, until a quantized one does)."""
        fastest = min((r.latency_ratio for _, r in self.known.values()
                       if r.accuracy_drop <= self.max_drop and r.latency_ratio > 0), default=math.inf)
        return Timing(self.max_drop, RETIME_BAND * fastest)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        plan = self.space.plan(trial.suggest_categorical)
        key = plan.key()
        # Few attribute writes per trial: each one is a storage transaction.
        attrs.set_plan(trial, plan)
        self._refresh(trial.study)
        if key in self.known:
            number, result = self.known[key]
            attrs.set_duplicate_of(trial, number)
        else:
            try:
                result = self.scorer(plan, self.timing())
            except TrialFailed as exc:
                attrs.set_failure(trial, str(exc))
                raise
            except Hopeless as exc:
                self.evaluated += 1
                attrs.set_pruned(trial, exc.prefix_accuracy, exc.samples, str(exc), exc.prefix_nmse, exc.prefix_stderr)
                raise optuna.TrialPruned(str(exc)) from None
            self.known[key] = (trial.number, result)
            self.evaluated += 1
        attrs.set_result(trial, result)
        # Optuna's constraint: samplers rank plans that break the accuracy limit behind those that keep it
        trial.set_constraint(ACCURACY_CONSTRAINT, result.accuracy_drop - self.max_drop)
        return result.accuracy, self.objective.of(result)


class FailureGuard:
    """Reports each failed trial (one line through the logger: a command line shows it, a program's log has it) and
    stops the study when many fail in a row: the cause is then the setup, not one plan."""

    def __init__(self):
        self.streak = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            log.warning("trial %d failed: %s", trial.number, attrs.fail_reason(trial) or "unknown reason")
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= MAX_CONSECUTIVE_FAILURES:
            study.stop()
