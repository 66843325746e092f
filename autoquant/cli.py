"""Command line: one function per command, `main() -> int`. User mistakes exit 2 with one line, no traceback."""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from .config import Cost
from .errors import AutoquantError
from .quantize.plan import LayerChoice

log = logging.getLogger("autoquant")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and embedding programs swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _configure_logging() -> None:
    """The library logs to the "autoquant" logger; on the command line its messages are one line each on
    stderr. Third-party chatter meant for people running those tools by hand is kept below warnings:
    MLflow's schema migrations, and onnxruntime's quantization advice ("run pre-processing first"),
    which it logs through the root logger on every model build."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("autoquant: %(message)s"))
    own = logging.getLogger("autoquant")
    if not own.handlers:
        own.addHandler(handler)
    own.setLevel(logging.INFO)
    own.propagate = False
    # MLflow logs each failed write with a traceback (a full disk: one per trial); autoquant reports a tracking
    # failure itself, once. Its own warnings are for people running MLflow by hand. It sets its logger's level
    # from this variable when it is imported (lazily, after this runs).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "CRITICAL")
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    logging.getLogger().setLevel(logging.ERROR)


def _workspace(experiment: Path):
    from .config import load_experiment
    from .workspace import Workspace

    exp = load_experiment(experiment)
    log.info("preparing %s (calibration and FP32 reference are cached in %s)", exp.name, exp.cache)
    return Workspace(exp)  # computes each piece when first used; calibration logs its own time


def cmd_layers(args) -> int:
    ws = _workspace(args.experiment)
    g = ws.graph
    print(f"{'layer':48s} {'op':6s} {'weight shape':16s} {'MFLOPs':>9s}  runs")
    for layer in g.layers:
        shape = "x".join(map(str, layer.weight_shape))
        kind = "quantizable" + (", depthwise" if layer.depthwise else "")
        print(f"{layer.name:48s} {layer.op_type:6s} {shape:16s} {layer.flops / 1e6:9.3f}  {kind}")
    for op in g.float_ops:
        print(f"{op.name:48s} {op.op_type:6s} {'-':16s} {op.flops / 1e6:9.3f}  float (not quantized; 32x32 in bitops)")
    seen = " at the data's shapes (from a calibration batch)" if g.observed else ""
    print(f"total {g.total_flops / 1e6:.2f} MFLOPs per sample{seen} (FLOPs = 2 x MACs): {len(g.layers)} quantizable "
          f"layers, {len(g.float_ops)} float compute ops ({g.unquantized_flops / max(g.total_flops, 1):.1%} of FLOPs)")  # fmt: skip
    return 0


def cmd_quantize(args) -> int:
    from .config import load_yaml
    from .engine import PRESETS, preset_plan, quantize
    from .quantize.plan import QuantPlan

    spec = None
    if args.plan not in PRESETS:
        spec = load_yaml(Path(args.plan))
        # A plan's own mistakes are reported before calibration and the FP32 reference are prepared.
        QuantPlan.from_spec(spec, None, where=Path(args.plan).name)
        if args.algorithm:
            spec = {**spec, "default": {**(spec.get("default") or {}), "activation_algorithm": args.algorithm}}
    ws = _workspace(args.experiment)
    if spec is None:
        plan = preset_plan(ws, args.plan, args.algorithm or "minmax")
    else:
        plan = QuantPlan.from_spec(spec, ws.graph.names, where=Path(args.plan).name)
    r = quantize(ws, plan, args.out)
    if args.json:
        keys = ("accuracy", "fp32_accuracy", "accuracy_drop", "bitops_fraction", "latency_ms", "fp32_latency_ms",
                "latency_ratio", "size_bytes", "fp32_size_bytes")  # fmt: skip
        d = asdict(r)
        runs = dict(collections.Counter(e.mode for e in r.executed))
        print(json.dumps({**{k: d[k] for k in keys}, "layers_run_as": runs, "model": str(r.model_path),
                          "record": str(r.record_path)}))  # fmt: skip
        return 0
    n = ws.exp.eval.latency_batch_size
    print(f"FP32  accuracy {r.fp32_accuracy:6.2f} %   latency {r.fp32_latency_ms:7.2f} ms per batch of {n}")
    print(f"quant accuracy {r.accuracy:6.2f} %   latency {r.latency_ms:7.2f} ms ({r.latency_ratio:.2f}x FP32)"
          f"   drop {r.accuracy_drop:+.2f} pt   bitops {r.bitops_fraction * 100:.2f} % of FP32")  # fmt: skip
    print(f"size  {r.fp32_size_bytes / 1e6:.2f} MB -> {r.size_bytes / 1e6:.2f} MB"
          f"   ({len(ws.splits.eval)} eval samples, {len(plan.quantized)}/{len(plan.names)} layers quantized)")  # fmt: skip
    print(f"wrote {r.model_path} and {r.record_path}")
    return 0


def cmd_evaluate(args) -> int:
    from .engine import evaluate

    ws = _workspace(args.experiment)
    r = evaluate(args.model, ws)
    samples = len(ws.splits.eval)
    if args.json:
        print(json.dumps({"accuracy": r.accuracy, "accuracy_drop": r.accuracy_drop, "latency_ms": r.latency_ms,
                          "latency_ratio": r.latency_ratio, "samples": samples}))  # fmt: skip
    else:
        print(f"accuracy {r.accuracy:.2f} % on {samples} eval samples (drop {r.accuracy_drop:+.2f} pt vs FP32)   "
              f"latency {r.latency_ms:.2f} ms per batch ({r.latency_ratio:.2f}x FP32, timed interleaved)")  # fmt: skip
    return 0


def cmd_inspect(args) -> int:
    from .evaluate.executed import (
        disagreements,
        executed_layers,
        intended,
        other_compute,
        record_disagreements,
    )
    from .graph.ingest import load_onnx
    from .quantize.weight_range import saturating_layers, uint8_kernels_saturate
    from .record import Record

    model = load_onnx(args.model)
    stored = intended(model)
    if not stored:
        raise AutoquantError(f"{args.model} has no Conv, Gemm or MatMul with constant weights: nothing to inspect")
    labels = {name: layer.label for name, layer in stored.items()}
    runs = {name: layer.runs for name, layer in stored.items()}
    wrong = []
    if args.record:
        plan = Record.load(args.record).plan()
        extra, missing = sorted(set(plan.names) - set(stored)), sorted(set(stored) - set(plan.names))
        if extra or missing:
            which = (f"layer {extra[0]} is in the record, not in the model" if extra else
                     f"layer {missing[0]} is in the model, not in the record")  # fmt: skip
            raise AutoquantError(f"{args.record} describes other layers than {args.model} ({which}): give the record "
                                 "made with it")  # fmt: skip
        labels = {n: c.label for n, c in plan.choices}
        runs = plan.runs()
        wrong = record_disagreements(labels, stored)
    executed = executed_layers(model)
    wrong += disagreements(runs, executed)
    others = other_compute(model)
    if args.json:
        print(json.dumps({"layers": [{"name": e.name, "intended": labels[e.name], "kernel": e.kernel, "runs": e.mode}
                                     for e in executed],
                          "other_compute": [{"name": n, "op_type": op, "runs": "float"} for n, op in others],
                          "disagreements": wrong}))  # fmt: skip
    else:
        print(f"{'layer':56s} {'intended':>8s}  {'kernel':20s} runs")
        for e in executed:
            print(f"{e.name:56s} {labels[e.name]:>8s}  {e.kernel or '-':20s} {e.mode}")
        for name, op in others:
            print(f"{name:56s} {'-':>8s}  {op:20s} float (compute no plan quantizes)")
        modes = collections.Counter(e.mode for e in executed)
        print(f"{len(executed)} layers in a default onnxruntime session: "
              + ", ".join(f"{n} {mode}" for mode, n in sorted(modes.items()))
              + (f"; {len(others)} other compute op(s) float" if others else ""))  # fmt: skip
    for line in wrong:
        log.info("%s", line)
    saturating = saturating_layers(model) if uint8_kernels_saturate() else []
    if saturating:
        log.warning("warning: this CPU's uint8 x int8 kernels saturate (no VNNI) and %d layer(s) (e.g. %s) have weights "
                    "beyond ±64: they compute wrong sums here; rebuild with quantization.weight_range: reduced (or "
                    "auto) for this CPU", len(saturating), saturating[0])  # fmt: skip
    if wrong:
        log.info("%d layer(s) do not run as %s states", len(wrong), "the record" if args.record else "the file")
        return 1
    return 0


def cmd_apply(args) -> int:
    from .config import default_cache_dir
    from .engine import apply_record

    out = apply_record(args.model, args.record, args.out, args.cache_dir or default_cache_dir())
    print(f"wrote {out}")
    return 0


# Rows of the summary table: the fastest plans within the limit, then the front's plans beyond it.
SUMMARY_ROWS = 8


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
                     f"{p.label}{mark}")  # fmt: skip
    return "\n".join(lines)


def result_json(result) -> dict:
    chosen = result.chosen
    return {"completed": result.completed, "met": result.met, "fp32_accuracy": result.fp32_accuracy,
            "chosen_trial": chosen.number if chosen else None,
            "chosen": asdict(chosen.result) if chosen else None,
            "export": str(result.export.model_path) if result.export else None,
            "finetuned": _finetuned_json(result.finetuned, result.finetuned_trial)}  # fmt: skip


def _finetuned_json(r, trial: int | None) -> dict | None:
    if r is None:
        return None
    a = r.after
    return {"trial": trial, "ptq_accuracy_drop": r.before.get("accuracy_drop", math.nan), "accuracy": a.accuracy,
            "accuracy_drop": a.accuracy_drop, "latency_ratio": a.latency_ratio, "output_mse": a.output_mse,
            "seconds": r.seconds, "resumed_at": r.resumed_at, "loss_first": r.losses[0], "loss_last": r.losses[-1],
            "chosen_step": r.chosen_step, "held_out": r.held_out,
            "model": str(a.model_path), "record": str(a.record_path), "mlflow_run_id": r.mlflow_run_id}  # fmt: skip


EXIT_NO_PLAN = 3


def _report_search(result, objective: Cost, args) -> int:
    """Print a search's outcome (table or JSON); exit 3 when no quantized plan met the constraint."""
    if result.tracking_error:
        log.warning("warning: %s", result.tracking_error)
    if args.json:
        print(json.dumps(result_json(result)))
    else:
        print(f"\n{result.completed} trials, FP32 accuracy {result.fp32_accuracy:.2f} %; the fastest plans within the "
              f"limit, then the {objective.value} front beyond it (latency as a ratio to FP32):")  # fmt: skip
        print(summary_table(result))
    tuned = result.finetuned
    tuned_within = tuned is not None and tuned.after.accuracy_drop <= result.max_drop
    if tuned is not None and not args.json:
        print(f"trial {result.finetuned_trial} {_finetuned_line(tuned)}")
    if not result.met and tuned_within:
        print("autoquant: no plan met the limit after post-training quantization; the fine-tuned model above does",
              file=sys.stderr)  # fmt: skip
        return 0
    if not result.met:
        c = result.chosen
        if c is None:
            print("autoquant: no quantized plan completed (every trial failed or none ran); see fail_reason in the "
                  "trial table or MLflow, and run more trials", file=sys.stderr)  # fmt: skip
        else:
            print(f"autoquant: no quantized plan meets the accuracy constraint; closest: trial {c.number} with a drop "
                  f"of {c.result.accuracy_drop:.2f} pt. Raise max_accuracy_drop or run more trials", file=sys.stderr)  # fmt: skip
        return EXIT_NO_PLAN
    if not args.json:
        e = result.export
        print(f"\nexported trial {result.chosen.number}: accuracy {e.accuracy:.2f} % (drop {e.accuracy_drop:+.2f} pt), "
              f"bitops {e.bitops_fraction * 100:.2f} % of FP32, latency {e.latency_ratio:.2f}x FP32")  # fmt: skip
        print(f"wrote {e.model_path} and {e.record_path}")
    return 0


