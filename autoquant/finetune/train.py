"""The fine-tuning loop: the mirror (mirror.py) learns to give the FP32 model's outputs on the fine-tuning data —
distillation, no labels — with Adam on every layer's weights and biases (and, with `learn_scales`, the
activation scales); the weights kept are those a held-out share of the data rates best.

Step k's batch is drawn by a generator seeded with (seed, k), so a run is a function of its settings and a resumed
run takes the batches the killed one would have; a checkpoint (parameters, optimizer state, losses) is written
atomically every `checkpoint_every` steps and when the run is interrupted (Ctrl-C, SIGTERM), and picked up by a run
with the same settings, plan and data. A checkpoint holds tensors and numbers only and is read with torch's
weights-only unpickler, so a file planted in a run directory cannot run code; one that cannot be read is set
aside with a message and the run goes on from the checkpoint before it, or from the start.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import FinetuneConfig
from ..data import Dataset
from ..progress import bar
from ..quantize.scales import ActivationParams
from .mirror import Mirror

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    weights: dict[str, np.ndarray]  # initializer name → fine-tuned FP32 value (of the chosen step)
    activations: dict[str, ActivationParams]  # learnt activation scales by tensor (none unless learn_scales)
    losses: tuple[float, ...]  # the distillation loss (output NMSE to FP32) of each step's batch
    held_out: tuple[tuple[int, float], ...]  # (step, output NMSE on the held-out samples) at each look
    chosen_step: int  # the step whose weights these are (0: training did not beat the plan as calibrated)
    seconds: float  # of training in this process (a resumed run counts its own)
    resumed_at: int  # the step a checkpoint let it start from (0: none)
    steps: int  # the steps it ran to (settings.steps, or what the time budget allowed)


def nmse(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """The outputs' squared error relative to FP32's mean square, averaged over outputs: Measurement.output_mse."""
    terms = [((s - t) ** 2).mean() / (t**2).mean().clamp_min(1e-12) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def batch_rows(rows: np.ndarray, size: int, seed: int, step: int) -> np.ndarray:
    """Step `step`'s batch among `rows`: a function of (seed, step) only, so a resumed run draws the same."""
    return np.sort(np.random.default_rng([seed, step]).choice(rows, min(size, len(rows)), replace=False))


def split_rows(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): `share` of the samples held out to choose the weights by, none when that
    would leave fewer than 4 on either side."""
    held = round(n * share)
    if held < 4 or n - held < 4:
        return np.arange(n), np.arange(0)
    perm = np.random.default_rng([seed, n]).permutation(n)
    return np.sort(perm[held:]), np.sort(perm[:held])


# The default step of a tensor: this share of its own RMS. Adam moves every parameter by about the learning rate per
# step, whatever its gradient's size; one rate for a model would move a depthwise layer's small weights (and a bias)
# by far more, relatively, than a wide layer's, and its first steps raised the loss on every model we tried.
RELATIVE_LR = 1e-3
WARMUP_STEPS = 20  # the step grows linearly to its rate over these first steps: the first steps are small ones
MAX_STEPS = 5000  # steps at most when the time budget sets them


def param_groups(module: torch.nn.Module, lr: float | None) -> list[dict]:
    """Adam's parameter groups: one rate for all (`lr`), or each tensor's RMS × RELATIVE_LR (a tensor of zeros: the
    median rate of the others)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if lr is not None:
        return [{"params": params, "lr": lr}]
    scales = [float(p.detach().double().pow(2).mean().sqrt()) for p in params]
    fallback = float(np.median([v for v in scales if v > 0])) if any(v > 0 for v in scales) else 1.0
    return [{"params": [p], "lr": RELATIVE_LR * (v if v > 0 else fallback)} for p, v in zip(params, scales)]


def warmup(step: int) -> float:
    """The share of its rate a step takes (torch's LambdaLR)."""
    return min(1.0, (step + 1) / WARMUP_STEPS)


