"""One ledger per client and unit of protection, composed on dp-accounting privacy-loss distributions.

``record`` puts an event (``fedprune.privacy.events``) in the ledgers of the clients that released
it, under each unit it protects; ``epsilon`` composes a ledger and reads epsilon at delta; the run's
figure is the worst client's. Units are never mixed. A ledger is {event: count}, so k records of an
event, one record with ``count=k`` and one event with ``count=k`` are the same ledger.

How a ledger becomes one privacy-loss distribution (PLD), never optimistic:
- ``BernoulliPair(p, q)`` x n: a coordinate may change either way, so it is replaced by the tightest
  pair dominating both orders at once (Symm(f) of Dong, Roth & Su 2022, Gaussian DP, Prop. 2.4):
  outcomes +1, 0, -1 with probabilities (hi, 1-hi-lo, lo) against (lo, 1-hi-lo, hi), loss +-e0 or 0,
  e0 = log(hi/lo) the larger log-ratio of (p, q); for randomized response (p = 1-q), the channel
  itself. The worse of the two pure orders is NOT enough: a report mixing 1->0 and 0->1 changes can
  lose more than either. The n-fold loss lives on the lattice e0 Z and is computed there exactly (a
  binomial for randomized response, else an FFT convolution of three atoms), then rounded up onto
  the PLD grid once: the exact Kairouz-Oh-Viswanath composition, up to one grid step.
- ``Gaussian``, ``sampling_rate`` 1: a ledger's unsampled Gaussians compose exactly into one, of
  normalised shift sqrt(sum count (sensitivity / noise_multiplier)^2). A ledger of nothing else is
  read off Balle and Wang's analytic Gaussian directly: exact, and without a PLD grid, which for
  small noise multipliers spans thousands of units of loss and takes seconds to build.
- ``Gaussian``, ``sampling_rate`` < 1: dp-accounting's replace-one subsampled Gaussian (neighbours at
  -+sensitivity/2), ``self_compose``d ``count`` times.
- ``Unprotected``: no guarantee in that unit for that client; figures are None.
- ``PostProcessing``: a release computed only from values the ledger already charges in that unit
  (post-processing of a DP output); it costs nothing and is kept by name, so a report can say which
  releases were free and why.

Discretisation. DESIGN asks for a step of at most eps/(10 N) for N releases, as rounding each
release's loss up adds up to N steps. Bernoulli groups are rounded once each, so N counts groups:
step min(1e-4, e0_min / (10 N)). Gaussians use dp-accounting's connect-the-dots, whose pessimism
does not grow like N steps: 10^4 self-composed Gaussians at step 1e-4 came out at most 4e-5 above
the analytic figure, and at 1e-5 further above (FFT round-off on 10x longer arrays), so 1e-4 stays. The
step is coarsened only to keep the grid under MAX_SUPPORT points (see ``_interval``).
"""

from __future__ import annotations

import copy as copy_module
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import common
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from dp_accounting.rdp.rdp_privacy_accountant import NeighborRel
from scipy import stats
from scipy.optimize import brentq

from fedprune.privacy.closed_form import analytic_gaussian_epsilon
from fedprune.privacy.events import BernoulliPair, Event, Gaussian, PostProcessing, Unprotected, check_unit
from fedprune.validation import ConfigError, finite, positive_int, probability

KIND, VERSION = "fedprune.accountant", 2  # 2 adds post_processing; 1 still loads
FINEST_STEP = 1e-4      # grid step of the PLD unless eps/(10 N) asks for finer
MAX_SUPPORT = 2_000_000  # grid points a composed PLD may hold (dense float64: 16 MB)
TAIL = 1e-15             # probability mass a lattice may drop, counted as infinite loss
PLD_CACHE = 4            # composed PLDs kept (up to MAX_SUPPORT points each); figures are all kept
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
            shift = _gaussian_shift(ledger)
            if shift is not None:
                return analytic_gaussian_epsilon(1.0, delta, sensitivity=shift)
            try:
                return min(self._figure(ledger, ("epsilon", delta), lambda pld: _epsilon(pld, delta)), _basic(ledger))
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
        return self._worst(unit, client, lambda ledger: 0.0 if epsilon >= _basic(ledger) else self._figure(
            ledger, ("delta", epsilon), lambda pld: min(1.0, float(pld.get_delta_for_epsilon(epsilon)))))

    def rdp_epsilon(self, delta: float, unit: str, client: str | None = None) -> float | None:
        """The same ledger through Renyi DP (looser than the PLD): a cross-check of ``epsilon``."""
        delta = _delta(delta)
        return self._worst(unit, client, lambda ledger: self._figure(
            ledger, ("rdp", delta), lambda: _rdp_epsilon(ledger, delta), pld=False))

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
                    self._plds[signature] = _compose(ledger)
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


