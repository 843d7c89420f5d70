"""What every mask-report mechanism shares: the report on the wire, the tally, the interface.

A client encodes its true mask (``fedprune.pruning.bits.pack`` of the flat bool mask) into a
:class:`MaskReport`; the server checks every report against its own mechanism (name, length,
settings, payload shape and dtype), adds them into a :class:`VoteTally`, and debiases the tally
into an unbiased keep-frequency per coordinate. Each mechanism states its privacy three ways:
per decision (one bit of the mask changes), per report (Delta bits change) and as an
:mod:`fedprune.privacy.events` event for the accountant, which composes reports over a run.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from fedprune.privacy.events import Event
from fedprune.privacy.rng import check_generator
from fedprune.privacy.spec import ReportSpec
from fedprune.pruning.bits import check_packed, pack, unpack
from fedprune.validation import ConfigError

Setting = str | int | float
SETTING_PREFIX = "setting."
ARRAY_KEYS = {"bits": np.uint8, "indices": np.int64, "public_seed": np.uint64}


@dataclass(frozen=True, eq=False)
class MaskReport:
    """One client's privatized mask: the mechanism's name, the mask length, its settings, the payload.

    ``bits`` holds packed uint8 bits (little bit order, zero padding), ``indices`` sorted int64
    coordinates, ``public_seed`` the public randomness a sampling report was drawn with. The
    arrays are read-only views.
    """

    mechanism: str
    length: int
    settings: Mapping[str, Setting]
    bits: np.ndarray | None = None
    indices: np.ndarray | None = None
    public_seed: tuple[int, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.mechanism, str) or not self.mechanism:
            raise ConfigError(f"report: mechanism must be a non-empty name, got {self.mechanism!r}")
        if isinstance(self.length, bool) or not isinstance(self.length, numbers.Integral) or self.length < 1:
            raise ConfigError(f"report: length must be an integer >= 1, got {self.length!r}")
        object.__setattr__(self, "length", int(self.length))
        if not isinstance(self.settings, Mapping):
            raise ConfigError(f"report: settings must be a mapping, got {type(self.settings).__name__}")
        for key, value in self.settings.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ConfigError(f"report: setting {key!r} must map a name to a str, int or float, got {value!r}")
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        for name in ("bits", "indices"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _readonly_array(name, value, ARRAY_KEYS[name]))
        if self.public_seed is not None:
            seed = tuple(self.public_seed) if isinstance(self.public_seed, (tuple, list)) else None
            if not seed or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < 2**64
                               for v in seed):
                raise ConfigError(f"report: public_seed must be a non-empty tuple of integers in [0, 2**64), "
                                  f"got {self.public_seed!r}")
            object.__setattr__(self, "public_seed", tuple(int(v) for v in seed))

    def to_arrays(self) -> dict[str, np.ndarray | Setting]:
        """The report for the wire: numpy arrays (payload) and str/int/float scalars (metadata).

        Keys: ``mechanism``, ``length``, ``setting.<name>`` for each setting, and whichever of
        ``bits``, ``indices``, ``public_seed`` the report carries. Put the arrays in an
        ArrayRecord and the scalars in a ConfigRecord; ``from_arrays`` reads both back merged.
        """
        out: dict[str, np.ndarray | Setting] = {"mechanism": self.mechanism, "length": self.length}
        out.update({SETTING_PREFIX + key: value for key, value in self.settings.items()})
        if self.bits is not None:
            out["bits"] = self.bits
        if self.indices is not None:
            out["indices"] = self.indices
        if self.public_seed is not None:
            out["public_seed"] = np.array(self.public_seed, dtype=np.uint64)
        return out

    @classmethod
    def from_arrays(cls, data: Mapping[str, object]) -> MaskReport:
        """Rebuild a report from ``to_arrays`` output; fails on a missing, unknown or mistyped entry."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a mask report must be a mapping, got {type(data).__name__}")
        missing = {"mechanism", "length"} - set(data)
        if missing:
            raise ConfigError(f"mask report lacks {', '.join(sorted(missing))}: not a fedprune mask report")
        settings, arrays = {}, {}
        for key, value in data.items():
            if key in ("mechanism", "length"):
                continue
            if isinstance(key, str) and key.startswith(SETTING_PREFIX):
                settings[key[len(SETTING_PREFIX):]] = value
            elif key in ARRAY_KEYS:
                if not isinstance(value, np.ndarray):
                    raise ConfigError(f"mask report entry {key!r} must be a numpy array, got {type(value).__name__}")
                arrays[key] = value
            else:
                raise ConfigError(f"mask report has an unknown entry {key!r}; known: mechanism, length, "
                                  f"{', '.join(ARRAY_KEYS)}, {SETTING_PREFIX}<name>")
        seed = arrays.pop("public_seed", None)
        if seed is not None:
            seed = tuple(int(v) for v in _readonly_array("public_seed", seed, np.uint64))
        return cls(mechanism=data["mechanism"], length=data["length"], settings=settings, public_seed=seed, **arrays)


