"""Experiment tracking (MLflow). Imported lazily: MLflow takes seconds to import."""
