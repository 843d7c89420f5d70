"""The ledger against closed forms: KOV optimal composition, the analytic Gaussian, basic composition."""

import json
import math

import pytest

from fedprune.privacy.accountant import Accountant
from fedprune.privacy.closed_form import (analytic_gaussian_epsilon, analytic_gaussian_sigma, basic_composition,
                                          rr_composition_delta, rr_composition_epsilon)
from fedprune.privacy.events import BernoulliPair, Gaussian, Unprotected, randomized_response
from fedprune.validation import ConfigError

DELTA = 1e-5
EPSILONS = (0.1, 0.5, 1.0, 2.0)
COUNTS = (1, 2, 10, 100, 1000)


def close_above(got: float, exact: float) -> None:
    """Never optimistic; at most one discretisation step (1e-4 per distinct event) above the exact figure."""
    assert exact - 1e-9 <= got <= exact + 2e-4 + 1e-7 * exact, (got, exact)


def fresh(event, count=1, calls=1):
    accountant = Accountant()
    for _ in range(calls):
        accountant.record(event, units=["client"], clients=["a"], count=count)
    return accountant.epsilon(DELTA, "client")


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("k", COUNTS)
def test_k_fold_randomized_response_matches_kov_through_every_entry_point(epsilon, k):
    exact = rr_composition_epsilon(epsilon, k, DELTA)
    close_above(fresh(randomized_response(epsilon, count=k)), exact)           # one event of k coordinates
    close_above(fresh(randomized_response(epsilon), count=k), exact)           # record(..., count=k)
    close_above(fresh(randomized_response(epsilon), calls=k), exact)           # k single releases
    assert fresh(randomized_response(epsilon, count=k)) <= basic_composition([epsilon] * k) + 1e-9


def test_kov_closed_form_itself():
    # k = 1: delta(eps) = p - e^eps (1 - p) for eps < e0, with p = e^e0 / (1 + e^e0)
    p = math.exp(1) / (1 + math.exp(1))
    assert rr_composition_delta(1.0, 1, 0.5) == pytest.approx(p - math.exp(0.5) * (1 - p), rel=1e-12)
    assert rr_composition_delta(1.0, 1, 1.0) == 0.0
    # the hockey stick falls with epsilon and rises with k
    assert rr_composition_delta(0.5, 10, 1.0) > rr_composition_delta(0.5, 10, 2.0)
    assert rr_composition_epsilon(0.5, 20, DELTA) > rr_composition_epsilon(0.5, 10, DELTA)


def test_epsilon_grows_with_every_round_and_stays_below_basic_composition():
    accountant = Accountant()
    previous = 0.0
    for round in range(1, 31):
        accountant.record(randomized_response(0.5, count=3), units=["client"], clients=["a"])
        now = accountant.epsilon(DELTA, "client")
        assert previous < now <= 0.5 * 3 * round + 1e-9
        previous = now


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-8])
def test_one_gaussian_release_matches_the_analytic_gaussian(sigma, delta):
    accountant = Accountant()
    accountant.record(Gaussian(sigma), units=["client"], clients=["a"])
    # replace-one: a clipped contribution moves by twice the clipping norm
    exact = analytic_gaussian_epsilon(sigma, delta, sensitivity=2.0)
    got = accountant.epsilon(delta, "client")
    assert exact - 1e-9 <= got <= exact + 1e-3
    assert analytic_gaussian_sigma(exact, delta, sensitivity=2.0) == pytest.approx(sigma, rel=1e-6)


def test_rdp_cross_check_is_never_below_the_pld_figure():
    accountant = Accountant()
    accountant.record(randomized_response(1.0, count=20), units=["client", "record"], clients=["a"])
    accountant.record(Gaussian(2.0, count=5), units=["client", "record"], clients=["a"])
    accountant.record(Gaussian(1.1, sampling_rate=0.01, count=200), units=["record"], clients=["a"])
    for unit in ("client", "record"):
        assert accountant.rdp_epsilon(DELTA, unit) >= accountant.epsilon(DELTA, unit)


def test_state_dict_round_trip_and_rejections():
    accountant = Accountant()
    accountant.record(randomized_response(1.0, count=7), units=["client", "record"], clients=["a", "b"])
    accountant.record(Gaussian(1.5, 0.1, 30), units=["record"], clients=["a"])
    accountant.record(Unprotected("weights in the clear"), units=["client"], clients=["b"])
    state = json.loads(json.dumps(accountant.state_dict()))
    restored = Accountant.from_state_dict(state)
    for unit in ("client", "record"):
        for client in (None, "a", "b"):
            assert restored.epsilon(DELTA, unit, client) == accountant.epsilon(DELTA, unit, client)
    for bad, message in [({**state, "kind": "opacus"}, "not a fedprune accountant"),
                         ({**state, "version": 99}, "version 99"),
                         ({**state, "ledgers": [{"client": "a", "unit": "group", "events": [], "unprotected": []}]},
                          "unknown unit"),
                         ({**state, "ledgers": [{"client": "a", "unit": "client", "events": [["laplace", 1, 1, 1]],
                                                 "unprotected": []}]}, "unknown event kind"),
                         ({**state, "ledgers": [{"client": "a"}]}, "malformed")]:
        with pytest.raises(ConfigError, match=message):
            restored.load_state_dict(bad)
    assert restored.epsilon(DELTA, "record", "a") == accountant.epsilon(DELTA, "record", "a")  # unchanged


def test_ledgers_per_client_and_per_unit():
    accountant = Accountant()
    for round in range(10):
        accountant.record(randomized_response(1.0), units=["client"], clients=["a"])
        if round % 2 == 0:
            accountant.record(randomized_response(1.0), units=["client"], clients=["b"])
    a, b = accountant.epsilon(DELTA, "client", "a"), accountant.epsilon(DELTA, "client", "b")
    assert a == pytest.approx(rr_composition_epsilon(1.0, 10, DELTA), abs=2e-4)
    assert b == pytest.approx(rr_composition_epsilon(1.0, 5, DELTA), abs=2e-4)
    assert accountant.epsilon(DELTA, "client") == a  # the worst client
    assert accountant.epsilon(DELTA, "record") == 0.0  # never mixed with the client unit
    accountant.record(Unprotected("weights in the clear"), units=["record"], clients=["b"])
    assert accountant.epsilon(DELTA, "record") is None and accountant.epsilon(DELTA, "record", "a") == 0.0
    assert accountant.epsilon(DELTA, "client") == a


def test_bad_input_names_the_problem():
    accountant = Accountant()
    with pytest.raises(ConfigError, match="delta must be in"):
        accountant.epsilon(0.0, "client")
    with pytest.raises(ConfigError, match="unknown unit"):
        accountant.epsilon(DELTA, "group")
    with pytest.raises(ConfigError, match="epsilon must be finite"):
        randomized_response(float("nan"))
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        randomized_response(0.0)
    with pytest.raises(ConfigError, match="finite"):
        accountant.delta_for(float("inf"), "client")
    with pytest.raises(ConfigError, match="p == q"):
        BernoulliPair(0.5, 0.5)
