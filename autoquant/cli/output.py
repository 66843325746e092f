"""What the search-like commands (search, export) print: the summary table, the JSON line, the fine-tuned model's
line, and the exit code of an outcome."""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict

from ..config import Cost

log = logging.getLogger("autoquant")
EXIT_NO_PLAN = 3
SUMMARY_ROWS = 8  # rows of the summary table: the fastest plans within the limit, then the front's beyond it


def summary_table(result) -> str:
    """The plans a user chooses among: the fastest within the limit (timed side by side with FP32), the export
    marked, then the trade-off beyond the limit — the front's plans in the objective's cost that lose more."""
    within = {p.number for p in result.fastest}
    beyond = sorted((p for p in result.front if p.number not in within), key=lambda p: p.result.accuracy_drop)
    lines = [f"{'trial':>5}  {'accuracy':>8}  {'drop':>6}  {'bitops':>7}  {'latency':>8}  {'size KB':>8}  int8 layers  plan"]
    for p in result.fastest[:SUMMARY_ROWS] + beyond[:SUMMARY_ROWS]:
        r = p.result
        mark = " <- export" if result.chosen is not None and p.number == result.chosen.number and result.met else ""
        mark += " (over the limit)" if p.plan.quantized and p.number not in within else ""
        latency = f"{r.latency_ratio:7.2f}x" if r.latency_ratio == r.latency_ratio else f"{'-':>8}"
        lines.append(f"{p.number:5d}  {r.accuracy:8.2f}  {r.accuracy_drop:+6.2f}  {r.bitops_fraction:7.4f}  "
                     f"{latency}  {r.size_bytes / 1024:8.1f}  {len(p.plan.quantized):>4}/{len(p.plan.names):<6} "
                     f"{p.label}{mark}")
    return "\n".join(lines)


def result_json(result) -> dict:
    chosen = result.chosen
    c = result.confirmation
    return {"completed": result.completed, "stopped_early": result.stopped_early, "met": result.met,
            "fp32_accuracy": result.fp32_accuracy,
            "confirmed": None if c is None else {"trial": c.trial, "samples": c.samples, "accuracy_drop": c.drop,
                                                 "drop_stderr": c.stderr, "interval": list(c.interval)},
            "refused": [{"trial": r.trial, "accuracy_drop": r.drop, "drop_stderr": r.stderr} for r in result.refused],
            "slower_than_fp32": [{"trial": p.number, "latency_ratio": p.result.latency_ratio} for p in result.slower],
            "finetune_hint": None if result.finetune_hint is None else asdict(result.finetune_hint),
            "chosen_trial": chosen.number if chosen else None,
            "chosen": asdict(chosen.result) if chosen else None,
            "export": str(result.export.model_path) if result.export else None,
            "finetuned": finetuned_json(result.finetuned, result.finetuned_trial)}


def finetuned_json(r, trial: int | None) -> dict | None:
    if r is None:
        return None
    a = r.after
    return {"trial": trial, "ptq_accuracy_drop": r.before.get("accuracy_drop", math.nan), "accuracy": a.accuracy,
            "accuracy_drop": a.accuracy_drop, "latency_ratio": a.latency_ratio, "output_mse": a.output_mse,
            "seconds": r.seconds, "resumed_at": r.resumed_at, "loss_first": r.losses[0], "loss_last": r.losses[-1],
            "chosen_step": r.chosen_step, "held_out": r.held_out,
            "model": str(a.model_path), "record": str(a.record_path), "mlflow_run_id": r.mlflow_run_id}


def finetuned_line(r) -> str:
    a, before = r.after, r.before.get("accuracy_drop", math.nan)
    resumed = f" (resumed at step {r.resumed_at})" if r.resumed_at else ""
    chosen = f", kept step {r.chosen_step}" if r.chosen_step != len(r.losses) else ""
    return (f"fine-tuned {len(r.losses)} steps in {r.seconds:.0f} s{resumed}{chosen}: accuracy drop {before:.2f} -> "
            f"{a.accuracy_drop:.2f} points, latency {a.latency_ratio:.2f}x FP32; wrote {a.model_path} and {a.record_path}")


