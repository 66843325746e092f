"""`autoquant apply MODEL.onnx RECORD.json --out OUT.onnx`: the exact model a record describes, without data."""

from __future__ import annotations

from pathlib import Path

NAME = "apply"
HELP = "rebuild the INT8 model a record file describes"


def add_arguments(p) -> None:
    p.add_argument("model", type=Path, help="the FP32 ONNX model the record was made for")
    p.add_argument("record", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--cache-dir", type=Path)


def run(args) -> int:
    from ..config import default_cache_dir
    from ..engine import apply_record

    out = apply_record(args.model, args.record, args.out, args.cache_dir or default_cache_dir())
    print(f"wrote {out}")
    return 0
