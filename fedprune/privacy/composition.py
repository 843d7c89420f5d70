"""How a ledger ({event key: count}, as ``fedprune.privacy.accountant`` keeps it) becomes one privacy-loss
distribution (PLD), never optimistic:
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

Discretisation. DESIGN asks for a step of at most eps/(10 N) for N releases, as rounding each
release's loss up adds up to N steps. Bernoulli groups are rounded once each, so N counts groups:
step min(1e-4, e0_min / (10 N)). Gaussians use dp-accounting's connect-the-dots, whose pessimism
does not grow like N steps: 10^4 self-composed Gaussians at step 1e-4 came out at most 4e-5 above
the analytic figure, and at 1e-5 further above (FFT round-off on 10x longer arrays), so 1e-4 stays. The
step is coarsened only to keep the grid under MAX_SUPPORT points (see ``_interval``); any step is pessimistic
(dp-accounting rounds losses up), so sizing the grid decides how tight a figure is, never whether it holds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import common
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from dp_accounting.rdp.rdp_privacy_accountant import NeighborRel
from scipy import stats
from scipy.optimize import brentq

FINEST_STEP = 1e-4      # grid step of the PLD unless eps/(10 N) asks for finer
MAX_SUPPORT = 2_000_000  # grid points a composed PLD may hold (dense float64: 16 MB)
TAIL = 1e-15             # probability mass a lattice may drop, counted as infinite loss
SELF_COMPOSE_TAIL = 1e-15  # what dp-accounting's self_compose drops by default (sizing must match it)
SIZING_POINTS = 10_000   # grid points of the coarse release that sizes a sampled Gaussian's composed range


def gaussian_shift(ledger: Mapping[tuple, int]) -> float | None:
    """The composed normalised shift of a ledger of unsampled Gaussians only; None for any other ledger."""
    if not ledger or any(key[0] != "gaussian" or key[2] != 1.0 for key in ledger):
        return None
    return math.sqrt(sum(n * (s / sigma) ** 2 for (_, sigma, _, s), n in ledger.items()))


def basic(ledger: Mapping[tuple, int]) -> float:
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
    points at 1e-4. A coarsened step is rounded up to a ladder 2^(1/4) apart, so that a run whose ledger
    grows round by round keeps one step (and one cached release) for many rounds. Coarsened, each group
    is pessimistic by at most one step, under 6e-7 of its span.
    """
    step = FINEST_STEP
    if lattices:
        step = min(step, min(e0 for e0, *_ in lattices) / (10 * len(lattices)))
    span = sum(e0 * len(masses) for e0, _, masses, _ in lattices) + sum(gaussian_spans)
    if span <= step * MAX_SUPPORT:
        return step
    return step * 2 ** (math.ceil(4 * math.log2(span / (step * MAX_SUPPORT))) / 4)


def compose(ledger: Mapping[tuple, int]):
    lattices = [(math.log(key[1] / key[2]), *_lattice(key[1], key[2], n)) for key, n in sorted(ledger.items())
                if key[0] == "bernoulli"]
    gaussians = [(key[1:], n) for key, n in sorted(ledger.items()) if key[0] == "gaussian"]
    shift = math.sqrt(sum(n * (s / sigma) ** 2 for (sigma, rate, s), n in gaussians if rate == 1.0))
    sampled = [(sigma, rate, s, n) for (sigma, rate, s), n in gaussians if rate < 1.0]
    # loss ranges of the Gaussians, for sizing the grid only (unsampled: dp-accounting keeps +-10 std of noise)
    spans = [20 * shift + shift**2] if shift else []
    spans += [_sampled_span(sigma, rate, s, n) for sigma, rate, s, n in sampled]
    step = _interval(lattices, spans)
    pieces = [_lattice_pld(e0, start, masses, infinite, step) for e0, start, masses, infinite in lattices]
    if shift:
        pieces.append(pld_lib.from_gaussian_mechanism(1.0, sensitivity=shift, value_discretization_interval=step))
    for sigma, rate, s, n in sampled:
        pieces.append(_sampled_gaussian(sigma, rate, s, step).self_compose(n, SELF_COMPOSE_TAIL))
    total = pieces[0]
    for piece in pieces[1:]:
        total = total.compose(piece)
    return total


