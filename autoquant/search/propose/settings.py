"""Every tuning constant of the proposers, in one place (search/propose/__init__.py says what each proposer does)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProposeSettings:
    # ladder.py: the first plans of a study, until one meets the limit
    rungs: int = 6  # rungs at most (all-INT8 is the first)
    ladder_margin: float = 0.7  # a rung's predicted NMSE at most this share of where the limit is read to be
    noise_z: float = 2.0  # a rung that misses by at most this many standard errors of its drop is varied first
    variants: int = 2  # such variant rungs at most
    variant_error: float = 2.0  # a variant's summed local error at most this × its rung's
    # guided.py: the warm starts the error model proposes before the sampler runs
    float_counts: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12)  # guided-k-float: the greedy path's plans with k float layers
    budget_plans: int = 16  # guided-budget-*: λ values of the sweep
    # refine.py: the rounds of calibrated proposals while the study runs
    every: int = 8  # finished trials between two rounds
    margins: tuple[float, ...] = (0.6, 1.0, 1.6)  # refined-*: the cheapest plan within these × the NMSE the limit allows
    sweep: int = 64  # λ values per round
    front: int = 2  # front-*: plans per round chosen for the hypervolume they are predicted to add
    descent: int = 3  # descent-*: plans per round just below the cheapest plan that meets the limit
    # sampler.py: NSGA-II's fresh draws skip a choice another of the same layer beats at no more cost by this factor
    plausible: float = 4.0


SETTINGS = ProposeSettings()
