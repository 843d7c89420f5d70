"""Exact privacy figures in closed form: what the accountant is held to in tests.

- Kairouz, Oh & Viswanath (2015), Theorem 3.3: the optimal composition of k eps-DP releases,
  exact for k-fold binary randomized response.
- Balle & Wang (2018), Theorem 8: the analytic Gaussian mechanism, exact for one release.
- Basic composition: the sum of the eps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln, logsumexp
from scipy.stats import norm

from fedprune.validation import ConfigError, positive, positive_int, probability


def rr_composition_delta(epsilon_bit: float, k: int, epsilon: float) -> float:
    """The least delta with which k-fold eps_bit randomized response is (epsilon, delta)-DP.

    KOV: delta = max over the privacy-loss threshold of
    sum_{i} C(k, i) (e^{(k-i) e0} - e^{eps + i e0}) / (1 + e^{e0})^k over i with (k - 2i) e0 > eps,
    which is the hockey-stick divergence of Binomial(k, p) against Binomial(k, 1 - p).
    """
    e0 = positive("epsilon_bit", epsilon_bit)
    k = positive_int("k", k)
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ConfigError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    i = np.arange(k + 1)
    loss = (k - 2 * i) * e0  # privacy loss when i of the k outputs disagree with the true bit
    above = loss > epsilon
    if not above.any():
        return 0.0
    log_choose = gammaln(k + 1) - gammaln(i + 1) - gammaln(k - i + 1)
    log_norm = k * np.logaddexp(0.0, e0)
    log_upper = log_choose + (k - i) * e0 - log_norm   # P[i] under the true bit
    log_lower = log_choose + i * e0 - log_norm         # P[i] under the flipped bit
    upper = logsumexp(log_upper[above])
    lower = logsumexp(log_lower[above])
    return float(max(0.0, math.exp(upper) * -math.expm1(epsilon + lower - upper)))


def rr_composition_epsilon(epsilon_bit: float, k: int, delta: float) -> float:
    """The least epsilon with which k-fold eps_bit randomized response is (epsilon, delta)-DP."""
    delta = probability("delta", delta)
    high = positive("epsilon_bit", epsilon_bit) * positive_int("k", k)
    if rr_composition_delta(epsilon_bit, k, 0.0) <= delta:
        return 0.0
    return float(brentq(lambda eps: rr_composition_delta(epsilon_bit, k, eps) - delta, 0.0, high, xtol=1e-12))


def _gaussian_delta(epsilon: float, scale: float) -> float:
    """Balle-Wang delta(eps) for noise std / sensitivity = scale."""
    a, b = 1.0 / (2.0 * scale), epsilon * scale
    return float(norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b)) if epsilon < 700 else 0.0


def analytic_gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """The least epsilon of one Gaussian release with noise std ``sigma`` at ``delta``."""
    scale = positive("sigma", sigma) / positive("sensitivity", sensitivity)
    delta = probability("delta", delta)
    if _gaussian_delta(0.0, scale) <= delta:
        return 0.0
    high = 1.0
    while _gaussian_delta(high, scale) > delta:
        high *= 2.0
    return float(brentq(lambda eps: _gaussian_delta(eps, scale) - delta, 0.0, high, xtol=1e-12))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The least noise std for which one Gaussian release is (epsilon, delta)-DP."""
    epsilon, delta = positive("epsilon", epsilon), probability("delta", delta)
    low, high = 1e-6, 1.0
    while _gaussian_delta(epsilon, high) > delta:
        high *= 2.0
    scale = brentq(lambda s: _gaussian_delta(epsilon, s) - delta, low, high, xtol=1e-12)
    return float(scale * positive("sensitivity", sensitivity))


def basic_composition(epsilons) -> float:
    """Sum of the eps of pure-DP releases (a valid, usually loose, bound)."""
    return float(sum(positive("epsilon", e) for e in epsilons))
