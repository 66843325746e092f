"""Search space: which LayerChoice values each layer may take, from YAML; trial → plan; plan → params.

    choices: {quantize: [...], mode: [static, dynamic, int4], weight_granularity: [...],
              activation_algorithm: [...], weight_bits: [...], block_size: [...], accuracy_level: [...]}
    rules:   [{match: {op_type: Conv, depthwise: true, name: "re:..."}, choices: {...}}, ...]
    pinned:  {"layer name or re:pattern": {quantize: false, ...}}

Rules apply in order (later wins); pinned values are fixed and not searched. The dynamic and int4 modes
apply to MatMul/Gemm layers with 2-D weights only (quantize/modes): other layers take the static options.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import load_yaml
from ..errors import ConfigError
from ..graph.layers import GraphInfo, LayerInfo
from ..quantize.modes import allowed_modes
from ..quantize.plan import LayerChoice, QuantPlan, name_pattern

PARAMS = ("quantize", "mode", "weight_bits", "weight_granularity", "activation_algorithm", "block_size", "accuracy_level")
_MATCH_KEYS = ("op_type", "depthwise", "name")


@dataclass(frozen=True)
class LayerSpace:
    """The choices one layer may take, each encoded as one categorical value ("float",
    "per_channel:mse", "per_channel:minmax:w4"): one Optuna parameter per layer keeps the space
    static for the samplers and costs one storage write per layer and trial."""

    name: str
    options: tuple[str, ...]


def encode(choice: LayerChoice) -> str:
    if not choice.quantize:
        return "float"
    if choice.mode == "dynamic":
        return f"dynamic:{choice.weight_granularity}"
    if choice.mode == "int4":
        return f"int4:b{choice.block_size}" + (f":a{choice.accuracy_level}" if choice.accuracy_level != 4 else "")
    bits = f":w{choice.weight_bits}" if choice.weight_bits != 8 else ""
    return f"{choice.weight_granularity}:{choice.activation_algorithm}{bits}"


def decode(value: str) -> LayerChoice:
    if value == "float":
        return LayerChoice(quantize=False)
    head, *rest = value.split(":")
    if head == "dynamic":
        return LayerChoice.dynamic(rest[0])
    if head == "int4":
        return LayerChoice.int4(int(rest[0][1:]), int(rest[1][1:]) if len(rest) > 1 else 4)
    algorithm, *bits = rest
    return LayerChoice(True, head, algorithm, int(bits[0][1:]) if bits else 8)


def _options(allowed: dict[str, tuple], modes: tuple[str, ...]) -> tuple[str, ...]:
    options = []
    for q in allowed["quantize"]:
        if not q:
            options.append("float")
            continue
        for mode in (m for m in allowed["mode"] if m in modes):
            if mode == "dynamic":
                options += [encode(LayerChoice.dynamic(g)) for g in allowed["weight_granularity"]]
            elif mode == "int4":
                options += [encode(LayerChoice.int4(b, a)) for b in allowed["block_size"] for a in allowed["accuracy_level"]]
            else:
                for bits in allowed["weight_bits"]:
                    if bits == 4 and "per_channel" not in allowed["weight_granularity"]:
                        continue  # 4-bit Q/DQ weights exist only per channel
                    grans = ("per_channel",) if bits == 4 else allowed["weight_granularity"]
                    for g in grans:
                        options += [encode(LayerChoice(True, g, a, bits)) for a in allowed["activation_algorithm"]]
    return tuple(dict.fromkeys(options))


@dataclass(frozen=True)
class SearchSpace:
    layers: tuple[LayerSpace, ...]

    @classmethod
    def from_yaml(cls, path: Path, graph: GraphInfo) -> SearchSpace:
        raw = load_yaml(path)
        return cls.from_dict(raw, graph, where=Path(path).name)

    @classmethod
    def from_dict(cls, raw: Any, graph: GraphInfo, where: str = "search space") -> SearchSpace:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping with choices / rules / pinned")
        unknown = sorted(set(raw) - {"choices", "rules", "pinned"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: choices, rules, pinned")
        defaults = {**{p: (getattr(LayerChoice(), p),) for p in PARAMS}, "block_size": (32,), "accuracy_level": (4,)}
        base = _choices(raw.get("choices") or {}, f"{where}: choices", defaults)
        per_layer = {layer.name: dict(base) for layer in graph.layers}
        for i, rule in enumerate(raw.get("rules") or []):
            rwhere = f"{where}: rules[{i}]"
            if not isinstance(rule, Mapping) or set(rule) - {"match", "choices"} or "match" not in rule:
                raise ConfigError(f"{rwhere} must have 'match' and 'choices' only")
            hits = [layer for layer in graph.layers if _matches(layer, rule["match"], rwhere)]
            if not hits and "name" in rule["match"]:
                # a name pattern that matches nothing is likely a typo; a rule by op type or depthwise-ness
                # (the shipped spaces have them) simply does not apply to every model
                warnings.warn(f"{rwhere} matches no layer", stacklevel=2)
            for layer in hits:
                per_layer[layer.name] = _choices(rule.get("choices") or {}, rwhere, per_layer[layer.name])
        pinned = raw.get("pinned") or {}
        if not isinstance(pinned, Mapping):
            raise ConfigError(f"{where}: 'pinned' must map layer names (or re:patterns) to fixed options")
        for key, fixed in pinned.items():
            pwhere = f"{where}: pinned.{key}"
            hits = _select(graph, key, f"{where}: pinned")
            LayerChoice.from_dict(fixed, pwhere)  # validates keys and values
            fixed = {**({"mode": "static"} if fixed.get("quantize", True) and "mode" not in fixed else {}), **fixed}
            for name in hits:
                per_layer[name] = {**per_layer[name], **{k: (v,) for k, v in fixed.items()}}
        layers = []
        for layer in graph.layers:
            name = layer.name
            # a layer no mode can quantize (NaN weights) stays float whatever the space allows
            options = _options(per_layer[name], allowed_modes(layer)) if allowed_modes(layer) else ("float",)
            if not options:
                raise ConfigError(f"{where}: layer {name} ({layer.op_type}) has no valid choice left (4-bit Q/DQ weights "
                                  "need per_channel; modes dynamic and int4 need a MatMul/Gemm with 2-D weights)")  # fmt: skip
            layers.append(LayerSpace(name, options))
        return cls(tuple(layers))

    def mode_plan(self, mode: str) -> QuantPlan | None:
        """Every layer that may take `mode` in its first option of that mode, the others INT8 per channel
        (None if no layer may): `quantize_dynamic`'s plan for dynamic, the all-int4 one for int4."""
        firsts = {layer.name: next((c for c in map(decode, layer.options) if c.quantize and c.mode == mode), None)
                  for layer in self.layers}  # fmt: skip
        if not any(firsts.values()):
            return None
        return QuantPlan(tuple((n, c or LayerChoice()) for n, c in firsts.items()))

    def algorithms(self) -> set[str]:
        return {c.activation_algorithm for layer in self.layers for o in layer.options if o != "float"
                for c in [decode(o)] if c.mode == "static"}  # fmt: skip

    def size(self) -> int:
        return int(np.prod([len(layer.options) for layer in self.layers], dtype=float))

    def plan(self, suggest) -> QuantPlan:
        """Build a plan by asking `suggest(layer name, options)` (e.g. an Optuna trial's
        suggest_categorical) for every layer with more than one option."""
        return QuantPlan(tuple(
            (layer.name, decode(suggest(layer.name, list(layer.options)) if len(layer.options) > 1 else layer.options[0]))
            for layer in self.layers
        ))  # fmt: skip

    def params_for(self, plan: QuantPlan) -> dict[str, str]:
        """The trial parameters that reproduce `plan` (for enqueue_trial), projected into the space:
        a choice the space does not allow becomes the nearest allowed one (same float/INT8 decision
        and algorithm where possible)."""
        params = {}
        for layer in self.layers:
            if len(layer.options) < 2:
                continue
            want = plan[layer.name]
            value = encode(want)
            if value not in layer.options:
                same_q = [o for o in layer.options if (o == "float") == (not want.quantize)] or list(layer.options)
                same_mode = [o for o in same_q if o != "float" and decode(o).mode == want.mode] or same_q
                same_algo = [o for o in same_mode if o != "float" and decode(o).activation_algorithm == want.activation_algorithm]
                value = (same_algo or same_mode)[0]
            params[layer.name] = value
        return params


