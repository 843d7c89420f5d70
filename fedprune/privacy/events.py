"""Privacy events: what one release costs, in a form every accountant can compose.

Units of protection: ``"record"`` (one example inside a client) and ``"client"`` (a client's
whole data). Neighbouring datasets are replace-one. An event never mixes units: the ledger
records it under each unit it protects and marks the others as unprotected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

from fedprune.validation import ConfigError, positive, positive_int, probability

Unit = Literal["record", "client"]
UNITS: tuple[Unit, ...] = ("record", "client")


@dataclass(frozen=True)
class BernoulliPair:
    """``count`` independent coordinates, each Bernoulli(p) under one neighbour, Bernoulli(q) under the other.

    Both orders are accounted for. Per-bit randomized response at eps is
    ``randomized_response(eps)``: p = e^eps/(1+e^eps), q = 1-p. A whole mask report under a
    Hamming bound Delta is ``count=Delta`` such coordinates. Any pure eps-DP release is
    dominated by binary randomized response at eps (Kairouz, Oh, Viswanath 2015), so a
    pure-eps report is ``randomized_response(eps)`` with count 1.
    """

    p: float
    q: float
    count: int = 1

    def __post_init__(self):
        probability("p", self.p)
        probability("q", self.q)
        positive_int("count", self.count)
        if self.p == self.q:
            raise ConfigError("p == q releases nothing; record no event instead")

    @property
    def epsilon_per_coordinate(self) -> float:
        """The pure eps of one coordinate (the larger log-ratio either way)."""
        p, q = self.p, self.q
        return max(abs(math.log(p / q)), abs(math.log((1 - p) / (1 - q))))


@dataclass(frozen=True)
class Gaussian:
    """Gaussian noise of std ``noise_multiplier`` x L2 sensitivity, Poisson-sampled at ``sampling_rate``, ``count`` times."""

    noise_multiplier: float
    sampling_rate: float = 1.0
    count: int = 1

    def __post_init__(self):
        positive("noise_multiplier", self.noise_multiplier)
        probability("sampling_rate", self.sampling_rate, open_high=False)
        positive_int("count", self.count)


@dataclass(frozen=True)
class Unprotected:
    """A release with no DP guarantee in some unit (weights sent in the clear, say)."""

    what: str


Event = Union[BernoulliPair, Gaussian, Unprotected]


def randomized_response(epsilon: float, count: int = 1) -> BernoulliPair:
    """Binary randomized response at ``epsilon`` per coordinate, on ``count`` coordinates."""
    eps = positive("epsilon", epsilon)
    keep = 1.0 / (1.0 + math.exp(-eps))
    return BernoulliPair(p=keep, q=1.0 - keep, count=count)


def check_unit(unit: str) -> Unit:
    if unit not in UNITS:
        raise ConfigError(f"unknown unit of protection {unit!r}; valid units: {', '.join(UNITS)}")
    return unit  # type: ignore[return-value]


