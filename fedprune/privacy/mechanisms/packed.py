"""Kernels on packed bits (``fedprune.pruning.bits`` layout): exact Bernoulli noise and vote counts.

Noise: a coordinate is 1 when a uniform 32-bit integer falls below an integer threshold T, so
its probability is exactly T / 2**32 (numpy draws full-range uint32 exactly uniformly).
``threshold`` rounds a flip probability *up* to the next multiple of 2**-32: more noise than
asked, never less, so a claimed epsilon is never optimistic; estimators use the implemented
probability, so they stay exactly unbiased.

Counts: ``count_ones`` adds packed reports with bit-sliced counters (carry-save adders over
64-bit words, one bit plane per binary digit of the count) on cache-sized column chunks, so
no report is ever unpacked to one byte per bit; only the final ceil(log2(n+1)) planes are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedprune.pruning.bits import packed_length
from fedprune.validation import ConfigError

SCALE = 1 << 32
NOISE_CHUNK = 1 << 16  # bits per draw: the uniforms stay in L2 cache between draw, compare and pack
COUNT_CHUNK = 1 << 14  # 64-bit words per column chunk: the bit planes stay in cache across reports


def threshold(probability: float) -> int:
    """The integer T with T / 2**32 the smallest multiple of 2**-32 that is >= ``probability``."""
    if not 0.0 <= probability <= 0.5:
        raise ConfigError(f"noise probability must be in [0, 0.5], got {probability!r}")
    return max(1, math.ceil(probability * SCALE))  # exact: scaling by a power of two loses nothing


def implemented(limit: int) -> float:
    """The exact probability that a uniform uint32 falls below ``limit``."""
    return limit / SCALE


def threshold_bits(rng: np.random.Generator, length: int, limits: Sequence[int]) -> list[np.ndarray]:
    """Packed bits, one array per limit, bit i = (u_i < limit) for ONE shared uniform u_i per coordinate.

    Sharing u_i couples the arrays (bit i under a smaller limit implies bit i under a larger
    one), which is what a two-sided channel p(1|1), p(1|0) needs from a single draw. Padding
    bits are zero.
    """
    nbytes = packed_length(length)
    outs = [np.empty(nbytes, dtype=np.uint8) for _ in limits]
    for start in range(0, length, NOISE_CHUNK):
        stop = min(length, start + NOISE_CHUNK)
        uniforms = rng.integers(0, SCALE, size=stop - start, dtype=np.uint32)
        for out, limit in zip(outs, limits):
            out[start // 8:(stop + 7) // 8] = np.packbits(uniforms < limit, bitorder="little")
    return outs


def count_ones(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Per coordinate, how many of the packed ``rows`` (each ``packed_length(length)`` bytes) have a 1 there."""
    nbytes = packed_length(length)
    words = (nbytes + 7) // 8
    planes = max(1, len(rows).bit_length())
    counts = np.zeros(length, dtype=np.int64)
    for word0 in range(0, words, COUNT_CHUNK):
        word1 = min(words, word0 + COUNT_CHUNK)
        byte0, byte1 = word0 * 8, min(nbytes, word1 * 8)
        width = word1 - word0
        sliced = np.zeros((planes, width), dtype=np.uint64)
        carry = np.empty(width, dtype=np.uint64)
        spare = np.empty(width, dtype=np.uint64)
        staging = carry.view(np.uint8)
        for row in rows:
            # load the row's bytes into the carry word buffer (the tail pads with zero bytes)
            staging[:byte1 - byte0] = row[byte0:byte1]
            staging[byte1 - byte0:] = 0
            for plane in sliced:  # ripple the carry through the binary digits of the counts
                np.bitwise_and(plane, carry, out=spare)
                np.bitwise_xor(plane, carry, out=plane)
                carry, spare = spare, carry
            staging = carry.view(np.uint8)
        bit0, bit1 = byte0 * 8, min(length, byte1 * 8)
        segment = counts[bit0:bit1]
        for digit, plane in enumerate(sliced):
            bits = np.unpackbits(plane.view(np.uint8), count=bit1 - bit0, bitorder="little")
            segment += bits.astype(np.int64) << digit
    return counts
