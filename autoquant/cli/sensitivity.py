"""`autoquant sensitivity EXP.yaml [--full]`: per layer and option, the error it adds (table and heat map)."""

from __future__ import annotations

from pathlib import Path

from .common import log, workspace

NAME = "sensitivity"
HELP = "per layer and choice, the error it adds (table and heat map); --full: accuracy with one layer INT8 at a time"


def add_arguments(p) -> None:
    p.add_argument("experiment", type=Path)
    p.add_argument("--full", action="store_true", help="one full evaluation per layer (slow; exact accuracy drops)")
    p.add_argument("--out", type=Path, help="directory for sensitivity.csv/png (default: runs/EXPERIMENT_NAME)")


def run(args) -> int:
    from ..quantize.modes import encode
    from ..quantize.plan import LayerChoice
    from ..report.sensitivity import write_layer_errors_report, write_sensitivity_report
    from ..search import SearchSpace, layer_errors, layer_sensitivity, space_path

    ws = workspace(args.experiment)
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
        default = LayerChoice.default()
        print(f"{'layer':48s} {'least-error choice':24s} {'its error':>10s} {encode(default):>19s}")
        for layer in space.layers:
            if not any(c.quantize for c in layer.options):
                continue
            best = errors.best(layer.name, layer.options)
            at_default = errors.of(layer.name, default) if default in errors.choices else float("nan")
            print(f"{layer.name:48s} {encode(best):24s} {errors.of(layer.name, best):10.3g} {at_default:19.3g}")
    print(f"wrote {csv_path} and {png_path}")
    return 0
