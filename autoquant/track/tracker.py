"""MLflow tracking: one parent run per study, one nested run per finished trial (an Optuna callback).

Uses MlflowClient with explicit run ids rather than mlflow.start_run's global "active run", so a
resumed study re-attaches to its parent run and nothing depends on process-global state.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import optuna
import yaml

from ..config import Experiment
from ..errors import ConfigError, first_line
from ..fileio import keep_sqlite_template, seed_sqlite_url
from ..quantize.plan import QuantPlan
from ..search import trial_attrs as attrs
from ..workspace import Workspace

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def plan_summary(plan: QuantPlan) -> dict[str, str]:
    """Compact params for a trial run: counts, not one param per layer (the plan file is an artifact)."""
    q = [c for _, c in plan.choices if c.quantize]
    counts = {"layers_quantized": len(q), "layers_float": len(plan.choices) - len(q)}
    counts |= {f"runs_{label}": n for label, n in sorted(Counter(c.label for c in q).items())}
    counts |= {f"{k}.{v}": n for (k, v), n in sorted(Counter(f for c in q for f in c.fields().items()).items(), key=str)}
    return {k: str(v) for k, v in counts.items()} | {"plan_key": plan.key()}


def study_params(exp: Experiment, ws: Workspace) -> dict[str, str]:
    """The parent run's params: what a reader compares studies by in the MLflow UI."""
    return {"model_sha256": ws.sha, "objective": exp.search.objective.value, "sampler": exp.search.sampler,
            "max_accuracy_drop": str(exp.search.max_accuracy_drop), "layers": str(len(ws.graph.layers)),
            "eval_samples": str(len(ws.splits.eval)), "calibration_samples": str(len(ws.splits.calibration)),
            "weight_range": ws.weight_range}


def follow_moved_run_dir(tracking_uri: str, experiment_name: str, artifact_dir: Path) -> None:
    """Point a run directory's own MLflow store at the artifacts beside it again after the directory was
    moved or copied; otherwise new artifacts land in (or pollute) the original directory.

    MLflow fixes an experiment's artifact location when it is created and has no call to change it, so
    this rewrites the two columns that hold it. Only for the run directory's own SQLite store, which
    nobody else shares."""
    import sqlalchemy

    new = artifact_dir.resolve().as_uri()
    engine = sqlalchemy.create_engine(tracking_uri)
    try:
        with engine.begin() as db:
            if not sqlalchemy.inspect(db).has_table("experiments"):
                return
            row = db.execute(sqlalchemy.text("SELECT experiment_id, artifact_location FROM experiments WHERE name = :n"),
                             {"n": experiment_name}).first()
            if row is None or row.artifact_location == new:
                return
            db.execute(sqlalchemy.text("UPDATE experiments SET artifact_location = :new WHERE experiment_id = :id"),
                       {"new": new, "id": row.experiment_id})
            db.execute(sqlalchemy.text("UPDATE runs SET artifact_uri = :new || substr(artifact_uri, :n) "
                                       "WHERE experiment_id = :id AND substr(artifact_uri, 1, :m) = :old"),
                       {"new": new, "old": row.artifact_location, "n": len(row.artifact_location) + 1,
                        "m": len(row.artifact_location), "id": row.experiment_id})
    finally:
        engine.dispose()


