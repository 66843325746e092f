"""Command line: one function per command, `main() -> int`. User mistakes exit 2 with one line, no traceback."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from .errors import AutoquantError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _workspace(experiment: Path):
    from .config import load_experiment
    from .workspace import Workspace

    exp = load_experiment(experiment)
    _log(f"autoquant: preparing {exp.name} (calibration and FP32 reference are cached in {exp.cache})")
    ws = Workspace(exp)
    t = ws.timings
    if t.calibration:
        _log(f"autoquant: calibrated {len(ws.graph.float_tensors)} tensors on "
             f"{len(ws.splits.calibration)} samples in {t.calibration:.1f} s")  # fmt: skip
    return ws


def cmd_layers(args) -> int:
    ws = _workspace(args.experiment)
    print(f"{'layer':48s} {'op':6s} {'weight shape':16s} {'MFLOPs':>8s}  depthwise")
    for layer in ws.graph.layers:
        shape = "x".join(map(str, layer.weight_shape))
        print(f"{layer.name:48s} {layer.op_type:6s} {shape:16s} {layer.flops / 1e6:8.3f}  {'yes' if layer.depthwise else ''}")
    print(f"total {ws.graph.total_flops / 1e6:.2f} MFLOPs per sample (FLOPs = 2 x MACs), {len(ws.graph.layers)} layers")
    return 0


def cmd_quantize(args) -> int:
    from .api import PRESETS, preset_plan, quantize
    from .config import load_yaml
    from .quantize.plan import QuantPlan

    ws = _workspace(args.experiment)
    if args.plan in PRESETS:
        plan = preset_plan(ws, args.plan, args.algorithm or "minmax")
    else:
        spec = load_yaml(Path(args.plan))
        if args.algorithm:
            spec = {**spec, "default": {**(spec.get("default") or {}), "activation_algorithm": args.algorithm}}
        plan = QuantPlan.from_spec(spec, ws.graph.names, where=Path(args.plan).name)
    r = quantize(ws, plan, args.out)
    if args.json:
        keys = ("accuracy", "fp32_accuracy", "accuracy_drop", "bitops_fraction", "latency_ms", "fp32_latency_ms",
                "latency_ratio", "size_bytes", "fp32_size_bytes")  # fmt: skip
        d = asdict(r)
        print(json.dumps({**{k: d[k] for k in keys}, "model": str(r.model_path), "record": str(r.record_path)}))
        return 0
    n = ws.exp.eval.latency_batch_size
    print(f"FP32  accuracy {r.fp32_accuracy:6.2f} %   latency {r.fp32_latency_ms:7.2f} ms per batch of {n}")
    print(f"INT8  accuracy {r.accuracy:6.2f} %   latency {r.latency_ms:7.2f} ms ({r.latency_ratio:.2f}x FP32)"
          f"   drop {r.accuracy_drop:+.2f} pt   bitops {r.bitops_fraction * 100:.2f} % of FP32")  # fmt: skip
    print(f"size  {r.fp32_size_bytes / 1e6:.2f} MB -> {r.size_bytes / 1e6:.2f} MB"
          f"   ({len(ws.splits.eval)} eval samples, {len(plan.quantized)}/{len(plan.names)} layers INT8)")  # fmt: skip
    print(f"wrote {r.model_path} and {r.record_path}")
    return 0


def cmd_evaluate(args) -> int:
    from .api import evaluate
    from .config import load_experiment

    r = evaluate(args.model, load_experiment(args.experiment))
    if args.json:
        print(json.dumps({"accuracy": r.accuracy, "latency_ms": r.latency_ms, "samples": r.samples}))
    else:
        print(f"accuracy {r.accuracy:.2f} % on {r.samples} eval samples   latency {r.latency_ms:.2f} ms per batch")
    return 0


def cmd_apply(args) -> int:
    import os

    from .api import apply_record

    cache = args.cache_dir or Path(os.environ.get("AUTOQUANT_CACHE_DIR", Path.home() / ".cache" / "autoquant"))
    out = apply_record(args.model, args.record, args.out, cache)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoquant", description="Find and ship the best INT8 quantization of a model.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="build one plan's INT8 model from cached calibration; score it vs FP32")
    q.add_argument("experiment", type=Path)
    q.add_argument("--plan", default="int8-per-channel", help="int8-per-channel, int8-per-tensor or PLAN.yaml")
    q.add_argument("--algorithm", help="activation range algorithm for every layer (minmax, percentile, mse, entropy, histogram)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--json", action="store_true", help="print one JSON line")
    q.set_defaults(fn=cmd_quantize)

    e = sub.add_parser("evaluate", help="accuracy and latency of any ONNX model on the experiment's eval data")
    e.add_argument("model", type=Path)
    e.add_argument("experiment", type=Path)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)

    a = sub.add_parser("apply", help="rebuild the INT8 model a record file describes")
    a.add_argument("model", type=Path, help="the FP32 ONNX model the record was made for")
    a.add_argument("record", type=Path)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--cache-dir", type=Path)
    a.set_defaults(fn=cmd_apply)

    ls = sub.add_parser("layers", help="list the quantizable layers of the experiment's model")
    ls.add_argument("experiment", type=Path)
    ls.set_defaults(fn=cmd_layers)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return args.fn(args)
    except AutoquantError as exc:
        print(f"autoquant: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autoquant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
