"""What autoquant stores on Optuna trials and studies: the one owner of those keys and their types.

Everything else reads and writes them through these functions. The key strings are part of the
storage format: studies written by an earlier autoquant are resumed with them, so they never change.
"""

from __future__ import annotations

import math
import warnings

import optuna
from optuna.trial import TrialState

from ..measure import Measurement
from ..quantize.plan import QuantPlan


class TrialKey:
    PLAN = "plan"  # the plan's spec (QuantPlan.to_spec)
    RESULT = "result"  # Measurement as a dict (numbers as floats)
    LABEL = "label"  # the warm start's name, for enqueued trials
    FAIL_REASON = "fail_reason"
    DUPLICATE_OF = "duplicate_of"  # number of the trial that measured the same plan first
    SUMMARY = "summary"  # the result in words and units, for people reading the study in optuna-dashboard
    PRUNED = "pruned"  # stopped early: {"prefix_accuracy", "prefix_samples", "prefix_nmse", "prefix_stderr", "reason"}


class StudyKey:
    PARENT_RUN = "mlflow_parent_run_id"
    TIMED_AFTER = "timed_after"  # {trial number: [latency ms, ratio to FP32, rounds]} of points timed after the study
    CONFIRMED = "confirmed"  # {trial number: [samples, accuracy, drop, drop's stderr]} on the confirmation split
    PAGE = "page"  # what the study page shows that no trial holds (Study.page_facts): machine, phases, layer ms, ...
    # The study's fingerprint (study.study_fingerprint) is stored under its own names: model_sha256,
    # objective, metric, calibration_sha256, eval_sha256, confirm_sha256, activation_type, weight_range.


Trial = optuna.Trial | optuna.trial.FrozenTrial


def plan(trial: Trial) -> QuantPlan:
    spec = trial.user_attrs[TrialKey.PLAN]
    return QuantPlan.from_spec(spec, list(spec["layers"]))


def plan_spec(trial: Trial) -> dict | None:
    return trial.user_attrs.get(TrialKey.PLAN)


def result(trial: Trial) -> Measurement | None:
    raw = trial.user_attrs.get(TrialKey.RESULT)
    if raw is None:
        return None
    return Measurement(**{"model_sha256": "", **raw, "latency_rounds": int(raw.get("latency_rounds", 0))})


def label(trial: Trial) -> str:
    return trial.user_attrs.get(TrialKey.LABEL, "")


def fail_reason(trial: Trial) -> str:
    return trial.user_attrs.get(TrialKey.FAIL_REASON, "")


def duplicate_of(trial: Trial) -> int | None:
    return trial.user_attrs.get(TrialKey.DUPLICATE_OF)


def set_plan(trial: optuna.Trial, value: QuantPlan) -> None:
    trial.set_user_attr(TrialKey.PLAN, value.to_spec())


def set_result(trial: optuna.Trial, value: Measurement) -> None:
    trial.set_user_attr(TrialKey.RESULT, value.to_dict())
    trial.set_user_attr(TrialKey.SUMMARY, f"accuracy {value.accuracy:.2f} % (drop {value.accuracy_drop:+.2f} pt), "
                                          f"latency {value.latency_ratio:.2f}x FP32, bitops {value.bitops_fraction:.2%} "
                                          f"of FP32, {value.size_bytes / 1e6:.2f} MB")


