"""Subset selection for masks that keep exactly k of d weights (PrivSet-style, Wang et al. 2018).

A client with kept set K reports an l-subset S of [d], drawn with probability proportional to
e^eps if S meets K and 1 otherwise. The normalising constant is the same for every K of size k,
so any two such masks give report probabilities within e^eps of each other: the whole report is
pure eps-DP, whatever its Hamming bound (and ``event()`` is randomized response at eps, which
dominates any pure-eps release).

Sampling, exactly and without enumerating subsets: first whether S meets K (an exact integer
coin with probability P_hit rounded *down* to a multiple of 2**-53), then S uniform among the
subsets that meet K (rejection from uniform l-subsets) or among those that miss it (a uniform
l-subset of the complement). Every probability that is not exact is rounded in the safe
direction, and P_hit is computed at eps (1 - 1e-9), a margin far above float64 rounding.

Estimate: coordinate j lands in S w.p. a if j is kept and b if not (the same for every j), so
(y_j - b) / (a - b) is unbiased for the keep-frequency, with variance
(f a(1-a) + (1-f) b(1-b)) / (n (a-b)^2). The subset size l minimises that variance averaged
over coordinates (mean keep-frequency k/d) unless given.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.special import gammaln

from fedprune.privacy.events import randomized_response
from fedprune.privacy.mechanisms.base import MaskReport, Mechanism, VoteTally, check_epsilon
from fedprune.privacy.mechanisms.randomized_response import binary_variance
from fedprune.privacy.mechanisms.registry import register
from fedprune.pruning.bits import pack, unpack
from fedprune.validation import ConfigError

FLOAT_MARGIN = 1e-9  # relative epsilon margin that covers float64 error in P_hit
MIN_HIT = 1e-7  # below this chance that a uniform subset meets K, rejection sampling is too slow
COIN = 1 << 53
MAX_EPSILON = 30.0  # randomized response at a larger eps rounds its flip probability to 0 in float64


def subset_channel(length: int, kept: int, size: int, hit: float) -> tuple[float, float]:
    """(a, b): P(j in S) for a kept and a pruned coordinate j, given the chance ``hit`` that S meets K."""
    d, k, l = length, kept, size
    log_miss = float(np.sum(np.log1p(-k / (d - np.arange(l, dtype=np.float64)))))  # log C(d-k,l)/C(d,l)
    uniform_hit = -math.expm1(log_miss)
    # C(d-k-1,l-1)/C(d-1,l-1): chance that a uniform (l-1)-subset of the other d-1 misses K
    log_miss_other = float(np.sum(np.log1p(-k / (d - 1 - np.arange(l - 1, dtype=np.float64)))))
    a = hit * (l / d) / uniform_hit
    b = hit * (l / d) * (-math.expm1(log_miss_other)) / uniform_hit + (1.0 - hit) * l / (d - k)
    return a, b


def optimal_subset_size(length: int, kept: int, epsilon: float) -> int:
    """The subset size l in [1, d - k] that minimises the estimator's variance (mean keep-frequency k/d)."""
    d, k = length, kept
    top = d - k
    grid = np.unique(np.round(np.geomspace(1, top, num=min(top, 2000))).astype(np.int64))
    best = grid[np.argmin(_mean_variance(d, k, epsilon, grid))]
    pos = int(np.searchsorted(grid, best))
    low, high = grid[max(pos - 1, 0)], grid[min(pos + 1, grid.size - 1)]
    dense = np.arange(low, high + 1, dtype=np.int64)
    return int(dense[np.argmin(_mean_variance(d, k, epsilon, dense))])


def _mean_variance(d: int, k: int, epsilon: float, sizes: np.ndarray) -> np.ndarray:
    """Variance of one report's estimate at keep-frequency k/d, for each subset size (search only)."""
    l = sizes.astype(np.float64)
    log_miss = gammaln(d - k + 1) - gammaln(d - k - l + 1) - gammaln(d + 1) + gammaln(d - l + 1)
    log_miss_other = gammaln(d - k) - gammaln(d - k - l + 1) - gammaln(d) + gammaln(d - l + 1)
    uniform_hit = -np.expm1(log_miss)
    hit = uniform_hit / (uniform_hit + np.exp(log_miss - epsilon))
    a = hit * (l / d) / uniform_hit
    b = hit * (l / d) * -np.expm1(log_miss_other) / uniform_hit + (1 - hit) * l / (d - k)
    f = k / d
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (f * a * (1 - a) + (1 - f) * b * (1 - b)) / (a - b) ** 2
    return np.where(np.isfinite(out), out, np.inf)


