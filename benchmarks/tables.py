"""The tables of README.md, docs/ and benchmarks/README.md, generated from benchmarks/results/*.json (never typed).

A generated table sits between `<!-- table: NAME -->` and `<!-- /table -->` in a markdown file; this script
rewrites what is between them from the results, each table with a line naming the machine it was measured on.

    python benchmarks/tables.py          # rewrite the tables
    python benchmarks/tables.py --check  # exit 1 when a table differs from its results (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from common import RESULTS, machine_line

from autoquant.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md")))
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)
HEADLINE_BED = "efficientnet-lite1"
DEFAULT_OBJECTIVE = SearchConfig().objective.value
AUTOQUANT = "autoquant"
PEERS = ("INC autotune (QDQ)", "NNCF quantize_with_accuracy_control", "quantize_static u8", "quantize_static s8",
         "quantize_dynamic")
SHORT = {"INC autotune (QDQ)": "Neural Compressor", "NNCF quantize_with_accuracy_control": "NNCF",
         "quantize_static u8": "quantize_static u8", "quantize_static s8": "quantize_static s8",
         "quantize_dynamic": "quantize_dynamic"}


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run benchmarks/{name}.py")
    return json.loads(path.read_text())


def _cell(row: dict | None) -> str:
    """A tool's answer at a limit: its latency as a ratio to FP32 and its drop, or why there is none."""
    if row is None:
        return "not run"
    if not row.get("feasible"):
        if str(row.get("failed", "")).startswith("stopped after"):
            return f"unfinished at {row['seconds']:.0f} s"
        return "none within" if row.get("drop") is None else f"misses ({row['drop']:+.2f})"
    return f"**{row['latency_ratio']:.2f}x** ({row['drop']:+.2f})"


def _verdict(value: bool | None) -> str:
    """A paired-latency verdict: yes, **no**, or blank where it was not measured."""
    return {True: "yes", False: "**no**"}.get(value, "")


def _machine(entry: dict) -> str:
    return f"\n_Measured on {machine_line(entry['machine'])}; command: `{entry['command']}`._\n"


def headline() -> str:
    """README: on natural photos, per limit, each tool's model — latency vs FP32 (drop in agreement points)."""
    entry = load("limit_sweep")["beds"][HEADLINE_BED]
    tools = [AUTOQUANT, *(p for p in PEERS if any(r["tool"] == p for rows in entry["limits"].values() for r in rows))]
    lines = [f"| limit (points) | {' | '.join(SHORT.get(t, t) for t in tools)} |", "|---" * (len(tools) + 1) + "|"]
    for limit, rows in entry["limits"].items():
        by_tool = {r["tool"]: r for r in rows}
        ours = [r for r in rows if r["tool"].startswith(AUTOQUANT) and r.get("objective") == DEFAULT_OBJECTIVE]
        by_tool[AUTOQUANT] = ours[0] if ours else by_tool.get(AUTOQUANT)
        lines.append(f"| {limit} | " + " | ".join(_cell(by_tool.get(t)) for t in tools) + " |")
    return (f"EfficientNet-Lite1 on {entry['data']} ({entry['eval_samples']} scored, metric: {entry['metric']} with "
            f"FP32), autoquant with its default objective ({DEFAULT_OBJECTIVE}), latency at batch "
            f"{entry['latency_batch']} as a ratio to FP32, timed side by side (drop in points in brackets):\n\n"
            + "\n".join(lines) + "\n" + _machine(entry))


def limit_sweep() -> str:
    """benchmarks/README: every bed, limit and tool, with times to the first feasible model and phases."""
    out = []
    for bed, entry in load("limit_sweep")["beds"].items():
        out.append(f"**{bed}** — {entry['model']} on {entry['data']} ({entry['calibration_samples']} calibration / "
                   f"{entry['eval_samples']} eval samples, {entry['metric']}, FP32 {entry['fp32_metric']:.2f}, "
                   f"{entry['layers']} layers, autoquant {entry['trials']} trials)\n")
        out.append("| limit | tool | model | latency IQR | first feasible s | total s | integer / float layers | "
                   "autoquant not slower |")
        out.append("|---|---|---|---|---|---|---|---|")
        for limit, rows in entry["limits"].items():
            for r in rows:
                iqr = "–".join(f"{x:.2f}" for x in r["latency_ratio_iqr"]) if "latency_ratio_iqr" in r else ""
                first = f"{r['first_feasible_seconds']:.0f}" if r.get("first_feasible_seconds") else "–"
                runs = f"{r['runs'].get('integer', 0)} / {r['runs'].get('float', 0)}" if "runs" in r else ""
                out.append(f"| {limit} | {SHORT.get(r['tool'], r['tool'])} | {_cell(r)} | {iqr} | {first} | "
                           f"{r.get('seconds') or 0:.0f} | {runs} | {_verdict(r.get('autoquant_not_slower'))} |")
        out.append(_machine(entry))
    return "\n".join(out)


