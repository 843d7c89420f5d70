"""One ledger per client and unit of protection, composed on dp-accounting privacy-loss distributions.

``record`` puts an event (``fedprune.privacy.events``) in the ledgers of the clients that released
it, under each unit it protects; ``epsilon`` composes a ledger and reads epsilon at delta; the run's
figure is the worst client's. Units are never mixed. A ledger is {event: count}, so k records of an
event, one record with ``count=k`` and one event with ``count=k`` are the same ledger.

How a ledger's events become one privacy-loss distribution, never optimistic, is
``fedprune.privacy.composition``'s. ``Unprotected`` makes a unit's figure None for that client;
``PostProcessing`` (a release computed only from values the ledger already charges in that unit)
costs nothing and is kept by name, so a report can say which releases were free and why.
"""

from __future__ import annotations

import copy as copy_module
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from fedprune.privacy.closed_form import analytic_gaussian_epsilon
from fedprune.privacy.composition import basic, compose, epsilon_of, gaussian_shift, rdp_epsilon_of
from fedprune.privacy.events import BernoulliPair, Event, Gaussian, PostProcessing, Unprotected, check_unit
from fedprune.validation import ConfigError, finite, positive_int, probability

KIND, VERSION = "fedprune.accountant", 2  # 2 adds post_processing; 1 still loads
PLD_CACHE = 4  # composed PLDs kept (each up to composition.MAX_SUPPORT points); figures are all kept
_EVENT_FIELDS = {"bernoulli": ("p", "q", "count"),
                 "gaussian": ("noise_multiplier", "sampling_rate", "sensitivity", "count")}


