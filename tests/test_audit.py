"""The statistical privacy audit: it passes every real mechanism and catches broken ones.

False-failure rate: each audit runs at confidence 0.999, so a correct mechanism fails it with
probability at most 0.001 under fresh randomness (the seeds here are fixed). The broken
mechanisms are caught with a wide margin (bound about 1.4 against a claim of 1).
"""

import math

import numpy as np
import pytest

from fedprune.privacy.audit import audit, clopper_pearson
from fedprune.privacy.mechanisms import REGISTRY
from fedprune.privacy.mechanisms.randomized_response import OptimizedUnaryEncoding, RandomizedResponse
from fedprune.privacy.rng import privacy_rng
from fedprune.privacy.spec import ReportSpec
from fedprune.validation import ConfigError

D = 8
REAL = {
    "rr-delta1": ("randomized-response", ReportSpec(hamming_bound=1), {"epsilon": 1.0}),
    "rr-delta2": ("randomized-response", ReportSpec(hamming_bound=2), {"epsilon": 0.5}),
    "sue": ("sue", ReportSpec(hamming_bound=1), {"epsilon": 2.0}),
    "oue": ("oue", ReportSpec(hamming_bound=1), {"epsilon": 1.0}),
    "subset": ("subset", ReportSpec.for_exactly_k(2, D), {"epsilon": 1.0, "kept": 2}),
    "sampling": ("sampling", ReportSpec(hamming_bound=2), {"epsilon": 0.5, "sample_size": 3}),
    "central": ("central", ReportSpec(threat_model="central", hamming_bound=1), {"noise_multiplier": 1.0,
                                                                                 "delta": 1e-3}),
}


@pytest.mark.parametrize("case", sorted(REAL))
def test_audit_passes_real_mechanisms(case):
    name, spec, kw = REAL[case]
    mech = REGISTRY[name](length=D, spec=spec, **kw)
    result = audit(mech, rng=privacy_rng(5), trials=10000)
    assert result.passed and result.epsilon_lower_bound <= result.claimed_epsilon
    assert result.confidence == 0.999 and result.trials == 10000
    if name != "central":  # pure-eps mechanisms at Delta <= 2 are audited close to their claim
        assert result.epsilon_lower_bound > 0.6 * result.claimed_epsilon


class UnderNoisedRR(RandomizedResponse):
    """Flips as randomized response at 1.5 per bit but claims 1.0."""

    @property
    def epsilon_per_decision(self):
        return self.epsilon / 1.5


class UnderNoisedOUE(OptimizedUnaryEncoding):
    """Reports a pruned bit as 1 with the chance OUE at eps = 2.2 uses, but claims OUE at eps = 1.5."""

    @property
    def epsilon_per_decision(self):
        return math.log((math.exp(1.5) + 1) / 2)


@pytest.mark.parametrize("broken", [UnderNoisedRR(length=D, spec=ReportSpec(hamming_bound=1), epsilon=1.5),
                                    UnderNoisedOUE(length=D, spec=ReportSpec(hamming_bound=1), epsilon=2.2)])
def test_audit_catches_a_mechanism_that_flips_too_rarely(broken):
    result = audit(broken, rng=privacy_rng(5), trials=20000)
    assert not result.passed
    assert result.epsilon_lower_bound > 1.2 * result.claimed_epsilon


def test_clopper_pearson_closed_forms():
    # no successes: upper = 1 - alpha^(1/n); all successes: lower = alpha^(1/n)
    low, high = clopper_pearson(np.array([0, 10]), 10, 0.05)
    assert low[0] == 0.0 and high[0] == pytest.approx(1 - 0.05 ** 0.1)
    assert low[1] == pytest.approx(0.05 ** 0.1) and high[1] == 1.0
    low, high = clopper_pearson(np.array([50]), 100, 0.025)
    assert low[0] < 0.5 < high[0] and high[0] - 0.5 == pytest.approx(0.5 - low[0])


def test_audit_rejects_bad_settings():
    mech = REGISTRY["randomized-response"](length=D, spec=ReportSpec(hamming_bound=1), epsilon=1.0)
    with pytest.raises(ConfigError, match="delta"):
        audit(mech, rng=privacy_rng(0), delta=1e-5)
    with pytest.raises(ConfigError, match="100 trials"):
        audit(mech, rng=privacy_rng(0), trials=10)
    with pytest.raises(ConfigError, match="confidence"):
        audit(mech, rng=privacy_rng(0), confidence=1.0)
