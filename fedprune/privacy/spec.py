"""What a mask report protects: the unit, the threat model and the mask's Hamming bound.

Every mechanism takes one :class:`ReportSpec` and repeats it in every report it writes, so a
figure is never read without the assumptions it rests on (DESIGN.md, "Privacy").

- ``unit``: ``"client"`` (a client's whole data) or ``"record"`` (one example inside a
  client). A mask is an unstable function of the data (one record can change it entirely),
  so the mask channel costs the same in both units; the unit says what the ledger records.
- ``threat_model``: ``"local"`` (the server is not trusted: each report is privatized on the
  client), ``"central"`` (a trusted aggregator or secure aggregation sees exact votes and
  adds the noise to their sum) or ``"none"`` (exact votes: no privacy).
- ``hamming_bound`` (Delta): the most bits in which two masks a client could report differ.
  Masks of exactly k kept weights out of d differ in at most 2 min(k, d - k) bits;
  unconstrained masks in all d.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

from fedprune.validation import ConfigError

ThreatModel = Literal["local", "central", "none"]
THREAT_MODELS: dict[str, str] = {
    "local": "untrusted server: each report is privatized on the client (local DP)",
    "central": "trusted aggregator or secure aggregation: noise is added to the sum of exact votes (central DP)",
    "none": "no privacy: exact masks are sent, whoever sees a report learns the mask",
}
REPORT_UNITS: dict[str, str] = {
    "client": "a client's whole data",
    "record": "one record inside a client (the mask channel costs the same as for a whole client)",
}


@dataclass(frozen=True)
class ReportSpec:
    """The unit, threat model and Hamming bound Delta that a mask report's figures rest on."""

    unit: str = "client"
    threat_model: str = "local"
    hamming_bound: int = 1

    def __post_init__(self):
        if self.unit not in REPORT_UNITS:
            raise ConfigError(f"unknown unit {self.unit!r}; valid units: {', '.join(REPORT_UNITS)}")
        if self.threat_model not in THREAT_MODELS:
            raise ConfigError(f"unknown threat model {self.threat_model!r}; valid threat models: "
                              f"{', '.join(THREAT_MODELS)}")
        bound = self.hamming_bound
        if isinstance(bound, bool) or not isinstance(bound, numbers.Integral) or bound < 1:
            raise ConfigError(f"hamming_bound (Delta) must be an integer >= 1, got {bound!r}: it is the most bits "
                              "two of a client's possible masks differ in (2k for exactly-k masks, d otherwise)")
        object.__setattr__(self, "hamming_bound", int(bound))

    @classmethod
    def for_exactly_k(cls, kept: int, length: int, *, unit: str = "client",
                      threat_model: str = "local") -> "ReportSpec":
        """The spec for masks that keep exactly ``kept`` of ``length`` weights: Delta = min(2k, 2(d-k), d)."""
        length = _length(length)
        if isinstance(kept, bool) or not isinstance(kept, numbers.Integral) or not 1 <= kept <= length - 1:
            raise ConfigError(f"kept must be an integer in [1, {length - 1}] for a mask of {length} weights, got "
                              f"{kept!r}: a mask that keeps none or all of them is fixed and needs no report")
        kept = int(kept)
        bound = min(2 * kept, 2 * (length - kept), length)
        return cls(unit=unit, threat_model=threat_model, hamming_bound=bound)

    @classmethod
    def for_unconstrained(cls, length: int, *, unit: str = "client", threat_model: str = "local") -> "ReportSpec":
        """The spec for masks with no constraint on how many weights they keep: Delta = d."""
        return cls(unit=unit, threat_model=threat_model, hamming_bound=_length(length))

    def check_length(self, length: int) -> None:
        """Fail unless Delta lies in [1, length] for a mask of ``length`` bits."""
        if self.hamming_bound > length:
            raise ConfigError(f"hamming_bound (Delta) {self.hamming_bound} exceeds the mask length {length}; "
                              f"use at most {length} (ReportSpec.for_unconstrained)")

    def to_dict(self) -> dict:
        """The spec as plain values (what every report and run summary repeats)."""
        return {"unit": self.unit, "threat_model": self.threat_model, "hamming_bound": self.hamming_bound}


def _length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
        raise ConfigError(f"length must be an integer >= 1 (bits in the mask), got {length!r}")
    return int(length)
