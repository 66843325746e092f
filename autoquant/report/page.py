"""The study page (report.html) and the comparison page: one self-contained HTML file each, no script, no fetch —
styles inline, figures inline SVG (report/svg.py says why) — readable on a laptop screen and printable.

Figures that a test or a script reads carry data-* attributes: the headline's export figures on
`#headline [data-field]`, one `circle.trial` per complete trial on the front (data-trial, data-accuracy)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ..config import Cost
from ..machine import describe
from ..quantize.modes import encode
from ..search import ScoredPlan, choose, pareto_front
from .svg import Plot, esc, heatmap, timeline
from .view import StudyView, plan_summary

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;max-width:1120px;margin:0 auto;padding:16px}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:26px 0 6px;border-bottom:1px solid #ddd}
.sub{color:#555}table{border-collapse:collapse;font-size:12.5px}td,th{padding:2px 8px;border-bottom:1px solid #eee;
text-align:left}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
dl.head{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:6px 18px;margin:8px 0}
dl.head div{background:#f6f7f9;padding:6px 10px;border-radius:4px}dt{font-size:11.5px;color:#666}dd{margin:0;
font-size:16px;font-weight:600}svg{max-width:100%;height:auto;font:11px sans-serif}.grid{stroke:#eee}
.frame{fill:none;stroke:#999}.tick{fill:#555}.axis{fill:#222;font-size:12px}.note{fill:#a33;font-size:11px}
circle.trial{fill:#9bb4d4;stroke:#4a6d99;stroke-width:.6;opacity:.85}circle.trial.feasible{fill:#2b8a3e;stroke:#1b5e20}
.front{fill:none;stroke:#2b8a3e;stroke-width:1.5}.limit{stroke:#c33;stroke-dasharray:5 4}
.fp32{fill:#fff;stroke:#000;stroke-width:2}.all-int8{fill:none;stroke:#e8590c;stroke-width:2.5}
.export{fill:#f59f00;stroke:#000;stroke-width:1}.mark{stroke:#c33;stroke-dasharray:3 3}
.phase{fill:#74a9cf}.trials-span{fill:#cfe1f2}.t-complete{fill:#2b6cb0}.t-stopped{fill:#aaa}.t-failed{fill:#c33}
.bar{display:inline-block;height:9px;background:#4a6d99;vertical-align:middle}.bar.float{background:#999}
.m-float{color:#777}.m-static{color:#1b5e20}.m-dynamic{color:#1864ab}.m-int4{color:#862e9c}
ul.notes li.warn{color:#a33}details summary{cursor:pointer;color:#245}
.s0{fill:#1f77b4;stroke:#1f77b4}.s1{fill:#d62728;stroke:#d62728}.s2{fill:#2ca02c;stroke:#2ca02c}
.s3{fill:#9467bd;stroke:#9467bd}.s4{fill:#8c564b;stroke:#8c564b}.s5{fill:#e377c2;stroke:#e377c2}
path.s0,path.s1,path.s2,path.s3,path.s4,path.s5{fill:none;stroke-width:1.5}
@media print{body{max-width:none}details{display:block}details>*{display:block}}
"""

# Heat-map colours for a layer's error (log10 of its output NMSE, clipped to this range), light to dark.
ERROR_RANGE = (-6.0, 0.0)
RAMP = ("#fff5eb", "#fee6ce", "#fdd0a2", "#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#a63603", "#7f2704")
# A layer's way of running in the per-layer map: float grey, each mode's label its own colour (in label order).
FLOAT_COLOUR, MODE_COLOURS = "#d9d9d9", ("#2b8a3e", "#1864ab", "#862e9c", "#e8590c", "#c2255c", "#5c940d")


def number(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, fmt)


def error_colour(v: float) -> str | None:
    if not math.isfinite(v):
        return None
    lo, hi = ERROR_RANGE
    t = (min(max(math.log10(max(v, 1e-12)), lo), hi) - lo) / (hi - lo)
    return RAMP[min(int(t * len(RAMP)), len(RAMP) - 1)]


