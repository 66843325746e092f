"""The fine-tuning loop: the mirror (mirror.py) learns to give the FP32 model's outputs on the calibration data —
distillation, no labels — with Adam on every layer's weights and biases; the activation scales stay the ones the
plan was calibrated with, so the export's quantizers are the ones trained against.

Step k's batch is drawn by a generator seeded with (seed, k), so a run is a function of its settings and a resumed
run takes the batches the killed one would have; a checkpoint (parameters, optimizer state, losses) is written
atomically every `checkpoint_every` steps and picked up by a run with the same settings, plan and data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import FinetuneConfig
from ..data import Dataset
from ..progress import bar
from .mirror import Mirror

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    weights: dict[str, np.ndarray]  # initializer name → fine-tuned FP32 value
    losses: tuple[float, ...]  # the distillation loss (output NMSE to FP32) of each step's batch
    seconds: float  # of training in this process (a resumed run counts its own)
    resumed_at: int  # the step a checkpoint let it start from (0: none)


def nmse(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """The outputs' squared error relative to FP32's mean square, averaged over outputs: Measurement.output_mse."""
    terms = [((s - t) ** 2).mean() / (t**2).mean().clamp_min(1e-12) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def batch_rows(n: int, size: int, seed: int, step: int) -> np.ndarray:
    return np.sort(np.random.default_rng([seed, step]).choice(n, min(size, n), replace=False))


def train(mirror: Mirror, data: Dataset, teacher: dict[str, np.ndarray], settings: FinetuneConfig,
          checkpoint: Path, run_key: str, on_step: Callable[[int, float], None] = lambda step, loss: None) -> Trained:  # fmt: skip
    """Fine-tune `mirror` on `data` towards `teacher` (FP32 outputs by output name, one row per sample)."""
    module = mirror.module
    inputs = {k: torch.from_numpy(np.ascontiguousarray(data.column(k))) for k in module.inputs}
    targets = [torch.from_numpy(np.ascontiguousarray(teacher[o])) for o in module.outputs]
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.lr)
    what = (settings.steps, settings.lr, settings.batch_size, settings.seed, settings.data, settings.learn_scales)
    key = hashlib.sha256(f"{run_key}:{what}".encode()).hexdigest()
    losses: list[float] = []
    start = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            losses, start = list(state["losses"]), int(state["step"])
            log.info("fine-tuning resumes at step %d of %d from %s", start, settings.steps, checkpoint)
        else:
            log.info("%s is another fine-tuning's checkpoint (settings, plan or data differ): starting over", checkpoint)
    shown = bar(settings.steps, "fine-tuning", unit="step", initial=start)
    t0 = time.perf_counter()
    try:
        for step in range(start, settings.steps):
            rows = torch.from_numpy(batch_rows(len(data), settings.batch_size, settings.seed, step))
            out = module(**{k: v[rows] for k, v in inputs.items()})
            loss = nmse(out, [t[rows] for t in targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            on_step(step, losses[-1])
            shown.update(1)
            shown.set_postfix(loss=f"{losses[-1]:.3g}")
            if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
                _save(checkpoint, {"key": key, "step": step + 1, "module": module.state_dict(),
                                   "optimizer": optimizer.state_dict(), "losses": losses})  # fmt: skip
    finally:
        shown.close()
    return Trained(mirror.weights(), tuple(losses), time.perf_counter() - t0, start)


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
