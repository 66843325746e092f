"""The layers that decide a plan, for the choices whose per-layer data is costly (Mode.deferred: adaptive rounding, a
fit of seconds per layer and weight grid). Fitting them for every layer took 193 s of a 602 s study on
EfficientNet-Lite1; most of those fits priced layers no plan near the limit would change. What decides the fastest
plan within a limit are the layers the error model keeps float to meet it: each costs the latency a float layer
pays, because its quantized choices add too much error. A choice with less error is worth most there, so those
layers are fitted first, ranked by the error their least-error quantized choice adds times the latency keeping them
float costs."""

from __future__ import annotations

from ...quantize import modes
from ...quantize.plan import FLOAT, LayerChoice, QuantPlan
from ..space import LayerSpace
from .error_model import ErrorModel


def deciding_layers(model: ErrorModel, plan: QuantPlan, count: int) -> list[str]:
    """Up to `count` layers that have a deferred choice to price: those `plan` keeps float first, then the others;
    each group ranked by its least-error priced quantized choice's error times its float price over that choice's
    (model.cost: the latency table's, or bitops)."""

    def score(name: str) -> float:
        layer = next(s for s in model.space.layers if s.name == name)
        priced = [c for c in layer.options if c.quantize and model.err[name, c] < float("inf")]
        if not priced:
            return 0.0
        best = min(priced, key=lambda c: model.err[name, c])
        return model.err[name, best] * max(0.0, model.cost.layer(name, FLOAT) - model.cost.layer(name, best))

    names = [s.name for s in model.space.layers if deferred_options(model, s.name)]
    ranked = sorted(names, key=lambda n: (plan[n].quantize, -score(n)))
    return ranked[:count]


def deferred_options(model: ErrorModel, name: str) -> list[LayerChoice]:
    """The deferred choices the space offers layer `name` that share one costly fit (Mode.weight_key: the same
    emulated weights), the one of its least-error priced choice: adaptive rounding on that choice's weight grid."""
    layer = next(s for s in model.space.layers if s.name == name)
    deferred = [c for c in layer.options if c.quantize and modes.get(c.mode).deferred(c)]
    priced = [c for c in layer.options if c.quantize and model.err[name, c] < float("inf")]
    if not deferred or not priced:
        return deferred
    like = LayerSpace(name, tuple(deferred)).nearest(min(priced, key=lambda c: model.err[name, c]))
    key = modes.get(like.mode).weight_key(like)
    return [c for c in deferred if c.mode == like.mode and modes.get(c.mode).weight_key(c) == key]