def document(title: str, body: list[str]) -> str:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{esc(title)}</title><style>{CSS}</style></head>'
            f'<body>{"".join(body)}<p class="sub">written by autoquant {made}</p></body></html>')


def cost_axis(views: list[StudyView]) -> Cost:
    """Latency where every plotted trial has a figure, else the first study's objective."""
    points = [p for v in views for p in v.points]
    if points and all(math.isfinite(p.result.latency_ratio) for p in points):
        return Cost.LATENCY
    return views[0].objective if views[0].objective is not Cost.LATENCY else Cost.BITOPS


def trial_title(p: ScoredPlan) -> str:
    r = p.result
    return (f"trial {p.number}{' (' + p.label + ')' if p.label else ''}: accuracy {r.accuracy:.2f} (drop "
            f"{r.accuracy_drop:+.2f}), latency {number(r.latency_ratio)}x FP32, bitops {r.bitops_fraction:.4f}; "
            f"{plan_summary(p.plan)}")


def study_page(view: StudyView) -> str:
    title = f"autoquant study {view.study_name}"
    body = [f"<h1>{esc(title)}</h1>", f'<p class="sub">{esc(view.run_dir.resolve())}</p>', headline(view),
            front(view), layers(view), sensitivity(view), study_timeline(view), notes(view), trial_table(view)]
    return document(title, body)


def headline(view: StudyView) -> str:
    exp, facts, export = view.exp, view.facts, view.export
    model = exp.model.builtin or str(exp.model.onnx or exp.model.torch)
    data = f"{exp.data.source}{' ' + str(exp.data.path) if exp.data.path else ''}"
    machine = facts.get("machine")
    items = [("model", model, {}), ("data", f"{data}; {facts.get('eval_samples', exp.data.eval_size)} eval samples", {}),
             ("limit", f"{view.max_drop:g} pt of {exp.eval.metric}", {"field": "limit", "value": view.max_drop}),
             ("machine", (describe(machine) if machine else "not recorded") +
              f"; weights {facts.get('weight_range', '?')} range", {}),
             ("FP32", f"{view.fp32_accuracy:.2f}", {"field": "fp32", "value": view.fp32_accuracy})]
    if view.record is not None and export is not None:
        r, o = export.result, view.record.objectives
        stderr = f" ± {r.drop_stderr:.2f}" if math.isfinite(r.drop_stderr) else ""
        items += [("export", f"trial {export.number}: {plan_summary(export.plan)}", {"field": "trial", "value": export.number}),
                  ("accuracy (drop)", f"{r.accuracy:.2f} ({r.accuracy_drop:+.2f}{stderr} pt)",
                   {"field": "accuracy", "value": r.accuracy, "drop": r.accuracy_drop}),
                  ("latency", f"{number(r.latency_ratio)}x FP32 ({r.latency_rounds} paired rounds)",
                   {"field": "latency_ratio", "value": r.latency_ratio}),
                  ("bitops", f"{r.bitops_fraction:.4f} of FP32", {"field": "bitops", "value": r.bitops_fraction})]
        if "confirmed_accuracy_drop" in o:
            items.append(("confirmed on unseen samples", (f"{o['confirmed_accuracy_drop']:+.2f} ± "
                          f"{o.get('confirmed_drop_stderr', math.nan):.2f} pt on {int(o.get('confirm_samples', 0))}"),
                          {"field": "confirmed_drop", "value": o["confirmed_accuracy_drop"]}))
    else:
        items.append(("export", "none: no plan met the limit (see the notes)", {"field": "trial", "value": ""}))
    int8 = view.all_int8()
    if int8 is not None:
        items.append(("all-INT8", (f"drop {int8.result.accuracy_drop:+.2f} at {number(int8.result.latency_ratio)}x "
                      f"(trial {int8.number})"), {}))
    done = sum(t.state == "complete" for t in view.trials)
    items.append(("trials", f"{done} complete of {len(view.trials)}", {"field": "complete", "value": done}))
    if facts.get("first_feasible_seconds") is not None:
        items.append(("first model within the limit", f"after {facts['first_feasible_seconds']:.0f} s", {}))
    cells = "".join(f'<div{"".join(f" data-{k}=" + chr(34) + esc(v) + chr(34) for k, v in data.items())}><dt>'
                    f"{esc(name)}</dt><dd>{esc(text)}</dd></div>" for name, text, data in items)
    return f'<section id="headline"><dl class="head">{cells}</dl></section>'


