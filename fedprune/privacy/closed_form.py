"""Exact privacy figures in closed form: what the accountant is held to in tests.

- Balle & Wang (2018), "Improving the Gaussian mechanism for differential privacy: analytical
  calibration and optimal denoising", ICML, Theorem 8: one Gaussian release is (eps, delta)-DP
  exactly when Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D) <= delta (s the noise std, D
  the L2 sensitivity).
- Kairouz, Oh & Viswanath (2015), "The composition theorem for differential privacy", ICML,
  Theorem 3.3: the optimal composition of k eps0-DP releases, attained by k-fold binary
  randomized response; for that mechanism the hockey-stick divergence below is exact at every eps.
- Basic composition (Dwork, McSherry, Nissim & Smith 2006): the eps of pure-DP releases add up.

Everything is evaluated in log space, so k = 10^6 releases or sigma = 10^-6 stay accurate.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln, log_ndtr, logsumexp

from fedprune.validation import ConfigError, finite, positive, positive_int, probability


def rr_composition_delta(epsilon_bit: float, k: int, epsilon: float) -> float:
    """The least delta with which k-fold eps_bit randomized response is (epsilon, delta)-DP.

    With p = e^e0/(1+e^e0), the k outputs disagree with the true bits in i places with
    probability Binomial(k, 1-p) under one neighbour and Binomial(k, p) under the other, a privacy
    loss of (k - 2i) e0. The hockey-stick divergence is
    delta = sum over (k - 2i) e0 > eps of C(k, i) (e^{(k-i) e0} - e^{eps + i e0}) / (1 + e^{e0})^k,
    which at eps = (k - 2j) e0 is KOV's delta_j (Theorem 3.3). Both neighbour orders give the same
    figure (randomized response is symmetric).
    """
    e0 = positive("epsilon_bit", epsilon_bit)
    k = positive_int("k", k)
    epsilon = finite("epsilon", epsilon)
    if epsilon < 0:
        raise ConfigError(f"epsilon must be >= 0, got {epsilon!r}")
    i = np.arange(k + 1)
    above = (k - 2 * i) * e0 > epsilon  # outputs whose privacy loss exceeds epsilon
    if not above.any():
        return 0.0
    log_choose = gammaln(k + 1) - gammaln(i + 1) - gammaln(k - i + 1)
    log_norm = k * np.logaddexp(0.0, e0)
    upper = logsumexp((log_choose + (k - i) * e0 - log_norm)[above])  # P[loss > eps] under the true bits
    lower = logsumexp((log_choose + i * e0 - log_norm)[above])        # the same outputs under the flipped bits
    return float(max(0.0, math.exp(upper) * -math.expm1(epsilon + lower - upper)))


def rr_composition_epsilon(epsilon_bit: float, k: int, delta: float) -> float:
    """The least epsilon with which k-fold eps_bit randomized response is (epsilon, delta)-DP.

    Root of the continuous, decreasing ``rr_composition_delta`` in [0, k eps_bit], to 1e-12.
    """
    delta = probability("delta", delta)
    high = positive("epsilon_bit", epsilon_bit) * positive_int("k", k)
    if rr_composition_delta(epsilon_bit, k, 0.0) <= delta:
        return 0.0
    return float(brentq(lambda eps: rr_composition_delta(epsilon_bit, k, eps) - delta, 0.0, high,
                        xtol=1e-12, rtol=4 * np.finfo(float).eps))


def _gaussian_log_delta(epsilon: float, scale: float) -> float:
    """log of Balle-Wang's delta(eps) for noise std / sensitivity = ``scale``.

    delta = Phi(a - b) - e^eps Phi(-a - b), a = 1/(2 scale), b = eps scale, as
    log Phi(a - b) + log(1 - e^{eps + log Phi(-a - b) - log Phi(a - b)}): no overflow of e^eps
    and no cancellation when both terms are tiny.
    """
    a, b = 0.5 / scale, epsilon * scale
    first = log_ndtr(a - b)
    ratio = epsilon + log_ndtr(-a - b) - first
    return float(first + np.log(-np.expm1(ratio))) if ratio < 0 else -math.inf


def _smallest_above(log_delta, log_target: float, low: float, high: float) -> float:
    """The smallest x in [low, high] with log_delta(x) <= log_target, for decreasing log_delta.

    Brent's root, then nudged up until the condition holds, so the answer is never optimistic.
    """
    x = brentq(lambda v: log_delta(v) - log_target, low, high, xtol=1e-300, rtol=1e-14)
    step = max(abs(x), 1e-300) * 1e-14
    while log_delta(x) > log_target:
        x, step = x + step, 2 * step
    return float(x)


def analytic_gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """The least epsilon of one Gaussian release with noise std ``sigma`` at ``delta`` (Balle & Wang 2018).

    ``sensitivity`` is the L2 distance between the outputs on two neighbouring datasets.
    """
    scale = positive("sigma", sigma) / positive("sensitivity", sensitivity)
    log_target = math.log(probability("delta", delta))
    if _gaussian_log_delta(0.0, scale) <= log_target:
        return 0.0
    high = 1.0
    while _gaussian_log_delta(high, scale) > log_target:
        high *= 2.0
    return _smallest_above(lambda eps: _gaussian_log_delta(eps, scale), log_target, 0.0, high)


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The least noise std for which one Gaussian release is (epsilon, delta)-DP (Balle & Wang 2018)."""
    epsilon = positive("epsilon", epsilon)
    log_target = math.log(probability("delta", delta))
    sensitivity = positive("sensitivity", sensitivity)
    low, high = 1.0, 1.0  # bracket the scale (std / sensitivity); delta falls as the scale grows
    while _gaussian_log_delta(epsilon, high) > log_target:
        high *= 2.0
    while _gaussian_log_delta(epsilon, low) <= log_target:
        low /= 2.0
    log_scale = _smallest_above(lambda v: _gaussian_log_delta(epsilon, math.exp(v)), log_target,
                                math.log(low), math.log(high))
    return float(math.exp(log_scale) * sensitivity)


def basic_composition(epsilons) -> float:
    """Sum of the eps of pure-DP releases: a valid, usually loose, bound on their composition."""
    return float(math.fsum(positive("epsilon", e) for e in epsilons))
