"""Where privacy noise comes from: the operating system's entropy, or a seed when asked.

Production runs draw privacy noise from generators seeded with fresh operating-system entropy
(``secrets``); a seed is for tests and reproducible simulations only, and a run records which
(:class:`RandomnessSource`). ``stream`` keys split one seed into independent streams (one
per round and client, say) through numpy's ``SeedSequence`` spawn keys, so seeded clients
never share noise.

Caveat, stated rather than hidden: numpy's PCG64 is a statistical generator, not a
cryptographic one. Seeded from 256 bits of OS entropy it is unpredictable to anyone who has not
seen its outputs, which is the usual standard for DP libraries built on numpy.
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedprune.validation import ConfigError


@dataclass(frozen=True)
class RandomnessSource:
    """Which randomness a run's privacy noise came from: OS entropy (``seeded=False``) or ``seed``."""

    seeded: bool = False
    seed: int | None = None

    def __post_init__(self):
        if self.seeded != (self.seed is not None):
            raise ConfigError("RandomnessSource: give a seed exactly when seeded=True "
                              f"(got seeded={self.seeded!r}, seed={self.seed!r})")
        if self.seed is not None:
            object.__setattr__(self, "seed", _seed(self.seed))

    @classmethod
    def from_seed(cls, seed: int | None = None) -> "RandomnessSource":
        """OS entropy when ``seed`` is None, the seeded source otherwise."""
        return cls(seeded=seed is not None, seed=seed)

    def generator(self, stream: Sequence[int] = ()) -> np.random.Generator:
        """A fresh generator for ``stream`` (OS entropy every call when unseeded)."""
        return privacy_rng(self.seed, stream=stream)

    def to_dict(self) -> dict:
        """What a run records: ``{"source": "os-entropy"}`` or ``{"source": "seeded", "seed": s}``."""
        return {"source": "seeded", "seed": self.seed} if self.seeded else {"source": "os-entropy"}


def privacy_rng(seed: int | None = None, *, stream: Sequence[int] = ()) -> np.random.Generator:
    """A numpy Generator for privacy noise: OS entropy when ``seed`` is None, else seeded.

    ``stream`` (non-negative integers, e.g. ``(round, client)``) picks an independent stream of
    a seeded generator; without a seed every call draws fresh OS entropy and ``stream`` only
    has to be valid.
    """
    keys = _stream(stream)
    if seed is None:
        return np.random.default_rng(np.random.SeedSequence(secrets.randbits(256)))
    return np.random.default_rng(np.random.SeedSequence(_seed(seed), spawn_key=keys))


def check_generator(rng) -> np.random.Generator:
    """Return ``rng`` if it is a numpy Generator; fail with the fix otherwise."""
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"privacy noise needs a numpy Generator, got {type(rng).__name__}; "
                          "pass fedprune.privacy.rng.privacy_rng() (OS entropy) or privacy_rng(seed) in tests")
    return rng


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"a privacy seed must be an integer >= 0 (or None for OS entropy), got {seed!r}")
    return int(seed)


def _stream(stream) -> tuple[int, ...]:
    try:
        keys = tuple(stream)
    except TypeError:
        raise ConfigError(f"stream must be a sequence of integers >= 0, got {stream!r}") from None
    for key in keys:
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or key < 0:
            raise ConfigError(f"stream keys must be integers >= 0, got {stream!r}")
    return tuple(int(key) for key in keys)
