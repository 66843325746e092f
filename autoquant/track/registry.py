"""MLflow model registry: exports as versions of a registered model, an alias (e.g. "production")
for the deployed one, and the deployed version's files back for re-optimization."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, first_line
from ..record import Record

EXPORT_FILES = ("model.int8.onnx", "record.json")


@dataclass(frozen=True)
class Deployed:
    version: str
    model: Path
    record: Record
    tags: dict[str, str]


class Registry:
    def __init__(self, uri: str):
        from mlflow import MlflowClient

        from .tracker import fail_fast

        fail_fast(uri)
        try:
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            self.client.search_registered_models(max_results=1)
        except Exception as exc:  # MLflow raises store-specific types
            raise ConfigError(f"cannot use the MLflow registry at {uri}: {first_line(exc)}") from exc
        self.uri = uri

    def register(self, name: str, run_id: str, export_dir: Path, tags: dict[str, str], alias: str | None = None) -> str:
        """Log the export's files to `run_id` and register them as a new version of `name`."""
        sub = f"registry/{time.strftime('%Y%m%d-%H%M%S')}-{hashlib.sha256(str(export_dir).encode()).hexdigest()[:6]}"
        for f in EXPORT_FILES:
            self.client.log_artifact(run_id, str(export_dir / f), sub)
        record = (export_dir / "record.json").read_bytes()
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, description="INT8 ONNX exports made by autoquant")
        version = self.client.create_model_version(
            name, source=f"runs:/{run_id}/{sub}", run_id=run_id,
            tags={**tags, "autoquant.record_sha256": hashlib.sha256(record).hexdigest()},
        )
        if alias:
            self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def tag(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, version, key, value)

    def deployed(self, name: str, alias: str) -> Deployed:
        """The version `alias` points at, with its model and record downloaded."""
        import mlflow.artifacts

        try:
            v = self.client.get_model_version_by_alias(name, alias)
        except Exception as exc:
            raise ConfigError(f"registered model '{name}' has no alias '{alias}' in {self.uri}: register an export "
                              "first (autoquant search ... --register NAME --alias ALIAS)") from exc
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=v.source, tracking_uri=self.uri))
        except Exception as exc:  # MLflow raises store-specific types; a moved run directory: OSError, MlflowException
            raise ConfigError(f"cannot fetch version {v.version} of '{name}' from {v.source} ({first_line(exc)}): the run "
                              "directory of the study that registered it was moved or deleted; put it back, or register "
                              "a new export") from exc
        if not all((local / f).is_file() for f in EXPORT_FILES):
            raise ConfigError(f"version {v.version} of '{name}' ({v.source}) has no {' and '.join(EXPORT_FILES)}: register "
                              "an autoquant export")
        return Deployed(str(v.version), local / "model.int8.onnx", Record.load(local / "record.json"), dict(v.tags))