def _choices(raw: Any, where: str, base: dict[str, tuple]) -> dict[str, tuple]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must map option names to lists of values")
    out = dict(base)
    for key, values in raw.items():
        if key not in PARAMS:
            raise ConfigError(f"{where}: unknown option '{key}'; allowed: {', '.join(PARAMS)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of values")
        for v in values:
            LayerChoice.from_dict(_probe(key, v), f"{where}: {key}")
        out[key] = tuple(dict.fromkeys(values))
    return out


def _probe(key: str, value: Any) -> dict[str, Any]:
    """One option value as a complete choice, to validate it."""
    if key in ("block_size", "accuracy_level"):
        return {"mode": "int4", key: value}
    if key == "weight_bits":
        return {key: value, "weight_granularity": "per_channel"}
    return {key: value}


def _matches(layer: LayerInfo, match: Any, where: str) -> bool:
    if not isinstance(match, Mapping) or not match or set(match) - set(_MATCH_KEYS):
        raise ConfigError(f"{where}: 'match' takes {', '.join(_MATCH_KEYS)}")
    if "op_type" in match and layer.op_type != match["op_type"]:
        return False
    if "depthwise" in match and layer.depthwise != bool(match["depthwise"]):
        return False
    if "name" in match:
        return name_pattern(match["name"], where).fullmatch(layer.name) is not None
    return True


def _select(graph: GraphInfo, key: Any, where: str) -> list[str]:
    pattern = name_pattern(key, where)
    if key.startswith("re:"):
        hits = [n for n in graph.names if pattern.fullmatch(n)]
        if not hits:
            warnings.warn(f"{where}: pattern matches no layer", stacklevel=3)
        return hits
    if key not in graph.names:
        raise ConfigError(f"{where}: layer '{key}' does not exist; run `autoquant layers EXPERIMENT.yaml`")
    return [key]