def front(view: StudyView) -> str:
    cost = cost_axis([view])
    points = view.points
    xs = [cost.of(p.result) for p in points] + ([1.0] if cost is not Cost.SIZE else [])
    ys = [p.result.accuracy for p in points] + [view.fp32_accuracy, view.fp32_accuracy - view.max_drop]
    finite = [x for x in xs if math.isfinite(x) and x > 0] or [1.0]
    plot = Plot((min(finite), max(finite)), (min(ys), max(ys)), cost.label, "accuracy (%)", x_log=cost.log_scale)
    plot.hline(view.fp32_accuracy - view.max_drop, "limit", f"FP32 − {view.max_drop:g} pt")
    line = pareto_front(points, cost)
    plot.line([(cost.of(p.result), p.result.accuracy) for p in line], "front", "Pareto front")
    for p in points:
        ok = p.plan.quantized and p.result.accuracy_drop <= view.max_drop + 1e-9
        plot.point(cost.of(p.result), p.result.accuracy, "trial feasible" if ok else "trial", trial_title(p),
                   {"trial": p.number, "accuracy": f"{p.result.accuracy:.4f}", "cost": f"{cost.of(p.result):.6g}"})
    if cost is not Cost.SIZE:
        plot.point(1.0, view.fp32_accuracy, "fp32", f"FP32 {view.fp32_accuracy:.2f}", r=6)
    int8 = view.all_int8()
    if int8 is not None:
        plot.point(cost.of(int8.result), int8.result.accuracy, "all-int8", "all-INT8: " + trial_title(int8), r=8)
    if view.export is not None and view.record is not None:
        e = view.export
        plot.star(cost.of(e.result), e.result.accuracy, "export", "the export: " + trial_title(e), {"trial": e.number})
    legend = ("green: within the limit; blue: not; black ring: FP32; orange ring: all-INT8; star: the export; "
              "hover a point for its plan")
    return f'<section id="front"><h2>Accuracy against {esc(cost.label)}</h2>{plot.svg()}<p class="sub">{legend}</p></section>'


def _choice_text(choice) -> str:
    """The choice as the space and sensitivity.csv name it (e.g. int8 per_channel:mse:bc:ar)."""
    return f"{choice.label} {encode(choice)}" if choice.quantize else "float"