def _register_if_asked(result, args) -> None:
    if args.register and result.met:
        from .api import register

        version = register(result, args.register, args.alias)
        alias = f", alias '{args.alias}'" if args.alias else ""
        print(f"registered {args.register} version {version}{alias} in {result.tracking_uri}")


def cmd_search(args) -> int:
    from .api import search
    from .config import load_experiment

    exp = load_experiment(args.experiment)
    if args.max_accuracy_drop is not None:
        from dataclasses import replace

        exp = replace(exp, search=replace(exp.search, max_accuracy_drop=args.max_accuracy_drop))
    out = args.out or Path("runs") / exp.name
    log.info("study %s in %s (rerun the same command to resume it)", exp.name, out)
    result = search(exp, out, trials=args.trials, workers=args.workers)
    log.info("%d plans evaluated in %.1f s this run; MLflow: mlflow ui --backend-store-uri sqlite:///%s", result.evaluated,
             result.seconds, (out / "mlflow.db").resolve())  # fmt: skip
    _register_if_asked(result, args)
    return _report_search(result, exp.search.objective, args)


def cmd_worker(args) -> int:
    from .config import load_experiment
    from .jobs.workers import die_with_parent, work

    if args.parent_pid:
        die_with_parent(args.parent_pid)
    exp = load_experiment(args.experiment)
    evaluated, complete = work(exp, args.storage, trials=args.trials, threads=args.threads, seed_offset=args.seed_offset)
    print(f"worker: evaluated {evaluated} plans; the study has {complete} complete trials")
    return 0


