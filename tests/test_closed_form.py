"""The closed forms against independent references: KOV's theorem, enumeration, dp-accounting, textbook bounds."""

import itertools
import math

import pytest
from dp_accounting import gaussian_mechanism
from scipy.stats import norm

from fedprune.privacy.closed_form import (analytic_gaussian_epsilon, analytic_gaussian_sigma, basic_composition,
                                          rr_composition_delta, rr_composition_epsilon)
from fedprune.validation import ConfigError

EPSILONS = (0.1, 0.5, 1.0, 2.0)


def kov_delta_i(e0: float, k: int, i: int) -> float:
    """KOV (2015) Theorem 3.3, as printed: delta_i at eps = (k - 2i) e0."""
    total = sum(math.comb(k, l) * (math.exp((k - l) * e0) - math.exp((k - 2 * i + l) * e0)) for l in range(i))
    return total / (1 + math.exp(e0)) ** k


def enumerated_delta(e0: float, k: int, epsilon: float) -> float:
    """Hockey-stick divergence of k-fold randomized response over all 2^k outputs."""
    p = math.exp(e0) / (1 + math.exp(e0))
    total = 0.0
    for output in itertools.product((0, 1), repeat=k):
        agree = sum(output)  # outputs equal to the true bits (all ones) under the first neighbour
        upper = p**agree * (1 - p) ** (k - agree)
        lower = (1 - p) ** agree * p ** (k - agree)
        total += max(0.0, upper - math.exp(epsilon) * lower)
    return total


@pytest.mark.parametrize("e0", EPSILONS)
@pytest.mark.parametrize("k", [1, 2, 5, 10, 30])
def test_rr_delta_is_kov_theorem_3_3_at_its_points(e0, k):
    for i in range(k // 2 + 1):
        expected = kov_delta_i(e0, k, i)
        assert rr_composition_delta(e0, k, (k - 2 * i) * e0) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("e0", EPSILONS)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_rr_delta_matches_enumeration_between_kov_points(e0, k):
    for epsilon in (0.0, 0.05, 0.3, 0.77, 1.9, 3.3):
        assert rr_composition_delta(e0, k, epsilon) == pytest.approx(enumerated_delta(e0, k, epsilon),
                                                                     rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("e0", EPSILONS)
def test_one_release_inverts_in_closed_form(e0):
    # k = 1: delta(eps) = p - e^eps (1 - p) below e0, so eps = log((p - delta) / (1 - p))
    p = math.exp(e0) / (1 + math.exp(e0))
    for delta in (1e-2, 1e-5, 1e-9):
        expected = max(0.0, math.log((p - delta) / (1 - p)))
        assert rr_composition_epsilon(e0, 1, delta) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("e0", EPSILONS)
@pytest.mark.parametrize("k", [10, 1000, 10**5])
def test_rr_epsilon_is_the_root_and_beats_textbook_bounds(e0, k):
    delta = 1e-6
    epsilon = rr_composition_epsilon(e0, k, delta)
    assert rr_composition_delta(e0, k, epsilon) == pytest.approx(delta, rel=1e-8)
    # optimal composition is never worse than basic or advanced composition (Dwork, Rothblum & Vadhan 2010)
    advanced = math.sqrt(2 * k * math.log(1 / delta)) * e0 + k * e0 * math.expm1(e0)
    assert 0 < epsilon <= min(basic_composition([e0] * k), advanced)
    # more releases cost more; a larger delta buys a smaller epsilon
    assert rr_composition_epsilon(e0, k + 1, delta) > epsilon > rr_composition_epsilon(e0, k, 1e-3)


def test_rr_epsilon_is_zero_when_delta_covers_the_total_variation():
    tv = rr_composition_delta(0.5, 4, 0.0)
    assert rr_composition_epsilon(0.5, 4, tv * 1.001) == 0.0
    assert rr_composition_epsilon(0.5, 4, tv * 0.999) > 0.0
    assert rr_composition_delta(1.0, 3, 3.0) == 0.0  # no output loses more than k e0


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 2.0, 5.0, 40.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-10])
def test_analytic_gaussian_against_balle_wang_and_dp_accounting(sigma, delta):
    epsilon = analytic_gaussian_epsilon(sigma, delta)
    assert epsilon == pytest.approx(gaussian_mechanism.get_epsilon_gaussian(sigma, delta), rel=1e-7, abs=1e-9)
    if epsilon < 50:  # Balle & Wang's Theorem 8 evaluated directly, where e^eps does not overflow
        direct = norm.cdf(0.5 / sigma - epsilon * sigma) - math.exp(epsilon) * norm.cdf(-0.5 / sigma - epsilon * sigma)
        assert direct == pytest.approx(delta, rel=1e-6)
        assert direct <= delta * (1 + 1e-9)  # the root is taken on the safe side
    assert analytic_gaussian_sigma(epsilon, delta) == pytest.approx(sigma, rel=1e-9)
    # scale invariance in the sensitivity
    assert analytic_gaussian_epsilon(3 * sigma, delta, sensitivity=3.0) == pytest.approx(epsilon, rel=1e-12)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 0.9])
