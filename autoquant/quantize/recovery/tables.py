"""The recovery a study computes from its calibration data, once per layer and setting and cached on disk: each
layer's weight clipping bounds per grid, its adaptive rounding per weight grid, and its bias shift per choice. Rows of every layer's FP32 input are
sampled from the calibration data once per process (forms.py: a bounded number per layer, whatever its size)
and serve both."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...calibrate.cache import cached_arrays
from ...calibrate.collect import augment
from ...data import Dataset
from ...graph.layers import GraphInfo, LayerInfo
from ...progress import bar
from ...runtime import Batches, session
from ..fake import fake_quant_activation, weight_scale
from ..plan import LayerChoice
from ..scales import ActivationParams
from . import clipped_weight, clips, recovered_weight, recovers
from .bias import output_shift
from .clipping import output_error_bounds
from .forms import LayerForm
from .rounding import RoundingSettings, adaround, nearest_mask

RECOVERY_VERSION = 3
TRAIN_ROWS = 2048  # input rows per layer the rounding is fitted on (and the bias shift measured on, with the held-out)
HELD_ROWS = 512  # rows per layer the fitted rounding is checked on
CLIP_ROWS = 1024  # of the training rows, those the clip bounds are chosen on
SAMPLES = 64  # calibration samples the rows come from
ROW_BUDGET = 8_000_000  # floats of one layer's rows (groups × rows × inputs): a depthwise layer's 1,000 groups get fewer rows
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverySource:
    """What the tables are computed from: the FP32 model (smoothed, if the study smooths), its layers, the
    calibration data and its activation parameters, the quantization settings, where to cache."""

    model: onnx.ModelProto
    model_key: str
    graph: GraphInfo
    calibration: Dataset
    fed: frozenset[str]  # the model's inputs, fed rather than fetched
    activation: Callable[[str, str], ActivationParams]  # (tensor, algorithm) → parameters
    activation_type: str
    weight_range: str
    cache: Path
    threads: int
    batches: Batches


class RecoveryTables:
    """Per layer: the clip bounds of its weights on each grid, the adaptive rounding mask of its weights on each
    (clipped or not) grid, and its bias shift per choice."""

    def __init__(self, source: RecoverySource, settings: RoundingSettings | None = None):
        self.source, self.settings = source, settings or RoundingSettings()
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self._memo: dict[tuple, np.ndarray] = {}
        self._means: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        inits = {i.name: i for i in source.model.graph.initializer}
        nodes = {n.name: n for n in source.model.graph.node}
        self._weights = {la.name: numpy_helper.to_array(inits[la.weight]).astype(np.float32) for la in source.graph.layers}
        self._forms = {la.name: LayerForm.of(nodes[la.name], la) for la in source.graph.layers}
        self.seconds: dict[str, float] = {}  # per layer: time spent fitting its rounding in this process

    @property
    def version(self) -> str:
        """What the tables' values depend on besides the model and data: for the keys of caches built on them."""
        return f"{RECOVERY_VERSION}:{self.settings}:{TRAIN_ROWS}:{HELD_ROWS}:{SAMPLES}"

    # -- what the builder and the error table ask -----------------------------------------------------------
    def clipping(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        """The bound per output channel (or one, per tensor) `choice`'s clipping puts the layer's weights within."""
        return self._cached(("clip", layer.name, choice.weight_granularity, choice.weight_bits), lambda: self._clip(layer, choice))

    def rounding(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        """The mask (1: round up from the floor) of the layer's weights under `choice`'s grid and rounding."""
        w = clipped_weight(self._weights[layer.name], layer, choice, self)
        scale, _ = weight_scale(w, layer.channel_axis, choice.weight_granularity, choice.weight_bits,
                                self.source.weight_range)
        if choice.weight_rounding != "adaptive" or self._forms[layer.name] is None:
            return nearest_mask(w, scale)
        return self._cached(self._rounding_key(layer, choice), lambda: self._fit(layer, choice))

    def shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        """The bias shift (per output channel, in output units) that cancels the mean error of `choice`."""
        return self._cached(self._shift_key(layer, choice), lambda: self._shift(layer, choice))

    @staticmethod
    def _rounding_key(layer: LayerInfo, choice: LayerChoice) -> tuple:
        return ("rounding", layer.name, choice.weight_granularity, choice.weight_bits, choice.weight_clipping)

    @staticmethod
    def _shift_key(layer: LayerInfo, choice: LayerChoice) -> tuple:
        return ("shift", layer.name, choice.weight_granularity, choice.weight_bits, choice.weight_rounding,
                choice.activation_algorithm, choice.weight_clipping)

    def _known(self, layer: LayerInfo, choice: LayerChoice) -> bool:
        """Whether what `choice` needs of this layer is in this process's memo already."""
        clipped = not clips(choice) or ("clip", layer.name, choice.weight_granularity, choice.weight_bits) in self._memo
        rounded = (choice.weight_rounding != "adaptive" or self._forms[layer.name] is None
                   or self._rounding_key(layer, choice) in self._memo)
        return clipped and rounded and (not choice.bias_correction or self._shift_key(layer, choice) in self._memo)

    def prepare(self, wanted: list[tuple[LayerInfo, LayerChoice]]) -> None:
        """Compute (or read from the cache) everything `wanted` needs, with a progress bar: the error table asks
        for every layer and choice of the space at once."""
        todo = [(la, c) for la, c in wanted if recovers(c) and not self._known(la, c)]
        if not todo:
            return
        shown = bar(len(todo), "recovery fitting", unit="choice")
        t0 = time.perf_counter()
        for la, c in todo:
            if clips(c):
                self.clipping(la, c)
            if c.weight_rounding == "adaptive":
                self.rounding(la, c)
            if c.bias_correction:
                self.shift(la, c)
            shown.update(1)
        shown.close()
        seconds = time.perf_counter() - t0
        (log.info if seconds >= 1 else log.debug)("adaptive rounding and bias correction of %d layer choice(s) in %.1f s",
                                                  len(todo), seconds)

    # -- computing and caching ------------------------------------------------------------------------------
    def _cached(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self._memo:
            return self._memo[key]
        s = self.source
        full = (f"recovery:{self.version}:{s.model_key}:{self._subset.sha256()}:{s.calibration.sha256()}:{key}:"
                f"{s.activation_type}:{s.weight_range}")
        digest = hashlib.sha256(full.encode()).hexdigest()[:20]
        path = s.cache / "recovery" / f"{s.model_key[:16]}-{digest}.npz"
        self._memo[key] = cached_arrays(path, full, lambda: {"value": compute()})["value"]
        return self._memo[key]

    @functools.cached_property
    def _subset(self) -> Dataset:
        """The calibration samples the rows come from; one object, so its content hash is computed once."""
        calib = self.source.calibration
        return calib.subset(np.arange(min(SAMPLES, len(calib))))

    def rows(self, layer: LayerInfo) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, held-out rows) of the layer's FP32 input, [groups, rows, inputs per row]."""
        if self._rows is None:
            self._rows = self._sample_rows()
        return self._rows[layer.name]

    def _sample_rows(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        s = self.source
        layers = [la for la in s.graph.layers if self._forms[la.name] is not None]
        fetch = list(dict.fromkeys(la.input for la in layers if la.input not in s.fed))
        sess = session(augment(s.model, tuple(fetch)), s.threads)
        data = self._subset
        batches = s.batches.within(sess, fetch, data, "calibration")
        batch_count = max(1, -(-len(data) // batches.size))
        rng = np.random.default_rng(0)
        parts: dict[str, list[np.ndarray]] = {la.name: [] for la in layers}
        for outputs, feed, real in batches.run(sess, fetch, data, "calibration", shown="recovery: layer inputs"):
            values = dict(zip(fetch, outputs)) | {k: v for k, v in feed.items() if k in s.fed}
            size = len(next(iter(feed.values())))
            for la in layers:
                x = values[la.input]
                x = x[:real] if x.shape[0] == size else x  # leave out the copies that pad a short batch
                groups, per_row = self._forms[la.name].groups, int(np.prod(la.weight_shape)) // la.out_channels
                wanted = min(TRAIN_ROWS + HELD_ROWS, ROW_BUDGET // (groups * per_row))
                parts[la.name].append(self._forms[la.name].rows(x.astype(np.float32), rng, -(-wanted // batch_count)))
        out = {}
        for name, chunks in parts.items():
            rows = np.concatenate(chunks, axis=1)
            order = rng.permutation(rows.shape[1])
            held = min(HELD_ROWS, rows.shape[1] // 5)
            out[name] = (rows[:, order[held:][:TRAIN_ROWS]], rows[:, order[:held]])
        return out

    def _clip(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        form, w = self._forms[layer.name], self._weights[layer.name]
        per_channel = choice.weight_granularity == "per_channel"
        if form is None:  # a layer the rows cannot be taken for: its own largest weights, no clipping
            axes = tuple(a for a in range(w.ndim) if a != layer.channel_axis % w.ndim) if per_channel else None
            return np.atleast_1d(np.abs(w).max(axis=axes)).astype(np.float32)
        train, _ = self.rows(layer)
        return output_error_bounds(form.matrix(w), train[:, :CLIP_ROWS], choice.weight_bits, self.source.weight_range,
                                   per_channel)

    def _fit(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        t0 = time.perf_counter()
        form, w = self._forms[layer.name], clipped_weight(self._weights[layer.name], layer, choice, self)
        scale, bounds = weight_scale(w, layer.channel_axis, choice.weight_granularity, choice.weight_bits,
                                     self.source.weight_range)
        train, held = self.rows(layer)
        m = form.matrix(w)
        s = form.matrix(np.broadcast_to(scale, w.shape).astype(np.float32))
        mask, before, after = adaround(m, s, bounds, train, held, self.settings,
                                       form.matrix(self._weights[layer.name]))
        self.seconds[layer.name] = self.seconds.get(layer.name, 0.0) + time.perf_counter() - t0
        log.debug("adaptive rounding of %s: held-out output error %.3g -> %.3g", layer.name, before, after)
        return form.weight(mask, w.shape).astype(np.uint8)

    def _shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        form, w = self._forms[layer.name], self._weights[layer.name]
        if form is None:
            return np.zeros(layer.out_channels, np.float32)
        w_q = recovered_weight(w, layer, choice, self.source.weight_range, self)
        return output_shift(*self._row_means(layer, choice.activation_algorithm), form.matrix(w), form.matrix(w_q)) \
            * form.alpha

    def _row_means(self, layer: LayerInfo, algorithm: str) -> tuple[np.ndarray, np.ndarray]:
        """The means over the layer's rows (training and held-out) of its FP32 input and of that input quantized
        with `algorithm`'s parameters, [groups, inputs]: every bias shift of the layer reads only these."""
        key = (layer.name, algorithm)
        if key not in self._means:
            train, held = self.rows(layer)
            rows = np.concatenate([train, held], axis=1)
            quantized = fake_quant_activation(rows, self.source.activation(layer.input, algorithm),
                                              self.source.activation_type)
            self._means[key] = rows.mean(axis=1, dtype=np.float64), quantized.mean(axis=1, dtype=np.float64)
        return self._means[key]