def layers(view: StudyView) -> str:
    if view.record is None:
        return ""
    plan = view.record.plan()
    table = view.facts.get("layer_ms") or {}
    columns, ms = table.get("columns", []), table.get("ms", {})

    def layer_ms(name: str, choice) -> float:
        row = ms.get(name)
        column = "float" if not choice.quantize else choice.mode
        if row is None or column not in columns or row[columns.index(column)] is None:
            return math.nan
        return float(row[columns.index(column)])

    choices = dict(plan.choices)
    times = {la.name: layer_ms(la.name, choices[la.name]) for la in view.record.layers}
    total = sum(t for t in times.values() if math.isfinite(t))
    rows = []
    for la in view.record.layers:
        c = choices[la.name]
        share = times[la.name] / total if total > 0 and math.isfinite(times[la.name]) else math.nan
        error = view.sensitivity.of(la.name, encode(c)) if view.sensitivity and c.quantize else math.nan
        bar = (f'<span class="bar{"" if c.quantize else " float"}" style="width:{share * 300:.0f}px"></span> '
               f"{share:.1%}" if math.isfinite(share) else "–")
        rows.append(f'<tr data-layer="{esc(la.name)}" data-mode="{esc(c.mode if c.quantize else "float")}">'
                    f"<td>{esc(la.name)}</td><td>{esc(la.op_type)}{' dw' if la.depthwise else ''}</td>"
                    f'<td class="n">{la.flops:,}</td><td class="m-{esc(c.mode if c.quantize else "float")}">'
                    f"{esc(_choice_text(c))}</td><td>{esc(la.kernel or '–')}</td>"
                    f'<td class="n">{number(times[la.name], ".3f")}</td><td>{bar}</td>'
                    f'<td class="n">{number(error, ".2e")}</td></tr>')
    note = ("ms: the layer's kernels in this choice, profiled per batch of eval.latency_batch_size when the study made "
            "its latency table; share: of the sum over layers. error: the layer's output NMSE for its choice "
            "(sensitivity.csv).") if ms else "The study kept no latency table (objective bitops or size)."
    return (f'<section id="layers"><h2>The export, layer by layer</h2><table><tr><th>layer</th><th>kind</th>'
            '<th class="n">FLOPs</th><th>how it runs</th><th>kernel that runs</th><th class="n">ms</th>'
            f'<th>share of latency</th><th class="n">error</th></tr>{"".join(rows)}</table>'
            f'<p class="sub">{esc(note)}</p></section>')


def sensitivity(view: StudyView) -> str:
    s = view.sensitivity
    if s is None:
        return ""
    colour = [[error_colour(v) for v in row] for row in s.values]
    titles = [[f"{layer} · {choice}: output NMSE {v:.3g}" if math.isfinite(v) else "" for choice, v in zip(s.choices, row)]
              for layer, row in zip(s.layers, s.values)]
    lo, hi = ERROR_RANGE
    legend = " ".join(f'<span style="background:{c};padding:0 8px" title="{esc(lo + i * (hi - lo) / len(RAMP))}"></span>'
                      for i, c in enumerate(RAMP))
    return (f'<section id="sensitivity"><h2>Error each choice adds at its layer</h2>'
            f"{heatmap(list(s.layers), list(s.choices), colour, titles)}<p class=\"sub\">log10 output NMSE from "
            f"{lo:g} (light) to {hi:g} (dark) {legend}; blank: not offered or not priced</p></section>")


def study_timeline(view: StudyView) -> str:
    phases = view.facts.get("phases") or {}
    segments, t = [], 0.0
    for key, name in (("prepare", "model and data"), ("calibration", "calibration"), ("reference", "FP32 reference")):
        seconds = float(phases.get(key, 0.0))
        if seconds > 0:
            segments.append((name, t, t + seconds, "phase"))
            t += seconds
    offset = t
    timed = [row for row in view.trials if row.start is not None]
    if not timed:
        return ""
    last = max((row.end or row.start) for row in timed)
    segments.append((f"{len(view.trials)} trials", offset, offset + last, "trials-span"))
    if phases.get("sensitivity", 0) > 0:
        first_end = min((row.end for row in timed if row.end is not None), default=0.0)
        segments.append(("per-layer tables (during the trials)", offset + first_end,
                         offset + first_end + float(phases["sensitivity"]), "phase"))
    end = offset + last
    for key, name in (("conclusion", "choosing and exporting"), ("confirmation", "confirmation")):
        seconds = float(phases.get(key, 0.0))
        if seconds > 0:
            segments.append((name, end, end + seconds, "phase"))
            end += seconds
    css = {"complete": "t-complete", "stopped early": "t-stopped", "failed": "t-failed"}
    ticks_at = [(offset + row.start, css.get(row.state, "t-stopped"), f"trial {row.number} {row.state} "
                 f"{row.label}".strip()) for row in timed]
    marks = []
    if view.facts.get("first_feasible_seconds") is not None:
        marks.append((float(view.facts["first_feasible_seconds"]), "first export"))
    started = view.started.strftime("%Y-%m-%d %H:%M UTC") if view.started else "?"
    return (f'<section id="timeline"><h2>How the study got there</h2>{timeline(segments, ticks_at, marks)}'
            f'<p class="sub">first trial started {esc(started)}; one-time passes from this run\'s command (0 where '
            "they came from the cache); ticks: trials (blue complete, grey stopped early, red failed)</p></section>")


