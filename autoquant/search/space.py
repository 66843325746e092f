"""Search space: which LayerChoices each layer may take, from YAML; trial → plan; plan → params (Optuna's
categorical values are the modes' encodings of the choices: only here, at the edge).

    choices: {quantize: [...], mode: [...], and per field of any mode's choice type, its allowed values:
              weight_granularity: [...], activation_algorithm: [...], weight_bits: [...], block_size: [...], …}
    rules:   [{match: {op_type: Conv, depthwise: true, name: "re:..."}, choices: {...}}, ...]
    pinned:  {"layer name or re:pattern": {quantize: false, ...}}

Rules apply in order (later wins); pinned values are fixed and not searched. Each mode applies to the layers it
says (quantize/modes/: e.g. MatMul/Gemm layers with 2-D weights only) and builds its choices from the values allowed
for its own fields.
"""

from __future__ import annotations

import importlib.resources
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SearchConfig, load_yaml
from ..errors import ConfigError
from ..graph.layers import GraphInfo, LayerInfo
from ..quantize import modes
from ..quantize.modes import decode, encode
from ..quantize.plan import FLOAT, LayerChoice, QuantPlan, name_pattern

DEFAULT_SPACE = "default.yaml"  # in the package autoquant.search_spaces (the repository's search_spaces/)
_MATCH_KEYS = ("op_type", "depthwise", "name")


@dataclass(frozen=True)
class LayerSpace:
    """The choices one layer may take. Optuna sees each as one categorical value (`values`: the mode's encoding,
    quantize/modes/): one parameter per layer keeps the space static for the samplers and costs one storage
    write per layer and trial."""

    name: str
    options: tuple[LayerChoice, ...]

    @property
    def values(self) -> list[str]:
        return [encode(c) for c in self.options]

    def nearest(self, want: LayerChoice) -> LayerChoice:
        """`want` if the layer is offered it, else the first of the offered choices most like it (_likeness)."""
        return want if want in self.options else max(self.options, key=lambda o: _likeness(o, want))

    @property
    def usual(self) -> LayerChoice:
        """The default choice (INT8 per channel) where the layer may take it, else its first quantized option, else
        float."""
        default = LayerChoice.default()
        return default if default in self.options else next((c for c in self.options if c.quantize), FLOAT)


