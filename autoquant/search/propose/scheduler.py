"""One shape for every proposer (history in, labelled plans out) and the scheduler that asks them and enqueues.

A proposer is any object with a `name` and `propose(history) -> Proposal`: the ladder's rungs, the warm starts when
the ladder ends, a deployed version's plan, the refine rounds. It reads the study's trials (History) and returns
the plans it wants tried next, each with its label, and whether it is finished for good (kept as a study attribute,
so a resumed study does not ask it again). The scheduler, an Optuna callback, asks the proposers in order after
every finished trial (and once when a run starts) and enqueues what they return — the one place plans are
enqueued. Optuna's sampler proposes the rest, by its own mechanism (propose/sampler.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from ...quantize.plan import QuantPlan
from .. import trial_attrs as attrs
from ..space import SearchSpace

Labelled = tuple[str, QuantPlan]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class History:
    """What a proposer decides from: every trial of the study so far, and which proposers are finished."""

    trials: tuple[FrozenTrial, ...]
    finished: frozenset[str] = frozenset()

    @classmethod
    def of(cls, study: optuna.Study) -> History:
        trials = tuple(study.get_trials(deepcopy=False))
        return cls(trials, frozenset(k[: -len(DONE_SUFFIX)] for k, v in study.user_attrs.items()
                                     if k.endswith(DONE_SUFFIX) and v))

    @functools.cached_property
    def done(self) -> list[FrozenTrial]:
        """The trials that ran to their end (complete, or stopped early)."""
        return [t for t in self.trials if t.state in FINISHED]

    @functools.cached_property
    def waiting(self) -> bool:
        """Whether a trial is enqueued and not run yet (here or in another worker)."""
        return any(t.state == TrialState.WAITING for t in self.trials)

    @functools.cached_property
    def tried(self) -> set[str]:
        """The keys of every plan a trial holds (run, running or waiting)."""
        return {attrs.plan(t).key() for t in self.trials if attrs.plan_spec(t)}

    def labelled(self, prefix: str) -> list[FrozenTrial]:
        return [t for t in self.trials if attrs.label(t).startswith(prefix)]


@dataclass(frozen=True)
class Proposal:
    plans: list[Labelled] = field(default_factory=list)
    finished: bool = False  # the proposer has nothing more to propose, ever, in this study


class Proposer(Protocol):
    name: str

    def propose(self, history: History) -> Proposal:
        """The plans to try next, from the study so far."""


DONE_SUFFIX = "_done"  # a study attribute `<name>_done`: the proposer said it is finished ("ladder_done" since 0.1)


class Scheduler:
    """Optuna callback: after each finished trial, asks each proposer not finished, in order, and enqueues its plans
    (Optuna's enqueue_trial, each plan's parameters projected into the space); a proposer finished in this pass is
    seen so by the next ones."""

    def __init__(self, space: SearchSpace, proposers: Sequence[Proposer]):
        self.space, self.proposers = space, list(proposers)

    def __call__(self, study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        history = History.of(study)
        for proposer in self.proposers:
            if proposer.name in history.finished:
                continue
            proposal = proposer.propose(history)
            for label, plan in proposal.plans:
                study.enqueue_trial(self.space.params_for(plan), user_attrs=attrs.enqueue_attrs(label),
                                    skip_if_exists=True)
            if proposal.finished:
                study.set_user_attr(f"{proposer.name}{DONE_SUFFIX}", True)
            if proposal.plans or proposal.finished:  # what the next proposers see includes it
                history = History.of(study)


class Once:
    """A proposer of a fixed list of plans, proposed when the study starts (no trial yet): e.g. the plan of the
    version a re-optimization replaces."""

    def __init__(self, name: str, plans: list[Labelled]):
        self.name, self.plans = name, plans

    def propose(self, history: History) -> Proposal:
        return Proposal(self.plans if not history.trials else [], finished=True)


class After:
    """A proposer of a list of plans made when another proposer is finished (the warm starts, when the ladder ends)."""

    def __init__(self, name: str, after: str, plans):
        self.name, self.after, self._plans = name, after, plans

    def propose(self, history: History) -> Proposal:
        if self.after not in history.finished:
            return Proposal()
        return Proposal(self._plans(), finished=True)
