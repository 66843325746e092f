"""Scheduled re-optimization: search again for the current model and data, warm-started from what is
deployed, compare both on the same current eval data, and move the registry alias only to a better
version. Always writes a comparison report."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import Cost, Experiment
from ..errors import ConfigError
from ..evaluate.cost import bitops_fraction
from ..evaluate.latency import not_slower, slower_than
from ..fileio import atomic_write_bytes
from ..graph.ingest import load_onnx
from ..measure import Measurement, Meter
from ..track.registry import Registry
from .search import SearchResult, register, search


@dataclass(frozen=True)
class ReoptimizeResult:
    decision: str  # "promoted" or "kept"
    reason: str
    deployed_version: str
    candidate_version: str | None
    deployed: Measurement
    candidate: Measurement | None
    source_changed: bool
    report: Path
    plot: Path


PROMOTE_GAIN = 1.02  # under objective latency, as under bitops: a candidate replaces the deployed model when 2 % faster
RACE_ROUNDS = 15  # at least this many paired rounds decide a promotion: fewer cannot make the sign test significant


@dataclass(frozen=True)
class Race:
    """The deployed model and the candidate timed side by side: whether the candidate is measurably faster (the
    deployed model slower than PROMOTE_GAIN × the candidate in significantly many rounds), and whether it is not
    measurably slower (the sign test the export's choice uses)."""

    faster: bool
    not_slower: bool

    @classmethod
    def of(cls, rounds) -> Race:
        """From paired rounds, column 0 the deployed model, column 1 the candidate."""
        return cls(faster=slower_than(rounds, 0, 1, PROMOTE_GAIN), not_slower=not_slower(rounds, 1, 0))


def race(meter: Meter, deployed: bytes, candidate: bytes) -> Race:
    return Race.of(meter.paired_rounds([deployed, candidate], repeats=RACE_ROUNDS))


def decide(old: Measurement, new: Measurement | None, max_drop: float, objective: Cost, tolerance: float,
           timed: Race | None = None, same_plan: bool = False) -> tuple[bool, str]:
    """Whether the candidate replaces the deployed model. Under objective latency `timed` decides cheaper: two
    separate timings differ by noise, so only a difference the paired rounds show counts. `same_plan`: the
    candidate is the deployed plan on an unchanged model, which a new version would only churn."""
    if new is None:
        return False, "no new plan meets the accuracy constraint"
    cost = objective.of
    if old.accuracy_drop > max_drop + 1e-9:
        return True, f"the deployed model now loses {old.accuracy_drop:.2f} pt, beyond the allowed {max_drop:g}"
    if same_plan:
        return False, "the candidate is the deployed plan, and the source model is unchanged"
    if new.accuracy < old.accuracy - tolerance:
        return False, f"the candidate is {old.accuracy - new.accuracy:.2f} pt less accurate (tolerance {tolerance:g})"
    cheaper, as_cheap = ((timed.faster, timed.not_slower) if timed is not None else
                         (cost(new) < cost(old) * 0.98, cost(new) <= cost(old)))
    if cheaper or (new.accuracy > old.accuracy + tolerance and as_cheap):
        return True, f"{objective.value} {cost(old):.4g} -> {cost(new):.4g} at accuracy {old.accuracy:.2f} -> {new.accuracy:.2f}"
    return False, f"not better: {objective.value} {cost(old):.4g} -> {cost(new):.4g}, accuracy {old.accuracy:.2f} -> {new.accuracy:.2f}"


def reoptimize(exp: Experiment, name: str, out_dir: Path, *, alias: str = "production", trials: int | None = None,
               tracking_uri: str | None = None, tolerance: float = 0.1) -> ReoptimizeResult:
    uri = tracking_uri or exp.search.tracking_uri
    if not uri:
        raise ConfigError("re-optimization needs the registry's store: set search.tracking_uri or --tracking-uri")
    registry = Registry(uri)
    deployed = registry.deployed(name, alias)
    exp = replace(exp, search=replace(exp.search, tracking_uri=uri))
    result = search(exp, out_dir, trials=trials, prior_plans={f"deployed-v{deployed.version}": deployed.record.plan()})
    ws = result.workspace
    try:
        return _decide(exp, name, out_dir, alias, uri, registry, deployed, result, ws, tolerance)
    finally:
        ws.close()


def _decide(exp: Experiment, name: str, out_dir: Path, alias: str, uri: str, registry: Registry, deployed,
            result: SearchResult, ws, tolerance: float) -> ReoptimizeResult:
    source_changed = ws.sha != deployed.record.model_sha256
    # The deployed model, measured on today's data the way the export was (paired with FP32); its bitops
    # come from its own record, as its layers may differ from today's model.
    meter = Meter(ws)
    deployed_model = load_onnx(deployed.model)
    old = replace(meter(deployed_model, timed=True),
                  bitops_fraction=bitops_fraction(deployed.record, deployed.record.plan()))
    new = result.export if result.met else None
    same_plan = new is not None and not source_changed and result.chosen.plan == deployed.record.plan()
    timed = None
    if new is not None and not same_plan and exp.search.objective is Cost.LATENCY:
        timed = race(meter, deployed_model.SerializeToString(), Path(new.model_path).read_bytes())
    promote, reason = decide(old, new, exp.search.max_accuracy_drop, exp.search.objective, tolerance, timed, same_plan)
    candidate_version = None
    if new is not None:
        candidate_version = register(result, name)
        registry.tag(name, candidate_version, "autoquant.decision", "promoted" if promote else "kept")
        if promote:
            registry.set_alias(name, alias, candidate_version)
    decision = "promoted" if promote else "kept"
    report, plot = write_report(out_dir, name, alias, deployed.version, candidate_version, old, new, decision,
                                reason, source_changed, result, exp)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for path in (report, plot):
        client.log_artifact(result.parent_run_id, str(path))
    client.set_tag(result.parent_run_id, "autoquant.reoptimize", decision)
    return ReoptimizeResult(decision, reason, deployed.version, candidate_version, old, new, source_changed, report, plot)


def write_report(out_dir: Path, name: str, alias: str, old_version: str, new_version: str | None, old: Measurement,
                 new: Measurement | None, decision: str, reason: str, source_changed: bool, result: SearchResult,
                 exp: Experiment) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = Path(out_dir) / "reoptimize.png"
    fig, ax = plt.subplots(figsize=(7, 5))
    front = result.front
    ax.plot([p.result.bitops_fraction for p in front], [p.result.accuracy for p in front], "-o", c="0.6", ms=4,
            label="new study: Pareto front")
    ax.scatter(old.bitops_fraction, old.accuracy, s=160, marker="s", c="tab:red", label=f"deployed v{old_version}")
    if new is not None:
        ax.scatter(new.bitops_fraction, new.accuracy, s=220, marker="*", c="tab:green", edgecolors="k",
                   label=f"candidate v{new_version} ({decision})")
    ax.axhline(result.fp32_accuracy - exp.search.max_accuracy_drop, ls="--", c="tab:red", lw=1, label="constraint")
    ax.set_xscale("log")
    ax.set_xlabel("bitops (fraction of FP32)")
    ax.set_ylabel("accuracy on the current eval data (%)")
    ax.set_title(f"{name}: {decision}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    plt.close(fig)

    def row(label, p):
        if p is None:
            return f"| {label} | - | - | - | - | - |"
        return (f"| {label} | {p.accuracy:.2f} | {p.accuracy_drop:+.2f} | {p.bitops_fraction:.4f} | "
                f"{p.latency_ratio:.2f} | {p.size_bytes / 1024:.0f} |")

    lines = [
        f"# Re-optimization of `{name}` ({time.strftime('%Y-%m-%d %H:%M:%S')})", "",
        f"**Decision: {decision}** — {reason}.", "",
        f"- alias `{alias}`: v{old_version} -> " + (f"v{new_version}" if decision == "promoted" else f"v{old_version} (unchanged)"),
        f"- source model: {'**changed** since the deployed version (statistics cache rebuilt for the new hash)' if source_changed else 'unchanged'}",
        (f"- study: {result.out_dir} ({result.completed} trials), constraint: drop <= {exp.search.max_accuracy_drop:g} "
         f"pt, objective: {exp.search.objective.value}"), f"- FP32 accuracy on the current eval data: {result.fp32_accuracy:.2f} %", "",
        "| version | accuracy % | drop pt | bitops | latency / FP32 | size KB |", "|---|---:|---:|---:|---:|---:|",
        row(f"deployed v{old_version}", old), row(f"candidate v{new_version}" if new_version else "candidate", new), "",
        "![deployed vs candidate](reoptimize.png)", "",
    ]
    report = atomic_write_bytes(Path(out_dir) / "reoptimize.md", "\n".join(lines).encode())
    return report, plot
