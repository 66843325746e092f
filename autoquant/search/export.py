"""A study's export: the chosen plan's INT8 model and record file, rebuilt and checked to be the trial's model, swapped
into place atomically; the first plan within the limit exported at once (FirstExport); the note an export slower
than FP32 carries."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import optuna

from ..config import Cost
from ..engine import QuantizeResult, Tuned, quantize
from ..errors import AutoquantError, ConfigError
from ..fileio import atomic_write_bytes, replace_dir
from ..finetune import weights as tuned_weights
from ..measure import Measurement
from ..quantize.plan import QuantPlan
from ..workspace import Workspace
from . import trial_attrs as attrs
from .confirm import MAX_CANDIDATES, Confirmation, Confirmer, confirmed
from .select import ScoredPlan, slower_than_fp32, within

log = logging.getLogger(__name__)

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
                          "replaces its directory: give a new or empty --out")


def export_plan(ws: Workspace, chosen: ScoredPlan, out_dir: Path, notes: list[str] = (),
                confirmation: Confirmation | None = None) -> QuantizeResult:
    """Write `out_dir/model.int8.onnx` and `out_dir/record.json` for the chosen plan; the record holds its
    `confirmation` on the confirmation split, if any.

    The model is rebuilt from the same cache the trial used, so it is the model the trial measured: the
    same bytes (engine.quantize checks), so the trial's figures are its figures. A trial stored by an older
    autoquant has no model hash: its model is measured again and must score the trial's accuracy.
    """
    confirmed = {} if confirmation is None else {"confirmed_accuracy": confirmation.accuracy,
                                                 "confirmed_accuracy_drop": confirmation.drop,
                                                 "confirmed_drop_stderr": confirmation.stderr,
                                                 "confirm_samples": confirmation.samples}
    return write_export(ws, chosen.plan, out_dir, f"trial {chosen.number}", measured=chosen.result,
                        notes=[*notes, *slower_note(chosen)], objectives=confirmed)


def slower_note(chosen: ScoredPlan) -> list[str]:
    """The note (and a warning) an export slower than FP32 on this machine carries: under objective bitops or
    size it may be the export (select.within), for a target where those are the cost."""
    if not slower_than_fp32(chosen):
        return []
    note = (f"runs at {chosen.result.latency_ratio:.2f}x the FP32 model's latency on the machine that searched: "
            "exported for its bitops or size, check its speed on the target")
    log.warning("warning: the export %s", note)
    return [note]


def write_export(ws: Workspace, plan: QuantPlan, out_dir: Path, origin: str, *, measured: Measurement | None = None,
                 notes: list[str] = (), tuned: Tuned | None = None, objectives: dict[str, float] | None = None) -> QuantizeResult:
    """Build, measure and write the plan's model (engine.quantize) into a new directory that replaces `out_dir`
    whole once every file is written; `measured`, a trial's figures, must be the rebuilt model's."""
    out_dir = Path(out_dir)
    check_export_target(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result = quantize(ws, plan, tmp, measured, notes, tuned, objectives)
    atomic_write_bytes(tmp / MARKER, f"written by autoquant: {origin}\n".encode())
    if measured is not None and result.accuracy != measured.accuracy:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AutoquantError(
            f"the rebuilt model of {origin} scores {result.accuracy:.3f}, the trial reported "
            f"{measured.accuracy:.3f}: the eval data or the cache changed since the study ran; re-run the search"
        )
    replace_dir(tmp, out_dir)
    return QuantizeResult(**{**result.__dict__, "model_path": out_dir / result.model_path.name,
                             "record_path": out_dir / result.record_path.name})


class FirstExport:
    """Optuna callback: the first quantized plan that meets the constraint is exported at once (to the export
    directory the study's end replaces with its best), so an unattended run has a usable model as soon as
    one exists."""

    def __init__(self, ws: Workspace, max_drop: float, objective: Cost, out: Path, started: float):
        self.ws, self.max_drop, self.objective, self.out, self.t0 = ws, max_drop, objective, out, started
        self.seconds: float | None = None
        self.confirmer, self.tries = Confirmer(ws), 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.seconds is not None or trial.state != optuna.trial.TrialState.COMPLETE:
            return
        candidate = ScoredPlan(trial.number, attrs.label(trial), attrs.plan(trial), attrs.result(trial))
        if not within(candidate, self.max_drop, self.objective):
            return
        confirmation = None
        if self.confirmer.available:  # only a plan whose drop holds on the confirmation samples is exported
            if self.tries >= MAX_CANDIDATES:
                return
            self.tries += 1
            confirmation = confirmed(study, self.confirmer, candidate)
            if not confirmation.passes(self.max_drop):
                log.info("trial %d meets the limit on the eval set, but its %s: not exported", trial.number,
                         confirmation.describe(self.max_drop))
                return
        export_plan(self.ws, candidate, self.out, confirmation=confirmation)
        self.seconds = time.perf_counter() - self.t0
        log.info("trial %d meets the limit: exported to %s after %.0f s; the study goes on", trial.number, self.out,
                 self.seconds)
