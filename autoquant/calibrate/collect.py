"""The one calibration pass: run the FP32 model once over the calibration data, updating the statistics
of every float activation tensor at once (all range algorithms read the same statistics)."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from ..data import Dataset
from ..errors import DataError
from ..graph.ingest import ModelInput
from ..runtime import Batches, session
from .stats import TensorStats


def check_inputs(data: Dataset, inputs: tuple[ModelInput, ...], what: str) -> None:
    """Raise a DataError naming the mismatch if `data` cannot be fed to a model with these inputs."""
    missing = [i.name for i in inputs if i.name not in data.inputs]
    if missing:
        raise DataError(f"{what} data has no array for the model input '{missing[0]}' (it has "
                        f"{', '.join(data.inputs)}): name one array after each model input")
    for spec in inputs:
        x = data.inputs[spec.name]
        want = spec.shape[1:]
        if x.ndim != len(spec.shape) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, x.shape[1:])):
            raise DataError(f"{what} samples of '{spec.name}' have shape {tuple(x.shape[1:])} but the model expects "
                            f"{tuple(want)}: fix the data layout or point the experiment at the right model")
        if x.dtype != spec.dtype:
            raise DataError(f"{what} data '{spec.name}' is {x.dtype}, the model input is {spec.dtype}: convert it "
                            "before saving (or let the source do it)")
    floats = [i.name for i in inputs if np.issubdtype(i.dtype, np.floating)]
    bad = collections.Counter()
    for batch in data.batches(256):  # batch by batch: a memory-mapped split is never read whole
        for name in floats:
            bad[name] += int((~np.isfinite(batch[name])).reshape(len(batch[name]), -1).any(axis=1).sum())
    for name, count in bad.items():
        if count:
            raise DataError(f"{what} data '{name}' has NaN or Inf in {count} sample(s): clean or drop them")


def augment(model: onnx.ModelProto, tensors: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `tensors` (inner activations to read)."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    have = {o.name for o in aug.graph.output}
    for t in tensors:
        if t not in have:
            # untyped: onnxruntime takes the producer's type (a float declaration on an int tensor fails to load)
            aug.graph.output.append(onnx.ValueInfoProto(name=t))
    return aug


def collect_stats(
    model: onnx.ModelProto,
    inputs: tuple[ModelInput, ...],
    tensors: tuple[str, ...],
    data: Dataset,
    *,
    batches: Batches,
    threads: int,
) -> dict[str, TensorStats]:
    check_inputs(data, inputs, "calibration")
    fed = {i.name for i in inputs}
    fetched = [t for t in tensors if t not in fed]  # graph inputs are read from the batch itself
    sess = session(augment(model, tuple(fetched)), threads)
    stats = {t: TensorStats() for t in tensors}
    # One batch at a time: only the current batch's activations are ever held in memory. The tensors' histograms
    # are updated on every core (numpy lets go of the GIL in their passes; the session is idle meanwhile): on 2
    # cores that takes a quarter off a calibration pass, most of which is histogram counting.
    batches = batches.within(sess, fetched, data, "calibration")
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for values, feed, n in batches.run(sess, fetched, data, "calibration", drop_short=True, shown="calibration"):
            updates = [(stats[name], feed[name]) for name in fed & stats.keys()] + [
                (stats[name], value) for name, value in zip(fetched, values)]
            for _ in pool.map(lambda u: u[0].update(u[1]), updates):
                pass
    return stats


def observed_shapes(model: onnx.ModelProto, data: Dataset, batches: Batches,
                    threads: int) -> tuple[dict[str, tuple[int, ...]], int]:
    """The shape of every tensor on one real batch (within the fetch budget), and that batch's size: what shape
    inference could not say of a model whose shapes depend on its input (dynamic height/width, sequence length)."""
    produced = [o for n in model.graph.node for o in n.output if o]
    sess = session(augment(model, tuple(produced)), threads)
    names = [o.name for o in sess.get_outputs()]
    batches = batches.within(sess, names, data, "calibration")
    feed = batches.head(data)
    values = batches.one(sess, names, feed, "calibration")
    shapes = {n: tuple(v.shape) for n, v in zip(names, values) if isinstance(v, np.ndarray)}
    return shapes, len(next(iter(feed.values())))
