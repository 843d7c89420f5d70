"""What client and server say to each other, in one place: the typed request and reply, their record keys, codecs.

Both Flower apps build and read their messages through :class:`TrainRequest` and :class:`TrainReply`
and nowhere else. The codecs turn fedprune objects into the plain values Flower's records hold
(str, int, float, bool, bytes, numpy arrays) and back, with strict checks, so this module needs no
Flower itself.

A message to a client holds ``ARRAYS`` (the global model in compact form, see ``fedprune.federated.compact``)
and ``CONFIG``: the settings a client needs (``run.<key>``; the server's own, such as the output
folder, the budget or the schedule, stay on the server: ``config.SERVER_ONLY``), the round's plan
(``plan.<field>``) and the global mask, packed (``mask.*``). Every fedprune key carries one of these
prefixes, so the keys Flower's strategies and mods add (``server-round``, the clipping norm, any
later one) are left alone. One ConfigRecord, because Flower's ``fixedclipping_mod`` refuses a
message with two. A reply holds ``ARRAYS`` (the trained model, compact), ``METRICS`` and, on a
reporting round, ``REPORT`` (the mask report). Mask reports travel in a ConfigRecord as bytes, not
in an ArrayRecord: Flower's DP mods clip every ArrayRecord of a reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedprune.config import SERVER_ONLY, RunConfig, resolve
from fedprune.federated.keys import (
    CLIPPING_NORM,
    DPSGD_KEYS,
    MASK_BITS,
    MASK_LENGTH,
    PLAN_PREFIX,
    SETTING_PREFIX,
    MalformedReply,
)
from fedprune.federated.rounds import RoundPlan
from fedprune.privacy.events import Gaussian
from fedprune.privacy.mechanisms.base import ARRAY_KEYS, MaskReport
from fedprune.pruning.bits import packed_length
from fedprune.validation import ConfigError

_ARRAY_PREFIX = "array."


@dataclass(frozen=True)
class TrainRequest:
    """What the server asks of a client in one round, besides the model it sends in ``ARRAYS``."""

    config: RunConfig
    plan: RoundPlan
    mask: np.ndarray  # the global mask, packed bits of ``mask_length`` flat coordinates
    mask_length: int

    def to_config(self) -> dict:
        """CONFIG's values: the settings a client needs, the plan, the mask (and Flower's clipping norm)."""
        values = {SETTING_PREFIX + key: value for key, value in self.config.to_mapping().items()
                  if key not in SERVER_ONLY}
        values.update({PLAN_PREFIX + key: value for key, value in self.plan.to_mapping().items()})
        values.update(encode_mask(self.mask, self.mask_length))
        if self.config.weight_channel == "client-clipping":
            values[CLIPPING_NORM] = self.config.clipping_norm
        return values

    @classmethod
    def from_config(cls, values: Mapping[str, object]) -> TrainRequest:
        """Undo ``to_config``; keys without a fedprune prefix are Flower's and are ignored."""
        settings, plan = {}, {}
        for key, value in values.items():
            if key.startswith(SETTING_PREFIX):
                settings[key[len(SETTING_PREFIX):]] = value
            elif key.startswith(PLAN_PREFIX):
                plan[key[len(PLAN_PREFIX):]] = value
        length = values.get(MASK_LENGTH)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"the request's mask length must be an integer >= 1, got {length!r}")
        return cls(resolve(settings), RoundPlan.from_mapping(plan), decode_mask(values, length), length)

    def mask_for(self, length: int) -> np.ndarray:
        """The packed global mask, checked against a model of ``length`` prunable weights."""
        if length != self.mask_length:
            raise ConfigError(f"the global mask covers {self.mask_length} weights, this client's model has {length}: "
                              "client and server run different models")
        return self.mask


@dataclass(frozen=True)
class TrainReply:
    """A client's reply as received: compact weights, metrics as sent, the mask report, DP-SGD's releases."""

    weights: dict[str, np.ndarray]
    metrics: dict
    report: MaskReport | None = None
    dpsgd: dict | None = None  # {"history": [(noise multiplier, sampling rate, steps), ...]}; None without DP-SGD

    def to_records(self) -> tuple[dict, dict, dict | None]:
        """(ARRAYS, METRICS, REPORT or None) values for the reply's records."""
        metrics = dict(self.metrics)
        if self.dpsgd is not None:
            metrics.update(encode_dpsgd(self.dpsgd["history"]))
        return dict(self.weights), metrics, None if self.report is None else encode_report(self.report)

    @classmethod
    def from_records(cls, arrays: Mapping[str, np.ndarray], metrics: Mapping[str, object],
                     report: Mapping[str, object] | None) -> TrainReply:
        """Undo ``to_records``; MalformedReply names what is wrong (the DP-SGD keys stay in ``metrics``)."""
        return cls(dict(arrays), dict(metrics), None if report is None else decode_report(report),
                   decode_dpsgd(metrics))


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
