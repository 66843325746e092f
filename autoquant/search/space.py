"""Search space: which LayerChoice values each layer may take, from YAML; trial → plan; plan → params.

    choices: {quantize: [...], weight_granularity: [...], activation_algorithm: [...], weight_bits: [...]}
    rules:   [{match: {op_type: Conv, depthwise: true, name: "re:..."}, choices: {...}}, ...]
    pinned:  {"layer name or re:pattern": {quantize: false, ...}}

Rules apply in order (later wins); pinned values are fixed and not searched.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import load_yaml
from ..errors import ConfigError
from ..graph.layers import GraphInfo, LayerInfo
from ..quantize.plan import LayerChoice, QuantPlan

# Order matters: 4-bit weights force per-channel, so bits are asked before granularity.
PARAMS = ("quantize", "weight_bits", "weight_granularity", "activation_algorithm")
_MATCH_KEYS = ("op_type", "depthwise", "name")


@dataclass(frozen=True)
class LayerSpace:
    """The allowed values of each LayerChoice field for one layer (one value = fixed)."""

    name: str
    options: tuple[tuple[str, tuple], ...]

    def values(self, param: str) -> tuple:
        return dict(self.options)[param]


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
        base = _choices(raw.get("choices") or {}, f"{where}: choices", {p: (getattr(LayerChoice(), p),) for p in PARAMS})
        per_layer = {layer.name: dict(base) for layer in graph.layers}
        for i, rule in enumerate(raw.get("rules") or []):
            rwhere = f"{where}: rules[{i}]"
            if not isinstance(rule, Mapping) or set(rule) - {"match", "choices"} or "match" not in rule:
                raise ConfigError(f"{rwhere} must have 'match' and 'choices' only")
            hits = [layer for layer in graph.layers if _matches(layer, rule["match"], rwhere)]
            if not hits:
                warnings.warn(f"{rwhere} matches no layer", stacklevel=2)
            for layer in hits:
                per_layer[layer.name] = _choices(rule.get("choices") or {}, rwhere, per_layer[layer.name])
        for key, fixed in (raw.get("pinned") or {}).items():
            pwhere = f"{where}: pinned.{key}"
            hits = _select(graph, key, pwhere)
            LayerChoice.from_dict(fixed, pwhere)  # validates keys and values
            for name in hits:
                per_layer[name] = {**per_layer[name], **{k: (v,) for k, v in fixed.items()}}
        return cls(tuple(LayerSpace(n, tuple(per_layer[n].items())) for n in graph.names))

    def size(self) -> int:
        total = 1
        for layer in self.layers:
            q = layer.values("quantize")
            inner = 1
            for p in PARAMS:
                if p != "quantize":
                    inner *= len(layer.values(p))
            total *= sum(inner if v else 1 for v in q)
        return total

    def plan(self, suggest) -> QuantPlan:
        """Build a plan by asking `suggest(name, choices)` (e.g. an Optuna trial) for every free value.
        Options of a float layer are not asked: they would not change the model."""
        choices = []
        for layer in self.layers:
            values = {}
            for p in PARAMS:
                opts = layer.values(p)
                if (p != "quantize" and not values["quantize"]) or (p == "weight_granularity" and values["weight_bits"] == 4):
                    values[p] = "per_channel" if p == "weight_granularity" else opts[0]
                else:
                    values[p] = suggest(f"{layer.name}:{p}", list(opts)) if len(opts) > 1 else opts[0]
            choices.append((layer.name, LayerChoice(**values)))
        return QuantPlan(tuple(choices))

    def params_for(self, plan: QuantPlan) -> dict[str, Any]:
        """The trial parameters that reproduce `plan` (for enqueue_trial), projected into the space:
        a value the space does not allow becomes the layer's first allowed value."""
        params = {}
        for layer in self.layers:
            choice = asdict(plan[layer.name])
            for p in PARAMS:
                opts = layer.values(p)
                if len(opts) < 2 or (p != "quantize" and not choice["quantize"]):
                    continue
                if p == "weight_granularity" and params.get(f"{layer.name}:weight_bits", choice["weight_bits"]) == 4:
                    continue
                params[f"{layer.name}:{p}"] = choice[p] if choice[p] in opts else opts[0]
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
            LayerChoice.from_dict({key: v, **({"weight_granularity": "per_channel"} if key == "weight_bits" else {})},
                                  f"{where}: {key}")  # fmt: skip
        out[key] = tuple(dict.fromkeys(values))
    return out


def _matches(layer: LayerInfo, match: Any, where: str) -> bool:
    if not isinstance(match, Mapping) or not match or set(match) - set(_MATCH_KEYS):
        raise ConfigError(f"{where}: 'match' takes {', '.join(_MATCH_KEYS)}")
    if "op_type" in match and layer.op_type != match["op_type"]:
        return False
    if "depthwise" in match and layer.depthwise != bool(match["depthwise"]):
        return False
    if "name" in match:
        pattern = match["name"][3:] if str(match["name"]).startswith("re:") else re.escape(str(match["name"]))
        return re.fullmatch(pattern, layer.name) is not None
    return True


def _select(graph: GraphInfo, key: str, where: str) -> list[str]:
    if key.startswith("re:"):
        hits = [n for n in graph.names if re.fullmatch(key[3:], n)]
        if not hits:
            warnings.warn(f"{where}: pattern matches no layer", stacklevel=3)
        return hits
    if key not in graph.names:
        raise ConfigError(f"{where}: layer '{key}' does not exist; run `autoquant layers EXPERIMENT.yaml`")
    return [key]