def cmd_export(args) -> int:
    from .api import export_from_run

    result = export_from_run(args.run_dir, args.out, max_drop=args.max_accuracy_drop, objective=args.objective)
    _register_if_asked(result, args)
    return _report_search(result, args.objective or result.objective, args)


def cmd_finetune(args) -> int:
    from .api import finetune_run

    r = finetune_run(args.run_dir, args.out, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                     record=args.record)  # fmt: skip
    if args.json:
        print(json.dumps(_finetuned_json(r, None)))
    else:
        print(_finetuned_line(r))
    if r.tracking_error:
        log.warning("warning: %s", r.tracking_error)
    return 0


def _finetuned_line(r) -> str:
    a, before = r.after, r.before.get("accuracy_drop", math.nan)
    resumed = f" (resumed at step {r.resumed_at})" if r.resumed_at else ""
    chosen = f", kept step {r.chosen_step}" if r.chosen_step != len(r.losses) else ""
    return (f"fine-tuned {len(r.losses)} steps in {r.seconds:.0f} s{resumed}{chosen}: accuracy drop {before:.2f} -> "
            f"{a.accuracy_drop:.2f} points, latency {a.latency_ratio:.2f}x FP32; wrote {a.model_path} and {a.record_path}")


def cmd_reoptimize(args) -> int:
    from .api import reoptimize
    from .config import load_experiment

    exp = load_experiment(args.experiment)
    out = args.out or Path("runs") / f"{exp.name}-reopt-{time.strftime('%Y%m%d-%H%M%S')}"
    r = reoptimize(exp, args.registered_model, out, alias=args.alias, trials=args.trials, tracking_uri=args.tracking_uri,
                   tolerance=args.tolerance)
    changed = "; source model changed since the deployed version" if r.source_changed else ""
    target = r.candidate_version if r.decision == "promoted" else r.deployed_version
    print(f"autoquant: {r.decision} — {r.reason}; '{args.alias}' -> version {target}{changed}; report {r.report}")
    return 0


