"""The user's own code named in an experiment (metrics, data loaders, model factories): `file.py:function`
resolved relative to the experiment file, or `package.module:function` importable from beside it — no
PYTHONPATH needed. Whatever it raises while importing is one line naming the reference."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, first_line


@contextlib.contextmanager
def _importable_from(base: Path | None):
    """Make modules beside the experiment file importable while the metric is imported."""
    if base is None:
        yield
        return
    sys.path.insert(0, str(base))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(base))


def load_callable(spec: str, base: Path | None, what: str) -> Callable:
    """`file.py:function` (a path relative to `base`) or `package.module:function`."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"{what} '{spec}' must be 'file.py:function' or 'module:function'")
    try:
        if target.endswith(".py"):
            path = Path(target) if Path(target).is_absolute() or base is None else base / target
            if not path.is_file():
                raise ConfigError(f"{what} '{spec}': {path} not found (paths are relative to the experiment file)")
            module_spec = importlib.util.spec_from_file_location(f"autoquant_user_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            with _importable_from(path.parent):
                module_spec.loader.exec_module(module)
        else:
            with _importable_from(base):
                module = importlib.import_module(target)
        fn = getattr(module, attr)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module: ImportError, SyntaxError, AttributeError, anything it raises
        raise ConfigError(f"{what} '{spec}' cannot be imported ({exc.__class__.__name__}: {first_line(exc, 120)}): "
                          "fix the module, or give the path of its .py file relative to the experiment") from exc
    if not callable(fn):
        raise ConfigError(f"{what} '{spec}' is not callable")
    return fn
