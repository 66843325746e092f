"""Experiment configuration: YAML is parsed once, here, into frozen dataclasses; the core never sees dicts.

Unknown keys and wrong types are errors that name the key and the file. Relative paths are resolved
against the directory of the YAML file, so an experiment runs the same from any working directory.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, first_line


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


def bounded(default: Any, low: float, *, above: bool = False) -> Any:
    """A numeric setting that must be >= `low` (> `low` with `above`); checked by check_fields."""
    return field(default=default, metadata={"low": low, "above": above})


def check_fields(section: Any, prefix: str) -> None:
    """Every number of a config dataclass is finite and within its declared bound; the message names the key."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"{prefix}.{f.name} must be a finite number, got {value}")
        low = f.metadata.get("low")
        if low is not None and (value <= low if f.metadata["above"] else value < low):
            raise ConfigError(f"{prefix}.{f.name} must be {'greater than' if f.metadata['above'] else 'at least'} "
                              f"{low}, got {value}")


BUILTIN_MODELS = ("digits_cnn", "cifar10_resnet20", "cifar10_resnet32", "cifar10_resnet56", "cifar10_mobilenet")
INPUT_DTYPES = ("float32", "int64", "int32", "bool")


@dataclass(frozen=True)
class TorchInput:
    shape: list  # an example shape, batch first (e.g. [2, 16]); exported with `dynamic` axes left free
    dtype: str = "float32"
    dynamic: list = field(default_factory=lambda: [0])  # axes that vary (0: the batch)

    def __post_init__(self):
        if not self.shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in self.shape):
            raise ConfigError(f"model.inputs: shape {self.shape} must be a list of positive integers (an example shape)")
        if self.dtype not in INPUT_DTYPES:
            raise ConfigError(f"model.inputs: dtype '{self.dtype}' is unknown: use one of {', '.join(INPUT_DTYPES)}")
        if not all(isinstance(a, int) and 0 <= a < len(self.shape) for a in self.dynamic):
            raise ConfigError(f"model.inputs: dynamic {self.dynamic} must list axes of the shape {self.shape}")


@dataclass(frozen=True)
class ModelConfig:
    builtin: str | None = None  # one of BUILTIN_MODELS
    onnx: Path | None = None  # or a user's FP32 ONNX file
    torch: str | None = None  # or "file.py:factory" / "package.module:factory" returning a torch.nn.Module
    checkpoint: Path | None = None  # weights: for the CIFAR ResNets, or a state_dict for `torch`
    inputs: dict[str, TorchInput] = field(default_factory=dict)  # `torch`: {input name: {shape, dtype, dynamic}}
    output: str = "output"  # `torch`: the name of the exported (first) output

    def __post_init__(self):
        given = [k for k in ("builtin", "onnx", "torch") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError("model: give exactly one of 'builtin', 'onnx' or 'torch'")
        if self.builtin is not None and self.builtin not in BUILTIN_MODELS:
            raise ConfigError(f"model.builtin '{self.builtin}' is unknown: use one of {', '.join(BUILTIN_MODELS)}")
        if self.torch is not None and not self.inputs:
            raise ConfigError("model.inputs is required with model.torch: {name: {shape: [...], dtype: ...}} per input")
        for name, spec in self.inputs.items():
            if not isinstance(name, str) or not isinstance(spec, TorchInput):
                raise ConfigError(f"model.inputs.{name} must map an input name to {{shape, dtype, dynamic}}")


@dataclass(frozen=True)
class ImageConfig:
    """How an image folder's files become model input (Pillow): RGB, shorter side resized to `resize`,
    centre crop `size`, divided by `scale`, minus `mean`, over `std`, in `layout`."""

    size: int = bounded(224, 1)
    resize: int | None = bounded(None, 1)  # default: `size` (no crop margin)
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    scale: float = bounded(255.0, 0, above=True)
    layout: str = "NCHW"

    def __post_init__(self):
        check_fields(self, "data.image")
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"data.image.layout '{self.layout}' is unknown: use NCHW or NHWC")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise ConfigError(f"data.image.{key} must be three finite numbers (R, G, B), got {values}")
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"data.image.std must be positive, got {self.std}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # digits | cifar10 | npz | folder | python (autoquant/sources/data/)
    path: Path | None = None  # the .npz file or image folder
    loader: str | None = None  # source python: "file.py:function" returning an iterable of batches
    x_key: str = "x"  # npz: the input array of a single-input model (several inputs: one array per input name)
    y_key: str | None = "y"  # the labels (any shape); none when the array is absent or this is null
    image: ImageConfig = field(default_factory=ImageConfig)
    # separate calibration data (source, path, loader, keys, image; its own split sizes are not used):
    # calibration samples come from it, eval (and train) samples from this section's data
    calibration: DataConfig | None = None
    calibration_size: int = bounded(300, 1)
    eval_size: int = bounded(500, 1)
    # samples no trial, rung, early stop or export choice sees, on which the export's drop is confirmed (search/
    # confirm.py); default: half of eval_size, as many as the data has left; 0: no confirmation
    confirm_size: int | None = bounded(None, 0)
    train_size: int = bounded(0, 0)  # samples reserved for training a built-in model; never calibrated or evaluated on
    seed: int = bounded(0, 0)

    @property
    def confirm_wanted(self) -> int:
        """The confirmation samples asked for: confirm_size, or by default half of eval_size."""
        return self.eval_size // 2 if self.confirm_size is None else self.confirm_size

    def __post_init__(self):
        check_fields(self, "data")