def fail_fast(uri: str) -> None:
    """MLflow's default retries with backoff take minutes to give up on a server that does not answer; a
    scheduled job should fail in seconds. The user's own settings win."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str, artifact_dir: Path, own_store: bool = False,
                 template_dir: Path | None = None):
        """`own_store`: the run directory's own SQLite store, which a new run creates as a copy of the empty store
        kept in `template_dir` (made by the first run with this MLflow; its schema migrations take over a second)."""
        import mlflow
        from mlflow import MlflowClient

        fail_fast(tracking_uri)
        template = template_dir / f"mlflow-{mlflow.__version__}.db" if own_store and template_dir is not None else None
        fresh = seed_sqlite_url(tracking_uri, template)
        try:
            if own_store:
                follow_moved_run_dir(tracking_uri, experiment_name, artifact_dir)
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment_name)
            if fresh is not None and len(self.client.search_experiments()) <= 1:  # MLflow's Default experiment alone
                keep_sqlite_template(fresh, template)
            self.experiment_id = (
                exp.experiment_id if exp else
                self.client.create_experiment(experiment_name, artifact_location=artifact_dir.resolve().as_uri())
            )
        except Exception as exc:  # MLflow wraps store errors in many types
            raise ConfigError(f"cannot use MLflow tracking store {tracking_uri}: {first_line(exc)}; "
                              "set search.tracking_uri to a writable store") from exc
        self.uri = tracking_uri
        self.parent_id: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._pending: list[Future] = []

    def flush(self) -> None:
        """Wait for the background logging; re-raises its first error."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def start_parent(self, study: optuna.Study, params: dict[str, str], artifacts: list[Path]) -> str:
        """Create the study's parent run, or re-attach to the one a previous (interrupted) run created."""
        existing = attrs.parent_run(study)
        if existing:
            self.parent_id = existing
            self.client.update_run(existing, status="RUNNING")
            self._backfill(study)
            return existing
        run = self.client.create_run(self.experiment_id, run_name=f"study {study.study_name}",
                                     tags={"autoquant.study": study.study_name})
        self.parent_id = run.info.run_id
        attrs.set_parent_run(study, self.parent_id)
        from mlflow.entities import Param

        self.client.log_batch(self.parent_id, params=[Param(k, v) for k, v in params.items()])
        for path in artifacts:
            self.client.log_artifact(self.parent_id, str(path))
        return self.parent_id

    def log_finetune(self, parent_id: str | None, params: dict[str, str], losses: list[float],
                     held_out: list[tuple[int, float]], metrics: dict[str, float], artifacts: list[Path]) -> str:
        """One run per fine-tuning, under the study's parent run: the loss of every step and the held-out output
        NMSE at each look as metric histories (`distillation_loss`, `held_out_nmse`), the export's figures and
        files."""
        from mlflow.entities import Metric, Param

        tags = {"autoquant.kind": "finetune", **({"mlflow.parentRunId": parent_id} if parent_id else {})}
        run_id = self.client.create_run(self.experiment_id, run_name="finetune", tags=tags).info.run_id
        now = int(time.time() * 1000)
        history = [Metric("distillation_loss", float(v), now, step) for step, v in enumerate(losses)]
        history += [Metric("held_out_nmse", float(v), now, step) for step, v in held_out]
        final = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for start in range(0, len(history), 900):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=history[start : start + 900])
        self.client.log_batch(run_id, metrics=final, params=[Param(k, v) for k, v in params.items()])
        for path in artifacts:
            self.client.log_artifact(run_id, str(path), "finetuned")
        self.client.set_terminated(run_id)
        return run_id

    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.parent_id, k, float(v))

    def _backfill(self, study: optuna.Study) -> None:
        """Log the trials that finished after the last logged one when a previous run was killed; a trial's run
        that a kill left RUNNING (created, not finished) is logged again."""
        runs = self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=50000)
        for r in runs:
            if r.info.status == "RUNNING":
                self.client.delete_run(r.info.run_id)
        logged = {r.data.tags.get("autoquant.trial") for r in runs if r.info.status != "RUNNING"}
        for trial in study.get_trials(deepcopy=False, states=FINISHED):
            if str(trial.number) not in logged:
                self._log_trial(trial)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: hands the finished trial to a background thread so that MLflow's writes
        overlap with the next trial's inference instead of adding to it. Once a write failed (a full disk, a
        server gone) no more are tried: the study goes on, and finish() reports the failure once."""
        if trial.state in FINISHED and not any(f.done() and f.exception() for f in self._pending):
            self._pending.append(self._pool.submit(self._log_trial, trial))

    def _log_trial(self, trial: optuna.trial.FrozenTrial) -> None:
        """One nested run per finished trial, metrics/params/tags written in one batch."""
        from mlflow.entities import Metric, Param

        duplicate = attrs.duplicate_of(trial)
        tags = {"mlflow.parentRunId": self.parent_id, "autoquant.state": trial.state.name,
                "autoquant.fail_reason": attrs.fail_reason(trial)[:4000],
                "autoquant.duplicate_of": "" if duplicate is None else str(duplicate), "autoquant.label": attrs.label(trial),
                "autoquant.stopped_early": (attrs.pruned(trial) or {}).get("reason", "")[:4000],
                "autoquant.trial": str(trial.number)}
        run = self.client.create_run(self.experiment_id, run_name=f"trial {trial.number}", tags=tags)
        rid, now = run.info.run_id, int(time.time() * 1000)
        params, metrics = [], []
        spec, result = attrs.plan_spec(trial), attrs.result(trial)
        if spec is not None:
            params = [Param(k, v) for k, v in plan_summary(attrs.plan(trial)).items()]
            self.client.log_text(rid, yaml.safe_dump(spec, sort_keys=False), "plan.yaml")
        if result is not None:
            metrics = [Metric(k, v, now, trial.number) for k, v in result.metrics().items()]
        elif attrs.pruned(trial):  # the prefix figure, under a name no full-set metric has
            metrics = [Metric("prefix_accuracy", attrs.pruned(trial)["prefix_accuracy"], now, trial.number)]
        self.client.log_batch(rid, metrics=metrics, params=params)
        self.client.set_terminated(rid, status=RUN_STATUS[trial.state.name])

    def finish(self, study: optuna.Study, artifacts: list[tuple[Path, str | None]], metrics: dict[str, float]) -> None:
        self.flush()
        self._backfill(study)  # trials other workers ran
        for path, sub in artifacts:
            if path.exists():
                self.client.log_artifact(self.parent_id, str(path), sub)
        self.log_parent_metrics(metrics)
        self.client.set_terminated(self.parent_id, status="FINISHED")
