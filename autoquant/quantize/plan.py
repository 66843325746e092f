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
# How a quantized layer runs (quantize/modes/ builds each): `static` INT8 through Q/DQ with calibrated
# activation scales; `dynamic` INT8 with activations quantized at run time from their own min/max
# (MatMulInteger); `int4` blockwise 4-bit weights, activations left float (MatMulNBits).
MODES = ("static", "dynamic", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits' compute precision: 4 multiplies in int8 (its fast CPU kernels), 1 in float32.
ACCURACY_LEVELS = (4, 1)
# What each mode fixes of the other fields, so `{mode: int4}` needs no more keys than that.
MODE_FIELDS = {
    "static": {"block_size": 0, "accuracy_level": 0},
    "dynamic": {"activation_algorithm": "minmax", "weight_bits": 8, "block_size": 0, "accuracy_level": 0},
    "int4": {"weight_granularity": "per_block", "activation_algorithm": "minmax", "weight_bits": 4,
             "block_size": 32, "accuracy_level": 4},
}  # fmt: skip
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
    mode: str = "static"
    block_size: int = 0  # int4: weights share a scale per block of this many input channels
    accuracy_level: int = 0  # int4: MatMulNBits compute precision (ACCURACY_LEVELS)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode '{self.mode}' is unknown: use one of {', '.join(MODES)}")
        if self.quantize and self.mode != "static":
            self._check_mode()
            return
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
        if self.quantize and (self.block_size or self.accuracy_level):
            raise ConfigError("block_size and accuracy_level belong to mode int4")

    def _check_mode(self):
        fixed = {k: v for k, v in MODE_FIELDS[self.mode].items() if k not in ("block_size", "accuracy_level")}
        if self.mode == "dynamic":
            if self.weight_granularity not in GRANULARITIES:
                raise ConfigError(f"mode dynamic takes weight_granularity {' or '.join(GRANULARITIES)}")
        elif self.block_size not in BLOCK_SIZES or self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(f"mode int4 needs block_size in {list(BLOCK_SIZES)} and accuracy_level in "
                              f"{list(ACCURACY_LEVELS)}, got {self.block_size} / {self.accuracy_level}")  # fmt: skip
        for key, value in fixed.items():
            if getattr(self, key) != value:
                raise ConfigError(f"mode {self.mode} fixes {key} to {value!r} (got {getattr(self, key)!r}): "
                                  "leave it out")  # fmt: skip
        if self.activation_bits != 8:
            raise ConfigError(f"activation_bits {self.activation_bits} is not supported: use 8")
        if self.mode == "dynamic" and (self.block_size or self.accuracy_level):
            raise ConfigError("block_size and accuracy_level belong to mode int4")

    @classmethod
    def dynamic(cls, granularity: str = "per_channel") -> LayerChoice:
        return cls(True, granularity, mode="dynamic")

    @classmethod
    def int4(cls, block_size: int = 32, accuracy_level: int = 4) -> LayerChoice:
        return cls(True, "per_block", "minmax", 4, mode="int4", block_size=block_size, accuracy_level=accuracy_level)

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
        if merged["mode"] in MODE_FIELDS:  # fields the mode fixes follow it unless given here
            merged.update({k: v for k, v in MODE_FIELDS[merged["mode"]].items() if k not in raw})
        for key, typ in (("quantize", bool), ("weight_bits", int), ("activation_bits", int), ("block_size", int),
                         ("accuracy_level", int)):
            if not isinstance(merged[key], typ) or (typ is int and isinstance(merged[key], bool)):
                raise ConfigError(f"{where}: '{key}' must be {typ.__name__}, got {merged[key]!r}")
        if not merged["quantize"]:
            return cls(quantize=False)  # float is float, whatever else the base had set
        return cls(**merged)

    @property
    def cost_bits(self) -> tuple[int, int]:
        """(activation bits, weight bits) for the bitops model; float layers count 32 × 32. int4 multiplies
        in int8 at accuracy level 4 (8 × 4) and in float at level 1 (32 × 4)."""
        if not self.quantize:
            return 32, 32
        if self.mode == "int4":
            return (8 if self.accuracy_level == 4 else 32), 4
        return self.activation_bits, self.weight_bits

    @property
    def label(self) -> str:
        """Short name of how the layer runs: float, int8 / int4-qdq (static), dynamic, int4 (MatMulNBits)."""
        if not self.quantize:
            return "float"
        if self.mode == "static":
            return "int8" if self.weight_bits == 8 else "int4-qdq"
        return self.mode

    @property
    def runs(self) -> str:
        """The kernel kind onnxruntime is meant to run: "integer", "float", or "dequantized" (float on
        dequantized weights: 4-bit Q/DQ weights, which have no CPU integer kernel)."""
        if not self.quantize:
            return "float"
        return "dequantized" if self.mode == "static" and self.weight_bits == 4 else "integer"


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
