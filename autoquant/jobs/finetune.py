"""Fine-tune an exported plan (finetune/): `autoquant finetune RUN_DIR`, or the last stage of a search whose
experiment has a `finetune` section. Training starts from the plan's recovered weights and biases; the plan built
from the result is the export's without its recovery choices (the weights learnt replace the clipping, rounding
and bias shifts); the fine-tuned model is built, measured (paired latency with FP32) and written like every
export, with its FP32 weights beside the record."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig, Experiment, FinetuneConfig, load_experiment
from ..data import Dataset, concat
from ..engine import QuantizeResult, Tuned
from ..errors import ConfigError, PlanError
from ..fileio import recover_dir
from ..finetune.weights import with_weights
from ..quantize import modes
from ..quantize.plan import QuantPlan
from ..quantize.recovery import recovered_values
from ..record import FinetuneRecord, Record
from ..report.html import refresh_study_page
from ..runtime import session
from ..search import RunPaths, ScoredPlan, Study, check_export_target, write_export
from ..search import trial_attrs as attrs
from ..sources import DATA_SOURCES, SourceContext, bind_inputs, experiment_dir
from ..workspace import Workspace

log = logging.getLogger(__name__)
CHECKPOINT = "finetune.ckpt"  # in the run directory: a killed fine-tuning resumes from it
HINT_GAIN = 1.1  # a plan at least this much faster than the export is worth a fine-tuning hint
UNLABELED_MAX = 50_000  # samples read from finetune.unlabeled at most (a loader may never end)


@dataclass(frozen=True)
class FinetuneResult:
    before: dict[str, float]  # the plan's export before fine-tuning: the record's objectives
    after: QuantizeResult  # the fine-tuned export
    losses: tuple[float, ...]
    held_out: tuple[tuple[int, float], ...]  # (step, output NMSE on the held-out samples)
    chosen_step: int  # whose weights were exported
    seconds: float
    resumed_at: int
    mlflow_run_id: str | None = None
    tracking_error: str = ""


def trainable(plan: QuantPlan) -> QuantPlan:
    """The plan fine-tuning builds its weights with: each mode's mirrored choice (recovery fitted on the FP32 weights
    dropped: the weights fine-tuning learns replace the rounding and bias shifts it would apply)."""
    return QuantPlan(tuple((n, modes.get(c.mode).mirrored(c).choice if c.quantize else c) for n, c in plan.choices))


def mirrored(plan: QuantPlan) -> bool:
    """Whether fine-tuning can mirror every quantized layer of the plan (Mode.mirrored)."""
    return all(modes.get(c.mode).mirrored(c) is not None for _, c in plan.choices if c.quantize)


def training_data(ws: Workspace, settings: FinetuneConfig) -> Dataset:
    """The samples fine-tuning learns from (FinetuneConfig.data and .unlabeled); never an eval or confirmation one."""
    s = ws.splits
    if settings.data == "train" and s.train is None:
        raise ConfigError("finetune.data is train but the experiment reserves no training samples: set data.train_size "
                          "or use finetune.data: all")
    parts = {"calibration": [s.calibration], "train": [s.train],
             "all": [p for p in (s.train, s.calibration, s.rest) if p is not None]}[settings.data]
    if settings.unlabeled is not None:
        parts.append(unlabeled_data(ws, settings.unlabeled))
    return concat(parts) if len(parts) > 1 else parts[0]


def unlabeled_data(ws: Workspace, section: DataConfig) -> Dataset:
    """All samples of the `finetune.unlabeled` data section, bound to the model's inputs, but any equal to an eval or
    confirmation sample (a folder that overlaps the scored data must not train on what is scored)."""
    source = DATA_SOURCES.get(section.source)
    loaded = bind_inputs(source(section, SourceContext(experiment_dir(ws.exp), ws.exp.cache,
                                                         tuple(i.name for i in ws.prepared.inputs), UNLABELED_MAX)),
                         ws.prepared.inputs, "finetune.unlabeled")
    scored = set(ws.splits.eval.sample_digests())
    if ws.splits.confirm is not None:
        scored |= set(ws.splits.confirm.sample_digests())
    keep = np.array([d not in scored for d in loaded.sample_digests()])
    if not keep.any():
        raise ConfigError(f"every sample of finetune.unlabeled ({section.path or section.loader}) is an eval or "
                          "confirmation sample: point it at other data")
    if not keep.all():
        log.warning("finetune.unlabeled: %d of its %d samples are eval or confirmation samples: left out",
                    int((~keep).sum()), len(keep))
    return loaded.subset(np.flatnonzero(keep)) if not keep.all() else loaded


def teacher_outputs(ws: Workspace, data: Dataset, outputs: list[str]) -> dict[str, np.ndarray]:
    """The FP32 model's outputs on `data`, batch on axis 0."""
    sess = session(ws.fp32_model, ws.evaluator.threads)
    parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    for values, _, n in ws.calibration_batches.run(sess, outputs, data, "fine-tuning", shown="FP32 outputs to fine-tune towards"):
        for o, v in zip(outputs, values):
            parts[o].append(np.asarray(v, np.float32)[:n])
    return {o: np.concatenate(v) for o, v in parts.items()}


