"""What a quantization mode is, and the registry the rest of autoquant looks modes up in.

A mode is one object that knows everything mode-specific: its choice type (a frozen dataclass of its own fields, in
the mode's module), which layers it applies to, how the search space encodes its choices for Optuna, how the
per-layer error table emulates it, how it is built into a model, how its parameters are read back into the record
and checked there, and how fine-tuning mirrors it. Plans, spaces, the error and latency tables, the builder, the
record and fine-tuning ask the registry; a new mode is one module in this package that registers an instance
(torchao's `register_quantize_module_handler` shape: the config names a handler, the callers only look it up).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ...errors import ConfigError, PlanError
from ..registry import get, modes, names

if TYPE_CHECKING:
    from ...graph.layers import GraphInfo, LayerInfo
    from ..plan import LayerChoice, QuantPlan
    from ..recovery import Recovery
    from ..scales import ActivationParams


class BuildCache:
    """What modes keep across builds of one model, each under its own name (the static mode: every weight's
    quantization parameters and quantized initializers). Made from the FP32 model every plan is built from."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self._kept: dict[str, Any] = {}

    def get(self, name: str, make: Callable[[onnx.ModelProto], Any]) -> Any:
        if name not in self._kept:
            self._kept[name] = make(self.model)
        return self._kept[name]


@dataclass(frozen=True)
class BuildContext:
    """What a mode's builder may need besides the model and the plan."""

    graph: GraphInfo
    activations: dict[str, ActivationParams]  # calibrated parameters of the quantized activation tensors
    activation_type: str  # uint8 | int8
    weight_range: str  # full | reduced (quantize/weight_range.py)
    cache: BuildCache  # kept across builds of one model
    recovery: Recovery | None = None  # a study's per-layer fitted data (quantize/recovery/)
    recorded: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # or a record's, by layer (Mode.record_extra)


@dataclass(frozen=True)
class EmulationContext:
    """What emulating a layer needs: the calibrated parameters of a tensor under a range algorithm, the weight grid,
    and the per-layer data of recovering choices (quantize/recovery/)."""

    activation: Callable[[str, str], ActivationParams]  # (tensor, algorithm) → parameters
    activation_type: str
    weight_range: str
    recovery: Recovery | None = None


@dataclass(frozen=True)
class Recognized:
    """A layer of a built model as its file states it (what `autoquant inspect` compares with a record)."""

    op_type: str  # the layer's op (the node's, or MatMul for a node a runtime quantizer wrote in its place)
    weight: str  # the initializer holding its weights (the quantized one when they are quantized)
    bits: int
    runs: str  # the kernel kind the file asks for: "integer" or "dequantized"
    label: str  # Mode.label of the choice that builds it


@dataclass(frozen=True)
class RecordedWeights:
    """A quantized layer's weight parameters as the built model holds them (the record's weight entry)."""

    bits: int
    granularity: str  # per_tensor, per_channel or per_block
    scales: list[float]
    zero_points: list[int]
    block_size: int = 0


@dataclass(frozen=True)
class RecordedActivation:
    """A calibrated layer's input parameters as the built model holds them (the record's data entry)."""

    bits: int
    algorithm: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Mirrored:
    """How fine-tuning (finetune/mirror.py) reproduces a layer of this mode in its torch copy of the model."""

    choice: LayerChoice  # the choice the fine-tuned weights are built with (recovery fitted on the old ones dropped)
    weight_granularity: str  # the weights' grid while training: as the builder will compute it from them
    weight_bits: int
    bias_on_grid: bool  # the bias is quantized to int32 on (input scale × weight scale) by the built kernel
    runtime_input: bool  # the input is quantized from each batch's own range (DynamicQuantizeLinear), on its edge


