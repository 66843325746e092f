"""A running study's progress bar: trials done / target, the best accuracy within the limit, the lowest cost so
far, trials stopped early, time left (an Optuna callback; shown where autoquant.progress is on: the command line
without --quiet)."""

from __future__ import annotations

from typing import Self

import optuna

from ..config import Cost
from ..progress import bar
from ..search import done_count
from ..search import trial_attrs as attrs


class Progress:
    """Close it when the study ends (a context manager)."""

    def __init__(self, target: int, done: int, max_drop: float, objective: Cost):
        self.max_drop, self.objective = max_drop, objective
        self.bar = bar(target, "trials", unit="trial", initial=done, leave=True)
        self.best_acc: float | None = None
        self.best_cost: float | None = None
        self.pruned = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.PRUNED:
            self.pruned += 1
        elif trial.state == optuna.trial.TrialState.COMPLETE:
            r = attrs.result(trial)
            if r.accuracy_drop <= self.max_drop:
                self.best_acc = max(self.best_acc or r.accuracy, r.accuracy)
                self.best_cost = min(self.best_cost or self.objective.of(r), self.objective.of(r))
        else:
            return
        post = {"best acc ok": f"{self.best_acc:.2f}" if self.best_acc is not None else "-",
                f"lowest {self.objective.value} ok": f"{self.best_cost:.4g}" if self.best_cost is not None else "-",
                "stopped early": self.pruned}
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def of(cls, study: optuna.Study, target: int, max_drop: float, objective: Cost) -> Progress:
        return cls(target, min(done_count(study), target), max_drop, objective)
