"""The search: one Optuna multi-objective study per experiment, stored in an RDB storage so that
rerunning the same command resumes it; warm-started with baseline and sensitivity-guided plans."""

from __future__ import annotations

import importlib.resources
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from ..config import Cost, Experiment, SearchConfig
from ..errors import ConfigError, first_line
from ..evaluate.early_stop import Hopeless
from ..evaluate.latency import not_slower
from ..measure import Measurement, Meter, Timing, paired_figures
from ..quantize import modes
from ..quantize.plan import FLOAT, LayerChoice, QuantPlan
from ..workspace import Workspace
from . import trial_attrs as attrs
from .guided import ErrorModel, guided_plans, sensitive_layers
from .latency_table import LatencyTable, latency_table
from .layer_errors import LayerErrors, layer_errors
from .objective import PlanScorer, TrialFailed
from .pareto import ScoredPlan
from .refine import Refine
from .sampler import make_sampler
from .space import SearchSpace

DEFAULT_SPACE = "default.yaml"  # in the package autoquant.search_spaces (the repository's search_spaces/)
MAX_CONSECUTIVE_FAILURES = 20
STORAGE_CREATE_ATTEMPTS = 5
ACCURACY_CONSTRAINT = "accuracy_drop_over_limit"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def storage(self) -> str:
        return f"sqlite:///{(self.root / 'study.db').resolve()}"

    @property
    def tracking(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    def check_storage_file(self, url: str) -> None:
        """A study.db that exists but is empty or not SQLite would silently become a new, empty study —
        and the next export would replace best/ with it."""
        db = self.root / "study.db"
        if url != self.storage or not db.exists():
            return
        with open(db, "rb") as f:
            header = f.read(16)
        if header != b"SQLite format 3\x00":
            state = "is empty (0 bytes)" if not header else "is not a SQLite database (corrupt?)"
            raise ConfigError(f"{db} {state}: the trials it held cannot be read; move it away to start over, or "
                              "use a new --out")  # fmt: skip


def space_path(cfg: SearchConfig) -> Path:
    """The experiment's search space file; a bare name (`transformer`) names one shipped with autoquant."""
    shipped = Path(str(importlib.resources.files("autoquant.search_spaces")))
    path = cfg.space or shipped / DEFAULT_SPACE
    if not path.is_file() and path.suffix in ("", ".yaml") and (shipped / f"{path.stem}.yaml").is_file():
        path = shipped / f"{path.stem}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
        raise ConfigError(f"search space {path} not found: set search.space to a YAML file or to one of {names}")
    return path


def make_storage(url: str) -> RDBStorage:
    storage = None
    for attempt in range(STORAGE_CREATE_ATTEMPTS):
        try:
            # A heartbeat lets a later run (or another worker) see trials left RUNNING by a killed process
            # and retry them, instead of counting them as forever in flight.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, heartbeat_interval=10, grace_period=30,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))  # fmt: skip
            break
        except sqlalchemy.exc.IntegrityError:
            # Two processes opening a new storage at once (a worker, a monitoring script) both create its
            # tables; the loser's stamp of the schema version collides. The tables exist now: open again.
            if attempt == STORAGE_CREATE_ATTEMPTS - 1:
                raise ConfigError(f"cannot open study storage {url}: another process keeps re-creating its tables; "
                                  "check search.storage") from None  # fmt: skip
            time.sleep(0.2 * (attempt + 1))
        except Exception as exc:  # SQLAlchemy raises many types for bad URLs and unreachable servers
            raise ConfigError(f"cannot open study storage {url}: {first_line(exc)}; "
                              "check search.storage") from exc  # fmt: skip
    if url.startswith("sqlite"):
        # Optuna commits once per suggested parameter; with SQLite's default rollback journal and full
        # sync that is ~2.5 ms each, a visible share of a trial. WAL with synchronous=NORMAL survives a
        # killed process (only an OS crash can drop the last commits) and halves the cost.
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()
    return storage


def _sqlite_wal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def study_fingerprint(exp: Experiment, ws: Workspace) -> dict[str, str]:
    """What every trial of a study must share to be comparable: model (smoothed or not), data, metric, objective."""
    return {"model_sha256": ws.model_key, "objective": exp.search.objective.study_key, "metric": exp.eval.metric,
            "calibration_sha256": ws.splits.calibration.sha256(), "eval_sha256": ws.splits.eval.sha256(),
            "activation_type": exp.quantization.activation_type, "weight_range": ws.weight_range}  # fmt: skip


def open_study(exp: Experiment, storage: RDBStorage, fingerprint: dict[str, str]) -> optuna.Study:
    """Create or resume the study; resuming with another model, data, metric or objective would mix
    trials scored on different things, so it is refused with the key that differs."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported one line each by Progress
    study = optuna.create_study(study_name=exp.name, storage=storage, sampler=make_sampler(exp.search),
                                directions=["maximize", "minimize"], load_if_exists=True)  # fmt: skip
    changed = attrs.fingerprint_changes(study, fingerprint, record=True)
    if changed:
        key = changed[0]
        raise ConfigError(f"the study '{exp.name}' in this storage was run with another {key.replace('_', ' ')} "
                          f"({attrs.stored(study, key)[:12]} here, {fingerprint[key][:12]} now): its trials would not "
                          "be comparable; use a new --out directory")  # fmt: skip
    return study


def warm_starts(ws: Workspace, errors: LayerErrors, space: SearchSpace, ks: list[int],
                latency: LatencyTable | None = None) -> list[tuple[str, QuantPlan]]:  # fmt: skip
    """Baselines first (all float, all INT8 per-channel and per-tensor), then all INT8 per-channel with
    each other activation algorithm of the space — uniform plans a user would try by hand, and often
    already on the front — then INT8 with the k most sensitive layers left float, then the plans the
    per-layer error model proposes (guided.py)."""
    names = ws.graph.names
    plans = [
        ("all-float", QuantPlan.uniform(names, FLOAT)),
        ("int8-per-channel", QuantPlan.uniform(names, LayerChoice(weight_granularity="per_channel"))),
        ("int8-per-tensor", QuantPlan.uniform(names, LayerChoice(weight_granularity="per_tensor"))),
    ]
    plans += [(f"int8-per-channel-{a}", QuantPlan.uniform(names, LayerChoice(activation_algorithm=a)))
              for a in sorted(space.algorithms()) if a != "minmax"]  # fmt: skip
    plans += mode_plans(space)
    for k in ks:
        if 0 < k < len(names):
            keep = set(sensitive_layers(ws, errors, k))
            plans.append((f"sensitive-{k}-float", QuantPlan(tuple((n, FLOAT if n in keep else LayerChoice())
                                                                   for n in names))))  # fmt: skip
    return plans + guided_plans(ws, errors, space, latency)


def mode_plans(space: SearchSpace) -> list[tuple[str, QuantPlan]]:
    """For each mode the space offers other than the default one, every layer that may take it in that mode and
    the others INT8 per channel: `quantize_dynamic`'s plan, the all-int4 one, …"""
    plans = []
    for mode in modes.modes():
        plan = space.mode_plan(mode.name) if mode.name != LayerChoice().mode else None
        if plan is not None:
            plans.append((mode.plan_label([c for _, c in plan.choices if c.quantize and c.mode == mode.name]), plan))
    return plans


def map_plan(plan: QuantPlan, names: tuple[str, ...]) -> QuantPlan:
    """A plan made for another version of the model, by layer name: layers that no longer exist are
    dropped, new layers start from the default choice (INT8, per-channel, minmax)."""
    old = dict(plan.choices)
    return QuantPlan(tuple((n, old.get(n, LayerChoice())) for n in names))


def scored_points(study: optuna.Study) -> list[ScoredPlan]:
    """Complete trials with their results; latency timed after the study (time_points) filled in."""
    timed = attrs.timed_after(study)
    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        result = attrs.result(t)
        if t.number in timed:  # timed again after the study: the later, side-by-side figure wins
            ms, ratio, rounds = timed[t.number]
            result = replace(result, latency_ms=ms, latency_ratio=ratio, latency_rounds=rounds)
        points.append(ScoredPlan(t.number, attrs.label(t), attrs.plan(t), result))
    return points


# Trial figures of one plan move by up to ~11 % against side-by-side re-timing (EfficientNet-Lite1, 2 cores):
# a plan more than 15 % slower than the fastest is not a candidate for the export.
RETIME_BAND, RETIME_MAX = 1.15, 5


def retime_fastest(ws: Workspace, study: optuna.Study, points: list[ScoredPlan],
                   max_drop: float) -> tuple[list[ScoredPlan], frozenset[int]]:  # fmt: skip
    """Under objective latency the export is the fastest plan that meets the constraint, but each trial was
    timed at its own moment, and the least of many noisy figures is biased low. The plans that meet it
    within RETIME_BAND of the fastest figure are timed again, together and interleaved with FP32 in the
    same rounds, and those figures replace theirs (stored on the study). Also returned: the trial numbers
    of the plans these rounds cannot tell apart from the fastest (evaluate/latency.py: not_slower), which
    choose() treats as equally fast."""
    ok = sorted((p for p in points if p.plan.quantized and p.result.accuracy_drop <= max_drop),
                key=lambda p: p.result.latency_ratio)  # fmt: skip
    band = [p for p in ok if p.result.latency_ratio <= ok[0].result.latency_ratio * RETIME_BAND][:RETIME_MAX] if ok else []
    if len(band) < 2:
        return points, frozenset()
    rounds = Meter(ws).paired_rounds([ws.evaluator.session(ws.build(p.plan)) for p in band])
    figures = paired_figures(rounds)
    fastest = int(np.argmin([ms for ms, _, _ in figures]))
    tied = frozenset(p.number for i, p in enumerate(band) if not_slower(rounds, i, fastest))
    return _with_timed(study, points, {p.number: f for p, f in zip(band, figures)}), tied


# Plans timed after the study share their rounds and FP32 runs, this many at a time (each holds a session).
TIME_TOGETHER = 6


def time_points(ws: Workspace, study: optuna.Study, points: list[ScoredPlan], which: list[ScoredPlan]) -> list[ScoredPlan]:
    """`points` with paired latency (interleaved with FP32) for those of `which` that were not timed as trials
    (a study that minimises bitops or size times only its front); stored on the study for later exports."""
    todo = [p for p in which if math.isnan(p.result.latency_ratio)]
    if not todo:
        return points
    meter, timed = Meter(ws), {}
    for i in range(0, len(todo), TIME_TOGETHER):
        group = todo[i : i + TIME_TOGETHER]
        sessions = [ws.evaluator.session(ws.build(p.plan)) for p in group]
        timed |= dict(zip((p.number for p in group), meter.latencies(sessions)))
    return _with_timed(study, points, timed)


def _with_timed(study: optuna.Study, points: list[ScoredPlan], timed: dict[int, tuple[float, float, int]]) -> list[ScoredPlan]:
    """Store latencies (ms, ratio, rounds) measured after the study and put them into `points`."""
    attrs.add_timed_after(study, timed)
    return [replace(p, result=replace(p.result, latency_ms=timed[p.number][0], latency_ratio=timed[p.number][1],
                                      latency_rounds=timed[p.number][2]))
            if p.number in timed else p for p in points]  # fmt: skip


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
                       if r.accuracy_drop <= self.max_drop and r.latency_ratio > 0), default=math.inf)  # fmt: skip
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
                attrs.set_pruned(trial, exc.prefix_accuracy, exc.samples, str(exc))
                raise optuna.TrialPruned(str(exc)) from None
            self.known[key] = (trial.number, result)
            self.evaluated += 1
        attrs.set_result(trial, result)
        # Optuna's constraint: samplers rank plans that break the accuracy limit behind those that keep it
        trial.set_constraint(ACCURACY_CONSTRAINT, result.accuracy_drop - self.max_drop)
        return result.accuracy, self.objective.of(result)


