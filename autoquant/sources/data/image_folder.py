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
from ...progress import progress
from . import DATA_SOURCES, SourceContext

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


def _images(folder: Path, recursive: bool) -> list[Path]:
    """Image files under `folder`, skipping hidden files and folders (a Jupyter `.ipynb_checkpoints` copy is
    not a sample)."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _files(root: Path) -> tuple[list[Path], np.ndarray | None, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files, labels = [], []
        for i, c in enumerate(classes):
            found = _images(root / c, recursive=True)
            files += found
            labels += [i] * len(found)
        return files, np.array(labels, np.int64), classes
    return _images(root, recursive=False), None, []


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _eight_bit_scale(im, path: Path):
    """The image as Pillow RGB, or as one float channel on the 0-255 scale of 8-bit pixels (16-bit images:
    Pillow's RGB conversion would clip them to white). Pixels whose range a file does not say are refused."""
    from PIL import Image

    if im.mode in SIXTEEN_BIT or (im.mode == "I" and im.format == "PNG"):  # PNG holds at most 16 bits
        return Image.fromarray(np.asarray(im, np.float32) * np.float32(255 / 65535), "F")
    if im.mode in ("I", "F"):
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise DataError(f"{path} has {kind} pixels, whose range autoquant cannot know: save it as an 8- or 16-bit "
                        "image, or give the arrays through an npz or python source")
    return im.convert("RGB")


def preprocess(path: Path, image) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = _eight_bit_scale(im, path)
            resize = image.resize or image.size
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - image.size) // 2, (h - image.size) // 2
            im = im.crop((left, top, left + image.size, top + image.size))
            x = np.asarray(im, dtype=np.float32)
    except OSError as exc:  # Pillow's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path} is not a readable image ({first_line(exc)}): remove it or fix it") from exc
    if x.ndim == 2:  # grey (16-bit): the same values in R, G and B, as RGB conversion does for 8-bit grey
        x = np.repeat(x[:, :, None], 3, axis=2)
    x = (x / image.scale - np.array(image.mean, np.float32)) / np.array(image.std, np.float32)
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
            try:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(files), *shape))
                for i, f in enumerate(progress(files, f"decoding {root.name}")):
                    out[i] = preprocess(f, cfg.image)
                out.flush()
                del out
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)  # a file that failed to decode leaves no half-written cache behind
            atomic_write_bytes(target.with_suffix(".json"), json.dumps({"root": str(root), "classes": classes}).encode())
    return Dataset({SINGLE_INPUT_KEY: np.load(target, mmap_mode="r")}, labels)
