"""Bitops of a plan: Σ over layers of FLOPs × activation bits × weight bits, and its share of FP32."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..quantize.plan import QuantPlan


class Layers(Protocol):
    """What the bitops model needs: layers with a name and FLOPs, and the FLOPs of compute left float
    (a GraphInfo, or a Record)."""

    layers: Sequence[Any]
    unquantized_flops: int


def bitops(graph: Layers, plan: QuantPlan) -> int:
    """Σ over layers of FLOPs × activation bits × weight bits (FLOPs = 2 × MACs; float layers 32 × 32), plus
    the compute the engine never quantizes (attention MatMuls, recurrent cells) at 32 × 32."""
    quantizable = sum(layer.flops * a * w for layer in graph.layers for a, w in [plan[layer.name].cost_bits])
    return quantizable + graph.unquantized_flops * 32 * 32


def fp32_bitops(graph: Layers) -> int:
    return (sum(layer.flops for layer in graph.layers) + graph.unquantized_flops) * 32 * 32


def bitops_fraction(graph: Layers, plan: QuantPlan) -> float:
    return bitops(graph, plan) / fp32_bitops(graph)
