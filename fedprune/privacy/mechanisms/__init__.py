"""Mask-report mechanisms: each registers itself by name; :func:`build` makes the one a run's settings name.

A new mechanism is one module here: a :class:`Mechanism` subclass decorated with
:func:`register` that constructs itself from the run's settings (``from_settings``), plus its
import line below. Two settings fix epsilon, one meaning each: ``epsilon-per-decision`` is the
loss of one bit (per-bit mechanisms convert it to their own parameter), ``epsilon-per-report``
that of a whole report (subset; central's target at ``delta``). A mechanism whose setting is
``inf`` sends exact votes (``exact``, no privacy). Every mechanism states both figures:

=================== ==================== ======================================= ======================
name                set by               per decision                            per report
=================== ==================== ======================================= ======================
randomized-response epsilon-per-decision eps                                     Delta eps
sue                 epsilon-per-decision eps (its literature eps: 2 eps)         Delta eps
oue                 epsilon-per-decision eps (its literature eps: ln(2e^eps-1))  Delta eps
sampling            epsilon-per-decision eps                                     min(s, Delta) eps
clipped-bernoulli   epsilon-per-decision eps (mask-only's sample)                Delta eps
subset              epsilon-per-report   eps (the whole report's)                eps
central             epsilon-per-report   at sigma sqrt(Delta)                    eps at delta
exact               (its name)           none (no privacy)                       none
=================== ==================== ======================================= ======================
"""

from __future__ import annotations

# importing a mechanism's module registers it: a new mechanism adds its line here
from fedprune.privacy.mechanisms.base import MaskReport, Mechanism, VoteTally
from fedprune.privacy.mechanisms.central import CentralGaussian
from fedprune.privacy.mechanisms.clipped_bernoulli import ClippedBernoulli
from fedprune.privacy.mechanisms.exact import ExactVotes
from fedprune.privacy.mechanisms.randomized_response import (
                                         OptimizedUnaryEncoding,
                                         RandomizedResponse,
                                         SymmetricUnaryEncoding,
)
from fedprune.privacy.mechanisms.registry import EXACT, REGISTRY, MechanismSettings, build, mechanism_class, register
from fedprune.privacy.mechanisms.sampling import CoordinateSampling
from fedprune.privacy.mechanisms.subset import SubsetSelection
from fedprune.privacy.rng import RandomnessSource, privacy_rng
from fedprune.privacy.spec import ReportSpec

__all__ = [
                                         "EXACT",
                                         "REGISTRY",
                                         "CentralGaussian",
                                         "ClippedBernoulli",
                                         "CoordinateSampling",
                                         "ExactVotes",
                                         "MaskReport",
                                         "Mechanism",
                                         "MechanismSettings",
                                         "OptimizedUnaryEncoding",
                                         "RandomizedResponse",
                                         "RandomnessSource",
                                         "ReportSpec",
                                         "SubsetSelection",
                                         "SymmetricUnaryEncoding",
                                         "VoteTally",
                                         "build",
                                         "mechanism_class",
                                         "privacy_rng",
                                         "register",
]
