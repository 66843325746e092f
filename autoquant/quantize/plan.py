"""LayerChoice and QuantPlan: what to do with each quantizable layer. Owner of the plan's file format.

A choice is FLOAT or one mode's own choice type: each mode module (quantize/modes/) defines a frozen dataclass of
its fields, their defaults and their validation, and registers it. This module knows no mode's fields: a plan
file's entry names a mode (or takes the default one), and that mode's choice type says which fields it may set
and what they may be.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError, PlanError
from . import registry

# 1: one flat record of every mode's fields per layer (still read); 2: each layer's mode and that mode's own fields
PLAN_FORMAT_VERSION = 2
_SCALARS = (bool, int, float, str)


def name_pattern(key: Any, where: str) -> re.Pattern:
    """A layer selector of plans and spaces: an exact layer name, or "re:<regular expression>"."""
    if not isinstance(key, str):
        raise ConfigError(f"{where}: layer selector {key!r} must be a string (a layer name or re:pattern)")
    if not key.startswith("re:"):
        return re.compile(re.escape(key))
    try:
        return re.compile(key[3:])
    except re.error as exc:
        raise ConfigError(f"{where}: bad pattern '{key}': {exc}") from exc


@dataclass(frozen=True)
class LayerChoice:
    """What to do with one layer: keep it float (FLOAT), or quantize it in a mode, whose choice type (a subclass
    defined beside the mode) holds that mode's own fields and validates them in `__post_init__`."""

    mode: ClassVar[str] = ""  # the registered mode's name (quantize/modes/)
    quantize: ClassVar[bool] = True

    @classmethod
    def of(cls, mode: str | None = None, **fields: Any) -> LayerChoice:
        """A quantized choice in `mode` (default: the default mode) with these of its own fields set."""
        return cls.parse({**fields, **({"mode": mode} if mode else {})}, "choice")

    @classmethod
    def default(cls) -> LayerChoice:
        """The default mode's default choice (static INT8 per channel, minmax ranges)."""
        return _modes()[0].choice()

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str, base: LayerChoice | None = None) -> LayerChoice:
        """The choice a plan or space entry describes: `quantize`, `mode` and the fields of that mode's own, each
        missing one taken from `base` (when it is in the same mode) or the mode's default. Fields of another
        mode, and values a mode fixes (an entry of the earlier flat format), are named in the error."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping of layer options, got {type(raw).__name__}")
        allowed = _allowed(tuple(m.choice for m in _modes()))
        unknown = sorted(map(str, set(raw) - allowed))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        quantize = raw.get("quantize", True if base is None else base.quantize)
        if not isinstance(quantize, bool):
            raise ConfigError(f"{where}: 'quantize' must be bool, got {quantize!r}")
        if not quantize:
            return FLOAT  # float is float, whatever else the entry or its base set
        name = raw.get("mode") or (base.mode if base is not None and base.quantize else _modes()[0].name)
        try:
            mode = _mode(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        values = base.fields() if base is not None and base.mode == mode.name else {}
        types = own_fields(mode.choice)
        for key, value in raw.items():
            if key in ("quantize", "mode"):
                continue
            if key in types:
                values[key] = _typed(value, types[key], f"{where}: '{key}'")
            elif {**_legacy(), **mode.fixed}.get(key, _MISSING) != value:  # else: the flat format's fixed value
                raise ConfigError(f"{where}: {_not_its_own(key, value, mode)}")
        try:
            return mode.choice(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def fields(self) -> dict[str, Any]:
        """This choice's own fields (its mode's), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, **self.fields()} if self.quantize else {"quantize": False}

    def with_fields(self, **changes: Any) -> LayerChoice | None:
        """This choice with some of its fields changed; None when it has no such field or the values do not fit."""
        if not self.quantize or not set(changes) <= set(self.fields()):
            return None
        try:
            return dataclasses.replace(self, **changes)
        except ConfigError:
            return None

    @property
    def cost_bits(self) -> tuple[int, int]:
        """(activation bits, weight bits) for the bitops model; float layers count 32 × 32."""
        return _mode(self.mode).cost_bits(self) if self.quantize else (32, 32)

    @property
    def label(self) -> str:
        """Short name of how the layer runs (float, int8, dynamic, int4, …): what `autoquant inspect` shows."""
        return _mode(self.mode).label(self) if self.quantize else "float"

    @property
    def runs(self) -> str:
        """The kernel kind onnxruntime is meant to run: "integer", "float", or "dequantized" (float on
        dequantized weights: 4-bit Q/DQ weights, which have no CPU integer kernel)."""
        return _mode(self.mode).runs(self) if self.quantize else "float"


@dataclass(frozen=True)
class Float(LayerChoice):
    """The layer stays float."""

    mode: ClassVar[str] = "float"
    quantize: ClassVar[bool] = False


FLOAT = Float()
_MISSING = object()


@functools.cache
def own_fields(choice_type: type) -> dict[str, type]:
    """A choice type's fields and their (scalar) types (asked for every layer of every plan parsed: kept)."""
    hints = typing.get_type_hints(choice_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(choice_type)}


