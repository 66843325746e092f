"""Cost model: bitops of a plan, and the costs a study can minimise next to accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any, Protocol

from ..quantize.plan import QuantPlan


class Cost(Enum):
    """The cost a study minimises next to accuracy: which measured attribute it is, how it is labelled
    and how it is plotted. Parsed from `search.objective` / `--objective` at the edge."""

    BITOPS = ("bitops", "bitops_fraction", "bitops (fraction of FP32)", True)
    LATENCY = ("latency", "latency_ratio", "latency (ratio to FP32)", False)
    SIZE = ("size", "size_bytes", "model size (bytes)", False)

    def __new__(cls, key: str, attribute: str, label: str, log_scale: bool):
        member = object.__new__(cls)
        member._value_ = key
        member.attribute, member.label, member.log_scale = attribute, label, log_scale
        return member

    def of(self, measured: Any) -> float:
        """This cost of a measured plan (anything with the attribute, e.g. a Measurement)."""
        return float(getattr(measured, self.attribute))

    @property
    def study_key(self) -> str:
        # Stored in a study's fingerprint. Latency used to be optimised in milliseconds; a study that did
        # so must not be resumed with ratios, so the ratio has a key of its own.
        return "latency-ratio" if self is Cost.LATENCY else self.value


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