def finetune_plan(ws: Workspace, plan: QuantPlan, settings: FinetuneConfig, out_dir: Path, checkpoint: Path,
                  before: dict[str, float], tracker=None) -> FinetuneResult:
    """Fine-tune `plan` on the data `settings.data` names and write its export to `out_dir`; `tracker(settings,
    losses, result, before)` logs the run (MLflow) and returns its id."""
    from ..finetune.mirror import Mirror
    from ..finetune.train import drop_checkpoints, train

    check_export_target(out_dir)
    # Training starts from the plan's recovered weights and biases (clipped, rounded, corrected), not the FP32 ones:
    # the plan as its PTQ model computes, less the error the recovery already took away
    start = recovered_values(ws.model, ws.graph, plan, ws.weight_range, ws.recovery)
    plan = trainable(plan)
    acts, _ = ws.activations(plan)
    mirror = Mirror(with_weights(ws.model, start) if start else ws.model, ws.graph, plan,
                    ws.build(plan, acts, start or None), ws.weight_range, settings.learn_scales)
    calib = training_data(ws, settings)
    teacher = teacher_outputs(ws, calib, mirror.module.outputs)
    log.info("fine-tuning a plan with %d of %d layers quantized on %d unlabeled samples (%s%s): %s steps of %d, %s",
             len(plan.quantized), len(plan.names), len(calib), settings.data, " + finetune.unlabeled" if settings.unlabeled
             else "", settings.steps or f"up to {settings.timeout_minutes:g} minutes of", settings.batch_size,
             f"lr {settings.lr:g}" if settings.lr else "each tensor's own step")
    trained = train(mirror, calib, teacher, settings, checkpoint, f"{ws.model_key}:{calib.sha256()}:{plan.key()}")
    losses = trained.losses
    held = dict(trained.held_out).get(trained.chosen_step)
    which = settings.data + ("+unlabeled" if settings.unlabeled else "")
    record = FinetuneRecord(trained.steps, settings.lr, settings.batch_size, settings.seed, which,
                            settings.learn_scales, settings.validation, calib.sha256(), len(calib),
                            float(np.mean(losses[:10])) if losses else math.nan,
                            float(np.mean(losses[-10:])) if losses else math.nan, trained.chosen_step, held,
                            trained.seconds, "", "")
    result = write_export(ws, plan, out_dir, f"fine-tuning ({trained.steps} steps)",
                          tuned=Tuned(trained.weights, record, trained.activations))
    drop_checkpoints(checkpoint)
    run_id, error = None, ""
    if tracker is not None:
        try:
            run_id = tracker(settings, losses, trained.held_out, result, before)
        except Exception as exc:  # noqa: BLE001 - the export is on disk: tracking must not undo it
            error = f"MLflow tracking failed ({exc.__class__.__name__}: {exc}); the fine-tuned export is complete"
    return FinetuneResult(before, result, losses, trained.held_out, trained.chosen_step, trained.seconds,
                          trained.resumed_at, run_id, error)