def test_analytic_sigma_is_below_the_classical_calibration(epsilon):
    # Dwork & Roth (2014), Theorem A.1: sigma = sqrt(2 ln(1.25/delta)) / eps suffices for eps < 1
    for delta in (1e-3, 1e-5, 1e-8):
        analytic = analytic_gaussian_sigma(epsilon, delta, sensitivity=2.0)
        assert analytic < 2.0 * math.sqrt(2 * math.log(1.25 / delta)) / epsilon
        assert analytic == pytest.approx(gaussian_mechanism.get_sigma_gaussian(epsilon, delta) * 2.0, rel=1e-6)


def test_analytic_gaussian_extremes_stay_exact():
    # small noise: epsilon ~ 1/(2 sigma^2); an overflow guard once capped this at 700
    assert analytic_gaussian_epsilon(1e-3, 1e-5) == pytest.approx(504263.89, rel=1e-6)
    assert analytic_gaussian_epsilon(1e-2, 1e-5) > 5000
    # delta at least the total variation 2 Phi(1/(2 sigma)) - 1: epsilon 0
    assert analytic_gaussian_epsilon(10.0, 2 * norm.cdf(0.05) - 1 + 1e-6) == 0.0
    sigmas = [analytic_gaussian_sigma(epsilon, 1e-5) for epsilon in (1000.0, 1.0, 1e-3)]
    assert sigmas == sorted(sigmas) and len(set(sigmas)) == 3


def test_basic_composition_adds_up():
    assert basic_composition([0.5, 0.25, 1.0]) == 1.75
    assert basic_composition([0.1] * 10) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("call, message", [
    (lambda: rr_composition_delta(0.0, 3, 1.0), "epsilon_bit must be > 0"),
    (lambda: rr_composition_delta(float("nan"), 3, 1.0), "epsilon_bit must be finite"),
    (lambda: rr_composition_delta(1.0, 0, 1.0), "k must be an integer >= 1"),
    (lambda: rr_composition_delta(1.0, True, 1.0), "k must be an integer >= 1"),
    (lambda: rr_composition_delta(1.0, 3, -0.1), "epsilon must be >= 0"),
    (lambda: rr_composition_delta(1.0, 3, float("inf")), "epsilon must be finite"),
    (lambda: rr_composition_epsilon(1.0, 3, 0.0), r"delta must be in \(0, 1\)"),
    (lambda: rr_composition_epsilon(1.0, 3, 1.0), r"delta must be in \(0, 1\)"),
    (lambda: analytic_gaussian_epsilon(0.0, 1e-5), "sigma must be > 0"),
    (lambda: analytic_gaussian_epsilon(1.0, float("nan")), "delta must be finite"),
    (lambda: analytic_gaussian_epsilon(1.0, 1e-5, sensitivity=-1.0), "sensitivity must be > 0"),
    (lambda: analytic_gaussian_sigma(float("inf"), 1e-5), "epsilon must be finite"),
    (lambda: analytic_gaussian_sigma(-1.0, 1e-5), "epsilon must be > 0"),
    (lambda: basic_composition([1.0, 0.0]), "epsilon must be > 0"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