class Mode(ABC):
    """One way a quantized layer runs. Subclasses set the class attributes and implement the abstract methods."""

    choice: type[LayerChoice]  # the mode's choice type; its `mode` class attribute is the mode's name
    scope: str  # the layers it applies to, in words (for messages)
    built_by: str  # what builds it, in words (docs/configuration.md's table of modes is generated from these)
    runs_as: str  # the kernels onnxruntime runs for it, in words
    stores: str  # what its weights take on disk, in words
    order: int  # build order: lower first; the lowest is the default mode
    # Fields of the earlier flat choice format that this mode fixed: accepted at that value (stored studies, plans).
    fixed: Mapping[str, Any] = MappingProxyType({})
    calibrated: bool = False  # its activation scales come from calibration (the record's `data` entry)
    kernels: frozenset[str] = frozenset()  # op types its builder writes in a layer's place (named after it)
    weight_zero_points: tuple[int, int] = (0, 0)  # the weight zero points its builder can write (symmetric: only 0)
    # The kind of model ("convolutional" or "transformer") whose first, all-quantized plan takes this mode
    # (onnxruntime's recipes: static for CNNs, dynamic for transformers); "" for none.
    recipe: str = ""

    def recipe_choice(self) -> LayerChoice:
        """The choice every layer takes in the first plan of a model of this mode's `recipe` (where the space offers
        it; the nearest it offers where not): the mode's defaults."""
        return self.choice()

    @property
    def name(self) -> str:
        return self.choice.mode

    # -- which layers, which choices -----------------------------------------------------------------------
    @abstractmethod
    def applies_to(self, layer: LayerInfo) -> bool: ...

    def fits(self, layer: LayerInfo, choice: LayerChoice) -> bool:
        """Whether `choice` (one of this mode's) can be built for `layer` (applies_to said the mode can)."""
        return True

    def misfit(self, layer: LayerInfo, choice: LayerChoice) -> str:
        """Why `choice` does not fit `layer` (fits said it does not), and what to set instead."""
        return f"layer {layer.name} cannot take this {self.name} choice"

    def fitted(self, layer: LayerInfo, choice: LayerChoice) -> LayerChoice | None:
        """What a search space offers `layer` for `choice`: the choice where it fits, else the nearest of this mode that
        does (none: the layer is not offered it)."""
        return choice if self.fits(layer, choice) else None

    @abstractmethod
    def cost_bits(self, choice: LayerChoice) -> tuple[int, int]:
        """(activation bits, weight bits) of its multiplies, for the bitops model."""

    def label(self, choice: LayerChoice) -> str:
        """How `autoquant inspect` names a layer built this way (a file's Q/DQ must give back the same)."""
        return self.name

    def runs(self, choice: LayerChoice) -> str:
        """The kernel kind onnxruntime is meant to run: "integer", or "dequantized" (float on dequantized weights)."""
        return "integer"

    # -- the search space ----------------------------------------------------------------------------------
    @abstractmethod
    def choices(self, allowed: Mapping[str, tuple]) -> list[LayerChoice]:
        """The choices of this mode a space allows, from its allowed values per field, in a stable order."""

    @abstractmethod
    def encode(self, choice: LayerChoice) -> str:
        """The choice as one Optuna categorical value. Stored in studies: never change a mode's encoding."""

    @abstractmethod
    def decode(self, value: str) -> LayerChoice | None:
        """The choice an encoded value names, or None if the value is not this mode's."""

    def hand_made(self, offered: list[LayerChoice]) -> list[tuple[str, LayerChoice]]:
        """The uniform plans of this mode a user would try by hand, as (label, the choice every layer that is offered
        it takes), from the choices of this mode a space offers: by default, the first of them."""
        return [(f"all-{self.name}", offered[0])] if offered else []

    def range_algorithms(self, choice: LayerChoice) -> set[str]:
        """The activation range algorithms a choice reads calibration statistics with (none: no calibration)."""
        return set()

    def variant_key(self, choice: LayerChoice) -> tuple | None:
        """What of a choice can change without changing its kernels (so its speed): a rung that misses the limit by
        noise tries its plan with another value of it (search/propose/ladder.py). None: nothing can."""
        return None

    def with_variant(self, choice: LayerChoice, key: tuple) -> LayerChoice | None:
        """`choice` with the variant `key` (another choice's variant_key), or None where it cannot take it."""
        return None

    # -- the per-layer error table -------------------------------------------------------------------------
    def deferred(self, choice: LayerChoice) -> bool:
        """Whether pricing `choice` needs per-layer data that is costly to make (a fit per layer): the error table
        then prices it only for the layers a study names (search/estimate/deciding.py), not for every layer."""
        return False

    def weight_key(self, choice: LayerChoice) -> tuple:
        """What the emulated weights depend on: choices with one key share one emulation."""
        return (self.name, *choice.fields().values())

    @abstractmethod
    def emulate_weight(self, w: np.ndarray, layer: LayerInfo, choice: LayerChoice, ctx: EmulationContext) -> np.ndarray:
        """The layer's weights as the built model computes with them."""

    def input_key(self, choice: LayerChoice) -> tuple:
        """What the emulated input depends on."""
        return (self.name,)

    @abstractmethod
    def emulate_input(self, x: np.ndarray, layer: LayerInfo, choice: LayerChoice, ctx: EmulationContext) -> np.ndarray:
        """The layer's input as the built model's kernel sees it."""

    def output_key(self, choice: LayerChoice) -> tuple:
        """What emulate_output's change depends on beyond the emulated weights and input (none: no change)."""
        return ()

    def emulate_output(self, y: np.ndarray, layer: LayerInfo, choice: LayerChoice, ctx: EmulationContext) -> np.ndarray:
        """The layer's output as the built model computes it, from the output of its emulated weights and input."""
        return y

    # -- building and recording ----------------------------------------------------------------------------
    @abstractmethod
    def build(self, model: onnx.ModelProto, plan: QuantPlan, ctx: BuildContext) -> onnx.ModelProto:
        """`model` with the plan's layers in this mode built; other layers untouched."""

    def activation_tensors(self, model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan) -> dict[str, str]:
        """The activation tensors this mode's layers of `plan` quantize with calibrated scales, and the range
        algorithm of each (none for modes that quantize at run time)."""
        return {}

    @abstractmethod
    def recorded_weights(self, qmodel: onnx.ModelProto, node: onnx.NodeProto, choice: LayerChoice) -> RecordedWeights:
        """The layer's weight parameters in the built model (the node its builder wrote for it)."""

    def recorded_activation(self, qmodel: onnx.ModelProto, node: onnx.NodeProto,
                            choice: LayerChoice) -> RecordedActivation | None:
        """A calibrated layer's input parameters in the built model (None for a mode without calibration)."""
        return None

    def record_extra(self, layer: LayerInfo, choice: LayerChoice, recovery: Recovery | None) -> dict[str, Any]:
        """What else a record must hold of a layer built this way to rebuild it without data (BuildContext.recorded)."""
        return {}

    def check_extra(self, extra: Mapping[str, Any], layer: LayerInfo, choice: LayerChoice, where: str) -> None:
        """Raise PlanError naming the entry when a record's `extra` for the layer (record_extra's) does not fit it."""
        if extra:
            raise PlanError(f"{where}: mode {self.name} records nothing besides its weights, got {', '.join(extra)}")

    @abstractmethod
    def from_record(self, bits: int, granularity: str, block_size: int, algorithm: str, accuracy_level: int) -> LayerChoice:
        """The choice a record of format 5 or earlier describes (their layer entries held these flat fields)."""

    @abstractmethod
    def recognize(self, node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto],
                  producers: Mapping[str, onnx.NodeProto]) -> Recognized | None:
        """The layer `node` computes if this mode's builder wrote it (a file read back), else None."""

    # -- fine-tuning ---------------------------------------------------------------------------------------
    def mirrored(self, choice: LayerChoice) -> Mirrored | None:
        """How fine-tuning reproduces this choice, or None when it cannot (the plan is then not fine-tuned)."""
        return None


def decode(value: str) -> LayerChoice:
    """The choice an Optuna categorical value (Mode.encode, or "float") names."""
    from ..plan import FLOAT

    if value == "float":
        return FLOAT
    for mode in modes():
        choice = mode.decode(value)
        if choice is not None:
            return choice
    raise ConfigError(f"'{value}' names no choice of any mode ({', '.join(names())})")


def encode(choice: LayerChoice) -> str:
    return get(choice.mode).encode(choice) if choice.quantize else "float"


def allowed_modes(layer: LayerInfo) -> tuple[str, ...]:
    """The modes a layer can be quantized in (none: it can only stay float, e.g. NaN weights)."""
    if not layer.finite:
        return ()
    return tuple(m.name for m in modes() if m.applies_to(layer))


def recognize(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto],
              producers: Mapping[str, onnx.NodeProto]) -> Recognized | None:
    """The quantized layer `node` computes, as the mode that built it reads it back (None: not a quantized layer).
    The modes built last are asked first: their patterns contain the earlier ones' (a runtime quantizer's node
    reads a weight a static Q/DQ pair could also have made)."""
    return next((r for m in reversed(modes()) if (r := m.recognize(node, inits, producers)) is not None), None)
