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

from fedprune.federated.aggregation import select_mask
from fedprune.validation import ConfigError

EXACT_COUNT_WORK = 2e8  # above this many operations the count law gives way to the normal one


def predicted_recovery(frequencies, stds, kept: int, tie_break=None) -> float:
    """Expected fraction of the true top-``kept`` among the ``kept`` largest of N(f_j, std_j^2) draws.

    Mean-field: the threshold t with sum_j P(f_j + std_j Z > t) = kept, then the mean of that
    probability over the true top-k (``select_mask``: ties in the truth to the larger ``tie_break``,
    then the lower index).
    """
    f = np.asarray(frequencies, dtype=np.float64)
    s = np.broadcast_to(np.asarray(stds, dtype=np.float64), f.shape)
    if not np.all(s > 0):
        raise ConfigError("every standard deviation must be > 0 (a private estimate always carries noise)")
    top = select_mask(f, kept, tie_break=tie_break)
    width = 50 * float(s.max())
    t = brentq(lambda v: norm.sf((v - f) / s).sum() - kept, f.min() - width, f.max() + width, xtol=1e-14)
    return float(norm.sf((t - f[top]) / s[top]).mean())


def predicted_recovery_counts(frequencies, clients: int, keep_report: float, prune_report: float,
                              kept: int, tie_break=None) -> float | None:
    """The same for binary reports, on the exact law of each coordinate's count (None: too costly).

    Coordinate j, kept by m = f_j n of the n clients, is reported by Binomial(m, a) + Binomial(n - m, b)
    of them (a, b: report probabilities for a kept and a pruned weight); a fractional m mixes floor(m)
    and ceil(m). Estimates grow with counts, so the server keeps the highest counts: the cut c is the
    count with k expected above it and the places left at c go, without ``tie_break``, at random
    (the neutral assumption), with it, in the server's order (larger tie-break, then lower index).
    """
    f, n = np.asarray(frequencies, dtype=np.float64), clients
    truth = select_mask(f, kept, tie_break=tie_break)
    low = np.floor(f * n + 1e-9).astype(np.int64)  # exact counts / n * n may fall an ulp short
    part = np.clip(f * n - low, 0.0, 1.0)
    values, index = np.unique(np.concatenate([low, np.minimum(low + 1, n)]), return_inverse=True)
    if values.size * (10 * math.sqrt(n) + 40) ** 2 > EXACT_COUNT_WORK:
        return None
    weights = np.concatenate([1 - part, part])
    laws = np.zeros((values.size, n + 1))  # P(noisy count = c | kept by values[i] clients)
    for i, kept_by in enumerate(values):
        start, law = count_law(int(kept_by), n, keep_report, prune_report)
        laws[i, start:start + law.size] = law
    every = np.bincount(index, weights=weights, minlength=values.size) @ laws  # expected coordinates per count
    above = np.concatenate([np.cumsum(every[::-1])[::-1][1:], [0.0]])  # expected coordinates above count c
    c = int(np.argmax(above <= kept))                                  # the cut: above(c) <= k < above(c - 1)
    low_i, high_i = index[:f.size], index[f.size:]
    over = (1 - part) * laws[low_i, c + 1:].sum(axis=1) + part * laws[high_i, c + 1:].sum(axis=1)
    at = (1 - part) * laws[low_i, c] + part * laws[high_i, c]
    room = kept - above[c]  # expected places left at count c
    if tie_break is None:
        share = np.full(f.size, 0.0 if every[c] == 0 else min(1.0, room / every[c]))
    else:
        order = np.lexsort((np.arange(f.size), -np.abs(np.asarray(tie_break, dtype=np.float64))))
        before = np.cumsum(at[order]) - at[order]
        share = np.zeros(f.size)
        share[order] = np.clip((room - before) / np.where(at[order] > 0, at[order], 1.0), 0.0, 1.0)
    return float((over + at * share)[truth].sum() / kept)


def count_law(kept_by: int, n: int, a: float, b: float) -> tuple[int, np.ndarray]:
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
    pair = mechanism.count_channel
    value = None if pair is None else predicted_recovery_counts(truth, n, *pair, k)
    if value is not None:
        return value, "exact counts"
    return predicted_recovery(truth, np.sqrt(mechanism.variance(n, truth)), k), "normal"