class Accountant:
    """Per-client, per-unit privacy ledgers; figures for one client or the worst one."""

    def __init__(self):
        self._ledgers: dict[tuple[str, str], dict[tuple, int]] = {}  # (client, unit) -> {event key: count}
        self._unprotected: dict[tuple[str, str], set[str]] = {}
        self._free: dict[tuple[str, str], set[str]] = {}  # post-processing releases, by name
        # caches keyed by ledger content (clients with equal histories share), shared with copies
        self._figures: dict[tuple, float] = {}
        self._plds: OrderedDict = OrderedDict()

    def record(self, event: Event, *, units: Iterable[str], clients: Iterable[str], count: int = 1) -> None:
        """Add ``count`` x ``event`` to each client's ledger under each unit.

        ``Unprotected``: no guarantee from then on; ``PostProcessing``: free, kept by name.
        """
        units = _names("units", units, check_unit, "['client'] or ['record', 'client']")
        clients = _names("clients", clients, _client, "['0', '1']")
        count = positive_int("count", count)
        if isinstance(event, (Unprotected, PostProcessing)):
            notes = self._unprotected if isinstance(event, Unprotected) else self._free
            for key in ((client, unit) for client in clients for unit in units):
                notes.setdefault(key, set()).add(str(event.what))
                self._ledgers.setdefault(key, {})
            return
        key, times = _key(event)
        for ledger in (self._ledgers.setdefault((client, unit), {}) for client in clients for unit in units):
            ledger[key] = ledger.get(key, 0) + times * count

    @property
    def clients(self) -> list[str]:
        """Every client with anything recorded, in any unit."""
        return sorted({client for client, _ in self._ledgers})

    def unprotected(self, unit: str) -> list[str]:
        """Why some client has no guarantee in ``unit``: the unprotected releases, over all clients."""
        unit = check_unit(unit)
        return sorted({what for (_, u), whats in self._unprotected.items() if u == unit for what in whats})

    def post_processed(self, unit: str) -> list[str]:
        """The releases recorded as free post-processing in ``unit``, over all clients."""
        unit = check_unit(unit)
        return sorted({what for (_, u), whats in self._free.items() if u == unit for what in whats})

    def copy(self) -> Accountant:
        """An independent accountant with the same ledgers (the content-keyed caches are shared)."""
        twin = Accountant()
        twin._ledgers = copy_module.deepcopy(self._ledgers)
        twin._unprotected = copy_module.deepcopy(self._unprotected)
        twin._free = copy_module.deepcopy(self._free)
        twin._figures, twin._plds = self._figures, self._plds
        return twin

    # --- figures ----------------------------------------------------------------------------------

    def epsilon(self, delta: float, unit: str, client: str | None = None) -> float | None:
        """Epsilon at ``delta`` for ``client`` (the worst client when None); None: no guarantee; 0.0: nothing recorded.

        Pure ledgers (Bernoulli pairs only) are also bounded by basic composition (sum of eps, delta 0),
        which wins where the grid rounding would lift the PLD figure above it (one release, say).
        """
        delta = _delta(delta)

        def figure(ledger, delta=delta):
            shift = gaussian_shift(ledger)
            if shift is not None:
                return analytic_gaussian_epsilon(1.0, delta, sensitivity=shift)
            try:
                return min(self._figure(ledger, ("epsilon", delta), lambda pld: epsilon_of(pld, delta)), basic(ledger))
            except OverflowError:  # a Gaussian so weak its loss overflows the grid: compose by parts instead
                plain = {key: n for key, n in ledger.items() if key[0] == "gaussian" and key[2] == 1.0}
                rest = {key: n for key, n in ledger.items() if key not in plain}
                # (e1, d/2) and (e2, d/2) compose to (e1 + e2, d) (basic composition)
                return figure(plain, delta / 2) + (figure(rest, delta / 2) if rest else 0.0)
        return self._worst(unit, client, figure)

    def delta_for(self, epsilon: float, unit: str, client: str | None = None) -> float | None:
        """Delta at ``epsilon`` >= 0 for ``client`` (the worst client when None); None: no guarantee."""
        epsilon = finite("epsilon", epsilon)
        if epsilon < 0:
            raise ConfigError(f"epsilon must be >= 0, got {epsilon!r}; pass the epsilon you want the delta for")
        return self._worst(unit, client, lambda ledger: 0.0 if epsilon >= basic(ledger) else self._figure(
            ledger, ("delta", epsilon), lambda pld: min(1.0, float(pld.get_delta_for_epsilon(epsilon)))))

    def rdp_epsilon(self, delta: float, unit: str, client: str | None = None) -> float | None:
        """The same ledger through Renyi DP (looser than the PLD): a cross-check of ``epsilon``."""
        delta = _delta(delta)
        return self._worst(unit, client, lambda ledger: self._figure(
            ledger, ("rdp", delta), lambda: rdp_epsilon_of(ledger, delta), pld=False))

    def _worst(self, unit, client, figure) -> float | None:
        unit = check_unit(unit)
        worst = 0.0
        for name in self.clients if client is None else [_client(client)]:
            if self._unprotected.get((name, unit)):
                return None
            if self._ledgers.get((name, unit)):
                worst = max(worst, figure(self._ledgers[(name, unit)]))
        return worst

    def _figure(self, ledger: Mapping[tuple, int], query: tuple, compute, pld: bool = True) -> float:
        """``compute(composed PLD)`` (or ``compute()``) for the ledger, cached by content."""
        signature = tuple(sorted(ledger.items()))
        if (signature, query) not in self._figures:
            if not pld:
                self._figures[(signature, query)] = compute()
            else:
                if signature not in self._plds:
                    self._plds[signature] = compose(ledger)
                    while len(self._plds) > PLD_CACHE:
                        self._plds.popitem(last=False)
                self._plds.move_to_end(signature)
                self._figures[(signature, query)] = compute(self._plds[signature])
        return self._figures[(signature, query)]

    # --- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """JSON-able: each ledger's events (as accounted, grouped, with counts) and unprotected releases."""
        ledgers = []
        for (client, unit), ledger in sorted(self._ledgers.items()):
            events = [dict(zip(("event", *_EVENT_FIELDS[key[0]]), (*key, count)))
                      for key, count in sorted(ledger.items())]
            ledgers.append({"client": client, "unit": unit, "events": events,
                            "unprotected": sorted(self._unprotected.get((client, unit), ())),
                            "post_processing": sorted(self._free.get((client, unit), ()))})
        return {"kind": KIND, "version": VERSION, "ledgers": ledgers}

    def load_state_dict(self, state: Mapping) -> None:
        """Replace the ledgers with ``state``; a malformed or foreign state raises ConfigError and changes nothing."""
        if not isinstance(state, Mapping) or state.get("kind") != KIND:
            kind = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(f"not a fedprune accountant state (kind {kind!r}, expected {KIND!r}); "
                              "pass what Accountant.state_dict() returned")
        version = state.get("version")
        if version not in (1, VERSION) or isinstance(version, bool):
            raise ConfigError(f"accountant state version {version!r}; this fedprune reads versions 1 and "
                              f"{VERSION}: load it with the fedprune that wrote it")
        _exact_keys("accountant state", state, {"kind", "version", "ledgers"})
        fields = {"client", "unit", "events", "unprotected"} | ({"post_processing"} if version == VERSION else set())
        twin = Accountant()
        for entry in _listed("ledgers", state["ledgers"]):
            _exact_keys("ledger", entry, fields)
            where = (_client(entry["client"]), check_unit(entry["unit"]))
            if where in twin._ledgers:
                raise ConfigError(f"malformed accountant state: two ledgers for client {where[0]!r}, unit {where[1]!r}")
            ledger = twin._ledgers[where] = {}
            for item in _listed("events", entry["events"]):
                key, count = _event_from_state(item)
                if key in ledger:
                    raise ConfigError(f"malformed accountant state: event {item!r} listed twice in one ledger")
                ledger[key] = count
            for field, notes in (("unprotected", twin._unprotected), ("post_processing", twin._free)):
                reasons = _listed(field, entry.get(field, []))
                if any(not isinstance(reason, str) for reason in reasons):
                    raise ConfigError(f"malformed accountant state: {field} releases must be strings, got {reasons!r}")
                if reasons:
                    notes[where] = set(reasons)
        self._ledgers, self._unprotected, self._free = twin._ledgers, twin._unprotected, twin._free

    @classmethod
    def from_state_dict(cls, state: Mapping) -> Accountant:
        accountant = cls()
        accountant.load_state_dict(state)
        return accountant


