"""LayerChoice and QuantPlan: what to do with each quantizable layer. Owner of the plan's file format."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..calibrate.ranges import ALGORITHMS
from ..errors import ConfigError, PlanError

GRANULARITIES = ("per_tensor", "per_channel")
WEIGHT_BITS = (8, 4)
PLAN_FORMAT_VERSION = 1


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
    quantize: bool = True
    weight_granularity: str = "per_channel"
    activation_algorithm: str = "minmax"
    weight_bits: int = 8
    activation_bits: int = 8

    def __post_init__(self):
        if self.weight_granularity not in GRANULARITIES:
            raise ConfigError(
                f"weight_granularity '{self.weight_granularity}' is unknown: use one of {', '.join(GRANULARITIES)}"
            )
        if self.activation_algorithm not in ALGORITHMS:
            raise ConfigError(
                f"activation algorithm '{self.activation_algorithm}' is unknown: use one of {', '.join(ALGORITHMS)}"
            )
        if self.weight_bits not in WEIGHT_BITS:
            raise ConfigError(f"weight_bits {self.weight_bits} is not supported: use 8 or 4")
        if self.activation_bits != 8:
            raise ConfigError(f"activation_bits {self.activation_bits} is not supported: use 8")
        if self.weight_bits == 4 and self.weight_granularity != "per_channel":
            raise ConfigError("4-bit weights need weight_granularity: per_channel")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str, base: LayerChoice | None = None) -> LayerChoice:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping of layer options, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        merged = {**asdict(base or cls()), **raw}
        for key, typ in (("quantize", bool), ("weight_bits", int), ("activation_bits", int)):
            if not isinstance(merged[key], typ) or (typ is int and isinstance(merged[key], bool)):
                raise ConfigError(f"{where}: '{key}' must be {typ.__name__}, got {merged[key]!r}")
        return cls(**merged)

    @property
    def cost_bits(self) -> tuple[int, int]:
        """(activation bits, weight bits) for the bitops model; float layers count 32 × 32."""
        return (self.activation_bits, self.weight_bits) if self.quantize else (32, 32)


FLOAT = LayerChoice(quantize=False)


@dataclass(frozen=True)
class QuantPlan:
    """A complete choice for every quantizable layer, in graph order."""

    choices: tuple[tuple[str, LayerChoice], ...]

    @classmethod
    def uniform(cls, layer_names: Iterable[str], choice: LayerChoice) -> QuantPlan:
        return cls(tuple((name, choice) for name in layer_names))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], layer_names: Iterable[str], where: str = "plan") -> QuantPlan:
        """Resolve `{default: {...}, layers: {name or "re:pattern": {...}}}` against the model's layers.

        Later entries win over earlier ones; an exact name that is not a layer is an error, a pattern
        that matches nothing is a warning.
        """
        names = list(layer_names)
        if not isinstance(spec, Mapping) or not spec:
            got = "empty" if not spec else f"a {type(spec).__name__}"
            raise ConfigError(f"{where} is {got}: a plan is a mapping with 'default' and/or 'layers'")
        unknown = sorted(map(str, set(spec) - {"default", "layers", "format_version"}))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: default, layers")
        default = LayerChoice.from_dict(spec.get("default") or {}, f"{where}: default")
        resolved = dict.fromkeys(names, default)
        layers = spec.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise ConfigError(f"{where}: 'layers' must map layer names (or re:patterns) to options, got a "
                              f"{type(layers).__name__}")  # fmt: skip
        for key, raw in layers.items():
            pattern = name_pattern(key, f"{where}: layers")
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
                                "run `autoquant layers EXPERIMENT.yaml` to list layer names")  # fmt: skip
            for n in hits:
                resolved[n] = LayerChoice.from_dict(raw, f"{where}: layers.{key}", base=resolved[n])
        return cls(tuple(resolved.items()))

    def to_spec(self) -> dict[str, Any]:
        return {"format_version": PLAN_FORMAT_VERSION, "layers": {n: asdict(c) for n, c in self.choices}}

    def __getitem__(self, name: str) -> LayerChoice:
        return dict(self.choices)[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.choices)

    @property
    def quantized(self) -> tuple[str, ...]:
        return tuple(n for n, c in self.choices if c.quantize)

    def weight_bits(self) -> dict[str, int]:
        """Bits each layer's weights are meant to have at run time (32: the layer runs float)."""
        return {n: c.cost_bits[1] for n, c in self.choices}

    def key(self) -> str:
        """Stable identity of the plan, for de-duplicating trials and naming caches."""
        return hashlib.sha256(json.dumps(self.to_spec(), sort_keys=True).encode()).hexdigest()[:16]
