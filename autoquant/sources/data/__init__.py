"""Data sources, one module per kind: each registers `load(cfg, base, cache) -> Dataset` under its name
(`data.source` in the experiment). `base` is the experiment file's directory, `cache` autoquant's cache."""

from ..registry import Registry

DATA_SOURCES = Registry("data.source", __name__)
