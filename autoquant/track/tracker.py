"""MLflow tracking: one parent run per study, one nested run per finished trial (an Optuna callback).

Uses MlflowClient with explicit run ids rather than mlflow.start_run's global "active run", so a
resumed study re-attaches to its parent run and nothing depends on process-global state.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import optuna
import yaml

from ..errors import ConfigError
from ..quantize.plan import QuantPlan

PARENT_ATTR = "mlflow_parent_run_id"


def plan_summary(plan: QuantPlan) -> dict[str, str]:
    """Compact params for a trial run: counts, not one param per layer (the plan file is an artifact)."""
    q = [c for _, c in plan.choices if c.quantize]
    counts = {"layers_int8": len(q), "layers_float": len(plan.choices) - len(q),
              "per_channel": sum(c.weight_granularity == "per_channel" for c in q),
              "weight_4bit": sum(c.weight_bits == 4 for c in q)}  # fmt: skip
    counts.update({f"algo_{a}": n for a, n in Counter(c.activation_algorithm for c in q).items()})
    return {k: str(v) for k, v in counts.items()} | {"plan_key": plan.key()}


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str, artifact_dir: Path):
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # schema-migration chatter on first use

        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment_name)
            self.experiment_id = (
                exp.experiment_id if exp else
                self.client.create_experiment(experiment_name, artifact_location=artifact_dir.resolve().as_uri())
            )  # fmt: skip
        except Exception as exc:  # MLflow wraps store errors in many types
            raise ConfigError(f"cannot use MLflow tracking store {tracking_uri}: {str(exc).splitlines()[0][:160]}; "
                              "set search.tracking_uri to a writable store") from exc  # fmt: skip
        self.uri = tracking_uri
        self.parent_id: str | None = None

    def start_parent(self, study: optuna.Study, params: dict[str, str], artifacts: list[Path]) -> str:
        """Create the study's parent run, or re-attach to the one a previous (interrupted) run created."""
        existing = study.user_attrs.get(PARENT_ATTR)
        if existing:
            self.parent_id = existing
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, run_name=f"study {study.study_name}",
                                     tags={"autoquant.study": study.study_name})  # fmt: skip
        self.parent_id = run.info.run_id
        study.set_user_attr(PARENT_ATTR, self.parent_id)
        for k, v in params.items():
            self.client.log_param(self.parent_id, k, v)
        for path in artifacts:
            self.client.log_artifact(self.parent_id, str(path))
        return self.parent_id

    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.parent_id, k, float(v))

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: one nested run per finished trial."""
        if trial.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
            return
        attrs = trial.user_attrs
        run = self.client.create_run(self.experiment_id, run_name=f"trial {trial.number}",
                                     tags={"mlflow.parentRunId": self.parent_id, "autoquant.state": trial.state.name,
                                           "autoquant.fail_reason": attrs.get("fail_reason", "")[:4000],
                                           "autoquant.duplicate_of": str(attrs.get("duplicate_of", ""))})  # fmt: skip
        rid = run.info.run_id
        if "plan" in attrs:
            plan = QuantPlan.from_spec(json.loads(attrs["plan"]), [n for n in json.loads(attrs["plan"])["layers"]])
            for k, v in plan_summary(plan).items():
                self.client.log_param(rid, k, v)
            self.client.log_text(rid, yaml.safe_dump(plan.to_spec(), sort_keys=False), "plan.yaml")
        for k in ("accuracy", "accuracy_drop", "bitops_fraction", "latency_ms", "latency_ratio", "size_bytes", "output_mse"):
            if k in attrs:
                self.client.log_metric(rid, k, float(attrs[k]), step=trial.number)
        self.client.set_terminated(rid, status="FINISHED" if trial.state.name == "COMPLETE" else "FAILED")

    def finish(self, artifacts: list[tuple[Path, str | None]], metrics: dict[str, float]) -> None:
        for path, sub in artifacts:
            if path.exists():
                self.client.log_artifact(self.parent_id, str(path), sub)
        self.log_parent_metrics(metrics)
        self.client.set_terminated(self.parent_id, status="FINISHED")
