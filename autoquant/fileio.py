"""Atomic writes: a kill or a full disk mid-write leaves the previous file intact."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through `write(file)` into a temp file next to `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with _naming(path), os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def _naming(path: Path):
    """A write error that names no file (ENOSPC from write or fsync) names the one being written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Write every file to a temp name first and rename them only when all are on disk, so a full
    disk or a kill while writing leaves the previous set (e.g. a model and its record) consistent."""
    temps = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with _naming(path), os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in temps:
        os.replace(tmp, path)


def replace_dir(new: Path, target: Path) -> Path:
    """Swap a fully written directory `new` into place as `target`, keeping the old one until the swap
    is done; `recover_dir` undoes a swap a kill interrupted half-way."""
    old = target.with_name(f".{target.name}.old")
    _restore_old(target)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def recover_dir(target: Path) -> None:
    """Undo a half-done replace_dir and drop temp directories of exports that were killed."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    _restore_old(target)


def _restore_old(target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True):
    """An exclusive advisory lock (flock) on `path`: the first of several workers builds a cache
    entry, the others wait and then read it. Released by the OS if the holder is killed. With
    `wait=False` a lock someone holds raises BlockingIOError instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


SQLITE_HEADER = b"SQLite format 3\x00"


def seed_sqlite_url(url: str, template: Path | None) -> Path | None:
    """For a store at a `sqlite:///` URL whose file does not exist yet: seed it from `template` (seed_sqlite). The
    file's path when it still has to be created (no template to copy): the caller keeps it as the template once its
    library has created it; None otherwise (another backend, no template wanted, an existing file, a copy made)."""
    if template is None or not url.startswith("sqlite:///"):
        return None
    db = Path(url.removeprefix("sqlite:///"))
    return None if db.exists() or seed_sqlite(db, template) else db


def seed_sqlite(db: Path, template: Path) -> bool:
    """Make the new SQLite database `db` a copy of `template` (an empty store kept by keep_sqlite_template): opening
    a copy of a store takes milliseconds where creating its schema takes Optuna a third of a second and MLflow over
    one. False, and nothing done, when `db` exists or no sound template does. The copy is linked into place, so a
    process that creates `db` meanwhile keeps its own."""
    try:
        with open(template, "rb") as f:
            if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return False
    except OSError:
        return False
    if db.exists():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with _naming(db):  # a full disk is the new store's, not the template's (shutil names its source)
            try:
                shutil.copyfile(template, tmp)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror) from exc
        os.link(tmp, db)
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


def keep_sqlite_template(db: Path, template: Path) -> None:
    """Keep the store `db`, just created and still empty, as `template` for seed_sqlite (SQLite's backup API: a
    consistent copy while it is open; written atomically)."""
    import sqlite3

    template.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=template.parent, prefix=f".{template.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        os.replace(tmp, template)
    finally:
        Path(tmp).unlink(missing_ok=True)
