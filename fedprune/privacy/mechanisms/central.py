"""Central DP: exact votes to a trusted aggregator that adds Gaussian noise to their sum.

Clients send their exact packed masks. The aggregator (a trusted server, or secure aggregation
that reveals only the sum) adds N(0, (sigma sqrt(Delta))^2) to each coordinate's vote count:
one client changes at most Delta coordinates by 1 each, an L2 sensitivity of sqrt(Delta), so
each report is a Gaussian mechanism with noise multiplier sigma (``event()``). The estimate
noisy_sum / n is unbiased with variance Delta sigma^2 / n^2, far below any local mechanism's,
under a much stronger trust assumption: whoever sees a client's report sees its mask exactly.

Figures at a delta: per report, the analytic Gaussian mechanism (Balle & Wang 2018) at sigma
and sensitivity 1; per decision (one bit), the same at sigma sqrt(Delta). sigma comes from
``noise_multiplier`` or from a target per-report (epsilon, delta). The noise is numpy's
float64 Gaussian; like most DP libraries, the figures assume ideal real-valued noise.

Under secret Poisson client sampling (rate q over N clients, ``client-sampling poisson``) a report
must also lie within a known distance of its absence: a mask keeping exactly ``kept`` coordinates is
sqrt(kept) from the zero vector, so the round's vote sums are a Poisson-sampled Gaussian of noise
multiplier sigma sqrt(Delta / kept) at sensitivity 2 (replace-one: -+sqrt(kept)), and the sums are
divided by the expected count q N, not the realised one. A report keeping any other count is refused.
The weight sums of the same round come from the same sample: the coordinator charges both as one
sampled Gaussian (``fedprune.privacy.events.joint``).
"""

from __future__ import annotations

import math

import numpy as np

from fedprune.privacy.events import Gaussian
from fedprune.privacy.mechanisms.base import (MaskReport, Mechanism, VoteTally, check_count, check_epsilon,
                                             check_frequency, check_packed)
from fedprune.privacy.mechanisms.packed import count_ones
from fedprune.privacy.mechanisms.registry import register
from fedprune.privacy.rng import check_generator
from fedprune.validation import ConfigError, positive, positive_int, probability