@register
class SubsetSelection(Mechanism):
    """Report one l-subset of [d], weighted e^eps if it meets the kept set (exactly-k masks only)."""

    name = "subset"
    description = "one l-subset of coordinates, weighted e^eps if it meets the kept set (exactly-k masks)"
    epsilon_key = "epsilon_per_report"

    @classmethod
    def from_settings(cls, config, *, length, kept, hamming_bound):
        if kept is None:
            raise ConfigError("the subset mechanism needs kept: the number of weights every mask keeps")
        return cls(length=length, spec=cls.spec_for(config, hamming_bound),
                   epsilon=check_epsilon(config.epsilon_per_report, "epsilon-per-report"), kept=kept)

    @classmethod
    def report_coordinates(cls, length, hamming_bound, sample_size):
        return 1  # the whole report is one pure-eps release

    def __init__(self, *, length, spec, epsilon, kept, subset_size=None):
        super().__init__(length=length, spec=spec)
        self.epsilon = check_epsilon(epsilon)
        if self.epsilon > MAX_EPSILON:
            raise ConfigError(f"subset epsilon {self.epsilon} is above {MAX_EPSILON}: such a report protects nothing "
                              "and its privacy-loss distribution cannot be represented; use a smaller epsilon")
        d = self.length
        if isinstance(kept, bool) or not isinstance(kept, numbers.Integral) or not 1 <= kept <= d - 1:
            raise ConfigError(f"the subset mechanism needs kept (k, the weights every mask keeps) in [1, {d - 1}], "
                              f"got {kept!r}")
        self.kept = int(kept)
        implemented_eps = self.epsilon * (1.0 - FLOAT_MARGIN)
        if subset_size is None:
            subset_size = optimal_subset_size(d, self.kept, implemented_eps)
        if isinstance(subset_size, bool) or not isinstance(subset_size, numbers.Integral) \
                or not 1 <= subset_size <= d - self.kept:
            raise ConfigError(f"subset_size must be an integer in [1, d - k = {d - self.kept}], got {subset_size!r} "
                              "(larger subsets always meet the kept set and carry no information)")
        self.subset_size = l = int(subset_size)
        log_miss = float(np.sum(np.log1p(-self.kept / (d - np.arange(l, dtype=np.float64)))))
        self._uniform_hit = -math.expm1(log_miss)
        if self._uniform_hit < MIN_HIT:
            raise ConfigError(f"subset_size {l} is too small: a uniform subset meets the kept set with chance "
                              f"{self._uniform_hit:.2g} (< {MIN_HIT}); leave subset_size unset for the optimum")
        hit = self._uniform_hit / (self._uniform_hit + math.exp(log_miss - implemented_eps))
        self._hit_limit = math.floor(hit * COIN)  # exact coin, rounded down: never more than e^eps
        self.hit_probability = self._hit_limit / COIN
        self.keep_report, self.prune_report = subset_channel(d, self.kept, l, self.hit_probability)

    def _parameters(self):
        return {"epsilon": self.epsilon, "kept": self.kept, "subset_size": self.subset_size}

    def _encode(self, packed, rng, public_seed) -> MaskReport:
        bits = unpack(packed, self.length)
        kept_at = np.flatnonzero(bits)
        if kept_at.size != self.kept:
            raise ConfigError(f"the subset mechanism was set up for masks keeping exactly {self.kept} weights, "
                              f"got one keeping {kept_at.size}")
        if rng.integers(0, COIN) < self._hit_limit:
            chosen = self._draw_hitting(rng, bits)
        else:
            chosen = self._draw_missing(rng, kept_at)
        return self._report(indices=np.sort(chosen).astype(np.int64))

    def _draw_hitting(self, rng, bits) -> np.ndarray:
        """A uniform l-subset among those that meet the kept set (rejection from uniform l-subsets)."""
        d, l = self.length, self.subset_size
        if l * l <= d:  # ordered draws with replacement, kept when distinct: batched, collisions rare
            batch = int(min(max(16, math.ceil(4 / self._uniform_hit)), max(1, (1 << 20) // l)))
            while True:
                draws = np.sort(rng.integers(0, d, size=(batch, l)), axis=1)
                ok = bits[draws].any(axis=1)
                if l > 1:
                    ok &= (np.diff(draws, axis=1) > 0).all(axis=1)
                if ok.any():
                    return draws[int(np.argmax(ok))]
        while True:
            chosen = rng.choice(d, size=l, replace=False, shuffle=False)
            if bits[chosen].any():
                return chosen

    def _draw_missing(self, rng, kept_at) -> np.ndarray:
        """A uniform l-subset of the pruned coordinates: uniform ranks among them, mapped to indices."""
        ranks = rng.choice(self.length - self.kept, size=self.subset_size, replace=False, shuffle=False)
        # the r-th pruned coordinate is r plus the number of kept ones before it (those with K_i - i <= r)
        return ranks + np.searchsorted(kept_at - np.arange(self.kept), ranks, side="right")

    @property
    def count_channel(self):
        return self.keep_report, self.prune_report

    def audit_pair(self, rng, public_seed):
        """Kept sets {0..k-1} and {d-k..d-1}; score +1 if the subset meets A only, -1 if B only."""
        d, k = self.length, self.kept
        in_a, in_b = np.zeros(d, dtype=bool), np.zeros(d, dtype=bool)
        in_a[:k], in_b[d - k:] = True, True

        def score(report):
            return float(in_a[report.indices].any()) - float(in_b[report.indices].any())
        return pack(in_a), pack(in_b), score

    def _check_payload(self, report):
        if report.bits is not None or report.public_seed is not None or report.indices is None:
            raise ConfigError("a subset report carries indices only")
        idx = report.indices
        if idx.shape != (self.subset_size,):
            raise ConfigError(f"a subset report holds exactly {self.subset_size} indices, got {idx.size}")
        if idx[0] < 0 or idx[-1] >= self.length or (idx.size > 1 and np.any(np.diff(idx) <= 0)):
            raise ConfigError(f"subset report indices must be distinct, sorted and in [0, {self.length})")

    def _tally(self, reports, rng) -> VoteTally:
        counts = np.bincount(np.concatenate([r.indices for r in reports]), minlength=self.length).astype(np.int64)
        return VoteTally(mechanism=self.name, length=self.length, n=len(reports), sums=counts)

    def estimate(self, tally):
        tally = self.check_tally(tally)
        return (tally.sums / tally.n - self.prune_report) / (self.keep_report - self.prune_report)

    def variance(self, n, frequency):
        return binary_variance(self.keep_report, self.prune_report, n, frequency)

    @property
    def epsilon_per_decision(self) -> float:
        """The report's eps: the mechanism releases the mask as a whole, with no finer per-bit guarantee."""
        return self.epsilon

    @property
    def epsilon_per_report(self) -> float:
        return self.epsilon

    def event(self):
        return randomized_response(self.epsilon, 1)
