"""What a study page shows, read from a run directory without building a model: the experiment it ran, every trial
(complete, stopped early, failed) with its plan, figures and times, the export's record, the per-layer error table
(sensitivity.csv) and the facts the study kept for its page (search/trial_attrs.py: page_facts). A directory that
is not a finished search, or whose files are damaged, is a one-line ConfigError: never half a page."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from optuna.trial import TrialState

from ..config import Cost, Experiment, load_experiment
from ..errors import ConfigError, first_line
from ..quantize.plan import QuantPlan
from ..record import Record
from ..search import RunPaths, ScoredPlan, scored_points
from ..search import trial_attrs as attrs

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "stopped early", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


@dataclass(frozen=True)
class TrialRow:
    """A trial as the page lists it: `point` for a complete one (its figures, latency re-timed after the study
    filled in), the reason for a failed or stopped one, and its start and end in seconds from the study's first."""

    number: int
    state: str
    label: str
    point: ScoredPlan | None
    reason: str
    start: float | None
    end: float | None


@dataclass(frozen=True)
class Sensitivity:
    """sensitivity.csv: each layer's error at its output per choice (NaN: not offered)."""

    layers: tuple[str, ...]
    choices: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]

    def of(self, layer: str, choice: str) -> float:
        if layer not in self.layers or choice not in self.choices:
            return math.nan
        return self.values[self.layers.index(layer)][self.choices.index(choice)]


@dataclass(frozen=True)
class StudyView:
    """A finished study as its page shows it (load_view reads it)."""

    run_dir: Path
    exp: Experiment
    study_name: str
    trials: tuple[TrialRow, ...]
    facts: dict
    record: Record | None  # best/record.json, when the study exported
    export_trial: int | None
    sensitivity: Sensitivity | None
    started: datetime | None  # the first trial's start

    @property
    def points(self) -> list[ScoredPlan]:
        return [t.point for t in self.trials if t.point is not None]

    @property
    def max_drop(self) -> float:
        return float(self.facts.get("max_drop", self.exp.search.max_accuracy_drop))

    @property
    def objective(self) -> Cost:
        return self.exp.search.objective

    @property
    def fp32_accuracy(self) -> float:
        if "fp32_accuracy" in self.facts:
            return float(self.facts["fp32_accuracy"])
        p = self.points[0].result
        return p.accuracy + p.accuracy_drop

    @property
    def export(self) -> ScoredPlan | None:
        return next((p for p in self.points if p.number == self.export_trial), None)

    def all_int8(self) -> ScoredPlan | None:
        """The study's all-INT8 plan (every layer quantized, the first such: the ladder's first rung)."""
        return next((p for p in self.points if len(p.plan.quantized) == len(p.plan.names)), None)


def load_view(run_dir: Path) -> StudyView:
    paths = RunPaths(Path(run_dir))
    exp = load_experiment(paths.experiment())
    study = paths.study(exp)
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        raise ConfigError(f"the study in {run_dir} has no complete trial yet: rerun the search until one completes")
    points = {p.number: p for p in scored_points(study)}
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    t0 = min(starts) if starts else None

    def since(moment: datetime | None) -> float | None:
        return None if moment is None or t0 is None else (moment - t0).total_seconds()

    rows = tuple(TrialRow(t.number, STATES.get(t.state, t.state.name.lower()), attrs.label(t), points.get(t.number),
                          attrs.fail_reason(t) or str((attrs.pruned(t) or {}).get("reason", "")),
                          since(t.datetime_start), since(t.datetime_complete)) for t in trials)
    facts = attrs.page_facts(study)
    record_path = paths.root / "best" / "record.json"
    record = Record.load(record_path) if record_path.exists() else None
    export_trial = facts.get("export_trial") if record is not None else None
    return StudyView(paths.root, exp, study.study_name, rows, facts, record, export_trial,
                     _sensitivity(paths.root / "sensitivity.csv"), t0)


def _sensitivity(path: Path) -> Sensitivity | None:
    if not path.exists():
        return None
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        values = tuple(tuple(float(v) if v else math.nan for v in row[1:]) for row in body)
        if header[0] != "layer" or any(len(v) != len(header) - 1 for v in values):
            raise ValueError("rows and header differ in length")
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise ConfigError(f"{path} is damaged ({first_line(exc, 80)}): delete it (the page is written without the "
                          "heat map) or rerun the search") from None
    return Sensitivity(tuple(r[0] for r in body), tuple(header[1:]), values)


def plan_summary(plan: QuantPlan) -> str:
    """How many layers run in each way, e.g. '58 static, 7 float'."""
    counts: dict[str, int] = {}
    for _, c in plan.choices:
        counts[c.label] = counts.get(c.label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
