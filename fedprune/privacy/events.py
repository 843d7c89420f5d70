"""Privacy events: what one release costs, in a form every accountant can compose.

Units of protection: ``"record"`` (one example inside a client) and ``"client"`` (a client's
whole data). Neighbouring datasets are replace-one. An event never mixes units: the ledger
records it under each unit it protects and marks the others as unprotected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

from fedprune.validation import ConfigError, positive, positive_int, probability

Unit = Literal["record", "client"]
UNITS: tuple[Unit, ...] = ("record", "client")


@dataclass(frozen=True)
class BernoulliPair:
    """``count`` independent coordinates, each Bernoulli(p) under one neighbour, Bernoulli(q) under the other.

    Each coordinate may change in either direction (two neighbouring masks mix 1->0 and 0->1
    changes), so the accountant composes a pair that dominates both orders at once (for
    randomized response, p = 1 - q, that pair is the channel itself). Per-bit randomized response at eps is
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
    """Gaussian noise of std ``noise_multiplier`` x C on a sum, Poisson-sampled at ``sampling_rate``, ``count`` times.

    ``sensitivity`` is the largest L2 distance between the sums on two neighbouring (replace-one)
    datasets, in units of C. 2, the default, when each contribution is clipped to norm C (DP-SGD,
    Flower's DP wrappers): replacing one contribution moves the sum by up to 2C. 1 when C is the
    replace-one distance itself (central mask votes: noise std sigma sqrt(Delta) for masks at most
    Delta bits apart). With ``sampling_rate`` < 1 a contribution must also lie within
    sensitivity/2 x C of zero, its absence (clipping guarantees it). The sampling must be hidden
    from the adversary (DP-SGD's Poisson batches); never count client sampling the server can see.
    """

    noise_multiplier: float
    sampling_rate: float = 1.0
    count: int = 1
    sensitivity: float = 2.0

    def __post_init__(self):
        positive("noise_multiplier", self.noise_multiplier)
        probability("sampling_rate", self.sampling_rate, open_high=False)
        positive_int("count", self.count)
        positive("sensitivity", self.sensitivity)


@dataclass(frozen=True)
class Unprotected:
    """A release with no DP guarantee in some unit (weights sent in the clear, say)."""

    what: str


@dataclass(frozen=True)
class PostProcessing:
    """A release computed only from values another event already protects in this unit: it costs nothing.

    ``what`` names the release and what it is derived from (a mask from the magnitudes of
    DP-SGD-trained weights, say). Only true post-processing qualifies: a mask scored from raw
    gradients of the data (taylor, obd) is a new release and is charged.
    """

    what: str


Event = Union[BernoulliPair, Gaussian, Unprotected, PostProcessing]


def joint(parts: Sequence[Gaussian]) -> Gaussian:
    """One Gaussian for sums noised on one draw of contributors (a Poisson round's weight and vote sums).

    Each sum divided by its own noise std is a sum of unit-noise Gaussians; a contribution lies within
    sensitivity/2 / noise_multiplier of its absence in each, so within the root of their squares in all
    together: the sums are at most one Gaussian of noise multiplier 1 / that root (sensitivity 2). Composing
    them as two independently sampled releases would assume two samples the code does not draw (one secret
    sample hides a client from both sums at once); at small rates that composition comes out below this charge.
    """
    if not parts or any(not isinstance(p, Gaussian) or p.count != 1 for p in parts):
        raise ConfigError("joint takes one or more single Gaussian releases")
    rates = {p.sampling_rate for p in parts}
    if len(rates) != 1:
        raise ConfigError(f"joint releases come from one sample: sampling rates differ ({sorted(rates)})")
    radius = math.sqrt(math.fsum((p.sensitivity / 2 / p.noise_multiplier) ** 2 for p in parts))
    return Gaussian(noise_multiplier=1.0 / radius, sampling_rate=rates.pop(), sensitivity=2.0)


def randomized_response(epsilon: float, count: int = 1) -> BernoulliPair:
    """Binary randomized response at ``epsilon`` per coordinate, on ``count`` coordinates."""
    eps = positive("epsilon", epsilon)
    keep = 1.0 / (1.0 + math.exp(-eps))
    return BernoulliPair(p=keep, q=1.0 - keep, count=count)


def check_unit(unit: str) -> Unit:
    if unit not in UNITS:
        raise ConfigError(f"unknown unit of protection {unit!r}; valid units: {', '.join(UNITS)}")
    return unit  # type: ignore[return-value]


