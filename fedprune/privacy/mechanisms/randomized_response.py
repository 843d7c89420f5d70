"""Per-coordinate binary reports: per-bit randomized response and the unary encodings SUE and OUE.

Each coordinate j of the report is 1 with probability p if the client keeps weight j and q if
it prunes it, independently. With y_j the fraction of n reports saying 1, the server's
unbiased estimate of the keep-frequency f_j is (y_j - q) / (p - q), with variance
(f p(1-p) + (1-f) q(1-q)) / (n (p-q)^2); for randomized response (p = 1 - q) that is
e^eps / (n (e^eps - 1)^2).

The implemented q is the claimed one rounded up to a multiple of 2**-32 (see ``packed``): the
real noise is never below the claim, and ``event()`` describes the implemented channel.

Epsilon conventions (each class states its figures per decision and per report):

- ``randomized-response``: ``epsilon`` is per bit; p = e^eps / (1 + e^eps), q = 1 - p.
- ``sue`` (symmetric unary encoding, basic RAPPOR): ``epsilon`` is the literature's figure for
  a one-hot change (two bits), so each bit is randomized response at eps / 2.
- ``oue`` (optimized unary encoding, Wang et al. 2017): p = 1/2, q = 1 / (e^eps + 1); eps is
  the loss of a one-hot change (one bit 1->0 and one 0->1). One bit alone costs up to
  ln((e^eps + 1) / 2) (the larger of its two log-ratios), so a report with Hamming bound Delta
  costs up to Delta ln((e^eps + 1) / 2): nothing here assumes the changes pair up.
"""

from __future__ import annotations

import math

import numpy as np

from fedprune.privacy.events import BernoulliPair, randomized_response
from fedprune.privacy.mechanisms.base import (MaskReport, Mechanism, VoteTally, check_count, check_epsilon,
                                             check_frequency, check_packed)
from fedprune.privacy.mechanisms.packed import count_ones, implemented, threshold, threshold_bits
from fedprune.privacy.mechanisms.registry import register
from fedprune.validation import ConfigError


def flip_probability(epsilon: float) -> float:
    """Randomized response's flip probability 1 / (1 + e^eps), without overflow."""
    return math.exp(-epsilon) / (1.0 + math.exp(-epsilon))


def binary_variance(p: float, q: float, n: int, frequency) -> np.ndarray:
    """Variance of (y - q) / (p - q) over n independent reports at true keep-frequency ``frequency``."""
    f = check_frequency(frequency)
    return (f * p * (1 - p) + (1 - f) * q * (1 - q)) / (check_count(n) * (p - q) ** 2)


def binary_event(p: float, q: float, count: int) -> BernoulliPair:
    """The event of ``count`` coordinates of the channel (p, q): exact for RR, else the dominating RR.

    A coordinate with p != 1 - q has different losses for 1->0 and 0->1 changes; binary randomized
    response at its larger log-ratio dominates it in both directions (Kairouz et al. 2015), however
    a neighbouring pair mixes the directions.
    """
    if p == 1 - q:
        return BernoulliPair(p=p, q=q, count=count)
    return randomized_response(BernoulliPair(p=p, q=q).epsilon_per_coordinate, count)