def notes(view: StudyView) -> str:
    items: list[tuple[str, bool]] = []
    said = view.facts.get("resolution")
    if said:
        items.append((said[0], bool(said[1])))
    if view.record is not None:
        items += [(n, True) for n in view.record.notes]
    else:
        items.append(("no plan met the limit, so nothing was exported", True))
    if view.objective is Cost.LATENCY:
        slower = [p for p in view.points if p.plan.quantized and p.result.accuracy_drop <= view.max_drop
                  and p.result.latency_ratio >= 1.0]
        if slower:
            items.append((f"{len(slower)} plan(s) within the limit ran slower than FP32 beside them (never exported)",
                          False))
    tuned = view.facts.get("finetuned")
    if tuned:
        items.append(((f"fine-tuned in {tuned['dir']}: drop {number(tuned.get('drop_before'), '+.2f')} after post-training "
                      f"quantization, {number(tuned['drop_after'], '+.2f')} after {tuned['steps']} steps "
                      f"({tuned['seconds']:.0f} s), at {number(tuned['latency_ratio'])}x FP32"), False))
    failed = [t for t in view.trials if t.state == "failed"]
    if failed:
        items.append((f"{len(failed)} trial(s) failed, e.g. trial {failed[0].number}: {failed[0].reason}", True))
    stopped = sum(t.state == "stopped early" for t in view.trials)
    if stopped:
        items.append(((f"{stopped} trial(s) stopped early: their first eval samples showed they could not meet the "
                      "limit"), False))
    lis = "".join(f'<li class="{"warn" if warn else "info"}">{esc(text)}</li>' for text, warn in items)
    return f'<section id="notes"><h2>Notes</h2><ul class="notes">{lis}</ul></section>'


def trial_table(view: StudyView) -> str:
    rows = []
    for t in view.trials:
        r = t.point.result if t.point else None
        rows.append(f'<tr data-trial="{t.number}" data-state="{esc(t.state)}"><td class="n">{t.number}</td>'
                    f"<td>{esc(t.state)}</td><td>{esc(t.label)}</td>"
                    f'<td class="n">{number(r.accuracy) if r else "–"}</td>'
                    f'<td class="n">{number(r.accuracy_drop, "+.2f") if r else "–"}</td>'
                    f'<td class="n">{number(r.latency_ratio) if r else "–"}</td>'
                    f'<td class="n">{number(r.bitops_fraction, ".4f") if r else "–"}</td>'
                    f"<td>{esc(plan_summary(t.point.plan)) if t.point else esc(t.reason)}</td></tr>")
    return (f'<section id="trials"><h2>Every trial</h2><details><summary>{len(view.trials)} trials</summary><table>'
            '<tr><th class="n">#</th><th>state</th><th>label</th><th class="n">accuracy</th><th class="n">drop</th>'
            '<th class="n">latency</th><th class="n">bitops</th><th>plan, or why it stopped</th></tr>'
            f'{"".join(rows)}</table></details></section>')


# -- several studies ------------------------------------------------------------------------------------------
LIMITS = (0.25, 0.5, 1.0, 2.0)


