"""What client and server say to each other: record keys and the codecs for masks and reports.

Both Flower apps import their keys from here and nowhere else. The codecs turn fedprune objects
into the plain values a Flower ConfigRecord holds (str, int, float, bool, bytes) and back, with
strict checks, so this module needs no Flower itself.

A message to a client holds ``ARRAYS`` (the global model in compact form, see
``fedprune.compact``) and ``CONFIG``: the run's settings, the round's plan (``plan.*`` keys) and
the global mask, packed (``mask.*`` keys). One ConfigRecord, because Flower's
``fixedclipping_mod`` refuses a message with two. A reply holds ``ARRAYS`` (the trained model, compact), ``METRICS`` and, on
a pruning round, ``REPORT`` (the privatized mask report). Mask reports travel in a ConfigRecord
as bytes, not in an ArrayRecord: Flower's DP wrappers clip and noise every ArrayRecord of a reply.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedprune.bits import packed_length
from fedprune.compact import MalformedReply
from fedprune.privacy.events import Gaussian
from fedprune.privacy.mechanisms.base import ARRAY_KEYS, MaskReport
from fedprune.validation import ConfigError

ARRAYS = "arrays"      # ArrayRecord: the model, compact (kept values of masked tensors)
CONFIG = "config"      # ConfigRecord: run settings (kebab-case), the round's plan, the global mask
REPORT = "report"      # ConfigRecord: a client's privatized mask report
METRICS = "metrics"    # MetricRecord: examples, losses, timings

CLIENT_ID = "client-id"         # in METRICS: the partition id, which keys the client's ledger (public)
NUM_EXAMPLES = "num-examples"   # in METRICS where the weight channel averages by example count
PLAIN_METRICS = ("train-loss", "train-seconds")  # in METRICS only where nothing a client sends is protected
SERVER_ROUND = "server-round"   # Flower's FedAvg injects it into every config
PLAN_PREFIX = "plan."           # the round's plan travels as plan.<field> keys in CONFIG
CLIPPING_NORM = "clipping_norm"  # Flower's fixedclipping_mod reads it: sent under weight channel client-clipping
FLOWER_KEYS = (SERVER_ROUND, CLIPPING_NORM)  # keys Flower's FedAvg and clipping mod own

MASK_BITS, MASK_LENGTH = "mask.packed", "mask.length"
_ARRAY_PREFIX = "array."


def encode_mask(packed: np.ndarray, length: int) -> dict:
    """The global mask (packed bits of ``length`` flat coordinates) as ConfigRecord values."""
    return {MASK_BITS: np.asarray(packed, dtype=np.uint8).tobytes(), MASK_LENGTH: int(length)}


def decode_mask(values: Mapping[str, object], length: int) -> np.ndarray:
    """Packed bits of the global mask; ConfigError unless they fit ``length`` coordinates."""
    bits = values.get(MASK_BITS)
    if not isinstance(bits, bytes) or values.get(MASK_LENGTH) != length:
        raise ConfigError(f"the global mask must be {packed_length(length)} bytes for {length} weights, "
                          f"got length {values.get(MASK_LENGTH)!r}: client and server run different models")
    packed = np.frombuffer(bits, dtype=np.uint8)
    if packed.size != packed_length(length):
        raise ConfigError(f"the global mask has {packed.size} bytes, {length} weights need {packed_length(length)}")
    return packed


def encode_report(report: MaskReport) -> dict:
    """A mask report as ConfigRecord values: metadata as scalars, arrays as raw bytes."""
    out = {}
    for key, value in report.to_arrays().items():
        if isinstance(value, np.ndarray):
            out[_ARRAY_PREFIX + key] = np.ascontiguousarray(value, dtype=ARRAY_KEYS[key]).tobytes()
        else:
            out[key] = value
    return out


def decode_report(values: Mapping[str, object]) -> MaskReport:
    """Undo ``encode_report``; a reply that is not a well-formed report raises MalformedReply."""
    data = {}
    for key, value in values.items():
        if key.startswith(_ARRAY_PREFIX):
            name = key[len(_ARRAY_PREFIX):]
            if name not in ARRAY_KEYS or not isinstance(value, bytes):
                raise MalformedReply(f"mask report entry {key!r} is not a known byte array")
            dtype = np.dtype(ARRAY_KEYS[name])
            if len(value) % dtype.itemsize:
                raise MalformedReply(f"mask report {name!r} has {len(value)} bytes, not whole {dtype} values")
            data[name] = np.frombuffer(value, dtype=dtype)
        else:
            data[key] = value
    try:
        return MaskReport.from_arrays(data)
    except ConfigError as error:
        raise MalformedReply(f"bad mask report: {error}") from None


def encode_plan(plan: Mapping[str, object]) -> dict:
    return {PLAN_PREFIX + key: value for key, value in plan.items()}


def split_config(values: Mapping[str, object]) -> tuple[dict, dict, dict]:
    """(run settings, round plan, mask) from a received CONFIG record.

    Keys Flower's strategies and DP wrappers add (``server-round``, the clipping norm) are
    not fedprune settings and are left out.
    """
    settings, plan, mask = {}, {}, {}
    for key, value in values.items():
        if key.startswith(PLAN_PREFIX):
            plan[key[len(PLAN_PREFIX):]] = value
        elif key in (MASK_BITS, MASK_LENGTH):
            mask[key] = value
        elif key not in FLOWER_KEYS:
            settings[key] = value
    return settings, plan, mask


DPSGD_KEYS = ("dpsgd-noise", "dpsgd-rate", "dpsgd-steps")


def encode_dpsgd(history) -> dict:
    """This round's DP-SGD releases, (noise multiplier, sampling rate, steps) each, as metrics."""
    noise, rate, steps = zip(*history) if history else ((), (), ())
    return {DPSGD_KEYS[0]: [float(v) for v in noise], DPSGD_KEYS[1]: [float(v) for v in rate],
            DPSGD_KEYS[2]: [int(v) for v in steps]}


def decode_dpsgd(metrics: Mapping[str, object]) -> dict | None:
    """{"history": [(noise, rate, steps), ...]} from reply metrics; None when DP-SGD was off."""
    if not any(key in metrics for key in DPSGD_KEYS):
        return None
    try:
        noise, rate, steps = (list(metrics[key]) for key in DPSGD_KEYS)
    except (KeyError, TypeError):
        raise MalformedReply(f"DP-SGD metrics need all of {', '.join(DPSGD_KEYS)} as lists") from None
    if not len(noise) == len(rate) == len(steps):
        raise MalformedReply("DP-SGD metric lists differ in length")
    try:
        history = [Gaussian(float(n), float(r), int(s)) for n, r, s in zip(noise, rate, steps)]
    except (ConfigError, TypeError, ValueError) as error:
        raise MalformedReply(f"bad DP-SGD metrics: {error}") from None
    return {"history": [(g.noise_multiplier, g.sampling_rate, g.count) for g in history]}
