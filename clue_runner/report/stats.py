"""The statistics of a report, from scipy and statsmodels: nothing here is hand-rolled.

- An interval over runs: Student's t 95 % interval of the mean (`scipy.stats.t.interval`), runs being
  seeds × splits; undefined for one run.
- A paired comparison of two systems over the same (task, split, seed) runs: the mean difference, its t
  interval, a paired t-test (`scipy.stats.ttest_rel`) and a sign-flip permutation test
  (`scipy.stats.permutation_test`, permutation_type="samples": exact, all 2^n flips, up to EXACT_MAX pairs;
  Monte Carlo with a fixed seed above), the latter driving significance after Holm's correction
  (`statsmodels.stats.multitest.multipletests`).
- A paired bootstrap over examples (`scipy.stats.bootstrap`, fixed seed, percentile interval) where both
  systems saved their per-example dev predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 1 - LEVEL
EXACT_MAX = 16  # 2^16 = 65,536 sign flips: exact below this, Monte Carlo above
RESAMPLES = 9_999  # Monte Carlo sign flips above EXACT_MAX pairs
BOOTSTRAP_RESAMPLES = 999  # example-level bootstrap: each resample rescores every paired run
SEED = 0  # every random resampling is reproducible


def t_interval(values: Sequence[float], level: float = LEVEL) -> Optional[tuple[float, float]]:
    """The t interval of the mean of `values` (None for fewer than two; zero width for identical values)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    mean, sem = float(x.mean()), float(stats.sem(x))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def _mean_difference(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def sign_flip_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, bool]:
    """Two-sided p of the paired sign-flip permutation test of mean(a - b); and whether it was exact."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.all(a == b):
        return 1.0, True
    exact = len(a) <= EXACT_MAX
    result = stats.permutation_test((a, b), _mean_difference, permutation_type="samples", vectorized=True,
                                    n_resamples=np.inf if exact else RESAMPLES, alternative="two-sided",
                                    rng=np.random.default_rng(SEED))
    return float(min(1.0, result.pvalue)), exact


@dataclass
class Paired:
    """A system against the reference over n paired runs (differences: system − reference, ×100 points)."""

    n: int
    mean: float
    interval: Optional[tuple[float, float]]
    t_p: Optional[float]  # paired t-test; None below two pairs or for constant differences
    perm_p: float  # sign-flip permutation test
    exact: bool
    holm_p: Optional[float] = None  # set by holm() across the comparisons shown
    aso: Optional[float] = None  # deepsig's ε_min, where computed

    @property
    def significant(self) -> bool:
        return self.holm_p is not None and self.holm_p < ALPHA


def paired(system: Sequence[float], reference: Sequence[float]) -> Paired:
    a, b = np.asarray(system, dtype=float), np.asarray(reference, dtype=float)
    diff = a - b
    t_p = None
    if len(diff) > 1 and np.std(diff) > 0:
        t_p = float(stats.ttest_rel(a, b).pvalue)
    perm_p, exact = sign_flip_p(a, b)
    return Paired(len(diff), float(diff.mean()), t_interval(diff), t_p, perm_p, exact)


def holm(comparisons: list[Paired]) -> None:
    """Holm's step-down correction of the permutation p-values across `comparisons` (set in place)."""
    if not comparisons:
        return
    from statsmodels.stats.multitest import multipletests

    _, adjusted, _, _ = multipletests([c.perm_p for c in comparisons], alpha=ALPHA, method="holm")
    for c, p in zip(comparisons, adjusted):
        c.holm_p = float(p)


@dataclass
class Bootstrap:
    """The paired bootstrap over examples: the difference of the metric (×100), its interval, pairs used."""

    pairs: int
    examples: int
    mean: float
    interval: tuple[float, float]

    @property
    def significant(self) -> bool:
        return not (self.interval[0] <= 0 <= self.interval[1])


def paired_bootstrap(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                     metric: Callable[[np.ndarray, np.ndarray], float]) -> Bootstrap:
    """`pairs`: (gold, system predictions, reference predictions) per paired run. Examples are resampled within
    each run (the same indices for both systems: paired), the statistic is the mean over runs of
    metric(system) − metric(reference), ×100."""

    def statistic(*indices):
        return 100 * float(np.mean([metric(g[i], a[i]) - metric(g[i], b[i]) for i, (g, a, b) in zip(indices, pairs)]))

    samples = tuple(np.arange(len(g)) for g, _, _ in pairs)
    result = stats.bootstrap(samples, statistic, n_resamples=BOOTSTRAP_RESAMPLES, vectorized=False, paired=False,
                             confidence_level=LEVEL, method="percentile", rng=np.random.default_rng(SEED))
    ci = result.confidence_interval
    return Bootstrap(len(pairs), sum(len(g) for g, _, _ in pairs), statistic(*samples), (float(ci.low), float(ci.high)))


def aso(system: Sequence[float], reference: Sequence[float]) -> Optional[float]:
    """deepsig's almost-stochastic-order ε_min of system over reference (None without deepsig or below 2 runs)."""
    if len(system) < 2 or len(reference) < 2:
        return None
    try:
        from deepsig import aso as deepsig_aso
    except ImportError:
        return None
    import warnings

    with warnings.catch_warnings():  # identical score lists divide by zero inside deepsig; ε is still defined
        warnings.simplefilter("ignore")
        value = deepsig_aso(list(system), list(reference), confidence_level=LEVEL, num_bootstrap_iterations=200,
                            seed=SEED, num_jobs=1, show_progress=False)
    return None if value is None or math.isnan(value) else float(value)