def candidates(points: list[ScoredPlan], export: ScoredPlan | None, max_drop: float, settings: FinetuneConfig,
               predicted: Callable[[QuantPlan], float]) -> list[ScoredPlan]:
    """What a search fine-tunes: the quantized plans the latency table prices below the export (all of them when
    nothing was exported) whose drop misses the limit by at most `settings.margin`, cheapest first, at most
    `settings.candidates`; when there is none, the export itself (more accuracy at its speed)."""
    bar = predicted(export.plan) if export is not None else math.inf
    candidates = [p for p in points if p.plan.quantized and mirrored(p.plan)]
    near = sorted((p for p in candidates if max_drop < p.result.accuracy_drop <= max_drop + settings.margin
                   and predicted(p.plan) < bar), key=lambda p: (predicted(p.plan), p.result.accuracy_drop))
    picked: dict[str, ScoredPlan] = {}
    for p in near:
        picked.setdefault(p.plan.key(), p)
    return list(picked.values())[: settings.candidates] or ([export] if export is not None else [])


@dataclass(frozen=True)
class FinetuneHint:
    """A plan faster than the export whose drop after post-training quantization misses the limit by no more than
    fine-tuning recovers (FinetuneConfig.margin): what a `finetune:` section would try first."""

    trial: int
    drop: float  # its drop after post-training quantization
    latency_ratio: float
    export_ratio: float | None  # the export's (None: nothing was exported)

    def describe(self, max_drop: float) -> str:
        than = (f"{self.export_ratio / self.latency_ratio:.2f}x faster than the export ({self.export_ratio:.2f}x)"
                if self.export_ratio else "where no plan met the limit")
        return (f"fine-tuning may do better: trial {self.trial} runs at {self.latency_ratio:.2f}x FP32, {than}, but drops "
                f"{self.drop:.2f} pt after post-training quantization (limit {max_drop:g}); add a `finetune:` section to "
                "the experiment and rerun the same command: the study resumes and fine-tunes it as its last stage, within "
                "finetune.timeout_minutes")


def finetune_hint(points: list[ScoredPlan], export: ScoredPlan | None, max_drop: float,
                  predicted: Callable[[QuantPlan], float]) -> FinetuneHint | None:
    """The fastest measured plan a `finetune:` section would try (candidates, with the default settings) that ran
    at least HINT_GAIN times faster than the export (without one: faster than FP32); None when there is none."""
    bar = export.result.latency_ratio / HINT_GAIN if export is not None else 1.0
    faster = [p for p in candidates(points, export, max_drop, FinetuneConfig(), predicted)
              if p is not export and p.result.latency_ratio < bar]
    if not faster:
        return None
    best = min(faster, key=lambda p: p.result.latency_ratio)
    return FinetuneHint(best.number, best.result.accuracy_drop, best.result.latency_ratio,
                        export.result.latency_ratio if export is not None else None)


# A candidate after the first trains only if this share of finetune.timeout_minutes is left for it.
MIN_SHARE = 0.25


