"""One ledger per client and unit of protection, composed on dp-accounting privacy-loss distributions.

``record`` puts an event (``fedprune.privacy.events``) in the ledgers of the clients that released
it, under each unit it protects; ``epsilon`` composes a ledger and reads epsilon at delta. The
run's figure is the worst client's. Units are never mixed: an event recorded under "record" says
nothing about "client".

How each event becomes a privacy-loss distribution (PLD), always pessimistically:
- ``BernoulliPair(p, q, count)``: all coordinates with the same (p, q) in a ledger are one
  Binomial pair, composed exactly in closed form (the loss of j agreeing outputs out of n is
  j log(p/q) + (n - j) log((1-p)/(1-q))) before a single rounding up; both orders of the
  neighbours are taken (``symmetric=False``). For randomized response this is the exact
  Kairouz-Oh-Viswanath composition, up to one discretisation step.
- ``Gaussian(noise_multiplier, sampling_rate, count)``: neighbouring datasets are replace-one,
  so a clipped contribution can move by twice the clipping norm: sensitivity 2 in units of
  the clipping norm (``NeighborRel.REPLACE_ONE`` when Poisson-sampled), composed with
  ``self_compose``.
- ``Unprotected``: that unit has no guarantee for that client; ``epsilon`` returns None.

Discretisation: interval = min(1e-4, eps_min / (10 N)) for N distinct distributions composed
(eps_min the smallest per-coordinate eps), so the rounding adds at most N intervals of
pessimism in all (DESIGN: at most eps/(10 N) per release); coarser only for huge reports
(see ``_interval``).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant
from dp_accounting.rdp.rdp_privacy_accountant import NeighborRel
from scipy.optimize import brentq
from scipy.special import gammaln

from fedprune.privacy.events import UNITS, BernoulliPair, Event, Gaussian, Unprotected, check_unit
from fedprune.validation import ConfigError, positive_int, probability

KIND, VERSION = "fedprune.accountant", 1
GAUSSIAN_SENSITIVITY = 2.0  # replace-one: a clipped contribution moves by up to twice the norm


class Accountant:
    """Per-client, per-unit privacy ledgers."""

    def __init__(self):
        # (client, unit) -> {event key: count}; keys ("bernoulli", p, q) or ("gaussian", sigma, rate)
        self._ledgers: dict[tuple[str, str], dict[tuple, int]] = {}
        self._unprotected: dict[tuple[str, str], set[str]] = {}
        self._cache: dict[tuple, float] = {}  # (ledger, figure, parameter) -> value
        self._plds: OrderedDict = OrderedDict()

    # --- recording --------------------------------------------------------------------------

    def record(self, event: Event, *, units: Iterable[str], clients: Iterable[str], count: int = 1) -> None:
        """Add ``count`` copies of ``event`` to each client's ledger under each unit."""
        units = [check_unit(unit) for unit in units]
        clients = [_client(client) for client in clients]
        count = positive_int("count", count)
        if not units or not clients:
            raise ConfigError("record needs at least one unit and one client")
        if isinstance(event, Unprotected):
            for client in clients:
                for unit in units:
                    self._unprotected.setdefault((client, unit), set()).add(event.what)
                    self._ledgers.setdefault((client, unit), {})
            return
        key, times = _key(event)
        for client in clients:
            for unit in units:
                ledger = self._ledgers.setdefault((client, unit), {})
                ledger[key] = ledger.get(key, 0) + times * count

    @property
    def clients(self) -> list[str]:
        return sorted({client for client, _ in self._ledgers})

    def copy(self) -> Accountant:
        twin = Accountant()
        twin._ledgers = copy.deepcopy(self._ledgers)
        twin._unprotected = copy.deepcopy(self._unprotected)
        twin._cache, twin._plds = self._cache, self._plds  # keyed by content, so safe to share
        return twin

    # --- figures ----------------------------------------------------------------------------

    def epsilon(self, delta: float, unit: str, client: str | None = None) -> float | None:
        """Epsilon at ``delta`` for ``client`` (the worst client when None); None: no guarantee.

        A ledger of pure-eps releases only is also bounded by basic composition (delta 0), which
        the smaller of the two figures keeps when the discretisation would round above it.
        """
        return self._worst(unit, client, "epsilon", probability("delta", delta))

    def delta_for(self, epsilon: float, unit: str, client: str | None = None) -> float | None:
        """Delta at ``epsilon`` for ``client`` (the worst client when None); None: no guarantee."""
        return self._worst(unit, client, "delta", _nonnegative(epsilon))

    def rdp_epsilon(self, delta: float, unit: str, client: str | None = None) -> float | None:
        """The same ledger through Renyi DP (looser): a cross-check of ``epsilon``."""
        return self._worst(unit, client, "rdp", probability("delta", delta))

    def _figure(self, ledger: Mapping[tuple, int], kind: str, value: float) -> float:
        """One ledger's figure, cached by content: clients with the same history share it."""
        key = (tuple(sorted(ledger.items())), kind, value)
        if key not in self._cache:
            if kind == "epsilon":
                result = min(_epsilon(self._pld(ledger), value), _basic(ledger))
            elif kind == "delta":
                result = 0.0 if value >= _basic(ledger) else float(self._pld(ledger).get_delta_for_epsilon(value))
            else:
                result = _rdp_epsilon(ledger, value)
            self._cache[key] = result
        return self._cache[key]

    def _worst(self, unit, client, kind: str, value: float):
        unit = check_unit(unit)
        clients = [_client(client)] if client is not None else self.clients
        worst = 0.0
        for name in clients:
            if self._unprotected.get((name, unit)):
                return None
            ledger = self._ledgers.get((name, unit))
            if ledger:
                worst = max(worst, self._figure(ledger, kind, value))
        return worst

    def _pld(self, ledger: Mapping[tuple, int]):
        # Composed PLDs can hold millions of points: keep only the few most recent.
        key = tuple(sorted(ledger.items()))
        if key in self._plds:
            self._plds.move_to_end(key)
        else:
            self._plds[key] = _compose(ledger)
            while len(self._plds) > PLD_CACHE:
                self._plds.popitem(last=False)
        return self._plds[key]

    # --- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """JSON-able: every ledger's events with their counts, and the unprotected releases."""
        ledgers = []
        for (client, unit), ledger in sorted(self._ledgers.items()):
            ledgers.append({"client": client, "unit": unit,
                            "events": [[*key, count] for key, count in sorted(ledger.items())],
                            "unprotected": sorted(self._unprotected.get((client, unit), ()))})
        return {"kind": KIND, "version": VERSION, "ledgers": ledgers}

    def load_state_dict(self, state: Mapping) -> None:
        """Replace the ledgers with ``state``; a malformed or foreign state changes nothing."""
        if not isinstance(state, Mapping) or state.get("kind") != KIND:
            raise ConfigError(f"not a fedprune accountant state (kind {getattr(state, 'get', lambda k: None)('kind')!r})")
        if state.get("version") != VERSION:
            raise ConfigError(f"accountant state version {state.get('version')!r}; this fedprune reads {VERSION}")
        twin = Accountant()
        try:
            for entry in state["ledgers"]:
                client, unit = _client(entry["client"]), check_unit(entry["unit"])
                twin._ledgers[(client, unit)] = {}
                for item in entry["events"]:
                    kind, a, b, count = item
                    event = BernoulliPair(a, b) if kind == "bernoulli" else Gaussian(a, b) if kind == "gaussian" else None
                    if event is None:
                        raise ConfigError(f"unknown event kind {kind!r}")
                    twin._ledgers[(client, unit)][_key(event)[0]] = positive_int("count", count)
                if entry["unprotected"]:
                    twin._unprotected[(client, unit)] = {str(what) for what in entry["unprotected"]}
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"malformed accountant state: {error}") from None
        self._ledgers, self._unprotected = twin._ledgers, twin._unprotected

    @classmethod
    def from_state_dict(cls, state: Mapping) -> Accountant:
        accountant = cls()
        accountant.load_state_dict(state)
        return accountant