@dataclass(frozen=True)
class QuantizationConfig:
    activation_type: str = "uint8"  # with int8, onnxruntime's CPU provider leaves some convolutions unfused
    percentile: float = 99.99
    calibration_batch_size: int = bounded(32, 1)
    # auto: 7-bit weights where this CPU's uint8 x int8 kernels saturate (quantize/weight_range.py), else 8
    weight_range: str = "auto"
    # SmoothQuant migration strength α in (0, 1] for every MatMul/Gemm input (quantize/smoothing.py); off if unset
    smoothquant_alpha: float | None = None

    def __post_init__(self):
        check_fields(self, "quantization")
        alpha = self.smoothquant_alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1):
            raise ConfigError(f"quantization.smoothquant_alpha {alpha!r} must be a number in (0, 1] (0.5 is usual), or "
                              "left out to turn smoothing off")
        if self.weight_range not in ("auto", "full", "reduced"):
            raise ConfigError(f"quantization.weight_range '{self.weight_range}' is unknown: use auto, full or reduced")
        if self.activation_type not in ("uint8", "int8"):
            raise ConfigError(f"quantization.activation_type '{self.activation_type}' is unknown: use uint8 or int8")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"quantization.percentile {self.percentile} must be in (50, 100]")


@dataclass(frozen=True)
class EvalConfig:
    metric: str = "top1"  # top1 | top5 | agreement | cosine | "file.py:function" | "module:function"
    output: str | None = None  # the model output that is scored (default: the first)
    output_batch_axis: int = bounded(0, 0)  # where the batch is in that output (1 for time-major sequences)
    batch_size: int = bounded(100, 1)
    latency_batch_size: int = bounded(32, 1)
    latency_repeats: int = bounded(15, 1)
    threads: int = bounded(0, 0)  # onnxruntime intra-op threads; 0 = one per core

    def __post_init__(self):
        check_fields(self, "eval")  # the metric's name is checked against the metrics there are (Workspace)


SAMPLERS = ("nsga2", "tpe", "random")


@dataclass(frozen=True)
class SearchConfig:
    space: Path | None = None  # default: search_spaces/default.yaml shipped with autoquant
    objective: Cost = Cost.LATENCY  # the cost minimised next to accuracy: latency, bitops or size
    max_accuracy_drop: float = 1.0  # points of the metric; selects the export (negative: must beat FP32)
    trials: int = bounded(40, 1)
    timeout_minutes: float | None = bounded(None, 0, above=True)
    trial_timeout_seconds: float | None = bounded(None, 0, above=True)  # a longer trial fails, the study goes on
    sampler: str = "nsga2"
    # NSGA-II breeds once this many trials of a generation are complete (stopped-early ones do not count): a
    # larger generation is never complete in a study whose plans mostly stop early, and every plan is a random draw
    population_size: int = bounded(8, 2)
    seed: int = bounded(0, 0)
    warm_start: bool = True  # enqueue all-float, all-INT8 and sensitivity-guided plans first
    early_stop: bool = True  # stop plans a random eval prefix shows cannot meet the constraint (top1/top5/agreement)
    guided_mutation: bool = True  # NSGA-II draws a layer's new option among those the error table does not rule out
    refine: bool = True  # every 8 trials, enqueue the calibrated error model's plans at the constraint and in the front's gaps
    sensitivity_k: list = field(default_factory=lambda: [1, 2, 4, 8])  # warm starts: all INT8 but the k most sensitive
    # adaptive rounding (a fit per layer and grid) is made and priced for at most this many layers, those deciding the
    # plan (search/estimate/deciding.py); 0: for none
    rounding_layers: int = bounded(8, 0)
    storage: str | None = None  # SQLAlchemy URL; default: sqlite file in the run directory
    tracking_uri: str | None = None  # MLflow; default: sqlite file in the run directory

    def __post_init__(self):
        check_fields(self, "search")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"search.sampler '{self.sampler}' is unknown: use one of {', '.join(SAMPLERS)}")
        if not all(isinstance(k, int) and k >= 0 for k in self.sensitivity_k):
            raise ConfigError("search.sensitivity_k must be a list of non-negative integers")


