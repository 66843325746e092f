"""The export's drop confirmed on samples no trial saw.

A study measures every plan on the same eval samples and exports the fastest whose measured drop is within the
limit; the more plans it tries near the limit, the more the export's figure is the luckiest of them, not its true
drop (the winner's curse). The confirmation split (`data.confirm_size`: samples disjoint from calibration and eval,
read by no trial, rung, early stop or ranking) scores the export candidate once, unbiased by that selection.

The rule. On N confirmation samples the candidate's drop d has a standard error s (paired against FP32 on the same
samples: measure.py's drop_stderr). It is refused when d exceeds the limit L by more than the noise can explain at
one-sided 95 %: d > L + Z·s with Z = 1.645. A plan whose true drop is at the limit passes with probability 95 %
(a plan within it, more), so good plans are rarely refused for the confirmation set's own luck, while a candidate
whose eval figure was luck — true drop some standard errors above the limit — is refused; the next candidate the
export's choice would take is confirmed instead, and so on (at most MAX_CANDIDATES). For a metric that is not a mean
of per-sample scores (a user's own), s is unknown and the rule is d ≤ L.

A confirmation is kept on the study (trial_attrs), so a resumed study and `export` at another limit read it again
rather than recomputing it."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

from ..config import Cost
from ..evaluate.metrics import SCORES
from ..measure import drop_stderr
from ..workspace import Workspace
from . import trial_attrs as attrs
from .select import ScoredPlan, Selection, choose

Z = 1.645  # one-sided 95 %
MAX_CANDIDATES = 10  # candidates confirmed at most, fastest first, before a study says none held
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Confirmation:
    trial: int
    samples: int  # confirmation samples it was scored on
    accuracy: float  # the metric on them
    drop: float  # FP32's metric on them minus the plan's
    stderr: float  # of that drop (NaN: the metric has no per-sample scores)

    def allowed(self, max_drop: float) -> float:
        """The most the confirmed drop may be and pass at this limit."""
        return max_drop + (Z * self.stderr if math.isfinite(self.stderr) else 0.0)

    def passes(self, max_drop: float) -> bool:
        return self.drop <= self.allowed(max_drop) + 1e-9

    @property
    def interval(self) -> tuple[float, float]:
        """The drop's two-sided 95 % interval (the figure itself without a standard error)."""
        half = 1.96 * self.stderr if math.isfinite(self.stderr) else 0.0
        return self.drop - half, self.drop + half

    def describe(self, max_drop: float) -> str:
        low, high = self.interval
        spread = f" (95 % interval {low:+.2f} to {high:+.2f})" if math.isfinite(self.stderr) else ""
        verdict = "holds" if self.passes(max_drop) else f"is beyond the limit of {max_drop:g} by more than its noise"
        return f"drop {self.drop:+.2f} pt on {self.samples} confirmation samples{spread}: {verdict}"

    def to_list(self) -> list[float]:
        return [self.samples, self.accuracy, self.drop, self.stderr]

    @classmethod
    def of_list(cls, trial: int, values: list[float]) -> Confirmation:
        return cls(trial, int(values[0]), float(values[1]), float(values[2]), float(values[3]))


class Confirmer:
    """Scores plans on the workspace's confirmation split (built as a trial builds them, not timed)."""

    def __init__(self, ws: Workspace):
        self.ws = ws

    @property
    def available(self) -> bool:
        return self.ws.scoring.confirm_evaluator is not None

    def __call__(self, candidate: ScoredPlan) -> Confirmation:
        t0 = time.perf_counter()
        try:
            return self._score(candidate)
        finally:
            self.ws.add_seconds("confirmation", time.perf_counter() - t0)

    def _score(self, candidate: ScoredPlan) -> Confirmation:
        ev, reference = self.ws.scoring.confirm_evaluator, self.ws.scoring.confirm_reference
        # the trial's model (the same plan, cache and builder: its kernels were checked when it was measured)
        scored = ev.score(ev.session(self.ws.build(candidate.plan)))
        scores = SCORES.get(self.ws.exp.eval.metric)
        y = ev.data.y
        stderr = math.nan
        if scores is not None and (fp32 := scores(reference.outputs, y, reference.outputs)) is not None:
            stderr = drop_stderr(scores(scored.outputs, y, reference.outputs), fp32)
        return Confirmation(candidate.number, len(ev.data), scored.accuracy, reference.accuracy - scored.accuracy, stderr)