def budget(settings: FinetuneConfig, step_seconds: float, look_seconds: float, spent: float) -> int:
    """The steps that fit in `settings.timeout_minutes` after `spent` seconds, each step and every
    `checkpoint_every`-th look at the held-out samples timed before training (at least 1, at most MAX_STEPS)."""
    per_step = step_seconds + look_seconds / settings.checkpoint_every
    left = settings.timeout_minutes * 60 - spent
    return int(min(MAX_STEPS, max(1, left // max(per_step, 1e-6))))


def train(mirror: Mirror, data: Dataset, teacher: dict[str, np.ndarray], settings: FinetuneConfig,
          checkpoint: Path, run_key: str) -> Trained:
    """Fine-tune `mirror` on `data` towards `teacher` (FP32 outputs by output name, one row per sample). The weights
    returned are those with the least output NMSE on the held-out share of `data` (`settings.validation`),
    looked at before the first step and every `checkpoint_every` steps: on a small data set, training longer fits
    the training samples better and the others worse, and the held-out samples say when that starts; when no step
    beats the plan as calibrated, its weights are returned unchanged. Without `settings.steps`, as many steps as
    fit in `settings.timeout_minutes` (budget)."""
    module = mirror.module
    inputs = {k: torch.from_numpy(np.ascontiguousarray(data.column(k))) for k in module.inputs}
    targets = [torch.from_numpy(np.ascontiguousarray(teacher[o])) for o in module.outputs]
    rows, held = split_rows(len(data), settings.validation, settings.seed)
    optimizer = torch.optim.Adam(param_groups(module, settings.lr), lr=settings.lr or RELATIVE_LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    # A run with more steps begins as one with fewer (batches by step, a warm-up of fixed length): the total is not
    # part of what a checkpoint must match, so a run the time budget cut short resumes under a new budget
    what = (settings.lr, settings.batch_size, settings.seed, settings.data, settings.learn_scales, settings.validation)
    key = hashlib.sha256(f"{run_key}:{what}".encode()).hexdigest()
    losses: list[float] = []
    looks: list[tuple[int, float]] = []
    best: dict | None = None
    start = 0
    t0 = time.perf_counter()
    state = resume_state(checkpoint, key, module, optimizer)
    if state is not None:
        losses, looks, best, start = list(state["losses"]), [tuple(x) for x in state["looks"]], state["best"], int(state["step"])
        for group, base in zip(optimizer.param_groups, schedule.base_lrs):  # the rates of step `start`
            group["lr"] = base * warmup(start)
        schedule.last_epoch = start

    def look(step: int) -> None:
        nonlocal best
        if not len(held):
            return
        with torch.no_grad():
            parts = [module(**{k: v[torch.from_numpy(held[i : i + settings.batch_size])] for k, v in inputs.items()})
                     for i in range(0, len(held), settings.batch_size)]
            outs = [torch.cat(o) for o in zip(*parts)]
            value = float(nmse(outs, [t[torch.from_numpy(held)] for t in targets]))
        looks.append((step, value))
        if best is None or value < best["nmse"]:
            best = {"step": step, "nmse": value, "module": copy.deepcopy(module.state_dict())}

    t_look = time.perf_counter()
    if start == 0:
        look(0)
    t_look = time.perf_counter() - t_look
    steps, deadline, step_seconds = settings.steps, None, 0.0
    if steps is None:
        step_seconds = timed_step(module, inputs, targets, rows, settings)
        steps = max(start, budget(settings, step_seconds, t_look, time.perf_counter() - t0))
        # the count is planned from one timed step; a CPU that gets busier stops the run at the time given
        deadline = t0 + settings.timeout_minutes * 60
        log.info("fine-tuning: %d steps fit in finetune.timeout_minutes %g", steps, settings.timeout_minutes)
    if start:
        log.info("fine-tuning resumes at step %d of %d", start, steps)
    shown = bar(steps, "fine-tuning", unit="step", initial=start)
    done = start

    def state() -> dict:
        return {"key": key, "step": done, "module": module.state_dict(), "looks": looks,
                "optimizer": optimizer.state_dict(), "losses": losses, "best": best}

    try:
        for step in range(start, steps):
            if deadline is not None and done > start and time.perf_counter() + step_seconds > deadline:
                log.info("fine-tuning: stopped after %d of %d steps at finetune.timeout_minutes", done, steps)
                if not looks or looks[-1][0] != done:
                    look(done)
                steps = done
                break
            t_step = time.perf_counter()
            batch = torch.from_numpy(batch_rows(rows, settings.batch_size, settings.seed, step))
            out = module(**{k: v[batch] for k, v in inputs.items()})
            loss = nmse(out, [t[batch] for t in targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step_seconds = time.perf_counter() - t_step
            shown.update(1)
            shown.set_postfix(loss=f"{losses[-1]:.3g}", held_out=f"{best['nmse']:.3g}" if best else "-")
            done = step + 1
            if done % settings.checkpoint_every == 0 or done == steps:
                look(done)
            if done % settings.checkpoint_every == 0 and done < steps:
                save_checkpoint(checkpoint, state())
    except KeyboardInterrupt:  # the steps done so far are kept: the same command resumes after them
        if done > start:
            save_checkpoint(checkpoint, state())
        raise
    finally:
        shown.close()
    if best is not None:
        module.load_state_dict(best["module"])
        log.info("fine-tuning: the weights of step %d (held-out output NMSE %.3g; before training %.3g)", best["step"],
                 best["nmse"], looks[0][1])
    return Trained(mirror.weights(), mirror.activation_params(), tuple(losses), tuple(looks),
                   best["step"] if best else steps, time.perf_counter() - t0, start, steps)


def timed_step(module: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: list[torch.Tensor], rows: np.ndarray,
               settings: FinetuneConfig) -> float:
    """The seconds of one training step's forward and backward pass (its gradients dropped, nothing changed)."""
    batch = torch.from_numpy(batch_rows(rows, settings.batch_size, settings.seed, 0))
    t0 = time.perf_counter()
    nmse(module(**{k: v[batch] for k, v in inputs.items()}), [t[batch] for t in targets]).backward()
    seconds = time.perf_counter() - t0
    module.zero_grad(set_to_none=True)
    return seconds


CHECKPOINT_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
                     AttributeError, IndexError)  # what torch.load and load_state_dict raise on a damaged file


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def resume_state(checkpoint: Path, key: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The state of the newest readable checkpoint of this run (`key`), loaded into `module` and `optimizer`; None
    to start over. A file that cannot be read (truncated, empty, not a checkpoint, or holding anything but tensors
    and numbers) is renamed aside with a warning, never loaded; one of another run (other settings, plan or data)
    is left in place and not used."""
    initial = copy.deepcopy((module.state_dict(), optimizer.state_dict()))
    for path in (checkpoint, previous(checkpoint)):
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not isinstance(state.get("key"), str):
                raise TypeError("not an autoquant fine-tuning checkpoint")
            if state["key"] != key:
                log.info("%s is another fine-tuning's checkpoint (settings, plan or data differ): not used", path)
                continue
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            if not 0 < int(state["step"]) or not len(state["losses"]) == int(state["step"]):
                raise ValueError("its step count and losses disagree")
            return state
        except CHECKPOINT_ERRORS as exc:
            module.load_state_dict(initial[0])  # a state that failed half-way in is not trained from
            optimizer.load_state_dict(initial[1])
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log.warning("warning: %s cannot be read as a fine-tuning checkpoint (%s): moved to %s; going on without it",
                        path, f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}",
                        aside.name)
    return None


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` atomically as the checkpoint; the one before it stays as `.prev` until the next one is written, so
    a kill at any moment leaves a readable checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        if path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def drop_checkpoints(path: Path) -> None:
    path.unlink(missing_ok=True)
    previous(path).unlink(missing_ok=True)
