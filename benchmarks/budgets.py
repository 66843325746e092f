"""Budgets that mean what they say, on a bed (default: the photo bed), each a fresh study from cold per-study caches:
- `search.timeout_minutes: T`: the study's wall time from the command's start (calibration and tables included) to
  the end of its trials, and to its export; whether it exported a model, and how many trials ran;
- a budget of N trials: which proposers' plans ran (the ladder's rungs past the first, the refine rounds' and
  the `guided-*` plans are the error model's), and the export;
- with a `finetune:` section at a limit (the study resumed at the limit's defaults, fine-tuning as its last
  stage): the time fine-tuning added, and the fine-tuned model's drop and latency beside the PTQ export's.

    pip install -e ".[bench]" && python benchmarks/budgets.py [--beds efficientnet-lite1] [--timeout 6] [--trials 10]
        [--finetune-limit 0.5] [--finetune-minutes 15]

Writes benchmarks/results/budgets.json and prints one line per study.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import beds
from common import run_beds
from studies import cold_study

from autoquant import load_experiment, search

ERROR_MODEL = ("ladder-", "refined-", "front-", "descent-", "guided-")


def labels(result) -> list[str]:
    import optuna

    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{result.out_dir / 'study.db'}")
    return [t.user_attrs.get("label", "") for t in study.trials if t.state.is_finished()]


def error_model_plans(ran: list[str]) -> int:
    """The finished trials whose plan the error model made (every ladder rung but the first, all-INT8)."""
    return sum(label.startswith(ERROR_MODEL) and label != "ladder-0" for label in ran)


def bed_entry(bed: str, args, work: Path, save) -> dict:
    exp = beds.experiment(bed)
    exp["cache_dir"] = str(work / "cache")
    entry = {**beds.describe(exp), "runs": {}}
    t0 = time.perf_counter()
    _, info, result = cold_study(exp, work, "timeout", timeout_minutes=args.timeout, trials=1000)
    entry["runs"]["timeout"] = {**info, "timeout_minutes": args.timeout, "wall_seconds": time.perf_counter() - t0,
                                "exported": result.met, "trials_run": len(labels(result))}
    print(f"{bed} timeout {args.timeout} min: {info['phases']['trials']:.0f} s of trials, "
          f"{time.perf_counter() - t0:.0f} s with the export, exported {result.met}", flush=True)
    save(entry)
    _, info, result = cold_study(exp, work, "trials", trials=args.trials)
    ran = labels(result)
    entry["runs"]["trials"] = {**info, "budget": args.trials, "labels": ran, "error_model_plans": error_model_plans(ran)}
    print(f"{bed} {args.trials} trials: {error_model_plans(ran)} error-model plans ({', '.join(ran)})", flush=True)
    save(entry)
    if args.finetune_limit is not None:
        limit = args.finetune_limit
        _, info, result = cold_study(exp, work, f"ft-{limit:g}", max_accuracy_drop=limit)
        tuned_exp = {**beds.experiment_with(exp, max_accuracy_drop=limit),
                     "finetune": {"timeout_minutes": args.finetune_minutes}}
        t1 = time.perf_counter()
        tuned = search(load_experiment(beds.write(tuned_exp, work, f"ft-{limit:g}")), result.out_dir)
        row = {**info, "limit": limit, "finetune_minutes": args.finetune_minutes,
               "finetune_hint": None if result.finetune_hint is None else vars(result.finetune_hint),
               "added_seconds": time.perf_counter() - t1}
        if tuned.finetuned is not None:
            a = tuned.finetuned.after
            row["finetuned"] = {"trial": tuned.finetuned_trial, "drop": a.accuracy_drop, "latency_ratio": a.latency_ratio,
                                "feasible": a.accuracy_drop <= limit, "steps": len(tuned.finetuned.losses),
                                "ptq_drop": tuned.finetuned.before.get("accuracy_drop"),
                                "seconds": tuned.finetuned.seconds}
        entry["runs"]["finetune"] = row
        print(f"{bed} finetune at {limit:g}: {row.get('finetuned')} in {row['added_seconds']:.0f} s more", flush=True)
        save(entry)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beds", nargs="+", default=["efficientnet-lite1"], choices=beds.BEDS)
    p.add_argument("--timeout", type=float, default=6.0, help="search.timeout_minutes of the first study")
    p.add_argument("--trials", type=int, default=10, help="the trial budget of the second")
    p.add_argument("--finetune-limit", type=float, help="a third study at this limit, then fine-tuned")
    p.add_argument("--finetune-minutes", type=float, default=15.0)
    p.add_argument("--work", help="keep studies and models here instead of a temporary directory")
    args = p.parse_args()
    run_beds("budgets", args.beds, args.work, lambda bed, work, save: bed_entry(bed, args, work, save))


if __name__ == "__main__":
    main()
