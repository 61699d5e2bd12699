"""The bootstrap interval of every record's ci95 (BCa over images), and its description for the protocol.

A leaf module (numpy and scipy only): `evaluation.metrics` builds its per-task intervals on it and re-exports it.
"""

import numpy as np
from scipy.stats import norm

JACKKNIFE_GROUPS = 100
def interval_description(n_boot, over="test images"):
    """What a record's ci95 is, for its protocol (`bootstrap_ci`'s interval)."""
    return (f"BCa bootstrap 95%, {n_boot} resamples over {over} (with replacement; bias correction from the "
            f"resamples, acceleration from a jackknife over {JACKKNIFE_GROUPS} groups of {over})")


def bootstrap_ci(per_image_stat_fn, n_images, n_boot=1000, seed=0, alpha=0.05, groups=JACKKNIFE_GROUPS):
    """BCa interval (Efron 1987) of per_image_stat_fn(counts) over images resampled with replacement.

    per_image_stat_fn gets counts[i] = how often image i was drawn (all ones for the estimate itself) and returns
    the metric of that resample. The percentile interval of AP is lopsided around its estimate and can miss it;
    BCa moves the quantiles by the estimate's place among the resamples (bias, z0) and by the skew of its
    jackknife (acceleration). scipy.stats.bootstrap's BCa jackknifes every image, N more evaluations (5,000 for
    VOC07 test); leaving out `groups` seeded groups of images in turn estimates the same acceleration (group
    influences are sums of image influences) at a fixed cost.
    """
    if n_images < 1:
        raise ValueError("the bootstrap needs at least one image")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    values = np.array([per_image_stat_fn(np.bincount(rng.integers(0, n_images, size=n_images), minlength=n_images))
                       for _ in range(n_boot)], dtype=np.float64)
    values = values[~np.isnan(values)]  # e.g. no positives at all in this resample
    estimate = per_image_stat_fn(np.ones(n_images, dtype=np.int64))
    if not values.size or np.isnan(estimate):
        return float("nan"), float("nan")
    # Share of resamples below the estimate (ties count half, as scipy), kept off 0 and 1 so z0 stays finite.
    below = (np.sum(values < estimate) + 0.5 * np.sum(values == estimate)) / values.size
    z0 = norm.ppf(np.clip(below, 0.5 / values.size, 1 - 0.5 / values.size))
    accel = _jackknife_acceleration(per_image_stat_fn, n_images, groups, rng)
    z = z0 + norm.ppf([alpha / 2, 1 - alpha / 2])
    low, high = np.quantile(values, norm.cdf(z0 + z / (1 - accel * z)))
    return float(low), float(high)


def _jackknife_acceleration(per_image_stat_fn, n_images, groups, rng):
    """BCa's acceleration, skew(influence)/6, from leaving out each of min(groups, N) random groups of images."""
    members = np.array_split(rng.permutation(n_images), min(groups, n_images))
    left_out = []
    for group in members:
        counts = np.ones(n_images, dtype=np.int64)
        counts[group] = 0
        left_out.append(per_image_stat_fn(counts))
    left_out = np.asarray(left_out, dtype=np.float64)
    left_out = left_out[~np.isnan(left_out)]
    if left_out.size < 2:
        return 0.0
    influence = left_out.mean() - left_out
    spread = np.sum(influence**2)
    return float(np.sum(influence**3) / (6.0 * spread**1.5)) if spread > 0 else 0.0