# --- events as ledger keys ------------------------------------------------------------------------

def _key(event: Event) -> tuple[tuple, int]:
    """(canonical key, count): pairs equal up to relabelling share a key (they have the same dominating pair)."""
    if isinstance(event, BernoulliPair):
        p, q = event.p, event.q
        one, zero = (max(p, q), min(p, q)), (max(1 - p, 1 - q), min(1 - p, 1 - q))
        hi, lo = one if one[0] / one[1] >= zero[0] / zero[1] else zero  # the outcome with the larger ratio
        return ("bernoulli", float(hi), float(lo)), event.count
    if isinstance(event, Gaussian):
        return ("gaussian", float(event.noise_multiplier), float(event.sampling_rate), float(event.sensitivity)), \
            event.count
    raise ConfigError(f"cannot account for {type(event).__name__}; record a fedprune.privacy.events "
                      "BernoulliPair, Gaussian, Unprotected or PostProcessing")


def _event_from_state(item) -> tuple[tuple, int]:
    kind = item.get("event") if isinstance(item, Mapping) else None
    if kind not in _EVENT_FIELDS:
        raise ConfigError(f"unknown event kind {kind!r} in accountant state; known: {', '.join(_EVENT_FIELDS)}")
    _exact_keys(f"{kind} event", item, {"event", *_EVENT_FIELDS[kind]})
    values = {name: item[name] for name in _EVENT_FIELDS[kind]}
    if any(isinstance(value, bool) for value in values.values()):
        raise ConfigError(f"malformed accountant state: {item!r} holds a boolean where a number belongs")
    return _key(BernoulliPair(**values) if kind == "bernoulli" else Gaussian(**values))


# --- input checks ---------------------------------------------------------------------------------

def _delta(delta) -> float:
    try:
        return probability("delta", delta)
    except ConfigError as error:
        raise ConfigError(f"{error}; pass the delta of the guarantee, e.g. 1e-5 (well below 1 / records)") from None


def _client(client) -> str:
    if not isinstance(client, (str, int)) or isinstance(client, bool) or str(client) == "":
        raise ConfigError(f"a client must be named by a non-empty string or an integer, got {client!r}")
    return str(client)


def _names(what: str, values, check, example: str) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"{what} must be a list, e.g. {example}, got {values!r}")
    names = [check(value) for value in values]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{what} must be a non-empty list without repeats, e.g. {example}, got {values!r}")
    return names


def _exact_keys(what: str, mapping, expected: set) -> None:
    if not isinstance(mapping, Mapping) or set(mapping) != expected:
        found = sorted(mapping) if isinstance(mapping, Mapping) else type(mapping).__name__
        raise ConfigError(f"malformed accountant state: {what} has fields {found}, expected {sorted(expected)}")


def _listed(what: str, value) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"malformed accountant state: {what} must be a list, got {type(value).__name__}")
    return value