FINETUNE_DATA = ("all", "calibration", "train")


@dataclass(frozen=True)
class FinetuneConfig:
    """Quantization-aware fine-tuning of the export (finetune/): distillation from FP32 on unlabeled data."""

    # default: as many as timeout_minutes leaves time for, timed on the first steps (finetune/train.py: budget)
    steps: int | None = bounded(None, 1)
    # Adam's step on the weights and biases; default: each tensor's own scale (finetune/train.py: RELATIVE_LR)
    lr: float | None = bounded(None, 0, above=True)
    timeout_minutes: float = bounded(15.0, 0, above=True)  # the training time of a search's stage (all its candidates), when steps is not set
    batch_size: int = bounded(32, 1)
    seed: int = bounded(0, 0)
    checkpoint_every: int = bounded(25, 1)  # steps between two checkpoints (a killed run resumes from the last)
    # all: every sample of the experiment's data that no eval or confirmation split holds (the train and calibration
    # splits and the samples no split takes); calibration; train (data.train_size's samples)
    data: str = "all"
    # more inputs to learn from, none of them labeled (a folder of images, an npz, a loader: a data section); all of
    # their samples, but any equal to an eval or confirmation sample
    unlabeled: DataConfig | None = None
    learn_scales: bool = False  # also train the activation scales (LSQ), exported in place of the calibrated ones
    validation: float = bounded(0.2, 0)  # share of the data held out to keep the weights that generalise best
    # As a search's last stage: the plans faster than the export whose PTQ drop misses the limit by at most `margin`
    # points are fine-tuned, the fastest (in the latency table's price) first, at most `candidates` of them
    margin: float = bounded(2.0, 0)
    candidates: int = bounded(2, 1)

    def __post_init__(self):
        check_fields(self, "finetune")
        if self.validation >= 0.5:
            raise ConfigError(f"finetune.validation must be below 0.5 (a share of the data), got {self.validation}")
        if self.data not in FINETUNE_DATA:
            raise ConfigError(f"finetune.data '{self.data}' is unknown: use {', '.join(FINETUNE_DATA)}")


@dataclass(frozen=True)
class Experiment:
    name: str
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig | None = None  # set: the search fine-tunes its export as its last stage
    cache_dir: Path | None = None  # default: $AUTOQUANT_CACHE_DIR or ~/.cache/autoquant
    source_file: Path | None = None

    def __post_init__(self):
        # The name becomes a run directory and a study name: a path here would write outside runs/.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name):
            raise ConfigError(f"name {self.name!r} must be letters, digits, '.', '_' or '-' (it names the run "
                              "directory and the study), not a path")

    @property
    def cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()


def default_cache_dir() -> Path:
    return Path(os.environ.get("AUTOQUANT_CACHE_DIR", Path.home() / ".cache" / "autoquant"))


def _convert(tp: Any, value: Any, where: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where, base)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, base)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where} '{value}' is unknown: use one of {', '.join(m.value for m in tp)}") from None
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where} must map names to settings, got {value!r}")
        _, item = typing.get_args(tp)
        return {k: _convert(item, v, f"{where}.{k}", base) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, raw: Any, where: str, base: Path):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source_file"]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}", base) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {exc}") from exc


def load_yaml(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file {path} not found: give the path of a YAML file")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a YAML text file ({first_line(exc, 120)})") from exc


def load_experiment(path: Path) -> Experiment:
    path = Path(path)
    raw = load_yaml(path)
    exp = from_dict(Experiment, raw, path.name, path.resolve().parent)
    return dataclasses.replace(exp, source_file=path.resolve())
