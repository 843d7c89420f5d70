"""Mask-only's report: a Bernoulli sample of keep-probabilities clipped to [q, 1 - q].

One draw per weight from theta clipped to [q, 1 - q], q = 1 / (1 + e^eps), is randomized
response at eps per coordinate with no extra noise (docs/MASK_ONLY.md gives the argument), so
the server checks, tallies, debiases and accounts it as a randomized-response report.
"""

from __future__ import annotations

import numpy as np

from fedprune.privacy.mechanisms.base import check_epsilon
from fedprune.privacy.mechanisms.packed import NOISE_CHUNK, SCALE
from fedprune.privacy.mechanisms.randomized_response import RandomizedResponse
from fedprune.privacy.mechanisms.registry import register
from fedprune.privacy.rng import check_generator
from fedprune.pruning.bits import packed_length, unpack
from fedprune.validation import ConfigError


def clipped_sample(probabilities, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Packed bits, bit j = 1 with probability p_j clipped to [limit, 2**32 - limit] / 2**32, exactly.

    Bit j is (u_j < T_j) for a uniform 32-bit u_j and the integer T_j = clip(floor(p_j 2**32)), so
    P(bit j = 1) = T_j / 2**32 to the last bit; ``limit`` 0 clips nothing.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ConfigError("keep-probabilities must be a 1-D array of values in [0, 1]")
    if not 0 <= limit <= SCALE // 2:
        raise ConfigError(f"clip limit must be in [0, 2**31], got {limit}")
    rng = check_generator(rng)
    thresholds = np.clip(np.floor(p * SCALE), limit, SCALE - limit)  # integers below 2**53: exact in float64
    out = np.empty(packed_length(p.size), dtype=np.uint8)
    for start in range(0, p.size, NOISE_CHUNK):
        stop = min(p.size, start + NOISE_CHUNK)
        uniforms = rng.integers(0, SCALE, size=stop - start, dtype=np.uint32)
        out[start // 8:(stop + 7) // 8] = np.packbits(uniforms < thresholds[start:stop], bitorder="little")
    return out


@register
class ClippedBernoulli(RandomizedResponse):
    """A Bernoulli sample of keep-probabilities clipped to [q, 1 - q]: randomized response at eps per weight.

    q is randomized response's implemented flip probability (1 / (1 + e^eps) rounded up to a
    multiple of 2**-32), so the report, the server's estimate (y - q) / (1 - 2q) and the
    accountant's event are exactly those of :class:`RandomizedResponse` at eps with the same spec.
    ``encode`` takes a true 0/1 mask, the extreme keep-probabilities (what the audit feeds it);
    clients call ``sample``.
    """

    name = "clipped-bernoulli"
    description = "mask-only's sample of keep-probabilities clipped to [q, 1-q]: randomized response at eps per weight"

    @classmethod
    def from_settings(cls, config, *, length, kept, hamming_bound):
        return cls(length=length, spec=cls.spec_for(config, hamming_bound),
                   epsilon=check_epsilon(config.epsilon_per_decision, "epsilon-per-decision"))

    @property
    def clip_limit(self) -> int:
        """2**32 q: a report bit is 1 with probability in [clip_limit, 2**32 - clip_limit] / 2**32."""
        return int(self.prune_report * SCALE)  # prune_report is a multiple of 2**-32: exact

    def sample(self, probabilities, rng: np.random.Generator):
        """The report: one clipped Bernoulli draw per coordinate of ``probabilities`` (length ``self.length``)."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (self.length,):
            raise ConfigError(f"{p.size} keep-probabilities for a report of {self.length} weights")
        return self._report(bits=clipped_sample(p, self.clip_limit, rng))

    def _encode(self, packed, rng, public_seed):
        return self.sample(unpack(packed, self.length).astype(np.float64), rng)
