"""A statistical privacy audit that can fail: lower-bound a mechanism's epsilon from its own outputs.

:func:`audit` runs the mechanism's real ``encode`` (and, for ``central``, its ``aggregate``) on a
worst-case pair of neighbouring masks A and B many times, scores each output with a statistic
that separates the two, and turns a rejection event E = {score >= t} (or its complement, for the
other direction) into the bound

    eps >= ln( (P_A(E) - delta) / P_B(E) ),

which every (eps, delta)-DP mechanism satisfies. The probabilities are replaced by one-sided
Clopper-Pearson bounds (``scipy.stats.beta``): a lower bound on the numerator and an upper bound
on the denominator, each at level (1 - confidence) / 2. The event is picked on the first half of
the trials and measured on the second, so picking cannot bias the bound.

False-failure rate: if the mechanism really is eps-DP (its claim is true), the reported lower
bound exceeds the claimed eps with probability at most ``1 - confidence`` (default 0.001). A
mechanism that flips too rarely for its claim (a larger true eps) is caught once the trials pin
P_A(E) / P_B(E) above e^eps: with the defaults, a per-report claim of 1 against a true 1.5 is.

Worst-case pairs, each mechanism's own (``Mechanism.audit_pair``): bit mechanisms (randomized
response, SUE, OUE, sampling, central, exact) compare A = ones on Delta coordinates (min(s, Delta)
sampled ones for sampling, under one fixed public seed) with B = zeros there, scored by the sum
of those coordinates of the output: for OUE that is the direction in which a bit costs the most.
``subset`` compares the kept sets {0..k-1} and {d-k..d-1}, scored +1 if the reported subset meets A only, -1 if B only.
The bound for Delta > 1 is far below Delta eps with feasible trial counts; audits that aim
to be tight use Delta = 1 or 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from fedprune.privacy.mechanisms.base import Mechanism
from fedprune.privacy.rng import check_generator
from fedprune.validation import ConfigError, positive_int, probability

MAX_THRESHOLDS = 512


@dataclass(frozen=True)
class AuditResult:
    """The claimed per-report epsilon, the audited lower bound, and how it was found."""

    mechanism: str
    claimed_epsilon: float
    epsilon_lower_bound: float
    delta: float
    confidence: float
    trials: int
    event: str

    @property
    def passed(self) -> bool:
        """True when the lower bound does not exceed the claim (a false failure has chance <= 1 - confidence)."""
        return self.epsilon_lower_bound <= self.claimed_epsilon


def audit(mechanism: Mechanism, *, rng: np.random.Generator, trials: int = 20000, confidence: float = 0.999,
          delta: float | None = None, public_seed: tuple[int, ...] = (0, 0)) -> AuditResult:
    """Lower-bound ``mechanism``'s per-report epsilon from ``trials`` outputs on each of two neighbouring masks.

    ``delta`` is used for ``central`` (default: the mechanism's own, else 1e-5) and must be
    left unset for pure-eps mechanisms.
    """
    if not isinstance(mechanism, Mechanism):
        raise ConfigError(f"audit takes a Mechanism, got {type(mechanism).__name__}")
    rng = check_generator(rng)
    trials = positive_int("trials", trials)
    if trials < 100:
        raise ConfigError(f"an audit needs at least 100 trials per mask, got {trials}")
    confidence = probability("confidence", confidence)
    mask_a, mask_b, score, claimed, delta = _scenario(mechanism, rng, delta, public_seed)
    scores_a = np.array([score(mechanism.encode(mask_a, rng, public_seed=public_seed)) for _ in range(trials)])
    scores_b = np.array([score(mechanism.encode(mask_b, rng, public_seed=public_seed)) for _ in range(trials)])
    return bound_from_scores(mechanism.name, scores_a, scores_b, claimed=claimed, delta=delta, confidence=confidence)


def bound_from_scores(name: str, scores_a, scores_b, *, claimed: float, delta: float,
                      confidence: float = 0.999) -> AuditResult:
    """The audit's bound from a statistic of ``trials`` outputs on each of two neighbouring inputs.

    The event is picked on the first half of each sample and measured on the second, so a
    correct (eps, delta) claim is exceeded with probability at most ``1 - confidence``.
    """
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if scores_a.shape != scores_b.shape or scores_a.ndim != 1 or scores_a.size < 100:
        raise ConfigError(f"an audit needs two equal samples of at least 100 scores, got {scores_a.shape} and "
                          f"{scores_b.shape}")
    confidence = probability("confidence", confidence)
    half = scores_a.size // 2
    alpha = (1.0 - confidence) / 2
    threshold, forward = _pick_event(scores_a[:half], scores_b[:half], alpha, delta)
    held_a, held_b = scores_a[half:], scores_b[half:]
    hits_a, hits_b = np.count_nonzero(held_a >= threshold), np.count_nonzero(held_b >= threshold)
    size = held_a.size
    if not forward:  # complement event, other direction: B in the numerator
        hits_a, hits_b = size - hits_b, size - hits_a
    bound = float(_lower_bounds(np.array([hits_a]), np.array([hits_b]), size, alpha, delta)[0])
    event = f"score {'>=' if forward else '<'} {threshold:g} ({'A over B' if forward else 'B over A'})"
    return AuditResult(mechanism=name, claimed_epsilon=float(claimed), epsilon_lower_bound=bound,
                       delta=delta, confidence=confidence, trials=int(scores_a.size), event=event)


def clopper_pearson(successes, trials: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson (lower, upper) bounds on a binomial probability, each at level ``alpha``."""
    x = np.asarray(successes, dtype=np.float64)
    lower = np.where(x > 0, beta.ppf(alpha, np.maximum(x, 1), trials - x + 1), 0.0)
    upper = np.where(x < trials, beta.ppf(1 - alpha, x + 1, np.maximum(trials - x, 1)), 1.0)
    return lower, upper


def _lower_bounds(numerator_hits, denominator_hits, trials, alpha, delta) -> np.ndarray:
    low, _ = clopper_pearson(numerator_hits, trials, alpha)
    _, high = clopper_pearson(denominator_hits, trials, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(low > delta, np.log((low - delta) / high), -np.inf)


def _pick_event(scores_a, scores_b, alpha, delta) -> tuple[float, bool]:
    """The threshold and direction with the best bound on the selection half."""
    values = np.unique(np.concatenate([scores_a, scores_b]))
    if values.size > MAX_THRESHOLDS:
        values = np.unique(np.quantile(values, np.linspace(0, 1, MAX_THRESHOLDS)))
    sorted_a, sorted_b = np.sort(scores_a), np.sort(scores_b)
    size = scores_a.size
    above_a = size - np.searchsorted(sorted_a, values, side="left")
    above_b = size - np.searchsorted(sorted_b, values, side="left")
    forward = _lower_bounds(above_a, above_b, size, alpha, delta)
    backward = _lower_bounds(size - above_b, size - above_a, size, alpha, delta)
    if forward.max() >= backward.max():
        return float(values[int(np.argmax(forward))]), True
    return float(values[int(np.argmax(backward))]), False


def _scenario(mechanism, rng, delta, public_seed):
    """(packed A, packed B, score(report), claimed per-report eps, delta): the mechanism's own worst-case pair."""
    claimed, delta = mechanism.audit_claim(delta)
    mask_a, mask_b, score = mechanism.audit_pair(rng, public_seed)
    return mask_a, mask_b, score, claimed, delta


def describe_rate(confidence: float) -> str:
    """The false-failure statement for a confidence level, for reports."""
    return f"a correct mechanism fails this audit with probability at most {1 - confidence:.3g}"


__all__ = ["AuditResult", "audit", "bound_from_scores", "clopper_pearson", "describe_rate"]