def finetune_stage(ws: Workspace, exp: Experiment, paths: RunPaths, points: list[ScoredPlan], export: ScoredPlan | None,
                   max_drop: float, predicted: Callable[[QuantPlan], float],
                   parent: str | None) -> tuple[ScoredPlan, FinetuneResult] | None:
    """A search's last stage: fine-tune its candidates (above) until one is within the limit; RUN/finetuned holds
    the last one fine-tuned. Returns (the plan fine-tuned, its result), or None without a candidate."""
    outcome, t0 = None, time.perf_counter()
    for chosen in candidates(points, export, max_drop, exp.finetune, predicted):
        settings = exp.finetune
        if settings.steps is None:  # finetune.timeout_minutes is the stage's: each candidate trains in what is left
            left = settings.timeout_minutes - (time.perf_counter() - t0) / 60
            if outcome is not None and left < settings.timeout_minutes * MIN_SHARE:
                log.info("fine-tuning: %.1f of finetune.timeout_minutes %g left, too little for trial %d", left,
                         settings.timeout_minutes, chosen.number)
                break
            settings = dataclasses.replace(settings, timeout_minutes=max(left, 0.1))
        log.info("fine-tuning trial %d (drop %.2f after post-training quantization)", chosen.number,
                 chosen.result.accuracy_drop)
        result = finetune_plan(ws, chosen.plan, settings, paths.root / "finetuned", paths.root / CHECKPOINT,
                               chosen.result.to_dict(), mlflow_logger(exp, paths, parent))
        outcome = (chosen, result)
        if result.after.accuracy_drop <= max_drop:
            break
    return outcome


def finetune_run(run_dir: Path, out: Path | None = None, *, steps: int | None = None, lr: float | None = None,
                 batch_size: int | None = None, record: Path | None = None,
                 minutes: float | None = None) -> FinetuneResult:
    """Fine-tune the export of the search in `run_dir` (or the plan of `record`)."""
    paths = RunPaths(Path(run_dir))
    exp = load_experiment(paths.experiment())
    record_path = Path(record) if record else paths.root / "best" / "record.json"
    if not record_path.is_file():
        raise ConfigError(f"{record_path} not found: fine-tuning starts from an export; run the search until it exports "
                          "one, or give --record")
    out = Path(out) if out else paths.root / "finetuned"
    check_export_target(out)
    recover_dir(out)
    rec = Record.load(record_path)
    study = Study.existing(exp, paths)
    try:
        if rec.model_sha256 != study.workspace.sha:
            raise PlanError(f"{record_path} was made for another model than {exp.source_file}'s: give that experiment's "
                            "run directory")
        base = exp.finetune or FinetuneConfig()
        overrides = {k: v for k, v in {"steps": steps, "lr": lr, "batch_size": batch_size,
                                       "timeout_minutes": minutes}.items() if v is not None}
        settings = dataclasses.replace(base, **overrides)
        result = finetune_plan(study.workspace, rec.plan(), settings, out, paths.root / CHECKPOINT, dict(rec.objectives),
                               mlflow_logger(exp, paths, study.parent_run))
        keep_on_page(study, result)
    finally:
        study.close()
    refresh_study_page(paths.root)
    return result


def keep_on_page(study: Study, result: FinetuneResult) -> None:
    """The fine-tuning's figures for the study page's notes."""
    a = result.after
    attrs.set_page_facts(study.optuna, {**attrs.page_facts(study.optuna), "finetuned": {
        "dir": str(a.model_path.parent), "drop_before": result.before.get("accuracy_drop"),
        "drop_after": a.accuracy_drop, "latency_ratio": a.latency_ratio, "steps": len(result.losses),
        "seconds": round(result.seconds, 1)}})


def mlflow_logger(exp: Experiment, paths: RunPaths, parent: str | None):
    """What logs a fine-tuning as an MLflow run nested under the study's (`parent`): settings, the loss of every step
    as a metric history, the export's figures and files."""

    def log_run(settings: FinetuneConfig, losses, held_out, result: QuantizeResult, before: dict[str, float]) -> str:
        from ..track.tracker import Tracker

        tracker = Tracker(exp.search.tracking_uri or paths.tracking, exp.name, paths.root / "mlartifacts")
        params = {**{f"finetune.{k}": str(v) for k, v in dataclasses.asdict(settings).items()}}
        metrics = {"accuracy": result.accuracy, "accuracy_drop": result.accuracy_drop,
                   "latency_ratio": result.latency_ratio, "ptq_accuracy_drop": before.get("accuracy_drop", np.nan)}
        return tracker.log_finetune(parent, params, list(losses), list(held_out), metrics,
                                    [result.model_path, result.record_path])

    return log_run