def confirmed(study, confirmer: Confirmer, candidate: ScoredPlan) -> Confirmation:
    """The candidate's confirmation: read from the study when it was confirmed before, else scored and kept there."""
    known = attrs.confirmations(study)
    if candidate.number in known:
        return Confirmation.of_list(candidate.number, known[candidate.number])
    c = confirmer(candidate)
    attrs.add_confirmation(study, c.trial, c.to_list())
    return c


def noise_at_limit(samples: int, drop: float, stderr: float, max_drop: float, per_sample: bool) -> float:
    """The standard error of a drop at the limit on these eval samples, from a measured plan's (drop, stderr): a plan
    near FP32 changes fewer samples' outcomes than all-INT8, so its drop is less noisy. For a share of samples, the
    samples that changed (b + c, from the stderr: 100·√(b + c − (b − c)²/N)/N) scale with the drop, and at least the
    net change the limit itself is are among them; otherwise the stderr scales with the drop."""
    if not (math.isfinite(stderr) and stderr > 0 and drop > 0 and max_drop > 0):
        return stderr
    if not per_sample:
        return stderr * min(max_drop / drop, 1.0)
    net, at = drop * samples / 100, max_drop * samples / 100
    changed = max(((stderr * samples / 100) ** 2 + net**2 / samples) * min(max_drop / drop, 1.0), at)
    return 100 * math.sqrt(max(changed - at**2 / samples, 0.0)) / samples


def resolution(samples: int, drop: float, stderr: float, max_drop: float, per_sample: bool) -> tuple[str, bool]:
    """What the eval set can resolve, from the first rung's measurement (all-INT8's drop and its standard error),
    and whether the limit is below it: (the sentence, a warning). `per_sample`: the metric is a share of samples,
    so one sample is 100 / N points."""
    at = noise_at_limit(samples, drop, stderr, max_drop, per_sample)
    one = f"{max_drop:g} pt is {max_drop * samples / 100:.3g} sample(s) of {samples}; " if per_sample else ""
    figures = f"all-INT8's drop on them is ±{stderr:.2f} pt, a drop at the limit about ±{at:.2f}"
    if not math.isfinite(at) or at <= 0 or max_drop >= at:
        return f"the {samples} eval samples resolve the limit of {max_drop:g} pt ({figures})", False
    fix = (f"set data.eval_size to {math.ceil(samples * (at / max_drop) ** 2):,} or more to resolve it"
           if max_drop > 0 else "a limit at or below 0 asks for a plan at least as good as FP32, which only much more "
           "eval data can tell")
    return f"limit {one}{figures} pt: the limit is below what these samples can resolve; {fix}", True


def confirm_choice(study, confirmer: Confirmer, selection: Selection, max_drop: float, objective: Cost) -> Selection:
    """The selection with its export confirmed: the candidate the choice takes, confirmed; when its drop does not
    hold, the next candidate the choice would take without it, and so on. No candidate holds: `met` False, the
    first candidate kept as the closest."""
    if not selection.met or not confirmer.available:
        return selection
    refused: list[Confirmation] = []
    points = selection.points
    for _ in range(MAX_CANDIDATES):
        out = {c.trial for c in refused}
        chosen, met = choose([p for p in points if p.number not in out], max_drop, objective, selection.tied)
        if not met:
            break
        c = confirmed(study, confirmer, chosen)
        if c.passes(max_drop):
            return replace(selection, chosen=chosen, confirmation=c, refused=tuple(refused))
        log.info("trial %d (drop %+.2f pt on the eval set): %s; the next candidate is confirmed", chosen.number,
                 chosen.result.accuracy_drop, c.describe(max_drop))
        refused.append(c)
    # Past the candidates confirmed here, a plan whose drop held earlier (the first export, while the study ran)
    known = {t: Confirmation.of_list(t, v) for t, v in attrs.confirmations(study).items()}
    held = [p for p in points if p.number in known and known[p.number].passes(max_drop)]
    chosen, met = choose(held, max_drop, objective, selection.tied)
    if met:
        return replace(selection, chosen=chosen, confirmation=known[chosen.number], refused=tuple(refused))
    return replace(selection, met=False, refused=tuple(refused))
