"""`autoquant finetune RUN_DIR`: fine-tune a search's export (quantization-aware, distilled from FP32)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import COUNT, log, number
from .output import finetuned_json, finetuned_line

NAME = "finetune"
HELP = "fine-tune a search's export (quantization-aware, distilled from FP32)"


def add_arguments(p) -> None:
    p.add_argument("run_dir", type=Path)
    p.add_argument("--steps", type=COUNT, help="optimizer steps (default: the experiment's finetune.steps, or as many "
                                              "as fit in finetune.timeout_minutes, 15 by default)")
    p.add_argument("--minutes", type=number(float, 0, above=True),
                   help="time for the training steps when no step count is given (default: finetune.timeout_minutes)")
    p.add_argument("--lr", type=number(float, 0, above=True),
                   help="one learning rate for every tensor (default: finetune.lr, or each tensor's own: 1e-3 of its RMS)")
    p.add_argument("--batch-size", type=COUNT, help="samples per step (default: finetune.batch_size, or 32)")
    p.add_argument("--record", type=Path, help="fine-tune this record's plan (default: RUN_DIR/best/record.json)")
    p.add_argument("--out", type=Path, help="directory for the fine-tuned export (default: RUN_DIR/finetuned)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from ..api import finetune_run

    r = finetune_run(args.run_dir, args.out, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                     record=args.record, minutes=args.minutes)
    print(json.dumps(finetuned_json(r, None)) if args.json else finetuned_line(r))
    if r.tracking_error:
        log.warning("warning: %s", r.tracking_error)
    return 0
