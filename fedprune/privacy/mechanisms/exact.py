"""Exact votes: the true packed mask as an ordinary report, with no privacy at all.

What a run sends when its mechanism is ``exact`` or its mechanism's epsilon setting is ``inf``.
The server checks the report (exactly ``kept`` bits when every mask keeps that many), tallies
the votes and takes their mean. The accountant records an ``Unprotected`` event: no figure.
"""

from __future__ import annotations

import math

import numpy as np

from fedprune.privacy.events import Unprotected
from fedprune.privacy.mechanisms.base import (
    MaskReport,
    Mechanism,
    VoteTally,
    check_count,
    check_frequency,
    check_packed,
)
from fedprune.privacy.mechanisms.clipped_bernoulli import clipped_sample
from fedprune.privacy.mechanisms.packed import count_ones
from fedprune.privacy.mechanisms.registry import register
from fedprune.pruning.bits import unpack
from fedprune.validation import ConfigError


@register
class ExactVotes(Mechanism):
    """The true mask, unprivatized; the estimate is the plain mean of the votes."""

    name = "exact"
    description = "exact votes: the true mask is sent as it is (no privacy)"
    threat_model = "none"
    epsilon_key = None
    trust_model = "none: the report is the client's exact mask; whoever sees it learns the mask (no privacy)"

    def __init__(self, *, length, spec, kept=None):
        super().__init__(length=length, spec=spec)
        if kept is not None and (isinstance(kept, bool) or not isinstance(kept, int) or not 0 <= kept <= length):
            raise ConfigError(f"kept must be an integer in [0, {length}] or None, got {kept!r}")
        self.kept = kept

    @classmethod
    def from_settings(cls, config, *, length, kept, hamming_bound):
        return cls(length=length, spec=cls.spec_for(config, hamming_bound), kept=kept)

    def _parameters(self):
        return {} if self.kept is None else {"kept": self.kept}

    def sample(self, probabilities, rng: np.random.Generator) -> MaskReport:
        """The report of one exact Bernoulli draw per coordinate of ``probabilities`` (mask-only at eps inf)."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (self.length,):
            raise ConfigError(f"{p.size} keep-probabilities for a report of {self.length} weights")
        return self.encode(clipped_sample(p, 0, rng), rng)

    def _encode(self, packed, rng, public_seed) -> MaskReport:
        return self._report(bits=packed.copy())

    def _check_payload(self, report):
        if report.indices is not None or report.public_seed is not None or report.bits is None:
            raise ConfigError("an exact report carries the packed mask only")
        check_packed(report.bits, self.length, "exact report bits")
        if self.kept is not None:
            count = int(unpack(report.bits, self.length).sum())
            if count != self.kept:
                raise ConfigError(f"mask votes keep {count} weights, the plan asks for {self.kept}")

    def _tally(self, reports, rng) -> VoteTally:
        sums = count_ones([report.bits for report in reports], self.length)
        return VoteTally(mechanism=self.name, length=self.length, n=len(reports), sums=sums)

    def estimate(self, tally):
        tally = self.check_tally(tally)
        return tally.sums / tally.n

    def variance(self, n, frequency):
        check_count(n)
        return np.zeros(np.shape(check_frequency(frequency)))

    @property
    def count_channel(self):
        return 1.0, 0.0

    @property
    def epsilon_per_decision(self) -> float:
        return math.inf

    @property
    def epsilon_per_report(self) -> float:
        return math.inf

    def event(self):
        return Unprotected("exact mask votes sent without privacy")

    def describe(self) -> dict:
        return {"mechanism": self.name, "length": self.length, "trust_model": self.trust_model,
                **self.spec.to_dict(), "parameters": self._parameters(), "privacy": "none: exact masks are sent",
                "epsilon_per_decision": None, "epsilon_per_report": None, "delta": None, "event": repr(self.event())}
