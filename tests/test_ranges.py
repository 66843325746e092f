"""Range algorithms on known distributions, and the exactness of the merged histogram."""

import numpy as np
import pytest

from autoquant.calibrate.ranges import (
    ALGORITHMS,
    _prefix_sums,
    _sq_error,
    entropy,
    histogram,
    minmax,
    mse,
    percentile,
)
from autoquant.calibrate.stats import TensorStats, stats_from_arrays, stats_to_arrays


def stats_of(*batches: np.ndarray) -> TensorStats:
    s = TensorStats()
    for b in batches:
        s.update(b)
    return s


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> TensorStats:
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, 200_000).astype(np.float32)
    x[:20] = rng.uniform(15, 25, 20)  # 0.01 % far outliers on the right
    return stats_of(*np.split(x, 10))


@pytest.fixture(scope="module")
def relu_like() -> TensorStats:
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(0.0, 1.0, 100_000), 0).astype(np.float32)
    x[:5] = 30.0
    return stats_of(x)


def test_minmax_keeps_the_outliers(gaussian_with_outliers):
    s = gaussian_with_outliers
    assert minmax(s) == (s.min, s.max)
    assert s.max > 15


@pytest.mark.parametrize("algo", [percentile, entropy])
def test_percentile_and_entropy_clip_isolated_outliers(algo, gaussian_with_outliers):
    lo, hi = algo(gaussian_with_outliers)
    assert 2.5 < hi < 12.0, (algo.__name__, hi)  # above the Gaussian's bulk, far below the outliers
    assert -12.0 < lo < -2.5, (algo.__name__, lo)


@pytest.fixture(scope="module")
def laplace() -> TensorStats:
    return stats_of(np.random.default_rng(4).laplace(0.0, 1.0, 500_000).astype(np.float32))


@pytest.mark.parametrize("algo", [mse, histogram])
def test_mse_searches_find_the_known_optimal_clip_on_a_laplace(algo, laplace):
    # ACIQ (Banner et al. 2019): the MSE-optimal 8-bit clip of a Laplace(b) is about 9.9 b, below its max.
    lo, hi = algo(laplace)
    assert 8.5 < hi < 11.0 and -11.0 < lo < -8.5, (lo, hi)
    assert hi < laplace.max and lo > laplace.min
    err = {name: _sq_error(_prefix_sums(laplace), np.array([r[0]]), np.array([r[1]]), 255)[0]
           for name, r in (("algo", (lo, hi)), ("minmax", minmax(laplace)))}
    assert err["algo"] < 0.8 * err["minmax"]


def test_mse_keeps_rare_isolated_outliers(gaussian_with_outliers):
    # 20 outliers at 15-25 sigma: clipping them costs more squared error than the finer step saves.
    assert mse(gaussian_with_outliers)[1] > 15


def test_percentile_matches_numpy_quantile():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 500_000).astype(np.float32)
    lo, hi = percentile(stats_of(x), pct=99.0)
    assert hi == pytest.approx(np.quantile(x, 0.99), abs=0.01)
    assert lo == pytest.approx(np.quantile(x, 0.01), abs=0.01)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_non_negative_tensors_keep_zero_as_lower_bound(name, relu_like):
    lo, hi = ALGORITHMS[name](relu_like)
    assert lo == 0.0
    assert 0 < hi <= 30.0


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_uniform_data_is_not_clipped(name):
    x = np.linspace(-1.0, 3.0, 100_001, dtype=np.float32)
    lo, hi = ALGORITHMS[name](stats_of(x))
    # Uniform data has no tail worth clipping: every algorithm keeps (nearly) the full range.
    assert lo == pytest.approx(-1.0, abs=0.1) and hi == pytest.approx(3.0, abs=0.1)


def test_histogram_merge_across_batches_is_exact():
    rng = np.random.default_rng(3)
    small, large = rng.normal(0, 0.1, 10_000), rng.normal(0, 5, 10_000)
    merged = stats_of(small, large)  # the second batch forces the range to double several times
    one_go = TensorStats(radius=merged.radius)
    one_go.update(np.concatenate([small, large]))
    assert merged.total == 20_000
    assert merged.counts.shape == one_go.counts.shape  # bounded memory: bin count never grows
    assert (merged.min, merged.max) == (one_go.min, one_go.max)
    # Pairwise merging keeps bin edges aligned: counts agree except for values sitting on an edge.
    assert np.abs(merged.counts - one_go.counts).sum() <= 2


def test_stats_round_trip_through_arrays(gaussian_with_outliers):
    back = stats_from_arrays(stats_to_arrays({"t": gaussian_with_outliers}))["t"]
    assert np.array_equal(back.counts, gaussian_with_outliers.counts)
    assert (back.min, back.max, back.radius) == (
        gaussian_with_outliers.min, gaussian_with_outliers.max, gaussian_with_outliers.radius)


def test_entropy_is_not_dragged_down_by_the_zero_spike_of_relu_outputs():
    # 70 % exact zeros (a ReLU output) and an exponential tail: the spike at 0 must not make the
    # narrowest range look best (before the fix: a clip at 2.4, below the 99.9th percentile 5.6).
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, 200_000)
    x[rng.random(len(x)) < 0.7] = 0
    lo, hi = entropy(stats_of(x.astype(np.float32)))
    assert lo == 0.0 and np.quantile(x, 0.999) < hi <= x.max()