@dataclass(frozen=True, eq=False)
class VoteTally:
    """The server's sum of ``n`` reports of one mechanism, before debiasing.

    ``sums``: per coordinate, the number of reports that said "keep" (int64), or the noisy sum
    of exact votes (float64, central). ``reported``: per coordinate, how many reports covered it
    (coordinate sampling only). ``n`` is 0 only for central votes of a Poisson round that sampled nobody.
    """

    mechanism: str
    length: int
    n: int
    sums: np.ndarray
    reported: np.ndarray | None = field(default=None)

    def __post_init__(self):
        least = 0 if isinstance(self.sums, np.ndarray) and self.sums.dtype.kind == "f" else 1
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < least:
            raise ConfigError(f"a tally needs n >= 1 reports (0 only for noisy central sums), got {self.n!r}")
        for name in ("sums", "reported"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, np.ndarray) or value.shape != (self.length,)):
                raise ConfigError(f"tally {name} must be an array of shape ({self.length},)")


class Mechanism(ABC):
    """A randomizer for mask reports plus the server's unbiased estimator and its privacy figures.

    Subclasses set ``name``, ``description``, ``threat_model`` (``"local"``, ``"central"`` or
    ``"none"``), ``epsilon_key`` (the run setting that fixes their epsilon, None if none does) and
    implement ``from_settings``, ``_encode``, ``_check_payload``, ``_tally``, ``estimate``,
    ``variance``, the epsilon figures and ``event``; ``registry.register`` makes them buildable by name.
    """

    name: str = ""
    description: str = ""
    threat_model: str = "local"
    epsilon_key: str | None = "epsilon_per_decision"
    trust_model: str = ("local: the report is privatized on the client; the server and everyone "
                        "who sees the report learn only what the stated epsilon allows")

    def __init__(self, *, length: int, spec: ReportSpec):
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
            raise ConfigError(f"length must be an integer >= 1 (bits in the flat mask), got {length!r}")
        if not isinstance(spec, ReportSpec):
            raise ConfigError(f"spec must be a fedprune.privacy.spec.ReportSpec, got {type(spec).__name__}")
        self.length = int(length)
        spec.check_length(self.length)
        self.spec = spec

    @classmethod
    @abstractmethod
    def from_settings(cls, config, *, length: int, kept: int | None, hamming_bound: int) -> Mechanism:
        """This mechanism as a run with settings ``config`` builds it for one round's reports.

        ``config``: a ``fedprune.config.RunConfig`` or any object with the fields it reads (see
        ``registry.MechanismSettings``); ``length`` coordinates per report, ``kept`` of them kept
        by every mask (None: no constraint), ``hamming_bound`` Delta.
        """

    @classmethod
    def spec_for(cls, config, hamming_bound: int) -> ReportSpec:
        """The report spec of a run's reports: its unit, this mechanism's threat model, Delta."""
        return ReportSpec(unit=config.unit, threat_model=cls.threat_model, hamming_bound=hamming_bound)

    @classmethod
    def report_coordinates(cls, length: int, hamming_bound: int, sample_size: int | None) -> float:
        """Coordinates whose per-decision losses one report adds up to (the planner's first guess)."""
        return hamming_bound

    # --- settings and reports ------------------------------------------------------------

    def _parameters(self) -> dict[str, Setting]:
        """The mechanism's own settings (epsilon, subset size, ...) that every report repeats."""
        return {}

    @property
    def settings(self) -> dict[str, Setting]:
        """The fingerprint a report must match: the spec plus the mechanism's parameters."""
        return {**self.spec.to_dict(), **self._parameters()}

    def encode(self, packed_mask: np.ndarray, rng: np.random.Generator, *, public_seed=None) -> MaskReport:
        """Privatize one client's packed mask with noise from ``rng``.

        ``public_seed`` (``(round, client)``, say) is the public randomness a sampling report
        needs; mechanisms that need none ignore it.
        """
        packed = check_packed(packed_mask, self.length, "the mask to encode")
        return self._encode(packed, check_generator(rng), public_seed)

    @abstractmethod
    def _encode(self, packed: np.ndarray, rng: np.random.Generator, public_seed) -> MaskReport: ...

    def _report(self, **payload) -> MaskReport:
        return MaskReport(mechanism=self.name, length=self.length, settings=self.settings, **payload)

    def check_report(self, report: MaskReport) -> MaskReport:
        """Return ``report`` if this mechanism, with these settings, could have written it."""
        if isinstance(report, Mapping):
            report = MaskReport.from_arrays(report)
        if not isinstance(report, MaskReport):
            raise ConfigError(f"expected a MaskReport, got {type(report).__name__}")
        if report.mechanism != self.name:
            raise ConfigError(f"a {report.mechanism!r} report cannot be aggregated by the {self.name!r} mechanism: "
                              "the client and server must use the same mechanism")
        if report.length != self.length:
            raise ConfigError(f"report covers {report.length} weights but this mask has {self.length}: "
                              "client and server disagree on the model")
        mine = self.settings
        if dict(report.settings) != mine:
            diff = sorted(k for k in set(mine) | set(report.settings) if report.settings.get(k) != mine.get(k))
            shown = ", ".join(f"{k}: report {report.settings.get(k)!r} vs server {mine.get(k)!r}" for k in diff)
            raise ConfigError(f"report settings differ from the server's ({shown}): send every client the "
                              "round's mechanism settings")
        self._check_payload(report)
        return report

    @abstractmethod
    def _check_payload(self, report: MaskReport) -> None: ...

    def aggregate(self, reports: Sequence[MaskReport], rng: np.random.Generator | None = None) -> VoteTally:
        """Check every report and add them into one tally (``rng`` only for central noise)."""
        if isinstance(reports, MaskReport) or not isinstance(reports, Sequence) or not reports:
            raise ConfigError("aggregate takes a non-empty list of MaskReports")
        checked = [self.check_report(report) for report in reports]
        return self._tally(checked, rng)

    @abstractmethod
    def _tally(self, reports: list[MaskReport], rng: np.random.Generator | None) -> VoteTally: ...

    def check_tally(self, tally: VoteTally) -> VoteTally:
        if not isinstance(tally, VoteTally) or tally.mechanism != self.name or tally.length != self.length:
            raise ConfigError(f"this tally was not made by the {self.name!r} mechanism for {self.length} weights")
        return tally

    # --- estimates -----------------------------------------------------------------------

    @abstractmethod
    def estimate(self, tally: VoteTally) -> np.ndarray:
        """Unbiased keep-frequency per coordinate (float64; may leave [0, 1] through noise)."""

    @abstractmethod
    def variance(self, n: int, frequency) -> np.ndarray:
        """Variance of ``estimate`` per coordinate, for ``n`` reports and true keep-frequency ``frequency``."""

    @property
    def count_channel(self) -> tuple[float, float] | None:
        """(P(count +1 | kept), P(count +1 | pruned)) when each coordinate's tally is one count, else None."""
        return None

    # --- privacy -------------------------------------------------------------------------

    def audit_claim(self, delta: float | None) -> tuple[float, float]:
        """(claimed per-report epsilon, delta) an audit tests; pure-eps mechanisms take no delta."""
        if delta is not None:
            raise ConfigError(f"{self.name!r} is a pure-eps mechanism: leave delta unset")
        return self.epsilon_per_report, 0.0

    def audit_pair(self, rng: np.random.Generator, public_seed) -> tuple[np.ndarray, np.ndarray, object]:
        """(packed mask A, packed mask B, score(report)) for the audit: worst-case neighbours and a statistic.

        Default, for bit reports: A = ones on the first Delta coordinates, B = zeros, scored by the
        sum of those coordinates of the report.
        """
        at = np.arange(self.spec.hamming_bound)
        ones = np.zeros(self.length, dtype=bool)
        ones[at] = True

        def score(report):
            return float(unpack(report.bits, self.length)[at].sum())
        return pack(ones), pack(np.zeros(self.length, dtype=bool)), score

    @abstractmethod
    def event(self) -> Event:
        """One report's privacy loss for the accountant (exact or dominating, never optimistic)."""

    def describe(self) -> dict:
        """Mechanism, trust model, spec and the per-decision / per-report figures, as plain values."""
        return {"mechanism": self.name, "length": self.length, "trust_model": self.trust_model,
                **self.spec.to_dict(), "parameters": self._parameters(),
                "epsilon_per_decision": self.epsilon_per_decision, "epsilon_per_report": self.epsilon_per_report,
                "delta": 0.0, "event": repr(self.event())}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}(length={self.length}, {args})"


# --- shared checks ---------------------------------------------------------------------------

def check_epsilon(epsilon, name: str = "epsilon") -> float:
    """A finite epsilon > 0 as a float."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {epsilon!r}") from None
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise ConfigError(f"{name} must be finite and > 0, got {epsilon!r} (for exact, non-private votes use "
                          "mechanism exact)")
    return value


def check_frequency(frequency) -> np.ndarray:
    values = np.asarray(frequency, dtype=np.float64)
    if not np.all((values >= 0) & (values <= 1)):
        raise ConfigError("frequency must lie in [0, 1]")
    return values


def check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ConfigError(f"n (reports) must be an integer >= 1, got {n!r}")
    return int(n)


def _readonly_array(name: str, value, dtype) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != 1:
        got = f"dtype {value.dtype}, shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ConfigError(f"report {name} must be a 1-D {np.dtype(dtype).name} array, got {got}")
    view = value.view()
    view.flags.writeable = False
    return view