def report_search(result, objective: Cost, args) -> int:
    """Print a search's outcome (table or JSON); exit 3 when no quantized plan met the constraint."""
    if result.tracking_error:
        log.warning("warning: %s", result.tracking_error)
    if args.json:
        print(json.dumps(result_json(result)))
    else:
        stopped = f" (and {result.stopped_early} stopped early: too far over the limit)" if result.stopped_early else ""
        print(f"\n{result.completed} trials{stopped}, FP32 accuracy {result.fp32_accuracy:.2f} %; the fastest plans within "
              f"the limit, then the {objective.value} front beyond it (latency as a ratio to FP32):")
        print(summary_table(result))
    tuned = result.finetuned
    tuned_within = tuned is not None and tuned.after.accuracy_drop <= result.max_drop
    if tuned is not None and not args.json:
        print(f"trial {result.finetuned_trial} {finetuned_line(tuned)}")
    if not result.met and tuned_within:
        print("autoquant: no plan met the limit after post-training quantization; the fine-tuned model above does",
              file=sys.stderr)
        return 0
    if result.finetune_hint is not None:
        log.info("%s", result.finetune_hint.describe(result.max_drop))
    if not result.met:
        print(f"autoquant: {no_plan_message(result)}", file=sys.stderr)
        return EXIT_NO_PLAN
    if not args.json:
        e = result.export
        print(f"\nexported trial {result.chosen.number}: accuracy {e.accuracy:.2f} % (drop {e.accuracy_drop:+.2f} pt), "
              f"bitops {e.bitops_fraction * 100:.2f} % of FP32, latency {e.latency_ratio:.2f}x FP32")
        for r in result.refused:
            print(f"trial {r.trial}, faster, was not exported: its {r.describe(result.max_drop)}")
        if result.confirmation is not None:
            print(f"confirmed: {result.confirmation.describe(result.max_drop)}")
        print(f"wrote {e.model_path} and {e.record_path}")
    return 0


def no_plan_message(result) -> str:
    """Why nothing was exported, from what the trials did: none completed a quantized plan because they failed,
    because the eval set's first samples showed none could meet the limit, or the closest missed it."""
    c, limit = result.chosen, result.max_drop
    beat = f" (a negative limit asks a plan to beat FP32 by {-limit:g} points)" if limit < 0 else ""
    if result.refused:
        first = result.refused[0]
        return (f"no plan's drop held on the {first.samples} confirmation samples: {len(result.refused)} plan(s) met the "
                f"limit on the eval set, the first (trial {first.trial}) with {first.describe(limit)}. Raise "
                "max_accuracy_drop, give more eval data (data.eval_size), or set data.confirm_size: 0 to export on the "
                "eval figure alone")
    if result.slower:
        first = result.slower[0]
        return (f"{len(result.slower)} plan(s) met the limit, but each ran slower than the FP32 model beside it (the "
                f"fastest, trial {first.number}, at {first.result.latency_ratio:.2f}x): keep the FP32 model, or raise "
                "max_accuracy_drop so that more layers can run integer kernels")
    if c is not None:
        return (f"no quantized plan meets the accuracy constraint; closest: trial {c.number} with a drop of "
                f"{c.result.accuracy_drop:.2f} pt{beat}. Raise max_accuracy_drop or run more trials")
    if result.stopped_early:
        return (f"no quantized plan meets a drop of at most {limit:g} pt{beat}: {result.stopped_early} trial(s) were "
                "stopped early because the first eval samples already showed they could not. Raise "
                "max_accuracy_drop")
    return ("no quantized plan completed (every trial failed or none ran); see fail_reason in the trial table or "
            "MLflow, and run more trials")


def register_if_asked(result, args) -> None:
    if args.register and result.met:
        from ..api import register

        version = register(result, args.register, args.alias)
        alias = f", alias '{args.alias}'" if args.alias else ""
        print(f"registered {args.register} version {version}{alias} in {result.tracking_uri}")