def _options(allowed: dict[str, tuple], layer: LayerInfo) -> tuple[LayerChoice, ...]:
    options = []
    for q in allowed["quantize"]:
        if not q:
            options.append(FLOAT)
            continue
        for mode in (modes.get(m) for m in allowed["mode"] if m in modes.allowed_modes(layer)):
            options += [f for c in mode.choices(allowed) if (f := mode.fitted(layer, c)) is not None]
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
        defaults = {"quantize": (True,), "mode": (LayerChoice.default().mode,)}
        for mode in modes.modes():  # each mode's fields take its defaults where the space names none
            for name, value in mode.choice().fields().items():
                defaults[name] = tuple(dict.fromkeys((*defaults.get(name, ()), value)))
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
            LayerChoice.parse(fixed, pwhere)  # validates keys and values
            fixed = {**({"mode": LayerChoice.default().mode} if fixed.get("quantize", True) and "mode" not in fixed else {}),
                     **fixed}
            for name in hits:
                per_layer[name] = {**per_layer[name], **{k: (v,) for k, v in fixed.items()}}
        layers = []
        for layer in graph.layers:
            name = layer.name
            # a layer no mode can quantize (NaN weights) stays float whatever the space allows
            options = _options(per_layer[name], layer) if modes.allowed_modes(layer) else (FLOAT,)
            if not options:
                raise ConfigError(f"{where}: layer {name} ({layer.op_type}) has no valid choice left (4-bit Q/DQ weights "
                                  "need per_channel; modes dynamic and int4 need a MatMul/Gemm with 2-D weights)")
            layers.append(LayerSpace(name, options))
        return cls(tuple(layers))

    def mode_plan(self, mode: str) -> QuantPlan | None:
        """Every layer that may take `mode` in its first option of that mode, the others INT8 per channel
        (None if no layer may): `quantize_dynamic`'s plan for dynamic, the all-int4 one for int4."""
        firsts = {layer.name: next((c for c in layer.options if c.quantize and c.mode == mode), None)
                  for layer in self.layers}
        if not any(firsts.values()):
            return None
        return QuantPlan(tuple((s.name, firsts[s.name] or s.usual) for s in self.layers))

    def algorithms(self) -> set[str]:
        """The activation range algorithms the choices the space offers read calibration statistics with."""
        return {a for layer in self.layers for c in layer.options if c.quantize
                for a in modes.get(c.mode).range_algorithms(c)}

    def offered(self, mode: str) -> list[LayerChoice]:
        """The choices of `mode` the space offers some layer, in the order of the first layers that have them."""
        return list(dict.fromkeys(c for layer in self.layers for c in layer.options if c.quantize and c.mode == mode))

    def hand_made(self) -> list[tuple[str, QuantPlan]]:
        """The uniform plans a user would try by hand (Mode.hand_made), each mode's: every layer takes the choice, or the
        nearest it is offered."""
        plans = []
        for mode in modes.modes():
            for label, choice in mode.hand_made(self.offered(mode.name)):
                plans.append((label, QuantPlan(tuple((s.name, s.nearest(choice)) for s in self.layers))))
        return plans

    def size(self) -> int:
        return int(np.prod([len(layer.options) for layer in self.layers], dtype=float))

    def plan(self, suggest) -> QuantPlan:
        """Build a plan by asking `suggest(layer name, values)` (e.g. an Optuna trial's suggest_categorical) for
        every layer with more than one option; the values are the options' encodings."""
        return QuantPlan(tuple(
            (layer.name, decode(suggest(layer.name, layer.values)) if len(layer.options) > 1 else layer.options[0])
            for layer in self.layers
        ))

    def params_for(self, plan: QuantPlan) -> dict[str, str]:
        """The trial parameters that reproduce `plan` (for enqueue_trial), projected into the space:
        a choice the space does not allow becomes the nearest allowed one (same float/INT8 decision
        and algorithm where possible)."""
        params = {}
        for layer in self.layers:
            if len(layer.options) < 2:
                continue
            params[layer.name] = encode(layer.nearest(plan[layer.name]))
        return params


def _likeness(option: LayerChoice, want: LayerChoice) -> tuple:
    """How near `option` is to `want`: the same float/quantized decision, then the same mode, then shared fields."""
    fields = want.fields().items()
    return option.quantize == want.quantize, option.mode == want.mode, sum(f in fields for f in option.fields().items())


def space_path(cfg: SearchConfig) -> Path:
    """The experiment's search space file; a bare name (`transformer`) names one shipped with autoquant."""
    shipped = Path(str(importlib.resources.files("autoquant.search_spaces")))
    path = cfg.space or shipped / DEFAULT_SPACE
    if not path.is_file() and path.suffix in ("", ".yaml") and (shipped / f"{path.stem}.yaml").is_file():
        path = shipped / f"{path.stem}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
        raise ConfigError(f"search space {path} not found: set search.space to a YAML file or to one of {names}")
    return path


def params() -> tuple[str, ...]:
    """The options a space may list: quantize, mode, and every field of a registered mode's choice type."""
    return tuple(dict.fromkeys(["quantize", "mode", *(f for m in modes.modes() for f in m.choice().fields())]))


def _choices(raw: Any, where: str, base: dict[str, tuple]) -> dict[str, tuple]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must map option names to lists of values")
    out = dict(base)
    for key, values in raw.items():
        if key not in params():
            raise ConfigError(f"{where}: unknown option '{key}'; allowed: {', '.join(params())}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of values")
        for v in values:
            _check_value(key, v, f"{where}: {key}")
        out[key] = tuple(dict.fromkeys(values))
    return out


def _check_value(key: str, value: Any, where: str) -> None:
    """One option value must be valid in some mode (block_size in int4, weight_bits 4 in static, …)."""
    errors = []
    for mode in modes.modes():
        try:
            LayerChoice.parse({"mode": mode.name, key: value}, where)
            return
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0]


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
