"""The ledger against closed forms: KOV optimal composition, the analytic Gaussian, enumeration, integration.

Tolerances. A Bernoulli group's n-fold loss is exact on its lattice and rounded up onto the PLD grid
once, so the figure is above the exact one by at most one grid step: 1e-4, or span / 2e6 where the
grid is coarsened for long reports (a relative ~1e-6 of epsilon at most). Measured gaps for
k-fold RR, k <= 1000: at most 1.6e-4 (eps 1 and 2 at k = 1000, coarsened grid), else <= 1e-4.
Unsampled Gaussians compose exactly into one Gaussian; its connect-the-dots PLD is above the
analytic figure by <= 1e-7 (measured, sigma 0.5..5, delta 1e-3..1e-8).
"""

import itertools
import json
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from scipy.special import gammaln
from scipy.stats import norm

from fedprune.privacy.accountant import Accountant
from fedprune.privacy.closed_form import (analytic_gaussian_epsilon, basic_composition, rr_composition_delta,
                                          rr_composition_epsilon)
from fedprune.privacy.events import BernoulliPair, Gaussian, PostProcessing, Unprotected, randomized_response
from fedprune.validation import ConfigError

DELTA = 1e-5
EPSILONS = (0.1, 0.5, 1.0, 2.0)
COUNTS = (1, 2, 10, 100, 1000)


def close_above(got: float, exact: float) -> None:
    """Never optimistic; at most one grid step above the exact figure (see the module docstring)."""
    assert exact - 1e-9 <= got <= exact + 1e-4 + 1e-6 * exact, (got, exact, got - exact)


def one_client(*records) -> Accountant:
    accountant = Accountant()
    for event, count in records:
        accountant.record(event, units=["client"], clients=["a"], count=count)
    return accountant


# --- randomized response against Kairouz, Oh & Viswanath ------------------------------------------

