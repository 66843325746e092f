"""Cost model: bitops of a plan and the size of a model file."""

from __future__ import annotations

from ..graph.layers import GraphInfo
from ..quantize.plan import QuantPlan


def bitops(graph: GraphInfo, plan: QuantPlan) -> int:
    """Σ over layers of FLOPs × activation bits × weight bits (FLOPs = 2 × MACs; float layers 32 × 32)."""
    total = 0
    for layer in graph.layers:
        a, w = plan[layer.name].cost_bits
        total += layer.flops * a * w
    return total


def fp32_bitops(graph: GraphInfo) -> int:
    return graph.total_flops * 32 * 32


def bitops_fraction(graph: GraphInfo, plan: QuantPlan) -> float:
    return bitops(graph, plan) / fp32_bitops(graph)
