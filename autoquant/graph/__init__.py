"""The model graph: ingestion and pre-processing, compute ops with shapes and FLOPs."""