def cmd_report(args) -> int:
    from .report.compare import write_report

    md, png = write_report(args.run_dirs, args.out, args.objective)
    print(f"wrote {md} and {png}")
    return 0


def cmd_sensitivity(args) -> int:
    from .quantize.modes import encode
    from .report.sensitivity import write_layer_errors_report, write_sensitivity_report
    from .search import SearchSpace, layer_errors, layer_sensitivity, space_path

    ws = _workspace(args.experiment)
    out = args.out or Path("runs") / ws.exp.name
    if args.full:
        rows = layer_sensitivity(ws, progress=lambda i, n, name: log.info("sensitivity %d/%d: %s", i, n, name))
        csv_path, png_path = write_sensitivity_report(rows, out)
        print(f"{'layer':48s} {'drop pt':>8s} {'rel. output MSE':>16s}")
        for r in sorted(rows, key=lambda r: r.output_mse, reverse=True):
            print(f"{r.layer:48s} {r.accuracy_drop:8.2f} {r.output_mse:16.3g}")
    else:
        space = SearchSpace.from_yaml(space_path(ws.exp.search), ws.graph)
        errors = layer_errors(ws, space)
        csv_path, png_path = write_layer_errors_report(errors, out)
        default = LayerChoice()
        print(f"{'layer':48s} {'least-error choice':24s} {'its error':>10s} {encode(default):>19s}")
        for layer in space.layers:
            if not any(c.quantize for c in layer.options):
                continue
            best = errors.best(layer.name, layer.options)
            at_default = errors.of(layer.name, default) if default in errors.choices else float("nan")
            print(f"{layer.name:48s} {encode(best):24s} {errors.of(layer.name, best):10.3g} {at_default:19.3g}")
    print(f"wrote {csv_path} and {png_path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage before its error; autoquant's errors are one line (and exit 2)."""

    def error(self, message):
        self.exit(2, f"autoquant: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, *, above: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or (value <= low if above else value < low):
            bound = f" {'above' if above else 'of at least'} {low}" if math.isfinite(low) else ""
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text}")
        return value

    return parse


COUNT = _number(int, 1)
NON_NEGATIVE = _number(int, 0)
DROP = _number(float, -math.inf, above=True)  # any finite number of points (negative: must beat FP32)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="autoquant", description="Find and ship the best INT8 quantization of a model.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="build one plan's INT8 model from cached calibration; score it vs FP32")
    q.add_argument("experiment", type=Path)
    q.add_argument("--plan", default="int8-per-channel", help="int8-per-channel or int8-per-tensor, either with +bc "
                   "(bias correction) and/or +adaround (adaptive rounding); or PLAN.yaml")
    q.add_argument("--algorithm", help="activation range algorithm for every layer (minmax, percentile, mse, entropy, histogram)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--json", action="store_true", help="print one JSON line")
    q.set_defaults(fn=cmd_quantize)

    e = sub.add_parser("evaluate", help="accuracy and latency of any ONNX model on the experiment's eval data")
    e.add_argument("model", type=Path)
    e.add_argument("experiment", type=Path)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)

    ins = sub.add_parser("inspect", help="per layer, the kernel a default onnxruntime session runs (exit 1 if it "
                         "contradicts the file or record)")  # fmt: skip
    ins.add_argument("model", type=Path)
    ins.add_argument("--record", type=Path, help="compare with this record file instead of the model's own Q/DQ")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(fn=cmd_inspect)

    a = sub.add_parser("apply", help="rebuild the INT8 model a record file describes")
    a.add_argument("model", type=Path, help="the FP32 ONNX model the record was made for")
    a.add_argument("record", type=Path)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--cache-dir", type=Path)
    a.set_defaults(fn=cmd_apply)

    se = sub.add_parser("search", help="run or resume the study; export the best plan within the constraint")
    se.add_argument("experiment", type=Path)
    se.add_argument("--trials", type=COUNT, help="complete trials to reach (default: search.trials)")
    se.add_argument("--out", type=Path, help="run directory (default: runs/EXPERIMENT_NAME)")
    se.add_argument("--max-accuracy-drop", type=DROP, help="override search.max_accuracy_drop (points)")
    se.add_argument("--quiet", action="store_true", help="no progress bar (for scheduled runs)")
    se.add_argument("--json", action="store_true", help="print one JSON line with the outcome")
    se.add_argument("--workers", type=COUNT, default=1, help="processes sharing the study on this machine")
    se.add_argument("--register", metavar="NAME", help="register the export as a new version of NAME (MLflow registry)")
    se.add_argument("--alias", help="with --register: point this alias (e.g. production) at the new version")
    se.set_defaults(fn=cmd_search)

    wk = sub.add_parser("worker", help="join a running study (e.g. from another machine) through its storage")
    wk.add_argument("experiment", type=Path)
    wk.add_argument("--storage", required=True, help="the study's SQLAlchemy URL, e.g. postgresql+psycopg://…")
    wk.add_argument("--trials", type=COUNT, help="stop when the study has this many complete trials")
    wk.add_argument("--threads", type=NON_NEGATIVE, default=0, help="onnxruntime intra-op threads (default: all cores)")
    wk.add_argument("--seed-offset", type=NON_NEGATIVE, default=0, help="added to search.seed so workers sample differently")
    wk.add_argument("--quiet", action="store_true")
    wk.add_argument("--parent-pid", type=NON_NEGATIVE, help=argparse.SUPPRESS)  # set by `search --workers`
    wk.set_defaults(fn=cmd_worker)

    ex = sub.add_parser("export", help="re-choose and export a plan from a finished study")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--max-accuracy-drop", type=DROP)
    ex.add_argument("--objective", type=Cost, choices=list(Cost), metavar="{" + ",".join(c.value for c in Cost) + "}")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--json", action="store_true")
    ex.add_argument("--register", metavar="NAME", help="register the export as a new version of NAME")
    ex.add_argument("--alias", help="with --register: point this alias at the new version")
    ex.set_defaults(fn=cmd_export)

    ft = sub.add_parser("finetune", help="fine-tune a search's export (quantization-aware, distilled from FP32)")
    ft.add_argument("run_dir", type=Path)
    ft.add_argument("--steps", type=COUNT, help="optimizer steps (default: the experiment's finetune.steps, or 300)")
    ft.add_argument("--lr", type=_number(float, 0, above=True), help="learning rate (default: finetune.lr, or 1e-4)")
    ft.add_argument("--batch-size", type=COUNT, help="samples per step (default: finetune.batch_size, or 32)")
    ft.add_argument("--record", type=Path, help="fine-tune this record's plan (default: RUN_DIR/best/record.json)")
    ft.add_argument("--out", type=Path, help="directory for the fine-tuned export (default: RUN_DIR/finetuned)")
    ft.add_argument("--json", action="store_true")
    ft.add_argument("--quiet", action="store_true")
    ft.set_defaults(fn=cmd_finetune)

    ro = sub.add_parser("reoptimize", help="re-run the search, compare with the deployed version, promote if better")
    ro.add_argument("experiment", type=Path)
    ro.add_argument("--registered-model", required=True)
    ro.add_argument("--alias", default="production")
    ro.add_argument("--trials", type=COUNT)
    ro.add_argument("--out", type=Path, help="run directory (default: runs/NAME-reopt-TIMESTAMP)")
    ro.add_argument("--tracking-uri", help="MLflow store holding the registry (default: search.tracking_uri)")
    ro.add_argument("--tolerance", type=_number(float, 0), default=0.1, help="accuracy points the candidate may lose and still win")
    ro.add_argument("--quiet", action="store_true")
    ro.set_defaults(fn=cmd_reoptimize)

    sn = sub.add_parser("sensitivity", help="per layer and choice, the error it adds (table and heat map); --full: "
                        "accuracy with one layer INT8 at a time")  # fmt: skip
    sn.add_argument("experiment", type=Path)
    sn.add_argument("--full", action="store_true", help="one full evaluation per layer (slow; exact accuracy drops)")
    sn.add_argument("--out", type=Path, help="directory for sensitivity.csv/png (default: runs/EXPERIMENT_NAME)")
    sn.set_defaults(fn=cmd_sensitivity)

    rp = sub.add_parser("report", help="compare studies: Pareto fronts, best plans per constraint, per-layer heat map")
    rp.add_argument("run_dirs", type=Path, nargs="+")
    rp.add_argument("--out", type=Path, default=Path("report"))
    rp.add_argument("--objective", type=Cost, choices=list(Cost), default=Cost.BITOPS,
                    metavar="{" + ",".join(c.value for c in Cost) + "}")
    rp.set_defaults(fn=cmd_report)

    ls = sub.add_parser("layers", help="list the quantizable layers of the experiment's model")
    ls.add_argument("experiment", type=Path)
    ls.set_defaults(fn=cmd_layers)
    return p


def main(argv: list[str] | None = None) -> int:
    _configure_logging()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (already printed, one line) and --help
        return exc.code if isinstance(exc.code, int) else 2
    from . import progress

    quiet = getattr(args, "quiet", False)  # scheduled runs: errors and warnings only, no bars
    progress.enable(not quiet)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return args.fn(args)
    except AutoquantError as exc:
        print(f"autoquant: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # Unwritable or full output locations are the user's to fix; writes are atomic, so nothing
        # that was there before has been damaged.
        where = f" {exc.filename}" if exc.filename else ""
        print(f"autoquant: error: cannot read or write{where}: {exc.strerror or exc}; check the path, its "
              "permissions and free space", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print("autoquant: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