def objective_choice() -> str:
    """benchmarks/README: the default objective's evidence — autoquant's studies under each objective the sweep ran
    (`limit_sweep.py --objectives ...`), per bed and limit, timed side by side in the same rounds."""
    results = load("limit_sweep")
    lines = ["| bed | limit | objective | export | first feasible s | study s |", "|---|---|---|---|---|---|"]
    for bed, entry in results["beds"].items():
        for limit, rows in entry["limits"].items():
            for r in (r for r in rows if r["tool"].startswith(AUTOQUANT)):
                first = f"{r['first_feasible_seconds']:.0f}" if r.get("first_feasible_seconds") else "–"
                lines.append(f"| {bed} | {limit} | {r.get('objective', '?')} | {_cell(r)} | {first} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n" + _machine(next(iter(results["beds"].values())))


def recovery() -> str:
    """benchmarks/README: each recovery method's share of all-INT8's drop, and the exports with and without them."""
    out = []
    for bed, entry in load("recovery")["beds"].items():
        fitted = entry["rounding_seconds"]
        rounding = (f"adaptive rounding {sum(fitted.values()):.0f} s for {len(fitted)} layers (per layer "
                    f"{min(fitted.values()):.1f}–{max(fitted.values()):.1f} s)" if fitted else "")
        out.append(f"**{bed}** — {entry['model']} on {entry['data']} ({entry['eval_samples']} eval samples, "
                   f"{entry['metric']}, FP32 {entry['fp32_metric']:.2f}); {rounding}\n")
        out += ["| plan | drop | output NMSE | share of all-INT8's drop recovered | latency vs FP32 |",
                "|---|---|---|---|---|"]
        for r in entry["uniform"]:
            share = f"{r['share_recovered']:.0%}" if r.get("share_recovered") is not None else "–"
            nmse = f"{r['output_nmse']:.2e}" if r.get("output_nmse") is not None else "–"
            out.append(f"| {r['plan']} | {r['drop']:+.2f} | {nmse} | {share} | {r['latency_ratio']:.2f}x |")
        ranked = ", ".join(sorted({r["objective"] for rows in entry["limits"].values() for r in rows}))
        out += ["", f"Two fresh studies per limit, ranked by {ranked or '–'}:", "",
                ("| limit | space | export | float layers | layers with bc / adaround | study s | "
                 "not slower than the other space's |"), "|---|---|---|---|---|---|---|"]
        for limit, rows in entry["limits"].items():
            for r in rows:
                used = r.get("recovery_layers") or {}
                used = f"{used['bias_correction']} / {used['adaptive_rounding']}" if used else "–"
                floats = "–" if r["float_layers"] is None else r["float_layers"]
                verdict = r.get("not_slower_than_without", r.get("not_slower_than_default_space"))
                out.append(f"| {limit} | {r['space']} | {_cell(r)} | {floats} | {used} | {r['seconds']:.0f} | "
                           f"{_verdict(verdict)} |")
        out.append(_machine(entry))
    return "\n".join(out)


def finetune() -> str:
    """README and benchmarks/README: a uniform plan after PTQ and after fine-tuning, per bed, at its limit."""
    results = load("finetune")
    lines = [("| bed | plan | limit | after PTQ | fine-tuned | fine-tuning s | a search's export at the limit | "
              "fine-tuned not slower than it |"), "|---|---|---|---|---|---|---|---|"]
    for bed, e in results["beds"].items():
        search = e.get("search")
        found = "not run" if search is None else _cell({**search, "feasible": search.get("met")})
        lines.append(f"| {bed} ({e['data']}, {e['metric']}) | {e['plan']} | {e['limit']:g} | {_cell(e['ptq'])} | "
                     f"{_cell(e['finetuned'])} | {e['finetuned']['seconds']:.0f} | {found} | "
                     f"{_verdict(e['finetuned'].get('not_slower_than_search'))} |")
    entries = list(results["beds"].values())
    return "\n".join(lines) + "\n" + "".join(dict.fromkeys(_machine(e) for e in entries))


def baselines() -> str:
    """benchmarks/README: what uniform all-INT8 loses on each bed (the search's starting point)."""
    results = load("baselines")
    lines = ["| bed | data | FP32 | all INT8 per-channel | all INT8 per-tensor |", "|---|---|---|---|---|"]
    for bed, e in results["beds"].items():
        rows = {r["plan"]: r for r in e["rows"]}
        cells = [f"{rows[p]['drop']:+.2f} pt, {rows[p]['latency_ratio']:.2f}x" for p in ("all INT8 per-channel",
                                                                                           "all INT8 per-tensor")]
        lines.append(f"| {bed} | {e['data']}, {e['metric']} | {rows['FP32']['metric']:.2f} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n" + _machine(results)


def real_models() -> str:
    """benchmarks/README: six real models through every command, as shipped."""
    results = load("real_models")
    lines = [("| model | limit | all INT8 per-channel drop | search | export drop | export latency | `evaluate` latency | "
             "every command exit 0, no traceback |"), "|---|---|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        steps = m["steps"]
        search, again = steps.get("search", {}), steps.get("evaluate", {}).get("json") or {}
        exported = (search.get("json") or {}).get("chosen") if (search.get("json") or {}).get("met") else None
        ok = all(s.get("exit") == 0 and not s.get("traceback") for s in steps.values())
        cells = [f"{exported['accuracy_drop']:+.2f}", f"{exported['latency_ratio']:.2f}x"] if exported else ["–", "–"]
        cells.append(f"{again['latency_ratio']:.2f}x" if again else "–")
        lines.append(f"| {name} | {m['limit']} | {m['all_int8_drop']:+.2f} | exit {search.get('exit', '–')} | "
                     f"{' | '.join(cells)} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n" + _machine(results)


def modes_table() -> str:
    """docs/configuration.md: every registered quantization mode, from the registry (quantize/modes/): no figure."""
    from autoquant.quantize import modes
    from autoquant.quantize.plan import FLOAT

    header = "| mode (plan / space) | its fields (default) | layers | built by | runs as (optimized graph) | bitops | "
    lines = [header + "weights on disk |", "|---|---|---|---|---|---|---|"]
    fa, fw = FLOAT.cost_bits
    lines.append(f"| float (`quantize: false`) | — | any | — | `Conv` / `MatMul` / `Gemm` | FLOPs × {fa} × {fw} | 32 bit |")
    for i, m in enumerate(modes.modes()):
        default = m.choice()
        fields = ", ".join(f"`{k}` ({v})" for k, v in default.fields().items()) or "—"
        a, w = m.cost_bits(default)
        name = f"{m.name} (`mode: {m.name}`{', the default' if i == 0 else ''})"
        lines.append(f"| {name} | {fields} | {m.scope} | {m.built_by} | {m.runs_as} | FLOPs × {a} × {w} | {m.stores} |")
    return "\n".join(lines) + "\n"


def unseen() -> str:
    """benchmarks/README: exports that breach their limit on unseen samples, with the confirmation split off and on."""
    lines = [("| bed | confirmation | studies | exports | breach the limit on unseen samples | mean excess over the "
              "limit (pt) | study s | confirming s |"), "|---|---|---|---|---|---|---|---|"]
    results = load("unseen")["beds"]
    for bed, entry in results.items():
        for side in ("off", "on"):
            s = entry["summary"][side]
            share = f"{s['breaches']} ({s['breach_share']:.0%})" if s["exports"] else "–"
            lines.append(f"| {bed} ({entry['data']}, {entry['metric']}) | {side} | {s['studies']} | {s['exports']} | "
                         f"{share} | {s['mean_excess']:.2f} | {s['seconds']:.0f} | {s['confirm_seconds']:.0f} |")
    return "\n".join(lines) + "\n" + _machine(next(iter(results.values())))


def _export(run: dict) -> str:
    """A study's export as _cell shows it, from a run entry of studies.cold_study."""
    return _cell({**run, "feasible": run["met"], "drop": run.get("closest_drop"),
                  "latency_ratio": run.get("trial_latency_ratio")})


def budgets() -> str:
    """benchmarks/README: a study's time budget, a small trial budget, and fine-tuning's added time, per bed."""
    lines = []
    for bed, entry in load("budgets")["beds"].items():
        runs = entry["runs"]
        lines.append(f"**{bed}** — {entry['model']} on {entry['data']} ({entry['eval_samples']} eval samples, "
                     f"{entry['metric']})\n")
        lines += ["| budget | what ran | export | study s (first feasible s) |", "|---|---|---|---|"]
        if "timeout" in runs:
            r = runs["timeout"]
            first = f" ({r['first_feasible_seconds']:.0f})" if r.get("first_feasible_seconds") else ""
            lines.append(f"| `timeout_minutes: {r['timeout_minutes']:g}` | {r['trials_run']} trials, "
                         f"{r['phases']['trials']:.0f} s of the study's {r['seconds']:.0f} s in trials | "
                         f"{_export(r) if r['exported'] else '**none**'} | {r['seconds']:.0f}{first} |")
        if "trials" in runs:
            r = runs["trials"]
            first = f" ({r['first_feasible_seconds']:.0f})" if r.get("first_feasible_seconds") else ""
            lines.append(f"| {r['budget']} trials | {r['error_model_plans']} of the error model's plans "
                         f"({', '.join(r['labels'])}) | {_export(r) if r['met'] else '**none**'} | {r['seconds']:.0f}{first} |")
        if "finetune" in runs:
            r = runs["finetune"]
            tuned = r.get("finetuned")
            cell = "not fine-tuned" if tuned is None else (
                f"trial {tuned['trial']}: {tuned['ptq_drop']:+.2f} after PTQ → {_cell(tuned)}, {tuned['steps']} steps")
            ptq = _export(r)
            lines.append(f"| `finetune: {{timeout_minutes: {r['finetune_minutes']:g}}}` at {r['limit']:g} pt | {cell} | "
                         f"PTQ export {ptq} | +{r['added_seconds']:.0f} |")
        lines.append(_machine(entry))
    return "\n".join(lines)


def architecture_step() -> str:
    """benchmarks/README: the limit sweep's autoquant rows before and after the architecture step (same exports?)."""
    data = load("architecture_step")
    lines = ["| bed | limit | before: export (label, float layers) | after: export (label, float layers) | same plan |",
             "|---|---|---|---|---|"]
    for bed, entry in data["after"]["beds"].items():
        before = data["before"]["beds"][bed]["limits"]
        for limit, rows in entry["limits"].items():
            a = next(r for r in rows if r["tool"] == "autoquant")
            b = next(r for r in before[limit] if r["tool"] == "autoquant")

            def cell(r: dict) -> str:
                return (f"{_cell(r)} ({r.get('label') or 'the sampler'}, {r.get('float_layers', '?')} float), "
                        f"study {r['seconds']:.0f} s")

            same = a.get("label") == b.get("label") and a.get("drop") == b.get("drop")
            lines.append(f"| {bed} | {limit} | {cell(b)} | {cell(a)} | {_verdict(same)} |")
    return "\n".join(lines) + "\n" + _machine(next(iter(data["after"]["beds"].values())))


def report_page() -> str:
    """benchmarks/README: the study page's size and its opening time in headless Chromium."""
    data = load("report_page")
    lines = ["| study | layers | trials | page MB | written s | opens in s (over an empty page) |", "|---|---|---|---|---|---|"]
    for e in data["pages"].values():
        lines.append(f"| {e['study']} | {e['layers']} | {e['trials']} | {e['bytes'] / 1e6:.2f} | {e['write_seconds']:.1f} | "
                     f"{e['open_seconds_median']:.2f} ({e['page_over_empty_seconds']:+.2f}) |")
    return "\n".join(lines) + "\n" + _machine(data)


TABLES: dict[str, Callable[[], str]] = {"modes": modes_table, "headline": headline, "limit-sweep": limit_sweep,
                                        "objective-choice": objective_choice, "recovery": recovery, "baselines": baselines,
                                        "real-models": real_models, "finetune": finetune, "unseen": unseen,
                                        "budgets": budgets, "architecture-step": architecture_step,
                                        "report-page": report_page}


def render(text: str) -> str:
    def table(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r}: known are {', '.join(TABLES)}")
        return f"{match[1]}{TABLES[name]().rstrip()}\n{match[4]}"

    return BLOCK.sub(table, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is out of date")
    args = p.parse_args()
    stale = []
    for doc in (d for d in DOCUMENTS if d.is_file()):
        text = doc.read_text()
        new = render(text)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        sys.exit(f"generated tables out of date in {', '.join(map(str, stale))}: run python benchmarks/tables.py")
    print(("up to date" if not stale else f"rewrote {', '.join(map(str, stale))}") if not args.check else "tables up to date")


if __name__ == "__main__":
    main()