# --- composition ----------------------------------------------------------------------------------

def _gaussian_shift(ledger: Mapping[tuple, int]) -> float | None:
    """The composed normalised shift of a ledger of unsampled Gaussians only; None for any other ledger."""
    if not ledger or any(key[0] != "gaussian" or key[2] != 1.0 for key in ledger):
        return None
    return math.sqrt(sum(n * (s / sigma) ** 2 for (_, sigma, _, s), n in ledger.items()))


def _basic(ledger: Mapping[tuple, int]) -> float:
    """Sum of per-coordinate eps when every release is pure (Bernoulli pairs); inf otherwise."""
    if any(key[0] != "bernoulli" for key in ledger):
        return math.inf
    return math.fsum(count * math.log(hi / lo) for (_, hi, lo), count in ledger.items())


def _lattice(hi: float, lo: float, n: int) -> tuple[int, np.ndarray, float]:
    """The n-fold loss of the dominating pair on e0 Z: (lowest multiple m0, masses of m0, m0+1, ..., infinite mass).

    Randomized response: m = 2i - n, i ~ Binomial(n, hi/(hi+lo)), exact on the window holding all
    but TAIL; the mass below it moves up onto its first point, the mass above counts as infinite
    loss (both pessimistic). Below w = 1e-9 that RR at e0 dominates the pair (as it does every e0-DP
    pair). Otherwise dp-accounting's FFT self-convolution of (lo, w, hi), dropping at most TAIL.
    """
    w = 1.0 - hi - lo
    if w > 1e-9:
        start, probs = common.self_convolve(np.array([lo, w, hi]), n, TAIL)
        return start - n, np.clip(np.asarray(probs, dtype=float), 0.0, None), TAIL
    law = stats.binom(n, hi / (hi + lo))
    first, last = int(law.ppf(TAIL / 2)), int(law.isf(TAIL / 2))
    masses = np.zeros(2 * (last - first) + 1)  # i = first..last sits on m = 2i - n, every other point
    masses[::2] = np.exp(law.logpmf(np.arange(first, last + 1)))
    masses[0] += law.cdf(first - 1) if first > 0 else 0.0
    return 2 * first - n, masses, float(law.sf(last))


def _interval(lattices, gaussian_spans: list[float]) -> float:
    """Grid step: min(1e-4, e0_min / (10 N_groups)), coarsened to span / MAX_SUPPORT where wider.

    The grid spans the sum of the pieces' loss ranges: 10^6 coordinates at e0 = 1 span ~10^4, 10^8
    points at 1e-4. Coarsened, each group is pessimistic by at most one step, 5e-7 of its span.
    """
    step = FINEST_STEP
    if lattices:
        step = min(step, min(e0 for e0, *_ in lattices) / (10 * len(lattices)))
    span = sum(e0 * len(masses) for e0, _, masses, _ in lattices) + sum(gaussian_spans)
    return max(step, span / MAX_SUPPORT)


def _compose(ledger: Mapping[tuple, int]):
    lattices = [(math.log(key[1] / key[2]), *_lattice(key[1], key[2], n)) for key, n in sorted(ledger.items())
                if key[0] == "bernoulli"]
    gaussians = [(key[1:], n) for key, n in sorted(ledger.items()) if key[0] == "gaussian"]
    shift = math.sqrt(sum(n * (s / sigma) ** 2 for (sigma, rate, s), n in gaussians if rate == 1.0))
    sampled = [(sigma, rate, s, n) for (sigma, rate, s), n in gaussians if rate < 1.0]
    # loss ranges of the Gaussians, for sizing the grid only (dp-accounting keeps +-10 std of noise)
    spans = [20 * shift + shift**2] if shift else []
    spans += [20 * (s / sigma) * (1 + rate * math.sqrt(n)) + n * (rate * s / sigma) ** 2
              for sigma, rate, s, n in sampled]
    step = _interval(lattices, spans)
    pieces = [_lattice_pld(e0, start, masses, infinite, step) for e0, start, masses, infinite in lattices]
    if shift:
        pieces.append(pld_lib.from_gaussian_mechanism(1.0, sensitivity=shift, value_discretization_interval=step))
    for sigma, rate, s, n in sampled:
        single = pld_lib.from_gaussian_mechanism(sigma, sensitivity=s / 2, sampling_prob=rate,
                                                 value_discretization_interval=step,
                                                 neighboring_relation=NeighborRel.REPLACE_ONE)
        pieces.append(single.self_compose(n))
    total = pieces[0]
    for piece in pieces[1:]:
        total = total.compose(piece)
    return total


