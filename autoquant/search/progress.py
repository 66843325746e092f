"""Progress of a running study on stderr: trials done / target, best accuracy within the constraint,
lowest cost so far, time left. An Optuna callback."""

from __future__ import annotations

import sys

import optuna

from ..config import Cost
from . import trial_attrs as attrs


class Progress:
    def __init__(self, target: int, done: int, max_drop: float, objective: Cost, quiet: bool):
        from tqdm import tqdm

        self.max_drop, self.objective = max_drop, objective
        self.bar = tqdm(total=target, initial=done, desc="trials", unit="trial", file=sys.stderr,
                        disable=quiet, dynamic_ncols=True)  # fmt: skip
        self.best_acc: float | None = None
        self.best_cost: float | None = None
        self.pruned = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            self.bar.write(f"trial {trial.number} failed: {attrs.fail_reason(trial) or 'unknown reason'}")
            return
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
                "stopped early": self.pruned}  # fmt: skip
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
