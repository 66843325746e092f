"""Does the limit hold on data the search never saw? The export's drop measured on unseen samples, with the
confirmation split off and on: how often, and by how much, exports breach their limit (the winner's curse).

Per bed (ResNet-56 and MobileNet on the CIFAR-10 test file, MiniLM on English sentences), limit and seed (the
search's, and the sampler's draws with it), two fresh studies from cold per-study caches: `data.confirm_size: 0` (no
confirmation: the export is the fastest plan within the limit on the eval samples) and the default (half the eval
size, from what the data has left). Each export is then scored on the unseen samples — the bed's data after the
train, calibration, eval and (default-sized) confirmation splits, the same for both studies — against FP32 on them:
its drop there and that drop's paired standard error s. An export breaches its limit L when its unseen drop exceeds
L + s. Also recorded: each study's time and the share of it the confirmation took.

    pip install -e ".[bench]" && python benchmarks/unseen.py [--beds resnet56 mobilenet minilm]
        [--limits 0.1 0.25 0.5 1] [--seeds 0 1 2] [--trials N]

Writes benchmarks/results/unseen.json (each bed's entry replaced as it goes) and prints one line per study.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import beds
from common import run_beds
from studies import cold_study

from autoquant import Workspace, load_experiment
from autoquant.measure import Meter

LIMITS = (0.1, 0.25, 0.5, 1.0)
SEEDS = (0, 1, 2)
BEDS = ("resnet56", "mobilenet", "minilm")


def unseen_probe(exp: dict, onnx_model: Path, total: int, work: Path) -> Workspace:
    """A workspace whose eval split is the bed's unseen samples (of `total`): the same seeded permutation, its train
    split spanning every split of the study, so that its eval starts where the study's confirmation ends; the model
    read from the study's ONNX file (a built-in model is not trained again)."""
    d = dict(exp["data"])
    used = d.get("train_size", 0) + d["calibration_size"] + d["eval_size"] + d["eval_size"] // 2
    probe = {**exp, "name": f"{exp['name']}_unseen", "model": {"onnx": str(onnx_model)},
             "data": {**d, "train_size": used - 1, "calibration_size": 1, "eval_size": total - used,
                      "confirm_size": 0}}
    return Workspace(load_experiment(beds.write(probe, work, "unseen")))


def total(bed: str) -> int:
    """Samples the bed's data has: the CIFAR-10 test file's images, or the sentences benchmarks/real/minilm.py's
    `more_sentences` gives (the standard library's docstrings hold about 2,400; a study's splits take 1,700)."""
    if bed != "minilm":
        return 10_000
    import sys

    sys.path.insert(0, str(beds.REAL))
    import minilm

    return len(minilm.english_sentences(4000))


def measure(bed: str, work: Path, save, limits: list[float], seeds: list[int], trials: int | None) -> None:
    base = beds.experiment(bed, **({"trials": trials} if trials else {}))
    base["cache_dir"] = str(work / "cache")
    if bed == "minilm":
        base["data"]["loader"] = base["data"]["loader"].replace(":sentences", ":more_sentences")
    rows = []
    for limit in limits:
        for seed in seeds:
            for confirm in (0, None):
                exp = json.loads(json.dumps(base))
                exp["data"]["confirm_size"] = confirm
                tag = f"{limit:g}-s{seed}-{'off' if confirm == 0 else 'on'}"
                model, info, result = cold_study(exp, work, tag, max_accuracy_drop=limit, seed=seed)
                row = {"limit": limit, "seed": seed, "confirmation": confirm != 0, "met": result.met,
                       "seconds": info["seconds"], "confirm_seconds": result.workspace.timings.confirmation,
                       "search_drop": result.chosen.result.accuracy_drop if result.chosen else None,
                       "refused": len(result.refused), "latency_ratio": info["trial_latency_ratio"],
                       "label": info["label"]}
                if result.confirmation is not None:
                    row |= {"confirmed_drop": result.confirmation.drop, "confirmed_stderr": result.confirmation.stderr,
                            "confirm_samples": result.confirmation.samples}
                if model is not None:
                    probe = unseen_probe(base, result.workspace.prepared.source, total(bed), work)
                    m = Meter(probe)(model)
                    row |= {"unseen_samples": len(probe.splits.eval), "unseen_drop": m.accuracy_drop,
                            "unseen_stderr": m.drop_stderr, "breach": m.accuracy_drop > limit + m.drop_stderr}
                    probe.close()
                result.workspace.close()
                rows.append(row)
                print(f"{bed} {tag}: " + ("no export" if model is None else
                      f"search {row['search_drop']:+.2f}, unseen {row['unseen_drop']:+.2f} ± {row['unseen_stderr']:.2f}"
                      f"{' BREACH' if row['breach'] else ''}, {row['seconds']:.0f} s"))
                save({**beds.describe(base), "rows": rows, "summary": summary(rows)})


def summary(rows: list[dict]) -> dict:
    """Per confirmation setting: exports, the share that breach their limit on unseen data, studies without an
    export, and the time the confirmation added."""
    out = {}
    for on in (False, True):
        mine = [r for r in rows if r["confirmation"] == on]
        exported = [r for r in mine if "unseen_drop" in r]
        out["on" if on else "off"] = {
            "studies": len(mine), "exports": len(exported),
            "breaches": sum(r["breach"] for r in exported),
            "breach_share": sum(r["breach"] for r in exported) / len(exported) if exported else None,
            "mean_excess": (sum(max(r["unseen_drop"] - r["limit"], 0.0) for r in exported) / len(exported)
                            if exported else None),
            "seconds": sum(r["seconds"] for r in mine),
            "confirm_seconds": sum(r["confirm_seconds"] for r in mine),
        }
    off, on = out["off"]["seconds"], out["on"]["seconds"]
    out["extra_time"] = (on - off) / off if off else None
    out["confirm_share"] = out["on"]["confirm_seconds"] / on if on else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--beds", nargs="+", default=list(BEDS), choices=BEDS)
    p.add_argument("--limits", nargs="+", type=float, default=list(LIMITS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--trials", type=int, help="each study's trial budget (default: the bed's)")
    p.add_argument("--work", help="keep studies and models here instead of a temporary directory")
    args = p.parse_args()
    run_beds("unseen", args.beds, args.work,
             lambda bed, work, save: measure(bed, work, save, args.limits, args.seeds, args.trials))


if __name__ == "__main__":
    main()
