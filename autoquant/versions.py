"""Versions of autoquant and the runtime it builds models for, stamped on records and benchmark results."""

from __future__ import annotations

from importlib import metadata


def versions() -> dict[str, str]:
    def v(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {"autoquant_version": v("autoquant"), "onnxruntime_version": v("onnxruntime"), "onnx_version": v("onnx")}