def _lattice_pld(e0: float, start: int, masses: np.ndarray, infinite: float, step: float):
    """Round the lattice losses m e0 up onto the grid (pessimistic) and wrap them as a symmetric PLD."""
    loss = np.arange(start, start + len(masses)) * e0
    index = np.ceil(loss / step)
    index[index * step < loss] += 1  # floating point must never round a loss down
    keep = masses > 0
    values, inverse = np.unique(index[keep].astype(np.int64), return_inverse=True)
    sums = np.bincount(inverse, weights=masses[keep])
    rounded = {int(v): float(mass) for v, mass in zip(values, sums)}
    return pld_lib.PrivacyLossDistribution.create_from_rounded_probability(rounded, infinite, step, True)


def _epsilon(pld, delta: float) -> float:
    """The least epsilon >= 0 at which ``pld``'s hockey-stick divergence is at most ``delta`` (inf: none).

    dp-accounting's answer is an upper bound, but a grid point where e^-loss underflows (losses above
    ~700: up to 2 e0 loose for randomized response). The divergence is continuous and decreasing in
    epsilon, so Brent's root below that bound is exact; it is nudged up until the condition holds.
    """
    if pld.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    high = float(pld.get_epsilon_for_delta(delta))
    if not math.isfinite(high):
        return math.inf
    while pld.get_delta_for_epsilon(high) > delta:
        high = high * (1 + 1e-9) + 1e-12
    eps = brentq(lambda e: pld.get_delta_for_epsilon(e) - delta, 0.0, high, xtol=1e-13, rtol=1e-15)
    step = max(eps, 1.0) * 1e-13
    while pld.get_delta_for_epsilon(eps) > delta:
        eps, step = eps + step, 2 * step
    return float(eps)


def _rdp_epsilon(ledger: Mapping[tuple, int], delta: float) -> float:
    """Renyi DP of the ledger, order by order, converted to epsilon at delta (dp-accounting's conversion).

    Bernoulli groups: the exact Renyi divergence of the dominating three-outcome pair. Gaussians:
    dp-accounting's RdpAccountant at noise multiplier sigma/sensitivity. For Poisson-sampled ones it has
    no replace-one analysis, so the add-or-remove sampled Gaussian at the full replace-one distance is
    used: it dominates the replace-one pair in every Renyi order checked (sigma 0.5..5, rate 1e-3..0.9,
    orders 1.5..64, by numerical integration); this figure is a cross-check, never the reported one.
    """
    gaussian = rdp_lib.RdpAccountant()
    orders = np.asarray(gaussian._orders, dtype=float)  # dp-accounting 0.6.0 keeps per-order RDP private
    rdp = np.zeros_like(orders)
    for key, n in ledger.items():
        if key[0] == "bernoulli":  # sum over outcomes of A^a B^(1-a): hi^a lo^(1-a) + w + lo^a hi^(1-a)
            log_hi, log_lo, w = math.log(key[1]), math.log(key[2]), 1.0 - key[1] - key[2]
            terms = np.logaddexp(orders * log_hi + (1 - orders) * log_lo, orders * log_lo + (1 - orders) * log_hi)
            rdp += n * (np.logaddexp(terms, math.log(w)) if w > 0 else terms) / (orders - 1)
        else:
            sigma, rate, s = key[1:]
            inner = dp_event.GaussianDpEvent(sigma / s)
            gaussian.compose(inner if rate == 1.0 else dp_event.PoissonSampledDpEvent(rate, inner), n)
    rdp += np.asarray(gaussian._rdp, dtype=float)
    return float(rdp_lib.compute_epsilon(orders, rdp, delta)[0])


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