def comparison_page(views: list[StudyView], names: list[str]) -> str:
    title = f"autoquant: {len(views)} studies compared"
    cost = cost_axis(views)
    rows = []
    for i, (v, name) in enumerate(zip(views, names)):
        e = v.export
        rows.append(f'<tr data-study="{esc(name)}"><td><b class="s{i % 6}">■</b> {esc(name)}</td>'
                    f"<td>{esc(v.exp.name)}</td><td class=\"n\">{len(v.points)}</td><td class=\"n\">{v.max_drop:g}</td>"
                    f"<td>{'trial ' + str(e.number) if e and v.record else 'none'}</td>"
                    f'<td class="n">{number(e.result.accuracy_drop, "+.2f") if e and v.record else "–"}</td>'
                    f'<td class="n">{number(e.result.latency_ratio) if e and v.record else "–"}</td>'
                    f"<td>{esc(describe(v.facts['machine'])) if v.facts.get('machine') else '–'}</td></tr>")
    head = ('<section id="headline"><table><tr><th>study</th><th>experiment</th><th class="n">trials</th>'
            '<th class="n">limit</th><th>export</th><th class="n">drop</th><th class="n">latency</th><th>machine</th>'
            f'</tr>{"".join(rows)}</table></section>')
    xs = [cost.of(p.result) for v in views for p in v.points]
    ys = [p.result.accuracy for v in views for p in v.points]
    finite = [x for x in xs if math.isfinite(x) and x > 0] or [1.0]
    plot = Plot((min(finite), max(finite)), (min(ys), max(ys)), cost.label, "accuracy (%)", x_log=cost.log_scale)
    for i, (v, name) in enumerate(zip(views, names)):
        plot.line([(cost.of(p.result), p.result.accuracy) for p in pareto_front(v.points, cost)], f"s{i % 6}", name)
        for p in v.points:
            plot.point(cost.of(p.result), p.result.accuracy, f"trial s{i % 6}", f"{name}: {trial_title(p)}",
                       {"study": name, "trial": p.number, "accuracy": f"{p.result.accuracy:.4f}"}, r=3)
    fronts = f'<section id="front"><h2>Fronts overlaid</h2>{plot.svg()}</section>'
    limits = sorted({*LIMITS, *(v.max_drop for v in views)})
    per_limit = ["<tr><th>limit</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"]
    chosen: list[tuple[str, ScoredPlan]] = []
    for limit in limits:
        cells = []
        for v, name in zip(views, names):
            best, met = choose(v.points, limit, v.objective)
            if best is None or not met:
                cells.append("<td>none within it</td>")
                continue
            cells.append(f"<td>trial {best.number}: {best.result.accuracy_drop:+.2f} pt, "
                         f"{number(best.result.latency_ratio)}x, {esc(plan_summary(best.plan))}</td>")
            chosen.append((f"{name} @ {limit:g}", best))
        per_limit.append(f"<tr><td>{limit:g}</td>{''.join(cells)}</tr>")
    plans = f'<section id="limits"><h2>The plan per limit</h2><table>{"".join(per_limit)}</table></section>'
    return document(title, [f"<h1>{esc(title)}</h1>", head, fronts, plans, layer_differences(chosen)])


def layer_differences(chosen: list[tuple[str, ScoredPlan]]) -> str:
    """The chosen plans' per-layer choices as a heat map, and the layers on which they differ."""
    if not chosen:
        return ""
    layers = list(dict.fromkeys(n for _, p in chosen for n in p.plan.names))
    labels = sorted({c.label for _, p in chosen for _, c in p.plan.choices if c.quantize})
    colours = {"float": FLOAT_COLOUR} | {k: MODE_COLOURS[i % len(MODE_COLOURS)] for i, k in enumerate(labels)}
    colour, titles = [], []
    for name, p in chosen:
        by = dict(p.plan.choices)
        colour.append([colours[by[n].label] if n in by else None for n in layers])
        titles.append([f"{name} · {n}: {_choice_text(by[n])}" if n in by else "" for n in layers])
    differ = [n for n in layers if len({encode(dict(p.plan.choices)[n]) if n in p.plan.names else "" for _, p in chosen}) > 1]
    legend = " ".join(f'<span style="color:{c}">■</span> {esc(k)}' for k, c in colours.items())
    return (f'<section id="layers"><h2>Per-layer choices of those plans</h2>'
            f"{heatmap([n for n, _ in chosen], layers, colour, titles)}<p class=\"sub\">{legend}; "
            f"{len(differ)} of {len(layers)} layers differ between them"
            f"{': ' + esc(', '.join(differ[:20])) + (' …' if len(differ) > 20 else '') if differ else ''}</p></section>")
