"""Export a chosen plan: INT8 model + record file, re-measured, swapped into place atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..engine import QuantizeResult, Tuned, quantize
from ..errors import AutoquantError, ConfigError
from ..fileio import atomic_write_bytes, replace_dir
from ..finetune import weights as tuned_weights
from ..measure import Measurement
from ..quantize.plan import QuantPlan
from ..search.select import ScoredPlan
from ..workspace import Workspace

MARKER = ".autoquant-export"
OWNED = frozenset({"model.int8.onnx", "record.json", MARKER, tuned_weights.FILE})


def check_export_target(out_dir: Path) -> None:
    """An export replaces its directory whole, so it may only replace one that holds nothing but an
    earlier export's files: never a run directory, never a user's folder."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"export target {out_dir} is a file: give a directory for the model and record")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in OWNED)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise ConfigError(f"export target {out_dir} holds files autoquant did not write ({shown}) and an export "
                          "replaces its directory: give a new or empty --out")  # fmt: skip


def export_plan(ws: Workspace, chosen: ScoredPlan, out_dir: Path, notes: list[str] = ()) -> QuantizeResult:
    """Write `out_dir/model.int8.onnx` and `out_dir/record.json` for the chosen plan.

    The model is rebuilt from the same cache the trial used, so it is the model the trial measured: the
    same bytes (engine.quantize checks), so the trial's figures are its figures. A trial stored by an older
    autoquant has no model hash: its model is measured again and must score the trial's accuracy.
    """
    return write_export(ws, chosen.plan, out_dir, f"trial {chosen.number}", measured=chosen.result, notes=notes)


def write_export(ws: Workspace, plan: QuantPlan, out_dir: Path, origin: str, *, measured: Measurement | None = None,
                 notes: list[str] = (), tuned: Tuned | None = None) -> QuantizeResult:  # fmt: skip
    """Build, measure and write the plan's model (engine.quantize) into a new directory that replaces `out_dir`
    whole once every file is written; `measured`, a trial's figures, must be the rebuilt model's."""
    out_dir = Path(out_dir)
    check_export_target(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result = quantize(ws, plan, tmp, measured, notes, tuned)
    atomic_write_bytes(tmp / MARKER, f"written by autoquant: {origin}\n".encode())
    if measured is not None and result.accuracy != measured.accuracy:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AutoquantError(
            f"the rebuilt model of {origin} scores {result.accuracy:.3f}, the trial reported "
            f"{measured.accuracy:.3f}: the eval data or the cache changed since the study ran; re-run the search"
        )
    replace_dir(tmp, out_dir)
    return QuantizeResult(**{**result.__dict__, "model_path": out_dir / result.model_path.name,
                             "record_path": out_dir / result.record_path.name})  # fmt: skip