class FailureGuard:
    """Stops the study when many trials in a row fail: the cause is then the setup, not one plan."""

    def __init__(self):
        self.streak = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= MAX_CONSECUTIVE_FAILURES:
            study.stop()


@dataclass(frozen=True)
class StudySetup:
    """Everything a process needs before its first trial: done once per process, cached across them."""

    study: optuna.Study
    workspace: Workspace
    space: SearchSpace
    space_file: Path
    scorer: PlanScorer
    errors: LayerErrors
    storage_url: str
    latency: LatencyTable | None = None  # under objective latency: the error model's cost


def setup_study(exp: Experiment, paths: RunPaths, *, log=None, storage_url: str | None = None,
                prior_plans: dict[str, QuantPlan] | None = None) -> StudySetup:  # fmt: skip
    """Open (or create) the study; on creation enqueue `prior_plans` (label → plan, e.g. what is deployed;
    mapped onto this model's layers by name) and the warm-start plans. Heavy per-study work
    (calibration, FP32 reference, per-layer errors) comes from the on-disk cache when another process
    built it; with parallel workers one builds it and the others wait on its lock."""
    say = log or (lambda msg: None)
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
    say(f"autoquant: per-layer errors of {len(space.layers)} layers x their options in {time.perf_counter() - t0:.1f} s")
    latency = None
    if cfg.objective is Cost.LATENCY:  # the error model then prices plans in milliseconds, not bitops
        t0 = time.perf_counter()
        latency = latency_table(ws, space)
        ws.add_seconds("sensitivity", time.perf_counter() - t0)
        say(f"autoquant: per-layer latency of {len(space.layers)} layers profiled in {time.perf_counter() - t0:.1f} s")
    if not study.trials:
        priors = [(label, map_plan(plan, ws.graph.names)) for label, plan in (prior_plans or {}).items()]
        for label, plan in priors + (warm_starts(ws, errors, space, cfg.sensitivity_k, latency) if cfg.warm_start else []):
            study.enqueue_trial(space.params_for(plan), user_attrs=attrs.enqueue_attrs(label), skip_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return StudySetup(study, ws, space, space_file, scorer, errors, url, latency)


# A pruned trial (stopped early: it could not meet the constraint) is a trial done, like a complete one.
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def complete_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def done_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


def optimize(setup: StudySetup, exp: Experiment, target: int, *, quiet: bool, callbacks=(), log=None) -> tuple[float, int]:
    """Run trials until `target` trials are COMPLETE in the storage (counting every worker's), or the
    time budget ends. Returns (seconds, plans this process evaluated)."""
    from .progress import Progress

    cfg = exp.search
    study = setup.study
    done = done_count(study)
    if done < target and log:
        log(f"{done} of {target} trials already done; searching {setup.space.size():.3g} plans with {cfg.sampler}")
    progress = Progress(target, min(done, target), cfg.max_accuracy_drop, cfg.objective, quiet)
    objective = Objective(setup.space, setup.scorer, cfg.objective, cfg.max_accuracy_drop)
    t0 = time.perf_counter()
    if done < target:
        timeout = cfg.timeout_minutes * 60 if cfg.timeout_minutes else None
        model = ErrorModel.build(setup.workspace, setup.errors, setup.space, setup.latency)
        study.sampler = make_sampler(cfg, model)
        guided = [Refine(model, cfg.max_accuracy_drop)] if cfg.refine else []
        study.optimize(objective, timeout=timeout, catch=(TrialFailed,),
                       callbacks=[MaxTrialsCallback(target, states=DONE), FailureGuard(), *guided,
                                  *callbacks, progress])  # fmt: skip
    progress.close()
    return time.perf_counter() - t0, objective.evaluated
