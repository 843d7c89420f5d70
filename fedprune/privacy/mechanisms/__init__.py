"""Mask-report mechanisms: build one by name with :func:`make_mechanism`.

``epsilon`` means what each mechanism's literature means by it, and every mechanism states
its figures per decision (one bit) and per report (Delta bits) side by side:

==================== ======================================== =============== ==========================
name                 epsilon is                               per decision    per report
==================== ======================================== =============== ==========================
randomized-response  per bit                                  eps             Delta eps
sue                  a one-hot change (two bits)              eps / 2         Delta eps / 2
oue                  a one-hot change (one 1->0, one 0->1)    ln((e^eps+1)/2) Delta ln((e^eps+1)/2)
subset               the whole report (exactly-k masks)       eps             eps
sampling             per sampled bit                          eps             min(s, Delta) eps
central              target per report at delta (or sigma)    at sigma sqrtD  analytic Gaussian at sigma
==================== ======================================== =============== ==========================
"""

from __future__ import annotations

import math

from fedprune.privacy.mechanisms.base import MaskReport, Mechanism, VoteTally, check_epsilon
from fedprune.privacy.mechanisms.central import CentralGaussian
from fedprune.privacy.mechanisms.randomized_response import (OptimizedUnaryEncoding, RandomizedResponse,
                                                             SymmetricUnaryEncoding)
from fedprune.privacy.mechanisms.sampling import CoordinateSampling
from fedprune.privacy.mechanisms.subset import SubsetSelection
from fedprune.privacy.rng import RandomnessSource, privacy_rng
from fedprune.privacy.spec import ReportSpec
from fedprune.validation import ConfigError, pick, probability

MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls for cls in (RandomizedResponse, SymmetricUnaryEncoding, OptimizedUnaryEncoding,
                              SubsetSelection, CoordinateSampling, CentralGaussian)
}
DESCRIPTIONS = {
    "randomized-response": "per-bit randomized response: keep each bit w.p. e^eps/(1+e^eps)",
    "sue": "symmetric unary encoding (basic RAPPOR): randomized response at eps/2 per bit",
    "oue": "optimized unary encoding: a kept bit reads 1 w.p. 1/2, a pruned one w.p. 1/(e^eps+1)",
    "subset": "one l-subset of coordinates, weighted e^eps if it meets the kept set (exactly-k masks)",
    "sampling": "randomized response on s coordinates chosen by a public seed (Horvitz-Thompson estimate)",
    "central": "exact votes; a trusted aggregator adds Gaussian noise to the sums (stronger trust assumption)",
}
_OWN_ARGUMENTS = {"subset": {"subset_size"}, "sampling": {"sample_size"}, "central": {"noise_multiplier"}}

__all__ = ["MECHANISMS", "DESCRIPTIONS", "make_mechanism", "epsilon_for_decision", "Mechanism", "MaskReport", "VoteTally", "ReportSpec",
           "RandomizedResponse", "SymmetricUnaryEncoding", "OptimizedUnaryEncoding", "SubsetSelection",
           "CoordinateSampling", "CentralGaussian", "privacy_rng", "RandomnessSource"]


def make_mechanism(name: str, *, length: int, spec: ReportSpec, epsilon: float | None = None,
                   kept: int | None = None, noise_multiplier: float | None = None, delta: float | None = None,
                   sample_size: int | None = None, subset_size: int | None = None) -> Mechanism:
    """The mechanism ``name`` for flat masks of ``length`` bits under ``spec``.

    ``kept`` (weights every mask keeps) is required by ``subset``; for any mechanism it is
    checked against the spec, since a Hamming bound below 2 min(k, d - k) would make every
    figure optimistic. ``delta`` is used by ``central`` and validated everywhere.
    ``sample_size``, ``subset_size`` and ``noise_multiplier`` belong to sampling, subset and
    central; giving one to another mechanism is an error.
    """
    cls = pick("mechanism", name, MECHANISMS)
    given = {"noise_multiplier": noise_multiplier, "sample_size": sample_size, "subset_size": subset_size}
    for arg, value in given.items():
        if value is not None and arg not in _OWN_ARGUMENTS.get(name, ()):
            owner = next(k for k, v in _OWN_ARGUMENTS.items() if arg in v)
            raise ConfigError(f"{arg} applies only to the {owner!r} mechanism, not {name!r}; leave it unset")
    if delta is not None:
        delta = probability("delta", delta)
    if not isinstance(spec, ReportSpec):
        raise ConfigError(f"spec must be a fedprune.privacy.spec.ReportSpec, got {type(spec).__name__}")
    if kept is not None:
        implied = ReportSpec.for_exactly_k(kept, length).hamming_bound
        if spec.hamming_bound < implied:
            raise ConfigError(f"hamming_bound {spec.hamming_bound} is below {implied}, the most bits two masks keeping "
                              f"{kept} of {length} weights can differ in: every figure would be optimistic; use "
                              "ReportSpec.for_exactly_k(kept, length)")
    if name == "central":
        return cls(length=length, spec=spec, noise_multiplier=noise_multiplier, epsilon=epsilon, delta=delta)
    if epsilon is None:
        raise ConfigError(f"the {name!r} mechanism needs epsilon (finite, > 0)")
    if name == "subset":
        if kept is None:
            raise ConfigError("the subset mechanism needs kept: the number of weights every mask keeps")
        return cls(length=length, spec=spec, epsilon=epsilon, kept=kept, subset_size=subset_size)
    if name == "sampling":
        if sample_size is None:
            raise ConfigError("the sampling mechanism needs sample_size: coordinates per report")
        return cls(length=length, spec=spec, epsilon=epsilon, sample_size=sample_size)
    return cls(length=length, spec=spec, epsilon=epsilon)


def epsilon_for_decision(name: str, epsilon_per_decision: float) -> float:
    """The ``epsilon`` argument of mechanism ``name`` whose per-decision figure is ``epsilon_per_decision``.

    randomized-response and sampling: the same; sue: twice it; oue: ln(2 e^x - 1), the inverse
    of ln((e^eps + 1) / 2); subset: the same (its per-decision figure is its per-report one).
    central has no per-decision parameter (its figures need a delta): an error.
    """
    pick("mechanism", name, MECHANISMS)
    value = check_epsilon(epsilon_per_decision, "epsilon_per_decision")
    if name == "central":
        raise ConfigError("the central mechanism is set by noise_multiplier or a per-report (epsilon, delta), "
                          "not a per-decision epsilon")
    if name == "sue":
        return 2.0 * value
    if name == "oue":
        return value + math.log(2.0 - math.exp(-value))  # ln(2 e^x - 1), without overflow
    return value
