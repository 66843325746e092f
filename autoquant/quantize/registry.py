"""The registry of quantization modes: what plans, spaces, the builder and the record look a mode up in. A mode
registers itself when its module is imported; every module of the package autoquant.quantize.modes is imported the
first time the registry is asked, so a new mode is a new module there (or one that calls `register` anywhere).

Kept apart from the modes (which import the plan's types) so that the plan's types can ask it without importing any
mode: the modes are found by name at run time, not imported here."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .modes.base import Mode

PACKAGE = "autoquant.quantize.modes"
_MODES: dict[str, Mode] = {}
_loaded = False


def register(mode: Mode) -> Mode:
    _MODES[mode.name] = mode
    return mode


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        package = importlib.import_module(PACKAGE)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{PACKAGE}.{module.name}")


def modes() -> tuple[Mode, ...]:
    """Every registered mode, in build order (the first is the default mode)."""
    _load()
    return tuple(sorted(_MODES.values(), key=lambda m: m.order))


def names() -> tuple[str, ...]:
    return tuple(m.name for m in modes())


def get(name: str) -> Mode:
    _load()
    if name not in _MODES:
        raise ConfigError(f"mode '{name}' is unknown: use one of {', '.join(names())}")
    return _MODES[name]
