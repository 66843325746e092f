"""Export a chosen plan: INT8 model + record file, re-measured, swapped into place atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .api import QuantizeResult, quantize
from .errors import AutoquantError
from .fileio import replace_dir
from .search.pareto import ScoredPlan
from .workspace import Workspace


def export_plan(ws: Workspace, chosen: ScoredPlan, out_dir: Path) -> QuantizeResult:
    """Write `out_dir/model.int8.onnx` and `out_dir/record.json` for the chosen plan.

    The model is rebuilt from the same cache the trial used, so it is the model the trial measured;
    its accuracy is re-measured here and must equal the trial's.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result = quantize(ws, chosen.plan, tmp)
    if result.accuracy != chosen.result.accuracy:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AutoquantError(
            f"the rebuilt model of trial {chosen.number} scores {result.accuracy:.3f}, the trial reported "
            f"{chosen.result.accuracy:.3f}: the eval data or the cache changed since the study ran; re-run the search"
        )
    replace_dir(tmp, out_dir)
    return QuantizeResult(**{**result.__dict__, "model_path": out_dir / result.model_path.name,
                             "record_path": out_dir / result.record_path.name})  # fmt: skip
