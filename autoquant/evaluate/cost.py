"""Bitops of a plan: Σ over layers of FLOPs × activation bits × weight bits, and its share of FP32."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..quantize.plan import LayerChoice, QuantPlan


class Layers(Protocol):
    """What the bitops model needs: layers with a name and FLOPs, and the FLOPs of compute left float
    (a GraphInfo, or a Record)."""

    layers: Sequence[Any]
    unquantized_flops: int


def layer_bitops(layer: Any, choice: LayerChoice) -> int:
    """One layer's FLOPs × activation bits × weight bits (FLOPs = 2 × MACs; float layers 32 × 32)."""
    a, w = choice.cost_bits
    return layer.flops * a * w


def bitops(graph: Layers, plan: QuantPlan) -> int:
    """Σ over layers of layer_bitops, plus the compute the engine never quantizes (attention MatMuls, recurrent
    cells) at 32 × 32."""
    return sum(layer_bitops(layer, plan[layer.name]) for layer in graph.layers) + graph.unquantized_flops * 32 * 32


def fp32_bitops(graph: Layers) -> int:
    return (sum(layer.flops for layer in graph.layers) + graph.unquantized_flops) * 32 * 32


def bitops_fraction(graph: Layers, plan: QuantPlan) -> float:
    return bitops(graph, plan) / fp32_bitops(graph)
