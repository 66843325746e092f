"""Seeded, cached training for the built-in models that ship without a checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fileio import atomic_write, file_lock

log = logging.getLogger(__name__)


@contextlib.contextmanager
def one_thread():
    """torch on one thread while it trains: its parallel reductions (batch-norm statistics, weight gradients) add in
    an order that depends on the thread count, so the same recipe trained on 2 and on 8 cores gives weights that
    differ in their last bits, and a model hash that differs (a study could not be resumed on another machine).
    One thread makes training a function of the recipe, the data, torch's version and the CPU's vector width; the
    embedded defaults are shipped trained (zoo/shipped/), the same bytes everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> nn.Module:
    """Plain Adam + cosine schedule; deterministic for a given seed on one machine."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            xb = xt[idx] if augment is None else augment(xt[idx], gen)
            opt.zero_grad()
            loss_fn(model(xb), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def cached_weights(build: Callable[[], nn.Module], cache_dir: Path, key: str, seed: int,
                   train: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """The model `build()` makes, with its weights from the cache, or trained once and stored.

    The initial weights are drawn after seeding, so every fresh cache trains the same network to the same
    weights (one model hash: another worker, machine or a cleared cache resumes the same study). The key
    must change whenever the architecture, data or recipe changes, so a stale checkpoint can never be
    loaded into a different network.
    """
    torch.manual_seed(seed)
    model = build()
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir / "weights" / f"{digest}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return model.eval()
            except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
                log.warning("cached weights %s are unreadable (%s): training again", path, exc.__class__.__name__)
                torch.manual_seed(seed)
                model = build()
        with one_thread():
            train(model)
        atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    return model.eval()


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR-style augmentation: reflect-pad, random crop back to size, random horizontal flip."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    out = padded[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out
