"""The machine a study ran on: its CPU, the instruction-set flags that decide which integer kernels onnxruntime
picks there (and so what a latency figure means), and its cores. Stamped on study pages and benchmark results."""

from __future__ import annotations

import os
import platform
from pathlib import Path

KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimddp")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")


def machine() -> dict:
    """{"cpu", "cores", "flags"}: the flags are those of KERNEL_FLAGS the CPU has."""
    flags = set(next((line.split(":", 1)[1].split() for line in _cpuinfo() if line.startswith(("flags", "Features"))),
                     []))
    return {"cpu": cpu_model() or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "flags": [f for f in KERNEL_FLAGS if f in flags]}


def describe(m: dict) -> str:
    """One line naming a machine() dict."""
    return f"{m.get('cores', '?')}-core {m.get('cpu', '?')} ({', '.join(m.get('flags', [])) or 'no AVX2'})"
