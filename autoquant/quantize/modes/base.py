"""What a quantization mode is, and the registry the rest of autoquant looks modes up in.

A mode (`LayerChoice.mode`) is one object that knows everything mode-specific: which layers it applies to, which
choice fields it fixes, how the search space encodes its choices for Optuna, how the per-layer error table
emulates it, which column of the latency table it is, how it is built into a model, and how its parameters are
read back into the record. Plans, spaces, the error table, the latency table, the builder, the record and the
executed-kernel check ask the registry; a new mode is one module in this package that registers an instance
(torchao's `register_quantize_module_handler` shape: the config names a handler, the callers only look it up).
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...graph.layers import GraphInfo, LayerInfo
    from ..plan import LayerChoice, QuantPlan
    from ..recovery import Recovery
    from ..scales import ActivationParams
    from .static import WeightParams


@dataclass(frozen=True)
class BuildContext:
    """What a mode's builder may need besides the model and the plan."""

    graph: GraphInfo
    activations: dict[str, ActivationParams]  # calibrated parameters of the quantized activation tensors
    activation_type: str  # uint8 | int8
    weight_range: str  # full | reduced (quantize/weight_range.py)
    weights: WeightParams | None = None  # weight parameters kept across builds of one model


@dataclass(frozen=True)
class EmulationContext:
    """What emulating a layer needs: the calibrated parameters of a tensor under a range algorithm, the weight grid,
    and the rounding and bias shifts of recovering choices (quantize/recovery/)."""

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


class Mode(ABC):
    """One way a quantized layer runs. Subclasses set the class attributes and implement the methods."""

    name: str  # LayerChoice.mode, and the key plans, spaces, records and latency tables use
    scope: str  # the layers it applies to, in words (for messages)
    order: int  # build order: lower first
    fixed: Mapping[str, Any] = MappingProxyType({})  # choice fields this mode sets: a plan may leave them out, may not change them
    defaults: Mapping[str, Any] = MappingProxyType({})  # fields of its own a plan may set, and their defaults
    calibrated: bool = False  # its activation scales come from calibration (the record's `data` entry)
    kernels: frozenset[str] = frozenset()  # op types its builder writes in a layer's place (named after it)
    weight_zero_points: tuple[int, int] = (0, 0)  # the weight zero points its builder can write (symmetric: only 0)

    # -- which layers, which choices -----------------------------------------------------------------------
    @abstractmethod
    def applies_to(self, layer: LayerInfo) -> bool: ...

    @abstractmethod
    def check(self, choice: LayerChoice) -> None:
        """Raise ConfigError naming the field when the choice's fields do not fit this mode."""

    def fits(self, layer: LayerInfo, choice: LayerChoice) -> bool:
        """Whether `choice` (one of this mode's) can be built for `layer` (applies_to said the mode can)."""
        return True

    def cost_bits(self, choice: LayerChoice) -> tuple[int, int]:
        """(activation bits, weight bits) of its multiplies, for the bitops model."""
        return choice.activation_bits, choice.weight_bits

    def label(self, choice: LayerChoice) -> str:
        """How `autoquant inspect` names a layer built this way (a file's Q/DQ must give back the same)."""
        return self.name

    def runs(self, choice: LayerChoice) -> str:
        """The kernel kind onnxruntime is meant to run: "integer", or "dequantized" (float on dequantized weights)."""
        return "integer"

    # -- the search space ----------------------------------------------------------------------------------
    @abstractmethod
    def choices(self, allowed: Mapping[str, tuple]) -> list[LayerChoice]:
        """The choices of this mode a space allows, from its allowed values per field."""

    @abstractmethod
    def encode(self, choice: LayerChoice) -> str:
        """The choice as one Optuna categorical value. Stored in studies: never change a mode's encoding."""

    @abstractmethod
    def decode(self, value: str) -> LayerChoice | None:
        """The choice an encoded value names, or None if the value is not this mode's."""

    def plan_label(self, choices: list[LayerChoice]) -> str:
        """The warm start's label for the plan with every layer that may take this mode in it."""
        return f"all-{self.name}"

    # -- the per-layer error table -------------------------------------------------------------------------
    def weight_key(self, choice: LayerChoice) -> tuple:
        """What the emulated weights depend on: choices with one key share one emulation."""
        return (self.name, choice.weight_granularity, choice.weight_bits)

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

    def recorded_weights(self, qmodel: onnx.ModelProto, node: onnx.NodeProto, choice: LayerChoice) -> RecordedWeights:
        """The layer's weight parameters in the built model (the node its builder wrote for it)."""
        raise NotImplementedError(f"mode {self.name} does not record its weights")

    @abstractmethod
    def from_record(self, bits: int, granularity: str, block_size: int, algorithm: str, accuracy_level: int) -> LayerChoice:
        """The choice a record's layer entry describes (its recovery fields are the record's to set)."""

    @abstractmethod
    def recognize(self, node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto],
                  producers: Mapping[str, onnx.NodeProto]) -> Recognized | None:  # fmt: skip
        """The layer `node` computes if this mode's builder wrote it (a file read back), else None."""


_MODES: dict[str, Mode] = {}
_loaded = False


def register(mode: Mode) -> Mode:
    _MODES[mode.name] = mode
    return mode


def _load() -> None:
    global _loaded
    if not _loaded:
        package = importlib.import_module(__package__)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{__package__}.{module.name}")
        _loaded = True


def modes() -> tuple[Mode, ...]:
    """Every registered mode, in build order."""
    _load()
    return tuple(sorted(_MODES.values(), key=lambda m: m.order))


def names() -> tuple[str, ...]:
    return tuple(m.name for m in modes())


def get(name: str) -> Mode:
    _load()
    if name not in _MODES:
        raise ConfigError(f"mode '{name}' is unknown: use one of {', '.join(names())}")
    return _MODES[name]


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
              producers: Mapping[str, onnx.NodeProto]) -> Recognized | None:  # fmt: skip
    """The quantized layer `node` computes, as the mode that built it reads it back (None: not a quantized layer).
    The modes built last are asked first: their patterns contain the earlier ones' (a runtime quantizer's node
    reads a weight a static Q/DQ pair could also have made)."""
    return next((r for m in reversed(modes()) if (r := m.recognize(node, inits, producers)) is not None), None)