@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("k", COUNTS)
def test_k_fold_randomized_response_matches_kov_through_every_entry_point(epsilon, k):
    exact = rr_composition_epsilon(epsilon, k, DELTA)
    single, half = randomized_response(epsilon), max(k // 2, 1)
    entry_points = {
        "k record calls": one_client(*[(single, 1)] * k),
        "record(count=k)": one_client((single, k)),
        "BernoulliPair(count=k)": one_client((randomized_response(epsilon, count=k), 1)),
        "mixed": one_client((randomized_response(epsilon, count=half), 1), *[(single, 1)] * (k - half)),
    }
    for name, accountant in entry_points.items():
        got = accountant.epsilon(DELTA, "client")
        close_above(got, exact)
        assert got <= basic_composition([epsilon] * k) + 1e-12, name
        # delta at the reported epsilon is within the target, and the exact delta there too
        assert accountant.delta_for(got, "client") <= DELTA * (1 + 1e-9)
        assert rr_composition_delta(epsilon, k, got) <= DELTA * (1 + 1e-9)


def test_epsilon_grows_with_every_round_and_stays_below_basic_composition():
    accountant = Accountant()
    previous = 0.0
    for round in range(1, 41):
        accountant.record(randomized_response(0.5, count=3), units=["client"], clients=["a"])
        now = accountant.epsilon(DELTA, "client")
        assert previous < now <= 0.5 * 3 * round + 1e-12
        close_above(now, rr_composition_epsilon(0.5, 3 * round, DELTA))
        previous = now
    # delta falls as epsilon grows, and reaches 0 at basic composition
    deltas = [accountant.delta_for(e, "client") for e in (0.0, 5.0, 20.0, 40.0, 60.0 + 1e-9)]
    assert deltas == sorted(deltas, reverse=True) and deltas[-1] == 0.0 and deltas[0] > deltas[1]


# --- asymmetric pairs: a report may mix 1->0 and 0->1 changes ---------------------------------------

def mixed_delta(p, q, forward, backward, epsilon):
    """Exact hockey stick of `forward` coordinates Bern(p) vs Bern(q) and `backward` the other way round."""
    pairs = [(p, q)] * forward + [(q, p)] * backward
    total = 0.0
    for output in itertools.product((0, 1), repeat=len(pairs)):
        upper = math.prod(a if o else 1 - a for o, (a, _) in zip(output, pairs))
        lower = math.prod(b if o else 1 - b for o, (_, b) in zip(output, pairs))
        total += max(0.0, upper - math.exp(epsilon) * lower)
    return total


def test_asymmetric_pair_dominates_every_mix_of_directions():
    p, q = 0.5, 1 / (math.e + 1)  # optimized unary encoding at eps 1
    n = 6
    accountant = one_client((BernoulliPair(p, q, count=n), 1))
    for epsilon in (0.5, 1.0, 2.0):
        worst_mix = max(mixed_delta(p, q, a, n - a, epsilon) for a in range(n + 1))
        assert accountant.delta_for(epsilon, "client") >= worst_mix
    # why the worse of the two pure orders is not enough: at eps 0.5 a 2/2 mix leaks more than either
    assert mixed_delta(p, q, 2, 2, 0.5) > 1.15 * max(mixed_delta(p, q, 4, 0, 0.5), mixed_delta(p, q, 0, 4, 0.5))
    # relabelled pairs are the same channel
    for twin in (BernoulliPair(q, p, count=n), BernoulliPair(1 - p, 1 - q, count=n)):
        assert one_client((twin, 1)).epsilon(DELTA, "client") == accountant.epsilon(DELTA, "client")


@pytest.mark.parametrize("n", [1, 7, 60])
def test_asymmetric_pair_matches_the_exact_three_outcome_composition(n):
    hi, lo = 0.6, 0.15  # the dominating pair: +1, 0, -1 with (hi, w, lo) against (lo, w, hi)
    w, e0 = 1 - hi - lo, math.log(hi / lo)
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    valid = i + j <= n
    i, j = i[valid], j[valid]
    log_mult = gammaln(n + 1) - gammaln(i + 1) - gammaln(j + 1) - gammaln(n - i - j + 1) + (n - i - j) * math.log(w)
    upper = np.exp(log_mult + i * math.log(hi) + j * math.log(lo))
    lower = np.exp(log_mult + j * math.log(hi) + i * math.log(lo))
    accountant = one_client((BernoulliPair(hi, lo), n))
    for epsilon in (0.0, 0.3, 1.0, 4.0):
        exact = float(np.sum(np.maximum(upper - math.exp(epsilon) * lower, 0.0)))
        got = accountant.delta_for(epsilon, "client")
        # pessimistic, and no more than the exact delta one grid step (1e-4) further left
        exact_left = float(np.sum(np.maximum(upper - math.exp(epsilon - 1e-4) * lower, 0.0)))
        assert exact - 1e-12 <= got <= exact_left + 1e-12
    assert accountant.epsilon(DELTA, "client") <= n * e0 + 1e-12


# --- Gaussians ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
def test_one_gaussian_release_matches_the_analytic_gaussian(sigma):
    clipped = one_client((Gaussian(sigma), 1))                       # replace-one moves a clipped sum by 2 C
    distance = one_client((Gaussian(sigma, sensitivity=1.0), 1))     # noise scaled to the distance itself
    for delta in (1e-3, 1e-5, 1e-8):
        for accountant, sensitivity in ((clipped, 2.0), (distance, 1.0)):
            exact = analytic_gaussian_epsilon(sigma, delta, sensitivity=sensitivity)
            got = accountant.epsilon(delta, "client")
            assert exact - 1e-9 <= got <= exact + 1e-6, (got, exact)


@pytest.mark.parametrize("k", [10, 1000])
def test_unsampled_gaussians_compose_exactly(k):
    # k releases at sigma are one release at sigma / sqrt(k), however they are recorded
    sigma = 3.0
    exact = analytic_gaussian_epsilon(sigma / math.sqrt(k), DELTA, sensitivity=2.0)
    split = one_client((Gaussian(sigma, count=k // 2), 1), (Gaussian(sigma), k - k // 2))
    for accountant in (one_client((Gaussian(sigma, count=k), 1)), split):
        got = accountant.epsilon(DELTA, "client")
        assert exact - 1e-9 <= got <= exact + 1e-6


@pytest.mark.parametrize("sigma, rate", [(1.0, 0.1), (2.0, 0.5)])
def test_one_sampled_gaussian_against_numerical_integration(sigma, rate):
    # replace-one, Poisson-sampled: (1-r) N(0) + r N(-1) against (1-r) N(0) + r N(+1), std sigma
    x = np.linspace(-40 * sigma, 40 * sigma, 800_001)
    dx = x[1] - x[0]
    upper = (1 - rate) * norm.pdf(x, 0, sigma) + rate * norm.pdf(x, -1, sigma)
    lower = (1 - rate) * norm.pdf(x, 0, sigma) + rate * norm.pdf(x, 1, sigma)

    def true_delta(epsilon):
        return float(np.sum(np.maximum(upper - math.exp(epsilon) * lower, 0.0)) * dx)

    accountant = one_client((Gaussian(sigma, rate), 1))
    for delta in (1e-3, 1e-5):
        got = accountant.epsilon(delta, "client")
        assert true_delta(got) <= delta * (1 + 1e-6)     # never optimistic
        assert true_delta(got - 1e-3) > delta            # and not loose by a grid's worth
    # replace-one costs more than add-or-remove, sampling costs less than none
    add_remove = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=rate).get_epsilon_for_delta(DELTA)
    assert add_remove < accountant.epsilon(DELTA, "client") < one_client((Gaussian(sigma), 1)).epsilon(DELTA, "client")


def test_a_run_of_rounds_reads_the_same_figures_as_each_round_built_afresh():
    # the single sampled release's PLD is built once and reused by every later round's composition
    from fedprune.privacy import composition

    growing = Accountant()
    for round in range(1, 6):
        growing.record(Gaussian(0.8, 1 / 32, count=8), units=["record"], clients=["a"])
        figure = growing.epsilon(DELTA, "record")
        composition._sampled_gaussian.cache_clear()
        assert figure == one_client((Gaussian(0.8, 1 / 32, count=8 * round), 1)).epsilon(DELTA, "client")
    assert composition._sampled_gaussian.cache_info().currsize == 1


# --- Renyi DP cross-check ---------------------------------------------------------------------------

def test_rdp_cross_check_is_never_below_the_pld_figure():
    ledgers = {
        "rr": [(randomized_response(1.0, count=20), 1)],
        "asymmetric": [(BernoulliPair(0.5, 0.2, count=30), 1)],
        "gaussian": [(Gaussian(2.0, count=5), 1)],
        "sampled": [(Gaussian(1.1, sampling_rate=0.01, count=300), 1)],
        "mixed": [(randomized_response(0.5, count=10), 3), (Gaussian(4.0), 2), (Gaussian(1.5, 0.05), 100)],
    }
    for name, records in ledgers.items():
        accountant = one_client(*records)
        for delta in (1e-3, 1e-6):
            assert accountant.rdp_epsilon(delta, "client") >= accountant.epsilon(delta, "client"), name


def test_rdp_of_randomized_response_is_dp_accountings():
    reference = rdp_lib.RdpAccountant(neighboring_relation=rdp_lib.NeighborRel.REPLACE_ONE)
    reference.compose(dp_event.RandomizedResponseDpEvent(noise_parameter=2 / (1 + math.exp(0.7)), num_buckets=2), 50)
    reference.compose(dp_event.GaussianDpEvent(3.0 / 2.0), 4)
    ours = one_client((randomized_response(0.7), 50), (Gaussian(3.0, count=4), 1))
    assert ours.rdp_epsilon(DELTA, "client") == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)


# --- ledgers: clients, units, state ----------------------------------------------------------------

def test_ledgers_per_client_and_per_unit():
    accountant = Accountant()
    assert accountant.epsilon(DELTA, "client") == 0.0 and accountant.clients == []
    for round in range(10):
        accountant.record(randomized_response(1.0), units=["client"], clients=["a"] if round % 2 else ["a", "b"])
    accountant.record(Gaussian(2.0, 0.1, 50), units=["record"], clients=["c"])
    assert accountant.clients == ["a", "b", "c"]
    a, b = accountant.epsilon(DELTA, "client", "a"), accountant.epsilon(DELTA, "client", "b")
    close_above(a, rr_composition_epsilon(1.0, 10, DELTA))   # every round
    close_above(b, rr_composition_epsilon(1.0, 5, DELTA))    # only the rounds b took part in
    assert accountant.epsilon(DELTA, "client") == a           # the worst client
    assert accountant.epsilon(DELTA, "client", "c") == 0.0    # c released nothing at client level
    assert accountant.epsilon(DELTA, "record", "a") == 0.0    # never mixed with the client unit
    assert accountant.epsilon(DELTA, "record") == accountant.epsilon(DELTA, "record", "c") > 0
    assert accountant.epsilon(DELTA, "client", "nobody") == 0.0

    accountant.record(Unprotected("weights in the clear"), units=["record"], clients=["b"])
    assert accountant.epsilon(DELTA, "record") is None and accountant.epsilon(DELTA, "record", "b") is None
    assert accountant.delta_for(1.0, "record") is None and accountant.rdp_epsilon(DELTA, "record") is None
    assert accountant.epsilon(DELTA, "record", "c") > 0 and accountant.epsilon(DELTA, "client") == a


def test_copy_is_independent():
    accountant = one_client((randomized_response(1.0), 5))
    twin = accountant.copy()
    twin.record(randomized_response(1.0), units=["client"], clients=["a"])
    twin.record(Unprotected("x"), units=["record"], clients=["a"])
    assert accountant.epsilon(DELTA, "client") < twin.epsilon(DELTA, "client")
    assert accountant.epsilon(DELTA, "record") == 0.0 and twin.epsilon(DELTA, "record") is None


def example() -> Accountant:
    accountant = Accountant()
    accountant.record(randomized_response(1.0, count=7), units=["client", "record"], clients=["a", "b"])
    accountant.record(BernoulliPair(0.5, 0.2), units=["client"], clients=["b"], count=4)
    accountant.record(Gaussian(1.5, 0.1, 30), units=["record"], clients=["a"])
    accountant.record(Gaussian(3.0, sensitivity=1.0), units=["client", "record"], clients=["a"])
    accountant.record(Unprotected("weights in the clear"), units=["client"], clients=["c"])
    accountant.record(PostProcessing("mask from the DP-SGD weights"), units=["record"], clients=["a"])
    return accountant


def test_state_dict_round_trip_through_json():
    accountant = example()
    state = json.loads(json.dumps(accountant.state_dict()))
    assert state["kind"] == "fedprune.accountant" and state["version"] == 2
    restored = Accountant.from_state_dict(state)
    assert restored.state_dict() == state and restored.clients == accountant.clients
    for unit in ("client", "record"):
        for client in (None, "a", "b", "c"):
            assert restored.epsilon(DELTA, unit, client) == accountant.epsilon(DELTA, unit, client)
            assert restored.delta_for(2.0, unit, client) == accountant.delta_for(2.0, unit, client)
    assert restored.epsilon(DELTA, "client") is None and restored.epsilon(DELTA, "client", "a") > 0
    assert restored.post_processed("record") == ["mask from the DP-SGD weights"]
    assert restored.unprotected("client") == ["weights in the clear"]


def test_a_version_1_state_still_loads():
    state = json.loads(json.dumps(example().state_dict()))
    state["version"] = 1
    for ledger in state["ledgers"]:
        del ledger["post_processing"]
    restored = Accountant.from_state_dict(state)
    assert restored.epsilon(DELTA, "record", "a") == example().epsilon(DELTA, "record", "a")
    assert restored.post_processed("record") == []


def test_post_processing_is_free_named_and_never_lifts_unprotected():
    gaussian = Accountant()
    gaussian.record(Gaussian(2.0), units=["record"], clients=["a"], count=5)
    with_mask = gaussian.copy()
    with_mask.record(PostProcessing("mask"), units=["record"], clients=["a", "b"], count=5)
    assert with_mask.epsilon(DELTA, "record", "a") == gaussian.epsilon(DELTA, "record", "a")
    assert with_mask.epsilon(DELTA, "record", "b") == 0.0  # a client with only free releases spent nothing
    assert with_mask.post_processed("record") == ["mask"] and with_mask.post_processed("client") == []
    with_mask.record(Unprotected("loss in the clear"), units=["record"], clients=["a"])
    assert with_mask.epsilon(DELTA, "record") is None


def broken(state, change):
    state = json.loads(json.dumps(state))
    change(state)
    return state


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(kind="opacus"), "not a fedprune accountant state"),
    (lambda s: s.update(version=3), "version 3"),
    (lambda s: s["ledgers"][0].pop("post_processing"), "fields"),
    (lambda s: s["ledgers"][0].update(post_processing=[1]), "must be strings"),
    (lambda s: s.update(extra=1), "fields"),
    (lambda s: s.update(ledgers={}), "ledgers must be a list"),
    (lambda s: s["ledgers"][0].update(unit="group"), "unknown unit"),
    (lambda s: s["ledgers"][0].update(client=None), "a client must be named"),
    (lambda s: s["ledgers"][0].pop("events"), "fields"),
    (lambda s: s["ledgers"].append(dict(s["ledgers"][0])), "two ledgers"),
    (lambda s: s["ledgers"][0]["events"][0].update(event="laplace"), "unknown event kind"),
    (lambda s: s["ledgers"][0]["events"][0].update(count=0), "count must be an integer >= 1"),
    (lambda s: s["ledgers"][0]["events"][0].update(count=True), "boolean"),
    (lambda s: s["ledgers"][0]["events"][0].update(p=0.5, q=0.5), "p == q"),
    (lambda s: s["ledgers"][0]["events"][0].update(sigma=1.0), "fields"),
    (lambda s: s["ledgers"][0]["events"].append(dict(s["ledgers"][0]["events"][0])), "listed twice"),
    (lambda s: s["ledgers"][0].update(unprotected=[3]), "must be strings"),
])
def test_mismatched_state_is_rejected_and_changes_nothing(change, message):
    accountant = example()
    before = accountant.state_dict()
    with pytest.raises(ConfigError, match=message):
        accountant.load_state_dict(broken(before, change))
    assert accountant.state_dict() == before
    with pytest.raises(ConfigError, match="not a fedprune accountant"):
        accountant.load_state_dict([1, 2])


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda a: a.epsilon(0.0, "client"), r"delta must be in \(0, 1\).*e.g. 1e-5"),
    (lambda a: a.epsilon(1.0, "client"), r"delta must be in \(0, 1\)"),
    (lambda a: a.epsilon(float("nan"), "client"), "delta must be finite"),
    (lambda a: a.rdp_epsilon(-1e-5, "client"), r"delta must be in \(0, 1\)"),
    (lambda a: a.epsilon(DELTA, "group"), "unknown unit of protection 'group'; valid units: record, client"),
    (lambda a: a.delta_for(float("inf"), "client"), "epsilon must be finite"),
    (lambda a: a.delta_for(-0.5, "client"), "epsilon must be >= 0"),
    (lambda a: a.record(randomized_response(1.0), units=["group"], clients=["a"]), "unknown unit"),
    (lambda a: a.record(randomized_response(1.0), units="client", clients=["a"]), r"units must be a list, e\.g\."),
    (lambda a: a.record(randomized_response(1.0), units=["client"], clients="ab"), r"clients must be a list"),
    (lambda a: a.record(randomized_response(1.0), units=["client"], clients=[]), "non-empty list"),
    (lambda a: a.record(randomized_response(1.0), units=["client"], clients=["a", "a"]), "without repeats"),
    (lambda a: a.record(randomized_response(1.0), units=["client"], clients=["a"], count=0), "count must be"),
    (lambda a: a.record((1.0, 0.5), units=["client"], clients=["a"]), "cannot account for tuple"),
    (lambda a: randomized_response(float("nan")), "epsilon must be finite"),
    (lambda a: randomized_response(0.0), "epsilon must be > 0"),
    (lambda a: Gaussian(1.0, sensitivity=0.0), "sensitivity must be > 0"),
    (lambda a: BernoulliPair(0.5, 0.5), "p == q"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ConfigError, match=message):
        call(Accountant())