class BinaryReports(Mechanism):
    """A report with one noisy bit per coordinate: 1 w.p. ``keep_report`` if kept, ``prune_report`` if pruned."""

    def __init__(self, *, length, spec, epsilon):
        super().__init__(length=length, spec=spec)
        self.epsilon = check_epsilon(epsilon)
        self._false_limit = threshold(self._claimed_false_positive())
        self.prune_report = implemented(self._false_limit)  # q: P(report 1 | pruned)
        self._symmetric = self._is_symmetric()
        self._true_limit = None if self._symmetric else threshold(1.0 - self._claimed_true_positive())
        self.keep_report = 1.0 - self.prune_report if self._symmetric else 1.0 - implemented(self._true_limit)
        if self.keep_report <= self.prune_report:
            raise ConfigError(f"epsilon {self.epsilon!r} is too small to implement with 32-bit noise "
                              "(the report would carry no information); use epsilon >= 1e-8")

    @classmethod
    def from_settings(cls, config, *, length, kept, hamming_bound):
        epsilon = cls.epsilon_for_decision(check_epsilon(config.epsilon_per_decision, "epsilon-per-decision"))
        return cls(length=length, spec=cls.spec_for(config, hamming_bound), epsilon=epsilon)

    @classmethod
    def epsilon_for_decision(cls, per_decision: float) -> float:
        """The ``epsilon`` argument whose per-decision (per-bit) figure is ``per_decision``."""
        return per_decision

    @property
    def count_channel(self):
        return self.keep_report, self.prune_report

    # subclasses: the claimed channel
    def _claimed_false_positive(self) -> float:
        return flip_probability(self.epsilon)

    def _claimed_true_positive(self) -> float:
        return 1.0 - self._claimed_false_positive()

    def _is_symmetric(self) -> bool:
        return True

    def _parameters(self):
        return {"epsilon": self.epsilon}

    @property
    def flip_probability(self) -> float:
        """P(report differs from the true bit) for a pruned weight (= for a kept one when symmetric)."""
        return self.prune_report

    def _encode(self, packed, rng, public_seed) -> MaskReport:
        if self._symmetric:  # flip every bit w.p. q: XOR with Bernoulli(q) noise
            (noise,) = threshold_bits(rng, self.length, [self._false_limit])
            return self._report(bits=np.bitwise_xor(packed, noise))
        # a kept bit reads 1 unless its "miss" event (prob 1 - p) fires, a pruned bit reads 1 iff its
        # false-positive event (prob q) fires; packed's zero padding keeps the padding clear
        false_pos, miss = threshold_bits(rng, self.length, [self._false_limit, self._true_limit])
        return self._report(bits=(packed & ~miss) | (~packed & false_pos))

    def _check_payload(self, report):
        if report.indices is not None or report.public_seed is not None or report.bits is None:
            raise ConfigError(f"a {self.name!r} report carries packed bits only")
        check_packed(report.bits, self.length, f"{self.name} report bits")

    def _tally(self, reports, rng) -> VoteTally:
        sums = count_ones([report.bits for report in reports], self.length)
        return VoteTally(mechanism=self.name, length=self.length, n=len(reports), sums=sums)

    def estimate(self, tally):
        tally = self.check_tally(tally)
        return (tally.sums / tally.n - self.prune_report) / (self.keep_report - self.prune_report)

    def variance(self, n, frequency):
        return binary_variance(self.keep_report, self.prune_report, n, frequency)

    def event(self):
        return binary_event(self.keep_report, self.prune_report, self.spec.hamming_bound)

    @property
    def epsilon_per_report(self) -> float:
        """Pure epsilon of a whole report: Delta times the per-decision figure (pure-DP composition)."""
        return self.spec.hamming_bound * self.epsilon_per_decision


@register
class RandomizedResponse(BinaryReports):
    """Per-bit randomized response: keep each true bit w.p. e^eps / (1 + e^eps)."""

    name = "randomized-response"
    description = "per-bit randomized response: keep each bit w.p. e^eps/(1+e^eps)"

    @property
    def epsilon_per_decision(self) -> float:
        return self.epsilon


@register
class SymmetricUnaryEncoding(BinaryReports):
    """SUE / basic RAPPOR: randomized response at eps / 2 per bit (eps covers a one-hot change)."""

    name = "sue"
    description = "symmetric unary encoding (basic RAPPOR): randomized response at eps/2 per bit"

    @classmethod
    def epsilon_for_decision(cls, per_decision):
        return 2.0 * per_decision

    @classmethod
    def report_coordinates(cls, length, hamming_bound, sample_size):
        return hamming_bound / 2  # the planner's first guess: twice the per-coordinate share, as before

    def _claimed_false_positive(self):
        return flip_probability(self.epsilon / 2)

    @property
    def epsilon_per_decision(self) -> float:
        return self.epsilon / 2


@register
class OptimizedUnaryEncoding(BinaryReports):
    """OUE: a kept bit is reported 1 w.p. 1/2, a pruned bit w.p. 1 / (e^eps + 1)."""

    name = "oue"
    description = "optimized unary encoding: a kept bit reads 1 w.p. 1/2, a pruned one w.p. 1/(e^eps+1)"

    @classmethod
    def epsilon_for_decision(cls, per_decision):
        """ln(2 e^x - 1), the inverse of ln((e^eps + 1) / 2), without overflow."""
        return per_decision + math.log(2.0 - math.exp(-per_decision))

    def _claimed_false_positive(self):
        return flip_probability(self.epsilon)

    def _claimed_true_positive(self):
        return 0.5

    def _is_symmetric(self):
        return False

    @property
    def epsilon_per_decision(self) -> float:
        """ln((e^eps + 1) / 2): one bit changing, in its worse direction (a kept bit reported 1)."""
        return self.epsilon + math.log1p(math.exp(-self.epsilon)) - math.log(2.0)

