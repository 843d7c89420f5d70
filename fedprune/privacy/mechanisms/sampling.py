"""Coordinate sampling: each client reports s coordinates, chosen by public randomness, by randomized response.

The coordinates come from a public seed (``(round, client)``, say) that the report carries and
the server re-derives them from, so a client cannot pick them and the server needs no index
list. Selection is public and data-independent: the privacy figures take the worst case in
which every one of the Delta differing bits is among the sampled ones, so a report costs
min(s, Delta) times the per-bit eps (no amplification by sampling is claimed).

Estimate (Horvitz-Thompson): with inclusion probability s/d, coordinate j's estimate is
(d / (s n)) * sum over the reports that sampled j of (y - q) / (1 - 2q). It is unbiased, with
variance ((d/s)(V + f) - f) / n, V = q(1-q) / (1-2q)^2 the per-bit RR variance (exactly
e^eps / (n (e^eps - 1)^2) when s = d).
"""

from __future__ import annotations

import numbers

import numpy as np

from fedprune.privacy.events import BernoulliPair
from fedprune.privacy.mechanisms.base import (MaskReport, Mechanism, VoteTally, check_count, check_epsilon,
                                             check_frequency, check_packed)
from fedprune.privacy.mechanisms.packed import implemented, threshold, threshold_bits
from fedprune.privacy.mechanisms.randomized_response import flip_probability
from fedprune.privacy.mechanisms.registry import register
from fedprune.pruning.bits import pack, unpack
from fedprune.validation import ConfigError

PUBLIC_DOMAIN = 0x46505342  # spawn key that keeps public streams apart from any seeded privacy stream


def public_coordinates(public_seed, length: int, sample_size: int) -> np.ndarray:
    """The sorted ``sample_size`` distinct coordinates of [0, length) that ``public_seed`` selects."""
    seed = _public_seed(public_seed)
    rng = np.random.default_rng(np.random.SeedSequence(list(seed), spawn_key=(PUBLIC_DOMAIN,)))
    return np.sort(rng.choice(length, size=sample_size, replace=False, shuffle=False)).astype(np.int64)


@register
class CoordinateSampling(Mechanism):
    """Randomized response (``epsilon`` per bit) on s publicly sampled coordinates; Horvitz-Thompson estimate."""

    name = "sampling"
    description = "randomized response on s coordinates chosen by a public seed (Horvitz-Thompson estimate)"

    @classmethod
    def from_settings(cls, config, *, length, kept, hamming_bound):
        return cls(length=length, spec=cls.spec_for(config, hamming_bound),
                   epsilon=check_epsilon(config.epsilon_per_decision, "epsilon-per-decision"),
                   sample_size=config.sample_size or length)

    @classmethod
    def report_coordinates(cls, length, hamming_bound, sample_size):
        return min(sample_size or length, hamming_bound)

    def __init__(self, *, length, spec, epsilon, sample_size):
        super().__init__(length=length, spec=spec)
        self.epsilon = check_epsilon(epsilon)
        if isinstance(sample_size, bool) or not isinstance(sample_size, numbers.Integral) \
                or not 1 <= sample_size <= self.length:
            raise ConfigError(f"sample_size (coordinates per report) must be an integer in [1, {self.length}], "
                              f"got {sample_size!r}")
        self.sample_size = int(sample_size)
        self._limit = threshold(flip_probability(self.epsilon))
        self.flip_probability = implemented(self._limit)
        if self.flip_probability >= 0.5:
            raise ConfigError(f"epsilon {self.epsilon!r} is too small to implement with 32-bit noise; use >= 1e-8")

    def _parameters(self):
        return {"epsilon": self.epsilon, "sample_size": self.sample_size}

    def coordinates(self, public_seed) -> np.ndarray:
        """The coordinates a report with ``public_seed`` covers (what the server re-derives)."""
        return public_coordinates(public_seed, self.length, self.sample_size)

    def _encode(self, packed, rng, public_seed) -> MaskReport:
        if public_seed is None:
            raise ConfigError("the sampling mechanism needs public_seed=(round, client) (public randomness "
                              "the server can reproduce) to choose the reported coordinates")
        seed = _public_seed(public_seed)
        at = self.coordinates(seed)
        true = ((packed[at >> 3] >> (at & 7).astype(np.uint8)) & 1).astype(bool)
        (noise,) = threshold_bits(rng, self.sample_size, [self._limit])
        bits = np.bitwise_xor(np.packbits(true, bitorder="little"), noise)
        return self._report(bits=bits, public_seed=seed)

    def _check_payload(self, report):
        if report.indices is not None or report.bits is None or report.public_seed is None:
            raise ConfigError("a sampling report carries packed bits and its public seed (no indices)")
        check_packed(report.bits, self.sample_size, "sampling report bits")

    def _tally(self, reports, rng) -> VoteTally:
        ones = np.zeros(self.length, dtype=np.int64)
        reported = np.zeros(self.length, dtype=np.int64)
        for report in reports:
            at = self.coordinates(report.public_seed)
            ones[at] += unpack(report.bits, self.sample_size)  # distinct coordinates: no repeated index
            reported[at] += 1
        return VoteTally(mechanism=self.name, length=self.length, n=len(reports), sums=ones, reported=reported)

    def estimate(self, tally):
        tally = self.check_tally(tally)
        q = self.flip_probability
        debiased = (tally.sums - q * tally.reported) / (1 - 2 * q)
        return debiased * (self.length / self.sample_size) / tally.n

    def variance(self, n, frequency):
        f = check_frequency(frequency)
        q = self.flip_probability
        per_bit = q * (1 - q) / (1 - 2 * q) ** 2
        return ((self.length / self.sample_size) * (per_bit + f) - f) / check_count(n)

    @property
    def count_channel(self):
        """Randomized response's channel when every coordinate is sampled; a partial sample has none."""
        q = self.flip_probability
        return (1 - q, q) if self.sample_size == self.length else None

    def audit_pair(self, rng, public_seed):
        """A = ones on min(s, Delta) coordinates the public seed samples, B = zeros; score: their report bits."""
        changed = self.reported_changes
        ones = np.zeros(self.length, dtype=bool)
        ones[self.coordinates(public_seed)[:changed]] = True

        def score(report):  # the report's bits follow the sorted sampled coordinates
            return float(unpack(report.bits, self.sample_size)[:changed].sum())
        return pack(ones), pack(np.zeros(self.length, dtype=bool)), score

    @property
    def epsilon_per_decision(self) -> float:
        return self.epsilon

    @property
    def reported_changes(self) -> int:
        """At most this many of a report's bits differ between neighbours: min(s, Delta)."""
        return min(self.sample_size, self.spec.hamming_bound)

    @property
    def epsilon_per_report(self) -> float:
        return self.reported_changes * self.epsilon

    def event(self):
        q = self.flip_probability
        return BernoulliPair(p=1 - q, q=q, count=self.reported_changes)


def _public_seed(public_seed) -> tuple[int, ...]:
    seed = tuple(public_seed) if isinstance(public_seed, (tuple, list)) else None
    if not seed or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < 2**64
                       for v in seed):
        raise ConfigError(f"public_seed must be a non-empty tuple of integers in [0, 2**64), e.g. (round, client), "
                          f"got {public_seed!r}")
    return tuple(int(v) for v in seed)
