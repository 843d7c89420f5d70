"""The sparsity at each round and whether the mask changes this round.

Rounds are numbered from 1. ``sparsity_at(round)`` is the target sparsity of the mask in
force after round ``round`` (0.0 before the first pruning round); ``is_update_round(round)``
says whether a new mask is computed in that round.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

from fedprune.validation import ConfigError, pick, positive, positive_int, probability
from fedprune.validation import sparsity as check_sparsity

# A Geometric step counts as reaching ``final_sparsity`` when its density is within this
# relative distance of the final density (absorbs float error in rates derived by for_target).
_REACHED = 1e-9


def _round(value: int) -> int:
    return positive_int("round (rounds are numbered from 1)", value)


@dataclass(frozen=True)
class OneShot:
    """Prune once, to ``sparsity``, in round ``at_round``."""

    sparsity: float
    at_round: int = 1

    def __post_init__(self):
        check_sparsity(self.sparsity)
        positive_int("at_round", self.at_round)

    def sparsity_at(self, round: int) -> float:
        return self.sparsity if _round(round) >= self.at_round else 0.0

    def is_update_round(self, round: int) -> bool:
        return _round(round) == self.at_round


@dataclass(frozen=True)
class Constant:
    """The mask is set to ``sparsity`` in round 1 and held for the whole run."""

    sparsity: float

    def __post_init__(self):
        check_sparsity(self.sparsity)

    def sparsity_at(self, round: int) -> float:
        _round(round)
        return self.sparsity

    def is_update_round(self, round: int) -> bool:
        return _round(round) == 1


@dataclass(frozen=True)
class Geometric:
    """Iterative magnitude pruning: each step prunes ``rate`` of the weights still kept.

    Steps fall in rounds ``start, start + every, ...``; after k steps the density is
    ``(1 - rate) ** k``, the sparsity ``1 - (1 - rate) ** k`` worked out exactly and rounded once
    to a float. With ``final_sparsity`` the steps stop at the first one that reaches
    it, and that last step lands exactly on ``final_sparsity``.
    """

    rate: float
    every: int = 1
    start: int = 1
    final_sparsity: float | None = None

    def __post_init__(self):
        probability("rate", self.rate)
        positive_int("every", self.every)
        positive_int("start", self.start)
        if self.final_sparsity is not None:
            probability("final_sparsity", self.final_sparsity)

    @classmethod
    def for_target(cls, final_sparsity: float, steps: int, *, every: int = 1, start: int = 1) -> Geometric:
        """The schedule that reaches ``final_sparsity`` in exactly ``steps`` equal-rate steps."""
        probability("final_sparsity", final_sparsity)
        positive_int("steps", steps)
        rate = 1.0 - (1.0 - final_sparsity) ** (1.0 / steps)
        return cls(rate=rate, every=every, start=start, final_sparsity=final_sparsity)

    @property
    def steps(self) -> int | None:
        """Number of pruning steps (None: no final sparsity, so no end)."""
        if self.final_sparsity is None:
            return None
        target = (1.0 - self.final_sparsity) * (1.0 + _REACHED)
        k = max(1, math.floor(math.log(1.0 - self.final_sparsity) / math.log(1.0 - self.rate)))
        while k > 1 and (1.0 - self.rate) ** (k - 1) <= target:
            k -= 1
        while (1.0 - self.rate) ** k > target:
            k += 1
        return k

    def steps_done(self, round: int) -> int:
        """Pruning steps taken by the end of ``round``."""
        if _round(round) < self.start:
            return 0
        k = (round - self.start) // self.every + 1
        return k if self.steps is None else min(k, self.steps)

    def sparsity_at(self, round: int) -> float:
        k = self.steps_done(round)
        if self.final_sparsity is not None and k == self.steps:
            return self.final_sparsity
        # Exact rational arithmetic, rounded once: one step gives exactly ``rate`` (float
        # 1 - (1 - 0.1) is 0.09999999999999998, which kept_count rounds differently at halves).
        return float(1 - (1 - Fraction(self.rate)) ** k)

    def is_update_round(self, round: int) -> bool:
        if _round(round) < self.start or (round - self.start) % self.every:
            return False
        return self.steps is None or (round - self.start) // self.every + 1 <= self.steps


@dataclass(frozen=True)
class Polynomial:
    """Automated gradual pruning (Zhu & Gupta 2017).

    In rounds t = start, start + every, ..., end the sparsity is set to
    ``s_f + (s_i - s_f) * (1 - (t - start) / (end - start)) ** power`` and held in between;
    from ``end`` on it is ``final_sparsity``. ``every`` must divide ``end - start`` so the last
    update falls on ``end``. With ``initial_sparsity`` 0 the formula's step at ``start`` prunes
    nothing, so ``start`` is then not an update round: a mask report there would spend privacy
    budget on a full mask.
    """

    final_sparsity: float
    initial_sparsity: float = 0.0
    start: int = 1
    end: int | None = None
    every: int = 1
    power: float = 3

    def __post_init__(self):
        check_sparsity(self.final_sparsity, "final_sparsity")
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        if self.initial_sparsity >= self.final_sparsity:
            raise ConfigError(f"initial_sparsity ({self.initial_sparsity}) must be below "
                              f"final_sparsity ({self.final_sparsity})")
        positive_int("start", self.start)
        if self.end is None:
            raise ConfigError("Polynomial needs end, the round of the last pruning step")
        positive_int("end", self.end)
        positive_int("every", self.every)
        if self.end <= self.start:
            raise ConfigError(f"end ({self.end}) must come after start ({self.start}); "
                              "for a single pruning round use OneShot")
        if (self.end - self.start) % self.every:
            raise ConfigError(f"every ({self.every}) must divide end - start ({self.end - self.start}) "
                              "so the last update lands on end")
        positive("power", self.power)

    def sparsity_at(self, round: int) -> float:
        if _round(round) < self.start:
            return 0.0
        t = min(self.end, self.start + (round - self.start) // self.every * self.every)
        progress = (t - self.start) / (self.end - self.start)
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        return s_f + (s_i - s_f) * (1.0 - progress) ** self.power

    def is_update_round(self, round: int) -> bool:
        if not self.start <= _round(round) <= self.end or (round - self.start) % self.every:
            return False
        return round > self.start or self.initial_sparsity > 0.0  # see the class docstring


Schedule = OneShot | Constant | Geometric | Polynomial
SCHEDULES: dict[str, type] = {
    "oneshot": OneShot,
    "constant": Constant,
    "geometric": Geometric,
    "polynomial": Polynomial,
}


def make_schedule(name: str, **settings) -> Schedule:
    """Build the schedule ``name`` from keyword settings, naming valid ones on a mistake."""
    cls = pick("schedule", name, SCHEDULES)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for schedule {name!r}; "
                          f"valid settings: {', '.join(valid)}")
    try:
        return cls(**settings)
    except TypeError as error:  # a required setting is missing
        raise ConfigError(f"schedule {name!r}: {error}; valid settings: {', '.join(valid)}") from None

