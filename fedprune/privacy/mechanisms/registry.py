"""The mechanism registry: every mechanism class registers its name, and one function builds any of them.

A mechanism module decorates its class with :func:`register`; :func:`build` picks the class a
run's settings name and lets it construct itself (``Mechanism.from_settings``). A run whose
mechanism's own epsilon setting is ``inf`` gets exact votes (:class:`~.exact.ExactVotes`):
no privacy, stated as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedprune.privacy.mechanisms.base import Mechanism
from fedprune.privacy.spec import ReportSpec
from fedprune.validation import ConfigError, pick

REGISTRY: dict[str, type[Mechanism]] = {}
EXACT = "exact"  # the registry name of exact (non-private) votes


def register(cls: type[Mechanism]) -> type[Mechanism]:
    """Class decorator: make ``cls`` buildable by its ``name``; a second class with that name is refused."""
    if not isinstance(cls, type) or not issubclass(cls, Mechanism) or not cls.name:
        raise TypeError(f"register takes a Mechanism subclass with a name, got {cls!r}")
    if cls.threat_model not in ("local", "central", "none"):
        raise TypeError(f"{cls.__name__}.threat_model must be local, central or none, got {cls.threat_model!r}")
    known = REGISTRY.get(cls.name)
    if known is not None and known is not cls:
        raise ConfigError(f"two mechanisms are named {cls.name!r} ({known.__module__}.{known.__name__} and "
                          f"{cls.__module__}.{cls.__name__}): give the new one another name")
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class MechanismSettings:
    """The run settings a mechanism reads (a subset of ``fedprune.config.RunConfig``, same defaults)."""

    mechanism: str = "randomized-response"
    epsilon_per_decision: float = 2.0
    epsilon_per_report: float = 2.0
    delta: float = 1e-5
    unit: str = "client"
    sample_size: int = 0


def mechanism_class(config, name: str | None = None) -> type[Mechanism]:
    """The class a run with settings ``config`` builds (``name`` in place of ``config.mechanism``).

    A mechanism whose epsilon setting is ``inf`` releases exact votes: ExactVotes.
    """
    cls = pick("mechanism", config.mechanism if name is None else name, REGISTRY)
    key = cls.epsilon_key
    if key is not None and math.isinf(float(getattr(config, key))):
        return REGISTRY[EXACT]
    return cls


def build(config, *, length: int, kept: int | None = None, hamming_bound: int | None = None,
          name: str | None = None) -> Mechanism:
    """The mechanism of one round's reports: ``length`` coordinates, ``kept`` kept by every mask, Delta.

    ``hamming_bound`` defaults to exactly-k masks' min(2k, 2(d - k), d); ``name`` overrides the
    settings' mechanism (mask-only's sampler).
    """
    if hamming_bound is None:
        if kept is None:
            raise ConfigError("build needs hamming_bound, or kept for exactly-k masks")
        hamming_bound = ReportSpec.for_exactly_k(kept, length).hamming_bound
    cls = mechanism_class(config, name)
    return cls.from_settings(config, length=length, kept=kept, hamming_bound=hamming_bound)
