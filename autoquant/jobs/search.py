"""The search job: run (or resume) a study, track it, export the best plan within the constraint; and
re-choosing the export from a finished study."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
import sqlalchemy

from ..config import Cost, Experiment, load_experiment
from ..engine import QuantizeResult
from ..errors import AutoquantError, ConfigError, first_line
from ..fileio import file_lock, recover_dir
from ..record import Record
from ..report.html import PAGE, refresh_study_page
from ..report.pareto import plot_pareto, write_pareto_csv
from ..report.progress import Progress
from ..report.sensitivity import write_layer_errors_report
from ..search import Confirmation, FirstExport, RunPaths, ScoredPlan, Study, check_export_target
from ..workspace import Workspace
from .finetune import FinetuneHint, FinetuneResult, finetune_hint, finetune_stage, keep_on_page
from .workers import spawn_worker, with_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    out_dir: Path
    completed: int
    evaluated: int
    seconds: float
    fp32_accuracy: float
    front: list[ScoredPlan]
    chosen: ScoredPlan | None
    met: bool  # whether `chosen` is within the constraint (and was exported)
    export: QuantizeResult | None
    study_name: str = ""
    tracking_uri: str = ""
    parent_run_id: str | None = None
    workspace: Workspace | None = None  # the study's per-study state, for callers that measure more
    tracking_error: str = ""  # MLflow failed after the study finished (the results stand)
    objective: Cost = Cost.BITOPS  # the cost the front and the choice were made on
    first_export_seconds: float | None = None  # from the start of the search to the first plan exported
    fastest: list[ScoredPlan] = field(default_factory=list)  # timed plans within the limit, fastest first
    max_drop: float = math.nan  # the limit the export was chosen by
    finetuned: FinetuneResult | None = None  # the experiment's finetune stage: RUN/finetuned
    finetuned_trial: int | None = None  # the trial whose plan it fine-tuned
    stopped_early: int = 0  # trials whose first eval samples showed they could not meet the limit
    confirmation: Confirmation | None = None  # the export's drop on the confirmation split (search/confirm.py)
    refused: tuple[Confirmation, ...] = ()  # candidates whose drop did not hold there
    slower: tuple[ScoredPlan, ...] = ()  # plans within the limit that ran slower than FP32 (never exported)
    finetune_hint: FinetuneHint | None = None  # a faster plan fine-tuning might bring within the limit (no finetune section)


def search(exp: Experiment, out_dir: Path, *, trials: int | None = None, workers: int = 1,
           prior_plans: dict | None = None) -> SearchResult:
    """Run (or resume) the experiment's study, track it in MLflow, export the best plan within the constraint.

    Rerunning with the same `out_dir` continues the study until `trials` trials are complete. With
    `workers` > 1, that many processes share the study through its storage, each with its share of
    the cores for onnxruntime.
    """
    paths = RunPaths(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(paths.root / ".search.lock", wait=False))
        except BlockingIOError:
            raise ConfigError(f"another autoquant search is running in {paths.root}: wait for it to finish, or "
                              "use another --out (workers join a study with `autoquant worker`)") from None
        try:
            return _search(exp, paths, trials, workers, prior_plans, stack)
        except AutoquantError:
            raise
        except Exception as exc:
            failed = storage_failure(exc)
            if failed is None:
                raise
            # A full disk or a storage server gone mid-study: every trial committed before it is kept.
            own = (exp.search.storage or paths.storage) == paths.storage
            where, fix = ((paths.root / "study.db", f"free space on the disk holding {paths.root}") if own else
                          (exp.search.storage, "fix the storage (or free space on its server)"))
            raise ConfigError(f"the study storage {where} failed ({first_line(failed.__cause__ or failed)}); the trials "
                              f"completed before it are saved: {fix}, then rerun the same command to resume") from exc


STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def storage_failure(exc: BaseException) -> BaseException | None:
    """The storage error behind `exc`, if one is. Optuna can replace it: when the write that ends a trial fails, its
    clean-up finds the trial still running and asserts (AssertionError "Should not reach."), with the storage's
    error as the context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, STORAGE_ERRORS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _search(exp: Experiment, paths: RunPaths, trials: int | None, workers: int, prior_plans: dict | None,
            stack: contextlib.ExitStack) -> SearchResult:
    from ..track.tracker import Tracker, study_params

    started = time.perf_counter()
    recover_dir(paths.root / "best")
    paths.write_run_file(exp.source_file)
    target = trials or exp.search.trials
    if workers > 1:
        if exp.source_file is None:
            raise ConfigError("parallel workers start from an experiment file: load the experiment with load_experiment")
        exp = with_threads(exp, max(1, (os.cpu_count() or 1) // workers))
    # The tracking store opens while the study is set up: a new store's schema (where no empty one is kept to
    # copy) takes as long as calibrating a small model. A server that does not answer still fails the command
    # before any trial. MLflow is imported here first: two threads importing packages that import each other can
    # see half-initialised modules.
    import mlflow  # noqa: F401

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-open") as pool:
        opening = pool.submit(Tracker, exp.search.tracking_uri or paths.tracking, exp.name, paths.root / "mlartifacts",
                              own_store=not exp.search.tracking_uri, template_dir=exp.cache / "stores")
        study = Study.open(exp, paths, prior_plans=prior_plans)
        stack.callback(study.close)  # no timing process outlives the call
        tracker = opening.result()
    ws = study.workspace
    try:
        tracker.start_parent(study.optuna, study_params(exp, ws), [p for p in (exp.source_file, study.space_file) if p])
        tracker.log_parent_metrics({"fp32_accuracy": ws.reference.accuracy})
    except Exception as exc:  # MLflow raises its own and its stores' error types; no trial has run yet
        raise ConfigError(f"cannot write to MLflow tracking store {tracker.uri} ({first_line(exc)}): "
                          "set search.tracking_uri to a writable store") from exc
    procs = [spawn_worker(exp, study.storage_url, target, i) for i in range(1, workers)]
    first = FirstExport(ws, exp.search.max_accuracy_drop, exp.search.objective, paths.root / "best", started)
    try:
        with Progress.of(study.optuna, target, exp.search.max_accuracy_drop, exp.search.objective) as progress:
            seconds, evaluated = study.run(target, callbacks=[tracker, first, progress], started=started)
        for proc in procs:
            proc.wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
    result = replace(_conclude(study, paths.root / "best", seconds, evaluated), tracking_uri=tracker.uri,
                     parent_run_id=tracker.parent_id, workspace=ws, first_export_seconds=first.seconds)
    write_layer_errors_report(study.estimates.errors, paths.root)
    if exp.finetune is None:
        hint = finetune_hint(study.points(), result.chosen if result.met else None, result.max_drop, study.predicted)
        if hint is not None:
            result = replace(result, finetune_hint=hint)
    else:
        export = result.chosen if result.met else None
        tuned = finetune_stage(ws, exp, paths, study.points(), export, exp.search.max_accuracy_drop, study.predicted,
                               tracker.parent_id)
        if tuned is not None:
            result = replace(result, finetuned=tuned[1], finetuned_trial=tuned[0].number)
            keep_on_page(study, tuned[1])
    study.keep_page_facts(result.chosen.number if result.export else None, result.max_drop, first.seconds, seconds)
    refresh_study_page(paths.root)
    metrics = {"pareto_points": len(result.front), "constraint_met": float(result.met)}
    if result.export:
        metrics |= {"export_accuracy": result.export.accuracy, "export_bitops_fraction": result.export.bitops_fraction,
                    "export_latency_ratio": result.export.latency_ratio}
    if result.confirmation is not None:
        c = result.confirmation
        metrics |= {"confirmed_accuracy_drop": c.drop, "confirmed_drop_stderr": c.stderr, "confirm_samples": c.samples}
    metrics |= {"confirmations_refused": len(result.refused)}
    try:
        tracker.finish(study.optuna,
                       [(paths.root / "pareto.csv", None), (paths.root / "pareto.png", None),
                        (paths.root / "sensitivity.csv", None), (paths.root / "sensitivity.png", None),
                        (paths.root / PAGE, None),
                        (paths.root / "best" / "model.int8.onnx", "best"), (paths.root / "best" / "record.json", "best")],
                       metrics)
    except Exception as exc:  # noqa: BLE001 - the study and its export are on disk: tracking must not undo that
        return replace(result, tracking_error=f"MLflow tracking store {tracker.uri} failed ({first_line(exc)}); the "
                                              f"study and {paths.root / 'best'} are complete: rerun the same command "
                                              "with a working store to back-fill MLflow")
    return result


def _conclude(study: Study, out: Path, seconds: float, evaluated: int, max_drop: float | None = None,
              objective: Cost | None = None) -> SearchResult:
    """Choose the export (Study.select), write the front's table and plot beside the study and the export to `out`."""
    t0 = time.perf_counter()
    exp, ws, root = study.exp, study.workspace, study.paths.root
    max_drop = exp.search.max_accuracy_drop if max_drop is None else max_drop
    objective = objective or exp.search.objective
    chosen = study.select(max_drop, objective)
    write_pareto_csv(chosen.front, root / "pareto.csv")
    plot_pareto(chosen.points, chosen.front, chosen.chosen if chosen.met else None, objective, max_drop,
                ws.reference.accuracy, root / "pareto.png", f"{exp.name}: {len(chosen.points)} trials")
    exported = study.export(chosen.chosen, out, confirmation=chosen.confirmation) if chosen.met else None
    ws.add_seconds("conclusion", time.perf_counter() - t0)
    stopped = len(study.optuna.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    return SearchResult(root, len(chosen.points), evaluated, seconds, ws.reference.accuracy, chosen.front, chosen.chosen,
                        chosen.met, exported, study.optuna.study_name, objective=objective, fastest=chosen.fastest,
                        max_drop=max_drop, stopped_early=stopped, confirmation=chosen.confirmation,
                        refused=chosen.refused, slower=chosen.slower)


def export_from_run(run_dir: Path, out: Path, *, max_drop: float | None = None, objective: Cost | None = None,
                    experiment: Path | None = None) -> SearchResult:
    """Re-choose the export from a finished study (e.g. under another constraint) without re-running it."""
    paths = RunPaths(Path(run_dir))
    check_export_target(Path(out))
    exp = load_experiment(experiment if experiment is not None else paths.experiment())
    recover_dir(Path(out))
    study = Study.existing(exp, paths)
    try:
        result = _conclude(study, Path(out), 0.0, 0, max_drop, objective)
        if Path(out).resolve() == (paths.root / "best").resolve():  # the run's own export: its page follows it
            study.keep_page_facts(result.chosen.number if result.export else None, result.max_drop)
            refresh_study_page(paths.root)
    finally:
        study.close()
    return replace(result, tracking_uri=exp.search.tracking_uri or paths.tracking, parent_run_id=study.parent_run)


def register(result: SearchResult, name: str, alias: str | None = None) -> str:
    """Register the result's export as a new version of `name` in the model registry of the study's
    tracking store, tagged with its metrics, source model and study; move `alias` to it if given."""
    from ..track.registry import Registry

    if result.export is None or result.chosen is None:
        raise ConfigError("nothing was exported, so nothing can be registered")
    if not result.parent_run_id:
        raise ConfigError(f"the study in {result.out_dir} has no MLflow run to attach the model to")
    r, e = result.chosen.result, result.export
    tags = {"autoquant.model_sha256": Record.load(e.record_path).model_sha256, "autoquant.study": result.study_name,
            "autoquant.run_dir": str(result.out_dir.resolve()), "autoquant.trial": str(result.chosen.number),
            "autoquant.plan_key": result.chosen.plan.key(), "accuracy": f"{e.accuracy:.4f}",
            "accuracy_drop": f"{e.accuracy_drop:.4f}", "bitops_fraction": f"{r.bitops_fraction:.6f}",
            "latency_ratio": f"{e.latency_ratio:.4f}", "size_bytes": str(e.size_bytes)}
    return Registry(result.tracking_uri).register(name, result.parent_run_id, e.model_path.parent, tags, alias)
