"""Data sources, one module per kind: each registers `load(cfg, ctx) -> Dataset` under its name (`data.source` in
the experiment). `ctx` (SourceContext) says where the experiment lives, where autoquant caches, which inputs the
model takes and how many samples the splits need from this source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry

DATA_SOURCES = Registry("data.source", __name__)


@dataclass(frozen=True)
class SourceContext:
    base: Path  # the experiment file's directory: relative paths and code references resolve from it
    cache: Path  # autoquant's cache directory
    inputs: tuple[str, ...] | None  # the model's input names (None: not known yet, a built-in model to train)
    need: int  # samples the splits take from this source: a source that can give more reads no further