@register
class CentralGaussian(Mechanism):
    """Exact votes, Gaussian noise of std sigma sqrt(Delta) on each vote sum, added by a trusted aggregator."""

    name = "central"
    description = "exact votes; a trusted aggregator adds Gaussian noise to the sums (stronger trust assumption)"
    threat_model = "central"
    epsilon_key = "epsilon_per_report"
    trust_model = ("central: clients send their EXACT masks; the guarantee holds only if the aggregator that adds "
                   "the noise is trusted, or secure aggregation reveals nothing but the sum; anyone who sees a "
                   "single report learns that client's mask")

    def __init__(self, *, length, spec, noise_multiplier=None, epsilon=None, delta=None, kept=None,
                 sampling_rate=1.0, population=0):
        super().__init__(length=length, spec=spec)
        self.kept = None if kept is None else positive_int("kept", kept)
        self.sampling_rate = probability("sampling_rate", sampling_rate, open_high=False)
        if self.sampled and (self.kept is None or population < 1):
            raise ConfigError("Poisson-sampled central votes need each mask's kept count (its distance from "
                              "absence) and the population sampled from (population >= 1)")
        self.expected_count = self.sampling_rate * population if self.sampled else None
        if spec.threat_model != "central":
            raise ConfigError("the central mechanism needs a trusted aggregator: declare "
                              "ReportSpec(threat_model='central'), or use a local mechanism "
                              "(randomized-response, sue, oue, subset, sampling) against an untrusted server")
        self.delta = None if delta is None else probability("delta", delta)
        if (noise_multiplier is None) == (epsilon is None):
            raise ConfigError("the central mechanism takes either noise_multiplier or a target per-report "
                              "epsilon (with delta), not both and not neither")
        if epsilon is not None:
            if self.delta is None:
                raise ConfigError("a target epsilon for the central mechanism needs delta in (0, 1)")
            from fedprune.privacy.closed_form import analytic_gaussian_sigma
            noise_multiplier = analytic_gaussian_sigma(check_epsilon(epsilon), self.delta)
        self.noise_multiplier = positive("noise_multiplier", noise_multiplier)
        self.noise_std = self.noise_multiplier * math.sqrt(self.spec.hamming_bound)

    @classmethod
    def from_settings(cls, config, *, length, kept, hamming_bound):
        """sigma from the run's per-report target ``epsilon-per-report`` at its ``delta``; the run's Poisson
        client sampling (rate fraction-train over num-clients), if any."""
        sampled = getattr(config, "client_sampling", "fixed") == "poisson"
        return cls(length=length, spec=cls.spec_for(config, hamming_bound), delta=config.delta,
                   epsilon=check_epsilon(config.epsilon_per_report, "epsilon-per-report"), kept=kept,
                   sampling_rate=config.fraction_train if sampled else 1.0,
                   population=config.num_clients if sampled else 0)

    @property
    def sampled(self) -> bool:
        """Whether reports come from a secret Poisson sample of clients."""
        return self.sampling_rate < 1.0

    @classmethod
    def report_coordinates(cls, length, hamming_bound, sample_size):
        return 1  # the setting is the per-report figure

    def _parameters(self):
        return {"noise_multiplier": self.noise_multiplier}

    def _encode(self, packed, rng, public_seed) -> MaskReport:
        return self._report(bits=packed.copy())  # exact: the aggregator adds the noise

    def _check_payload(self, report):
        if report.indices is not None or report.public_seed is not None or report.bits is None:
            raise ConfigError("a central report carries the exact packed mask only")
        check_packed(report.bits, self.length, "central report bits")
        if self.kept is not None and (ones := int(count_ones([report.bits], self.length).sum())) != self.kept:
            raise ConfigError(f"a central report keeps {ones} coordinates, the round's masks keep {self.kept}: "
                              "the noise is sized to masks of that count")

    def aggregate(self, reports, rng=None):
        """As for every mechanism; under Poisson sampling a round may sample nobody: the sums are then noise."""
        if self.sampled and isinstance(reports, list) and not reports:
            return self._tally([], rng)
        return super().aggregate(reports, rng)

    def _tally(self, reports, rng) -> VoteTally:
        if rng is None:
            raise ConfigError("central aggregation adds the noise: pass rng=fedprune.privacy.rng.privacy_rng()")
        rng = check_generator(rng)
        exact = count_ones([report.bits for report in reports], self.length)
        noisy = exact + rng.normal(0.0, self.noise_std, size=self.length)
        return VoteTally(mechanism=self.name, length=self.length, n=len(reports), sums=noisy)

    def estimate(self, tally):
        tally = self.check_tally(tally)
        # Poisson: the expected count, so the estimate does not tell how many took part
        return tally.sums / (self.expected_count if self.sampled else tally.n)

    def variance(self, n, frequency):
        f = check_frequency(frequency)
        n = check_count(n)
        return np.full(f.shape, self.noise_std**2 / n**2)

    def audit_claim(self, delta):
        """The per-report epsilon at ``delta`` (default: the mechanism's own, else 1e-5)."""
        delta = probability("delta", delta if delta is not None else (self.delta or 1e-5))
        return self.epsilon_per_report(delta), delta

    def audit_pair(self, rng, public_seed):
        """A = ones on Delta coordinates, B = zeros; score: the noisy sum over them after aggregation."""
        packed_a, packed_b, _ = super().audit_pair(rng, public_seed)
        at = np.arange(self.spec.hamming_bound)

        def score(report):
            return float(self.aggregate([report], rng).sums[at].sum())
        return packed_a, packed_b, score

    def _delta(self, delta):
        if delta is None:
            if self.delta is None:
                raise ConfigError("central (epsilon, delta) figures need a delta; pass one")
            return self.delta
        return probability("delta", delta)

    def epsilon_per_report(self, delta=None) -> float:
        """Epsilon of one report at ``delta`` (the constructor's delta when omitted)."""
        from fedprune.privacy.closed_form import analytic_gaussian_epsilon
        return analytic_gaussian_epsilon(self.noise_multiplier, self._delta(delta))

    def epsilon_per_decision(self, delta=None) -> float:
        """Epsilon of one bit of the mask at ``delta``: sensitivity 1 against noise sigma sqrt(Delta)."""
        from fedprune.privacy.closed_form import analytic_gaussian_epsilon
        return analytic_gaussian_epsilon(self.noise_std, self._delta(delta))

    def event(self):
        if self.sampled:  # a report is sqrt(kept) from its absence, against noise sigma sqrt(Delta)
            return Gaussian(noise_multiplier=self.noise_std / math.sqrt(self.kept), sampling_rate=self.sampling_rate,
                            sensitivity=2.0)
        return Gaussian(noise_multiplier=self.noise_multiplier, sensitivity=1.0)  # one vote flips a sum by 1 per bit

    def describe(self, delta=None) -> dict:
        """As for local mechanisms, with (epsilon, delta) figures when a delta is known."""
        known = delta is not None or self.delta is not None
        return {"mechanism": self.name, "length": self.length, "trust_model": self.trust_model,
                **self.spec.to_dict(), "parameters": self._parameters(), "noise_std": self.noise_std,
                "delta": self._delta(delta) if known else None,
                "epsilon_per_decision": self.epsilon_per_decision(delta) if known else None,
                "epsilon_per_report": self.epsilon_per_report(delta) if known else None,
                "event": repr(self.event())}
