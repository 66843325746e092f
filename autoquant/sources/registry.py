"""A registry of the kinds of one thing (model sources, data sources): each kind is a module of its package
that registers its function by name, so a new kind is a new module — nothing else is edited."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from ..errors import ConfigError


class Registry:
    def __init__(self, what: str, package: str):
        self.what, self.package = what, package
        self._kinds: dict[str, Callable] = {}
        self._loaded = False

    def register(self, name: str, requires: tuple[str, ...] = (), streams: bool = False) -> Callable[[Callable], Callable]:
        """`requires`: settings of its section (e.g. data.path) this kind cannot do without; `streams`: a data
        source that reads only the samples asked for (its data set is as long as the splits need)."""

        def add(fn: Callable) -> Callable:
            fn.requires, fn.streams = requires, streams
            self._kinds[name] = fn
            return fn

        return add

    def _load(self) -> None:
        if not self._loaded:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._kinds)

    def get(self, name: str) -> Callable:
        self._load()
        if name not in self._kinds:
            raise ConfigError(f"{self.what} '{name}' is unknown: use one of {', '.join(self.names())}")
        return self._kinds[name]
