"""Stop hopeless trials early: score a plan on a prefix of the eval set first, and stop it when even an
optimistic bound on its full-set drop breaks the constraint.

For metrics that are the percentage of samples scoring (top1, top5, per-sample agreement), the FP32
model's figure over the whole eval set is known. The eval split is in a seeded random order (data.split),
so its first n samples — whole batches — are a simple random sample. The prefix shows the plan's hits h
on them exactly; for the N − n others its hit rate is at most the Clopper-Pearson upper bound from the
prefix at confidence 1 − δ. So its full-set drop is at least FP32 − 100 · (h + (N − n) · upper(h)) / N,
and when that exceeds the constraint the full set would break it with probability at least 1 − δ: the
trial is stopped, recorded as pruned with the prefix figures and the reason. The prefix is looked at
after each of up to LOOKS evenly spaced whole batches, each look at δ / looks (Bonferroni: the chance that
any look stops a plan that meets the constraint stays ≤ δ): most plans a search proposes that are hopeless
are far from the limit, and the first batch already shows it. Any figure that is reported,
compared or exported comes from a full-set evaluation; a trial that passes the screen goes on from the
prefix's last batch and keeps the prefix's outputs — the same batches, in the same order, as an
`evaluate` run (dynamic quantization depends on a batch's contents), so nothing is scored twice.

Metrics without per-sample hits (cosine, sequence agreement, the user's own) are not screened: a bound on
an average of unbounded-variance scores needs far more samples than a prefix saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import betaincinv

from ..data import Dataset
from ..errors import AutoquantError
from .metrics import drop_stderr

MIN_EVAL = 400  # below it the prefix would be most of the set, and its bound too wide to stop anything
DELTA = 0.01  # chance that a plan whose full-set drop meets the constraint is stopped
LOOKS = 4  # at most this many looks at the prefix


class Hopeless(AutoquantError):
    """A plan whose prefix shows it cannot meet the constraint."""

    def __init__(self, prefix_accuracy: float, drop_bound: float, samples: int, max_drop: float):
        self.prefix_accuracy, self.drop_bound, self.samples = prefix_accuracy, drop_bound, samples
        self.prefix_nmse = float("nan")  # the prefix outputs' relative MSE against FP32 (set by the measurer)
        self.prefix_stderr = float("nan")  # the standard error of the prefix's drop (metrics.drop_stderr)
        super().__init__(f"stopped after {samples} eval samples: accuracy there {prefix_accuracy:.2f}; its full-set "
                         f"drop is at least {drop_bound:.2f} pt with {100 * (1 - DELTA):.0f} % confidence, over the "
                         f"{max_drop:g} pt limit")


def prefix_size(n: int, batch_size: int = 1) -> int:
    """About a fifth of the eval set (100-500 samples), rounded up to whole batches."""
    target = min(max(n // 5, 100), 500)
    return -(-target // batch_size) * batch_size


@dataclass(frozen=True)
class EarlyStop:
    size: int  # prefix samples: the first `size` of the eval set, whole batches
    looks: tuple[int, ...]  # prefix lengths (whole batches, the last is `size`) at which the plan is checked
    fp32_accuracy: float  # FP32's figure on the whole eval set
    labels: np.ndarray | None  # on the prefix
    reference: np.ndarray  # FP32's outputs on the prefix
    hits: object  # metrics.HITS entry: (outputs, labels, reference) -> per-sample bools or None
    total: int  # eval samples
    max_drop: float

    @classmethod
    def make(cls, eval_data: Dataset, reference: np.ndarray, hits, max_drop: float,
             batch_size: int = 1) -> EarlyStop | None:
        """None when the metric has no per-sample hits or the eval set is too small to gain from a prefix.
        `eval_data` must be in random order (as data.split leaves it); `batch_size` is the eval batch."""
        size = prefix_size(len(eval_data), batch_size)
        if hits is None or len(eval_data) < MIN_EVAL or size >= len(eval_data):
            return None
        fp32 = hits(reference, eval_data.y, reference)
        if fp32 is None:
            return None
        labels = None if eval_data.y is None else eval_data.y[:size]
        batches = size // batch_size
        looks = tuple(sorted({-(-batches * k // LOOKS) * batch_size for k in range(1, LOOKS + 1)}))
        return cls(size, looks, float(np.mean(fp32) * 100.0), labels, reference[:size], hits, len(eval_data), max_drop)

    def drop_lower_bound(self, plan_hits: np.ndarray) -> float:
        n, h = len(plan_hits), int(plan_hits.sum())
        upper = betaincinv(h + 1, n - h, 1 - DELTA / len(self.looks)) if h < n else 1.0
        return self.fp32_accuracy - 100.0 * (h + (self.total - n) * upper) / self.total

    def check(self, prefix_outputs: np.ndarray) -> None:
        """Raise Hopeless when the outputs on the first n eval samples (n one of `looks`) show the plan cannot
        meet the constraint."""
        n = len(prefix_outputs)
        if n not in self.looks:
            raise ValueError(f"{n} samples is not one of the looks {self.looks}")
        plan_hits = self.hits(prefix_outputs, self.labels[:n] if self.labels is not None else None, self.reference[:n])
        if plan_hits is None:
            return
        plan_hits = np.asarray(plan_hits, bool)
        bound = self.drop_lower_bound(plan_hits)
        if bound > self.max_drop:
            stopped = Hopeless(float(plan_hits.mean() * 100.0), bound, len(plan_hits), self.max_drop)
            prefix = self.reference[:n]
            fp32 = self.hits(prefix, self.labels[:n] if self.labels is not None else None, prefix)
            stopped.prefix_stderr = drop_stderr(plan_hits, np.asarray(fp32, bool))
            raise stopped