@functools.cache
def _allowed(choice_types: tuple[type, ...]) -> frozenset[str]:
    """The keys a choice entry may have, given the registered modes' choice types."""
    return frozenset({"quantize", "mode", *_legacy()} | {f for t in choice_types for f in own_fields(t)})


def _typed(value: Any, kind: type, where: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in _SCALARS and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


def _legacy() -> dict[str, Any]:
    """Keys of the earlier flat format that no mode has as a field, at the only value they ever had."""
    return {"activation_bits": 8}


def _not_its_own(key: str, value: Any, mode) -> str:
    """Why `key` cannot be set on a choice of `mode`: another mode's own field, or a value this mode fixes."""
    if key in _legacy():
        return f"{key} {value!r} is not supported: use {_legacy()[key]!r}"
    owners = [m for m in _modes() if key in own_fields(m.choice)]
    if owners and (key not in mode.fixed or owners[0] is not _modes()[0]):
        fields = list(own_fields(owners[0].choice))
        return f"{' and '.join(fields)} belong{'s' if len(fields) == 1 else ''} to mode {owners[0].name}"
    return f"mode {mode.name} fixes {key} to {mode.fixed.get(key)!r} (got {value!r}): leave it out"


def _mode(name: str):
    return registry.get(name)


def _modes():
    return registry.modes()


@dataclass(frozen=True)
class QuantPlan:
    """A complete choice for every quantizable layer, in graph order."""

    choices: tuple[tuple[str, LayerChoice], ...]

    @classmethod
    def uniform(cls, layer_names: Iterable[str], choice: LayerChoice) -> QuantPlan:
        return cls(tuple((name, choice) for name in layer_names))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], layer_names: Iterable[str] | None, where: str = "plan") -> QuantPlan:
        """Resolve `{default: {...}, layers: {name or "re:pattern": {...}}}` against the model's layers.

        Later entries win over earlier ones; an exact name that is not a layer is an error, a pattern
        that matches nothing is a warning. Without `layer_names` (the model not loaded yet) only the
        options are checked and the plan returned is empty.
        """
        names = list(layer_names or ())
        if not isinstance(spec, Mapping) or not spec:
            got = "empty" if not spec else f"a {type(spec).__name__}"
            raise ConfigError(f"{where} is {got}: a plan is a mapping with 'default' and/or 'layers'")
        unknown = sorted(map(str, set(spec) - {"default", "layers", "format_version"}))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: default, layers")
        default = LayerChoice.parse(spec.get("default") or {}, f"{where}: default")
        resolved = dict.fromkeys(names, default)
        layers = spec.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise ConfigError(f"{where}: 'layers' must map layer names (or re:patterns) to options, got a "
                              f"{type(layers).__name__}")
        for key, raw in layers.items():
            pattern = name_pattern(key, f"{where}: layers")
            if layer_names is None:
                LayerChoice.parse(raw, f"{where}: layers.{key}", base=default)
                continue
            if key.startswith("re:"):
                hits = [n for n in names if pattern.fullmatch(n)]
                if not hits:
                    warnings.warn(f"{where}: pattern '{key}' matches no layer", stacklevel=2)
            elif key in resolved:
                hits = [key]
            else:
                close = [n for n in names if key.split("/")[-1] in n][:3]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise PlanError(f"{where}: layer '{key}' does not exist in the model{hint}; "
                                "run `autoquant layers EXPERIMENT.yaml` to list layer names")
            for n in hits:
                resolved[n] = LayerChoice.parse(raw, f"{where}: layers.{key}", base=resolved[n])
        return cls(tuple(resolved.items()))

    def to_spec(self) -> dict[str, Any]:
        return {"format_version": PLAN_FORMAT_VERSION, "layers": {n: c.to_dict() for n, c in self.choices}}

    def with_choices(self, changes: Mapping[str, LayerChoice]) -> QuantPlan:
        """This plan with the layers in `changes` set as it says."""
        return QuantPlan(tuple((n, changes.get(n, c)) for n, c in self.choices))

    def __getitem__(self, name: str) -> LayerChoice:
        return dict(self.choices)[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.choices)

    @property
    def quantized(self) -> tuple[str, ...]:
        return tuple(n for n, c in self.choices if c.quantize)

    def in_mode(self, mode: str) -> tuple[str, ...]:
        """The quantized layers built in `mode`, in graph order."""
        return tuple(n for n, c in self.choices if c.quantize and c.mode == mode)

    def runs(self) -> dict[str, str]:
        """The kernel kind each layer is meant to run (LayerChoice.runs)."""
        return {n: c.runs for n, c in self.choices}

    def modes(self) -> set[str]:
        return {c.mode for _, c in self.choices if c.quantize}

    def key(self) -> str:
        """Stable identity of the plan, for de-duplicating trials and naming caches."""
        return hashlib.sha256(json.dumps(self.to_spec(), sort_keys=True).encode()).hexdigest()[:16]
