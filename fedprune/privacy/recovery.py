"""How much of the true top-k the server recovers from n noisy mask reports (the planner's prediction).

Two models: the exact law of each coordinate's count for binary reports (per-bit randomized
response, unary encodings, full-length sampling), and a mean-field normal approximation from the
estimator's variance for everything else.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binom, norm

from fedprune.validation import ConfigError

EXACT_COUNT_WORK = 2e8  # above this many operations the count law gives way to the normal one


def predicted_recovery(frequencies, stds, kept: int) -> float:
    """Expected fraction of the true top-``kept`` among the ``kept`` largest of N(f_j, std_j^2) draws.

    Mean-field: the threshold t with sum_j P(f_j + std_j Z > t) = kept, then the mean of that
    probability over the true top-k (ties in the truth broken by index).
    """
    f = np.asarray(frequencies, dtype=np.float64)
    s = np.broadcast_to(np.asarray(stds, dtype=np.float64), f.shape)
    if not np.all(s > 0):
        raise ConfigError("every standard deviation must be > 0 (a private estimate always carries noise)")
    top = np.argsort(-f, kind="stable")[:kept]
    width = 50 * float(s.max())
    t = brentq(lambda v: norm.sf((v - f) / s).sum() - kept, f.min() - width, f.max() + width, xtol=1e-14)
    return float(norm.sf((t - f[top]) / s[top]).mean())


def predicted_recovery_counts(frequencies, clients: int, keep_report: float, prune_report: float,
                              kept: int) -> float | None:
    """The same for binary reports, on the exact law of each coordinate's count (None: too costly).

    Coordinate j, kept by m = f_j n of the n clients, is reported by Binomial(m, a) + Binomial(n - m, b)
    of them (a, b: report probabilities for a kept and a pruned weight); a fractional m mixes floor(m)
    and ceil(m). Estimates grow with counts, so the server keeps the highest counts, ties broken at
    random (the run breaks them by weight magnitude; random is the neutral assumption).
    """
    f, n = np.asarray(frequencies, dtype=np.float64), clients
    inside = np.zeros(f.size)
    inside[np.argsort(-f, kind="stable")[:kept]] = 1.0
    low = np.floor(f * n).astype(np.int64)
    part = f * n - low
    values, index = np.unique(np.concatenate([low, np.minimum(low + 1, n)]), return_inverse=True)
    if values.size * (10 * math.sqrt(n) + 40) ** 2 > EXACT_COUNT_WORK:
        return None
    weights = np.concatenate([1 - part, part])
    every_weight = np.bincount(index, weights=weights, minlength=values.size)
    top_weight = np.bincount(index, weights=weights * np.concatenate([inside, inside]), minlength=values.size)
    every, top = np.zeros(n + 1), np.zeros(n + 1)  # expected number of coordinates at each count
    for i, kept_by in enumerate(values):
        if every_weight[i] > 0:
            start, law = _count_law(int(kept_by), n, keep_report, prune_report)
            every[start:start + law.size] += every_weight[i] * law
            top[start:start + law.size] += top_weight[i] * law
    above = np.concatenate([np.cumsum(every[::-1])[::-1][1:], [0.0]])  # expected coordinates above count c
    c = int(np.argmax(above <= kept))                                  # the cut: above(c) <= k < above(c - 1)
    share = 0.0 if every[c] == 0 else min(1.0, (kept - above[c]) / every[c])
    return float((top[c + 1:].sum() + share * top[c]) / kept)


def _count_law(kept_by: int, n: int, a: float, b: float) -> tuple[int, np.ndarray]:
    """(first count, probabilities) of Binomial(kept_by, a) + Binomial(n - kept_by, b), tails < 1e-15 dropped."""
    parts = []
    for trials, p in ((kept_by, a), (n - kept_by, b)):
        law = binom(trials, p)
        first, last = max(int(law.ppf(1e-15)) - 1, 0), min(int(law.isf(1e-15)) + 1, trials)
        parts.append((first, law.pmf(np.arange(first, last + 1))))
    (s1, p1), (s2, p2) = parts
    return s1 + s2, np.convolve(p1, p2)


def recovery(mechanism, truth, n: int, k: int) -> tuple[float, str]:
    """Predicted top-k recovery of ``mechanism`` from n reports: exact count law where it applies, else normal."""
    channel = mechanism.count_channel
    value = None if channel is None else predicted_recovery_counts(truth, n, *channel, k)
    if value is not None:
        return value, "exact counts"
    return predicted_recovery(truth, np.sqrt(mechanism.variance(n, truth)), k), "normal"