def set_failure(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(TrialKey.FAIL_REASON, reason)


def set_pruned(trial: optuna.Trial, prefix_accuracy: float, samples: int, reason: str, prefix_nmse: float,
               prefix_stderr: float = math.nan) -> None:
    trial.set_user_attr(TrialKey.PRUNED, {"prefix_accuracy": prefix_accuracy, "prefix_samples": samples, "reason": reason,
                                          "prefix_nmse": prefix_nmse, "prefix_stderr": prefix_stderr})


def pruned(trial: Trial) -> dict | None:
    return trial.user_attrs.get(TrialKey.PRUNED)


def figures(trial: Trial, fp32_accuracy: float, max_drop: float) -> tuple[float, float] | None:
    """(output NMSE, accuracy drop) of a complete trial, or of a stopped one from its prefix: a stopped plan
    cannot meet the limit (its bound said so), so its drop counts as above the limit even where the prefix's own
    figure is not."""
    if trial.state == TrialState.COMPLETE and (r := result(trial)) is not None:
        return r.output_mse, r.accuracy_drop
    stopped = pruned(trial) if trial.state == TrialState.PRUNED else None
    if stopped is None or stopped.get("prefix_nmse") is None or not math.isfinite(float(stopped["prefix_nmse"])):
        return None
    return float(stopped["prefix_nmse"]), max(fp32_accuracy - float(stopped["prefix_accuracy"]), math.nextafter(max_drop, math.inf))


def set_duplicate_of(trial: optuna.Trial, number: int) -> None:
    trial.set_user_attr(TrialKey.DUPLICATE_OF, number)


def enqueue_attrs(warm_start_label: str) -> dict[str, str]:
    """The attributes an enqueued warm start carries (Study.enqueue_trial's user_attrs)."""
    return {TrialKey.LABEL: warm_start_label}


def fingerprint_changes(study: optuna.Study, fingerprint: dict[str, str], *, record: bool = False) -> list[str]:
    """The fingerprint keys whose stored value differs from `fingerprint`; with `record`, keys the study
    lacks (studies made by an earlier autoquant) are stored."""
    stored = study.user_attrs
    if record:
        for key in fingerprint.keys() - stored.keys():
            study.set_user_attr(key, fingerprint[key])
    return [k for k, v in fingerprint.items() if stored.get(k, v) != v]


def stored(study: optuna.Study, key: str) -> str:
    return str(study.user_attrs.get(key, ""))


def parent_run(study: optuna.Study) -> str | None:
    return study.user_attrs.get(StudyKey.PARENT_RUN)


def timed_after(study: optuna.Study) -> dict[int, tuple[float, float, int]]:
    """(ms, ratio, rounds) by trial number; rounds 0 for figures stored before autoquant recorded them."""
    return {int(k): (float(v[0]), float(v[1]), int(v[2]) if len(v) > 2 else 0)
            for k, v in study.user_attrs.get(StudyKey.TIMED_AFTER, {}).items()}


def add_timed_after(study: optuna.Study, timed: dict[int, tuple[float, float, int]]) -> None:
    merged = {str(k): list(v) for k, v in {**timed_after(study), **timed}.items()}
    study.set_user_attr(StudyKey.TIMED_AFTER, merged)


def set_parent_run(study: optuna.Study, run_id: str) -> None:
    study.set_user_attr(StudyKey.PARENT_RUN, run_id)


def name_metrics(study: optuna.Study, accuracy: str, cost: str) -> None:
    """The names optuna-dashboard shows for the study's two values (set once: a resumed study keeps them)."""
    if study.metric_names is None:
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([accuracy, cost])


def page_facts(study: optuna.Study) -> dict:
    return dict(study.user_attrs.get(StudyKey.PAGE, {}))


def set_page_facts(study: optuna.Study, facts: dict) -> None:
    study.set_user_attr(StudyKey.PAGE, facts)


def confirmations(study: optuna.Study) -> dict[int, list[float]]:
    """The trials confirmed on the confirmation split: their [samples, accuracy, drop, drop's stderr]."""
    return {int(k): list(v) for k, v in study.user_attrs.get(StudyKey.CONFIRMED, {}).items()}


def add_confirmation(study: optuna.Study, trial: int, values: list[float]) -> None:
    merged = {str(k): v for k, v in {**confirmations(study), trial: values}.items()}
    study.set_user_attr(StudyKey.CONFIRMED, merged)


def drop_and_stderr(trial: Trial, fp32_accuracy: float, eval_samples: int) -> tuple[float, float] | None:
    """(drop, its standard error on the whole eval set) of a complete trial, or of a stopped one from its prefix (the
    prefix's standard error scaled to the eval set's size); None without them."""
    if trial.state == TrialState.COMPLETE and (r := result(trial)) is not None:
        return r.accuracy_drop, r.drop_stderr
    stopped = pruned(trial) if trial.state == TrialState.PRUNED else None
    if stopped is None or not math.isfinite(float(stopped.get("prefix_stderr", math.nan))):
        return None
    scale = math.sqrt(float(stopped["prefix_samples"]) / eval_samples)
    return fp32_accuracy - float(stopped["prefix_accuracy"]), float(stopped["prefix_stderr"]) * scale