def _sampled_span(sigma: float, rate: float, sensitivity: float, n: int) -> float:
    """Loss range of ``n`` self-composed sampled Gaussians as dp-accounting keeps it (its own tail truncation).

    Read off a coarse grid of one release, plus that release's range as margin for the coarse rounding. One
    release alone spans about (sensitivity/sigma)^2/8 + 5 sensitivity/sigma, and n of them far more than
    their mean: the closed-form guess this replaced was 3x short at noise 0.1 and 15x at 0.01 (rate 1/32,
    160 releases), where the grid it sized took 28 million points, 2 GB and 20 s a figure.
    """
    probs, coarse, single = _coarse_release(sigma, rate, sensitivity)
    lower, upper = common.compute_self_convolve_bounds(probs, n, SELF_COMPOSE_TAIL)
    return (upper - lower) * coarse + single


@functools.lru_cache(maxsize=32)
def _coarse_release(sigma: float, rate: float, sensitivity: float) -> tuple[np.ndarray, float, float]:
    """One release's PMF on SIZING_POINTS points over its loss range: (probabilities, grid step, range)."""
    bounds = privacy_loss_mechanism.GaussianPrivacyLoss(
        sigma, sensitivity=sensitivity / 2, sampling_prob=rate,
        adjacency_type=privacy_loss_mechanism.AdjacencyType.REPLACE).connect_dots_bounds()
    single = bounds.epsilon_upper - bounds.epsilon_lower
    coarse = single / SIZING_POINTS
    pld = _sampled_gaussian.__wrapped__(sigma, rate, sensitivity, coarse)  # not cached beside the real grids
    return pld._pmf_remove._probs, coarse, single  # replace-one: one symmetric PMF


@functools.lru_cache(maxsize=32)
def _sampled_gaussian(sigma: float, rate: float, sensitivity: float, step: float):
    """One replace-one Poisson-sampled Gaussian's PLD, built once per setting: every round of a run adds the same
    release, and building it is most of the time a round's figure takes (PLDs are never modified in place)."""
    return pld_lib.from_gaussian_mechanism(sigma, sensitivity=sensitivity / 2, sampling_prob=rate,
                                           value_discretization_interval=step,
                                           neighboring_relation=NeighborRel.REPLACE_ONE)


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


def epsilon_of(pld, delta: float) -> float:
    """The least epsilon >= 0 at which ``pld``'s hockey-stick divergence is at most ``delta`` (inf: none).

    The divergence is continuous and decreasing in epsilon, so Brent's root is exact; it is nudged up until
    the condition holds. The bracket comes from doubling: dp-accounting's own ``get_epsilon_for_delta``
    walks the grid point by point in Python (0.1 s a figure at 600,000 points: half the main job's ledger
    time, 11 of 21 s over 100 rounds) and is loose where e^-loss underflows (losses above ~700).
    """
    if pld.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    if pld.get_delta_for_epsilon(math.inf) > delta:  # the infinite-loss mass alone exceeds delta
        return math.inf
    low, high = 0.0, 1.0
    while pld.get_delta_for_epsilon(high) > delta:  # ends past the largest finite loss on the grid at worst
        low, high = high, 2 * high
    eps = brentq(lambda e: pld.get_delta_for_epsilon(e) - delta, low, high, xtol=1e-13, rtol=1e-15)
    step = max(eps, 1.0) * 1e-13
    while pld.get_delta_for_epsilon(eps) > delta:
        eps, step = eps + step, 2 * step
    return float(eps)


def rdp_epsilon_of(ledger: Mapping[tuple, int], delta: float) -> float:
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
