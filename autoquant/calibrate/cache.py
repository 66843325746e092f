"""On-disk cache of per-study work (activation statistics, FP32 reference), keyed by content hashes.

Entries are .npz files written atomically; one that cannot be read or whose key does not match is
rebuilt, with a message, never trusted.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..fileio import atomic_write, file_lock

CACHE_VERSION = 1
log = logging.getLogger(__name__)


def cached_arrays(path: Path, key: str, build: Callable[[], dict[str, np.ndarray]],
                  keep: Callable[[dict[str, np.ndarray]], bool] = lambda arrays: True) -> dict[str, np.ndarray]:
    """Return the arrays stored under `path` if they were built for `key`, else build them and store them (unless
    `keep` says not: e.g. a table cut short by a time budget). Concurrent callers (parallel workers) build once: the
    others wait on the lock, then read."""
    with file_lock(path.with_name(path.name + ".lock")):
        return _load_or_build(path, key, build, keep)


def _load_or_build(path: Path, key: str, build: Callable[[], dict[str, np.ndarray]],
                   keep: Callable[[dict[str, np.ndarray]], bool]) -> dict[str, np.ndarray]:
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["_key"]) == key and int(f["_version"]) == CACHE_VERSION:
                    return {k: f[k] for k in f.files if not k.startswith("_")}
            log.warning("cache %s is stale; rebuilding it", path.name)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            log.warning("cache %s is unreadable (corrupt?); rebuilding it", path.name)
    arrays = build()
    if keep(arrays):
        atomic_write(path, lambda f: np.savez(f, _key=np.array(key), _version=np.array(CACHE_VERSION), **arrays))
    return arrays
