"""Scoring one plan for the search: build its model from the workspace cache and measure it in time."""

from __future__ import annotations

import contextlib
import signal
import threading

from ..errors import AutoquantError, first_line
from ..evaluate.early_stop import EarlyStop, Hopeless
from ..evaluate.metrics import HITS
from ..measure import Measurement, Meter, Timing
from ..quantize.plan import QuantPlan
from ..workspace import Workspace


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
                 max_drop: float | None = None):  # fmt: skip
        """`timed`: time every trial interleaved with FP32 in the same rounds (when latency is what the study
        minimises; otherwise only the final front is timed, jobs/search.py). `max_drop`: stop plans a prefix
        of the eval set shows cannot meet it (evaluate/early_stop.py)."""
        self.ws, self.timeout, self.timed = ws, timeout, timed
        self.meter = Meter(ws)
        self.screen = None
        if max_drop is not None:
            self.screen = EarlyStop.make(ws.splits.eval, ws.reference.outputs, HITS.get(ws.exp.eval.metric), max_drop,
                                         ws.evaluator.batches.size)  # fmt: skip

    def __call__(self, plan: QuantPlan, timing: Timing | None = None) -> Measurement:
        try:
            with deadline(self.timeout):
                return self.meter(self.ws.build(plan), plan, timed=self.timed, screen=self.screen, timing=timing)
        except (TrialFailed, Hopeless):
            raise
        except AutoquantError as exc:
            raise TrialFailed(str(exc)) from exc
        except Exception as exc:  # onnxruntime's own error types: the plan is the problem, not the user
            raise TrialFailed(f"{exc.__class__.__name__}: {first_line(exc, 200)}") from exc