def test_a_ledger_of_unsampled_gaussians_is_the_analytic_gaussian_exactly():
    accountant = Accountant()
    accountant.record(Gaussian(0.1), units=["client"], clients=["a"], count=20)
    accountant.record(Gaussian(3.0, sensitivity=1.0), units=["client"], clients=["a"], count=5)
    shift = math.sqrt(20 * (2 / 0.1) ** 2 + 5 * (1 / 3.0) ** 2)
    assert accountant.epsilon(DELTA, "client") == analytic_gaussian_epsilon(1.0, DELTA, sensitivity=shift)
    accountant.record(randomized_response(1.0), units=["client"], clients=["a"])  # no longer Gaussians only
    assert accountant.epsilon(DELTA, "client") > analytic_gaussian_epsilon(1.0, DELTA, sensitivity=shift)


def test_a_gaussian_too_weak_for_the_grid_composes_by_parts_and_stays_an_upper_bound():
    accountant = Accountant()
    accountant.record(Gaussian(1e-6), units=["client"], clients=["a"])
    accountant.record(randomized_response(1.0, count=10), units=["client"], clients=["a"])
    gaussian_half = analytic_gaussian_epsilon(1e-6, DELTA / 2, sensitivity=2.0)
    assert accountant.epsilon(DELTA, "client") == pytest.approx(gaussian_half + 10.0, rel=1e-9)