def _epsilon(pld, delta: float) -> float:
    """Epsilon at ``delta`` of ``pld``, between its atoms.

    dp-accounting returns the smallest loss atom whose delta is below ``delta``: an upper bound,
    up to one atom spacing loose (0.34 at 1000-fold eps-2 randomized response). The hockey-stick
    delta is continuous and decreasing in epsilon, so a root search below that atom is exact.
    """
    upper = float(pld.get_epsilon_for_delta(delta))
    if upper <= 0 or pld.get_delta_for_epsilon(0.0) <= delta or pld.get_delta_for_epsilon(upper) >= delta:
        return max(upper, 0.0)
    return float(brentq(lambda eps: pld.get_delta_for_epsilon(eps) - delta, 0.0, upper, xtol=1e-9, rtol=1e-12))


def _basic(ledger: Mapping[tuple, int]) -> float:
    """Sum of per-coordinate eps when every release is pure (Bernoulli pairs); inf otherwise."""
    if any(kind != "bernoulli" for kind, _, _ in ledger):
        return math.inf
    return sum(count * BernoulliPair(a, b).epsilon_per_coordinate for (_, a, b), count in ledger.items())


def _key(event: Event) -> tuple[tuple, int]:
    if isinstance(event, BernoulliPair):
        return ("bernoulli", float(event.p), float(event.q)), event.count
    if isinstance(event, Gaussian):
        return ("gaussian", float(event.noise_multiplier), float(event.sampling_rate)), event.count
    raise ConfigError(f"cannot account for {type(event).__name__}; record BernoulliPair, Gaussian or Unprotected")


