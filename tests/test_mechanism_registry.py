"""The mechanism registry, one build function for every caller, and exact votes as an ordinary mechanism."""

import math

import numpy as np
import pytest

from fedprune.pruning.bits import pack
from fedprune.config import RunConfig
from fedprune.privacy import events
from fedprune.privacy.mechanisms import (
    EXACT,
    REGISTRY,
    ExactVotes,
    MaskReport,
    Mechanism,
    MechanismSettings,
    build,
    mechanism_class,
    privacy_rng,
    register,
)
from fedprune.privacy.mechanisms.randomized_response import RandomizedResponse
from fedprune.validation import ConfigError

D, K = 40, 10


def test_a_duplicate_name_is_refused():
    class Again(RandomizedResponse):
        name = "randomized-response"
    with pytest.raises(ConfigError, match="two mechanisms are named 'randomized-response'"):
        register(Again)
    assert REGISTRY["randomized-response"] is RandomizedResponse
    with pytest.raises(TypeError, match="threat_model"):
        register(type("Odd", (RandomizedResponse,), {"name": "odd", "threat_model": "global"}))
    assert "odd" not in REGISTRY


def test_a_new_mechanism_is_one_registered_class():
    @register
    class Louder(RandomizedResponse):
        name = "test-louder"

    try:
        config = RunConfig(mechanism="test-louder", epsilon_per_decision=1.5)  # config validation sees it too
        mech = build(config, length=D, kept=K, hamming_bound=20)
        assert isinstance(mech, Louder) and mech.epsilon == 1.5 and config.private_votes
    finally:
        del REGISTRY["test-louder"]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_mechanism_builds_from_a_run_config(name):
    config = RunConfig(mechanism=name, epsilon_per_decision=1.0, epsilon_per_report=1.0, sample_size=8)
    mech = build(config, length=D, kept=K, hamming_bound=20)
    assert isinstance(mech, Mechanism) and mech.name == name and mech.spec.threat_model == type(mech).threat_model
    assert mech.threat_model == ("none" if name == EXACT else "central" if name == "central" else "local")
    assert isinstance(type(mech).description, str) and type(mech).description
    report = mech.encode(pack(np.arange(D) < K), privacy_rng(0), public_seed=(1, 2))
    assert mech.check_report(MaskReport.from_arrays(report.to_arrays())).mechanism == name


def test_inf_in_a_mechanisms_own_setting_means_exact_votes():
    assert mechanism_class(MechanismSettings(epsilon_per_decision=math.inf)) is ExactVotes
    assert mechanism_class(MechanismSettings(mechanism="subset", epsilon_per_report=math.inf)) is ExactVotes
    # the other key does not touch it: one meaning per key
    assert mechanism_class(MechanismSettings(mechanism="subset", epsilon_per_decision=math.inf)).name == "subset"
    assert mechanism_class(MechanismSettings(mechanism="sue", epsilon_per_report=math.inf)).name == "sue"
    assert not RunConfig(mechanism="exact").private_votes
    assert not RunConfig(epsilon_per_decision=math.inf).private_votes
    with pytest.raises(ConfigError, match="epsilon-per-report must be > 0"):
        RunConfig(epsilon_per_report=0.0)


def test_exact_votes_are_the_true_mask_with_no_figure():
    mech = build(MechanismSettings(mechanism=EXACT), length=D, kept=K, hamming_bound=20)
    masks = np.zeros((3, D), dtype=bool)
    for i, row in enumerate(masks):
        row[i:i + K] = True
    reports = [mech.encode(pack(row), privacy_rng(i)) for i, row in enumerate(masks)]
    assert all(np.array_equal(r.bits, pack(row)) for r, row in zip(reports, masks))
    assert np.array_equal(mech.estimate(mech.aggregate(reports)), masks.mean(axis=0))
    assert np.all(mech.variance(3, masks.mean(axis=0)) == 0)
    assert isinstance(mech.event(), events.Unprotected)
    info = mech.describe()
    assert info["privacy"].startswith("none") and info["epsilon_per_report"] is None and info["threat_model"] == "none"
    wrong = np.zeros(D, dtype=bool)
    wrong[:K + 1] = True
    with pytest.raises(ConfigError, match=f"keep {K + 1} weights, the plan asks for {K}"):
        mech.check_report(MaskReport(mechanism=EXACT, length=D, settings=mech.settings, bits=pack(wrong)))
    free = build(MechanismSettings(mechanism=EXACT), length=D, hamming_bound=D)  # mask-only: no kept count
    assert free.check_report(free.sample(np.r_[np.ones(5), np.zeros(D - 5)], privacy_rng(0))).bits is not None
