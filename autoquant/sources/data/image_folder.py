"""An image folder: class sub-folders (labels are their sorted indices) or images directly in it (unlabeled),
turned into model input with Pillow as `data.image` declares (resize, centre crop, scale, mean/std, layout).

Decoded images are stored once in autoquant's cache as a memory-mapped .npy, keyed by the file list
(names, sizes, modification times) and the preprocessing: later runs and every trial read that, and the
whole folder never has to be decoded into memory at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ...data import SINGLE_INPUT_KEY, Dataset
from ...errors import ConfigError, DataError, first_line
from ...fileio import atomic_write_bytes, file_lock
from . import DATA_SOURCES, SourceContext

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


def _files(root: Path) -> tuple[list[Path], np.ndarray | None, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files, labels = [], []
        for i, c in enumerate(classes):
            found = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in EXTENSIONS)
            files += found
            labels += [i] * len(found)
        return files, np.array(labels, np.int64), classes
    return sorted(p for p in root.iterdir() if p.suffix.lower() in EXTENSIONS), None, []


def preprocess(path: Path, image) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            resize = image.resize or image.size
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - image.size) // 2, (h - image.size) // 2
            im = im.crop((left, top, left + image.size, top + image.size))
            x = np.asarray(im, dtype=np.float32) / image.scale
    except OSError as exc:  # Pillow's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path} is not a readable image ({first_line(exc)}): remove it or fix it") from exc
    x = (x - np.array(image.mean, np.float32)) / np.array(image.std, np.float32)
    return x.transpose(2, 0, 1) if image.layout == "NCHW" else x


@DATA_SOURCES.register("folder", requires=("path",))
def load(cfg, ctx: SourceContext) -> Dataset:
    root = cfg.path
    if root is None:
        raise ConfigError("data.path is required for data.source folder: point it at the image folder")
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: set data.path to a folder of images or class sub-folders")
    files, labels, classes = _files(root)
    if not files:
        raise DataError(f"{root} has no images ({', '.join(sorted(EXTENSIONS))}) in it or in class sub-folders")
    listing = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps([listing, repr(cfg.image)]).encode()).hexdigest()
    target = ctx.cache / "images" / f"{key[:24]}.npy"
    with file_lock(target.with_suffix(".lock")):
        if not target.is_file():
            shape = preprocess(files[0], cfg.image).shape
            tmp = target.with_suffix(".tmp.npy")
            target.parent.mkdir(parents=True, exist_ok=True)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(files), *shape))
            for i, f in enumerate(files):
                out[i] = preprocess(f, cfg.image)
            out.flush()
            del out
            tmp.replace(target)
            atomic_write_bytes(target.with_suffix(".json"), json.dumps({"root": str(root), "classes": classes}).encode())
    return Dataset({SINGLE_INPUT_KEY: np.load(target, mmap_mode="r")}, labels)