PLD_CACHE = 4
MAX_SUPPORT = 2_000_000  # points of the composed loss distribution dp-accounting holds densely


def _interval(ledger: Mapping[tuple, int]) -> float:
    """min(1e-4, eps_min / (10 N)), coarsened only when the composed support would pass MAX_SUPPORT.

    A mask report of Delta = 10^5 coordinates spans a loss range of 10^5 eps; holding it at 1e-4
    would take 10^9 points. Coarsening to range / MAX_SUPPORT keeps the pessimism of each of the N
    roundings below range / 2e6, a relative 5e-7 of the range.
    """
    smallest, span = 1.0, 0.0
    for (kind, a, b), count in ledger.items():
        if kind == "bernoulli":
            eps = BernoulliPair(a, b).epsilon_per_coordinate
            smallest, span = min(smallest, eps), span + 2 * count * eps
        else:  # loss of a Gaussian with sensitivity 2 at +-10 standard deviations
            span += 2 * count * (2 / a**2 + 20 / a)
    return max(min(1e-4, smallest / (10 * len(ledger))), span / MAX_SUPPORT)


def _compose(ledger: Mapping[tuple, int]):
    interval = _interval(ledger)
    total = None
    for (kind, a, b), count in sorted(ledger.items()):
        if kind == "bernoulli":
            part = _binomial_pld(a, b, count, interval)
        else:
            # dp-accounting's REPLACE shifts the two neighbours by -s and +s: s = 1 clipping norm.
            part = pld_lib.from_gaussian_mechanism(a, sensitivity=GAUSSIAN_SENSITIVITY / 2, sampling_prob=b,
                                                   value_discretization_interval=interval,
                                                   neighboring_relation=NeighborRel.REPLACE_ONE).self_compose(count)
        total = part if total is None else total.compose(part)
    return total


def _binomial_pld(p: float, q: float, n: int, interval: float):
    """The exact n-fold PLD of Bernoulli(p) against Bernoulli(q), rounded up once."""
    j = np.arange(n + 1)
    log_choose = gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1)
    log_p = log_choose + j * math.log(p) + (n - j) * math.log1p(-p)
    log_q = log_choose + j * math.log(q) + (n - j) * math.log1p(-q)

    def rounded(log_upper, log_lower):
        loss = np.ceil((log_upper - log_lower) / interval).astype(np.int64)
        mass = np.exp(log_upper)
        values, index = np.unique(loss, return_inverse=True)
        sums = np.bincount(index, weights=mass)
        return {int(v): float(m) for v, m in zip(values, sums) if m > 0}

    return pld_lib.PrivacyLossDistribution.create_from_rounded_probability(
        rounded(log_p, log_q), 0.0, interval, True, rounded(log_q, log_p), 0.0, symmetric=False)


def _rdp_epsilon(ledger: Mapping[tuple, int], delta: float) -> float:
    """Renyi DP of the ledger; randomized response needs replace-one, sampled Gaussians add-or-remove.

    The two parts are composed in RDP order by order (the orders are the accountant's defaults).
    """
    replace = rdp_privacy_accountant.RdpAccountant(neighboring_relation=NeighborRel.REPLACE_ONE)
    add_remove = rdp_privacy_accountant.RdpAccountant()
    for (kind, a, b), count in ledger.items():
        if kind == "bernoulli":
            # Any eps-DP coordinate is dominated by binary randomized response at eps (KOV).
            eps = BernoulliPair(a, b).epsilon_per_coordinate
            replace.compose(dp_event.RandomizedResponseDpEvent(noise_parameter=2 / (1 + math.exp(eps)),
                                                               num_buckets=2), count)
        elif b < 1:
            # Replace-one as two add-or-remove steps is not a composition; bound it by doubling
            # the sensitivity instead (noise multiplier halved), as the PLD does.
            add_remove.compose(dp_event.PoissonSampledDpEvent(b, dp_event.GaussianDpEvent(a / GAUSSIAN_SENSITIVITY)),
                               count)
        else:
            add_remove.compose(dp_event.GaussianDpEvent(a / GAUSSIAN_SENSITIVITY), count)
    orders = np.asarray(replace._orders)
    rdp = np.asarray(replace._rdp) + np.asarray(add_remove._rdp)
    return float(rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0])


def _client(client) -> str:
    if not isinstance(client, (str, int)) or isinstance(client, bool) or str(client) == "":
        raise ConfigError(f"a client must be named by a non-empty string or an integer, got {client!r}")
    return str(client)


def _nonnegative(epsilon) -> float:
    value = float(epsilon)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    return value
