"""LayerChoice and QuantPlan: what to do with each quantizable layer. Owner of the plan's file format."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError, PlanError

GRANULARITIES = ("per_tensor", "per_channel")
ROUNDINGS = ("nearest", "adaptive")  # weight_rounding: round to nearest, or learned per weight (quantize/recovery/)
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
    """What to do with one layer: keep it float, or quantize it in a mode (quantize/modes/: static, dynamic,
    int4, …), which decides what the other fields may be."""

    quantize: bool = True
    weight_granularity: str = "per_channel"
    activation_algorithm: str = "minmax"
    weight_bits: int = 8
    activation_bits: int = 8
    mode: str = "static"
    block_size: int = 0  # int4: weights share a scale per block of this many input channels
    accuracy_level: int = 0  # int4: MatMulNBits compute precision
    bias_correction: bool = False  # static: the mean output shift quantization adds, folded back into the bias
    weight_rounding: str = "nearest"  # static: "adaptive" rounds each weight the way that fits its layer's output

    def __post_init__(self):
        if not self.quantize:  # float is float: the other fields say nothing
            return
        mode = _mode(self.mode)
        for key, value in mode.fixed.items():
            if getattr(self, key) == value:
                continue
            owner = next((m for m in _modes() if key in m.defaults), None)
            if owner is not None:  # a field of another mode's own, set on this one
                raise ConfigError(f"{' and '.join(owner.defaults)} belong to mode {owner.name}")
            raise ConfigError(f"mode {self.mode} fixes {key} to {value!r} (got {getattr(self, key)!r}): leave it out")
        if self.activation_bits != 8:
            raise ConfigError(f"activation_bits {self.activation_bits} is not supported: use 8")
        mode.check(self)

    @classmethod
    def of(cls, mode: str, **fields: Any) -> LayerChoice:
        """A quantized choice in `mode`, its fixed fields and defaults filled in."""
        m = _mode(mode)
        return cls(**{**asdict(cls()), **m.fixed, **m.defaults, **fields, "mode": mode})

    @classmethod
    def dynamic(cls, granularity: str = "per_channel") -> LayerChoice:
        return cls.of("dynamic", weight_granularity=granularity)

    @classmethod
    def int4(cls, block_size: int = 32, accuracy_level: int = 4) -> LayerChoice:
        return cls.of("int4", block_size=block_size, accuracy_level=accuracy_level)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str, base: LayerChoice | None = None) -> LayerChoice:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping of layer options, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        base = base or cls()
        if "mode" in raw and raw["mode"] != base.mode:  # another mode: its fields start from the defaults
            base = cls(quantize=base.quantize)
        merged = {**asdict(base), **raw}
        try:
            mode = _mode(merged["mode"])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        merged.update({k: v for k, v in {**mode.fixed, **mode.defaults}.items() if k not in raw})  # fields the mode sets
        for key, typ in (("quantize", bool), ("weight_bits", int), ("activation_bits", int), ("block_size", int),
                         ("accuracy_level", int), ("bias_correction", bool), ("weight_rounding", str)):
            if not isinstance(merged[key], typ) or (typ is int and isinstance(merged[key], bool)):
                raise ConfigError(f"{where}: '{key}' must be {typ.__name__}, got {merged[key]!r}")
        if not merged["quantize"]:
            return cls(quantize=False)  # float is float, whatever else the base had set
        return cls(**merged)

    @property
    def cost_bits(self) -> tuple[int, int]:
        """(activation bits, weight bits) for the bitops model; float layers count 32 × 32."""
        return _mode(self.mode).cost_bits(self) if self.quantize else (32, 32)

    @property
    def label(self) -> str:
        """Short name of how the layer runs: float, int8 / int4-qdq (static), dynamic, int4 (MatMulNBits)."""
        return _mode(self.mode).label(self) if self.quantize else "float"

    @property
    def runs(self) -> str:
        """The kernel kind onnxruntime is meant to run: "integer", "float", or "dequantized" (float on
        dequantized weights: 4-bit Q/DQ weights, which have no CPU integer kernel)."""
        return _mode(self.mode).runs(self) if self.quantize else "float"


def _mode(name: str):
    """The registered mode (quantize/modes/); imported here, not above: the modes build on this module."""
    from .modes.base import get

    return get(name)


def _modes():
    from .modes.base import modes

    return modes()


FLOAT = LayerChoice(quantize=False)


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
        default = LayerChoice.from_dict(spec.get("default") or {}, f"{where}: default")
        resolved = dict.fromkeys(names, default)
        layers = spec.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise ConfigError(f"{where}: 'layers' must map layer names (or re:patterns) to options, got a "
                              f"{type(layers).__name__}")  # fmt: skip
        for key, raw in layers.items():
            pattern = name_pattern(key, f"{where}: layers")
            if layer_names is None:
                LayerChoice.from_dict(raw, f"{where}: layers.{key}", base=default)
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
                                "run `autoquant layers EXPERIMENT.yaml` to list layer names")  # fmt: skip
            for n in hits:
                resolved[n] = LayerChoice.from_dict(raw, f"{where}: layers.{key}", base=resolved[n])
        return cls(tuple(resolved.items()))

    def to_spec(self) -> dict[str, Any]:
        return {"format_version": PLAN_FORMAT_VERSION, "layers": {n: asdict(c) for n, c in self.choices}}

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
