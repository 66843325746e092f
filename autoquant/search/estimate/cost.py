"""What a plan costs, without building it, as a share of the all-float model: one interface (PlanCost) with its
two formulas — bitops (evaluate/cost.py: FLOPs × activation bits × weight bits, the one formula every bitops
figure uses) and latency (the per-layer latency table: a layer's kernels, plus the transitions a float layer pays
next to quantized ones)."""

from __future__ import annotations

from typing import Protocol

from ...evaluate.cost import bitops_fraction, fp32_bitops, layer_bitops
from ...graph.layers import GraphInfo
from ...quantize.plan import LayerChoice, QuantPlan
from .latency_table import LatencyTable


class PlanCost(Protocol):
    def layer(self, name: str, choice: LayerChoice) -> float:
        """One layer's own share in that choice (for a float layer: without the transitions around it)."""

    def plan(self, plan: QuantPlan) -> float:
        """The whole plan's share."""


class BitopsCost:
    """Bitops: a layer's share is its own, whatever its neighbours do."""

    def __init__(self, graph: GraphInfo):
        self.graph = graph
        self._layers = {layer.name: layer for layer in graph.layers}
        self._fp32 = fp32_bitops(graph)

    def layer(self, name: str, choice: LayerChoice) -> float:
        return layer_bitops(self._layers[name], choice) / self._fp32

    def plan(self, plan: QuantPlan) -> float:
        return bitops_fraction(self.graph, plan)


class LatencyCost:
    """Milliseconds from the latency table; a layer the table has no figure for is priced by its bitops."""

    def __init__(self, table: LatencyTable, graph: GraphInfo):
        self.table, self.bitops = table, BitopsCost(graph)

    def layer(self, name: str, choice: LayerChoice) -> float:
        return self.table.share(name, choice, fallback=self.bitops.layer(name, choice))

    def plan(self, plan: QuantPlan) -> float:
        return self.table.predict(plan) / self.table.all_float_ms
