"""How the PLD grid is sized: small noise must not blow it up, and coarsening it must stay pessimistic.

A sampled Gaussian at noise multiplier 0.1 (rate 1/32, 400 releases) spans about 2,700 units of loss;
sized by the old closed-form guess (806) its composed grid held 6.6 million points (3.3x MAX_SUPPORT), at
0.03 and 160 releases 14 million, and at 0.01 a server's per-round figure grew past 12 GB. The grid is
now sized from dp-accounting's own truncation.
"""

import pytest

from fedprune.privacy import composition
from fedprune.privacy.composition import compose, epsilon_of, rdp_epsilon_of

DELTA = 1e-5


@pytest.mark.parametrize("sigma, count", [(0.1, 400), (0.01, 160)])
def test_small_noise_keeps_the_grid_within_its_budget(sigma, count):
    ledger = {("gaussian", sigma, 1 / 32, 2.0): count}
    pld = compose(ledger)
    assert pld._pmf_remove.size <= composition.MAX_SUPPORT
    # a finite figure below the looser Renyi one (which is an upper bound too)
    assert 0 < epsilon_of(pld, DELTA) < rdp_epsilon_of(ledger, DELTA)


def test_a_coarsened_grid_is_never_below_the_fine_one(monkeypatch):
    ledger = {("gaussian", 0.8539, 0.032, 2.0): 400}  # the main job's DP-SGD: a span of about 75, step 1e-4
    fine = epsilon_of(compose(ledger), DELTA)
    monkeypatch.setattr(composition, "MAX_SUPPORT", 20_000)  # forces a step about 40x coarser
    coarse = epsilon_of(compose(ledger), DELTA)
    assert fine <= coarse <= fine * (1 + 1e-2)


def test_coarsened_steps_come_from_a_ladder_so_a_growing_ledger_reuses_them():
    spans = range(201, 401)  # loss ranges past what step 1e-4 can hold in MAX_SUPPORT points
    steps = [composition._interval([], [span]) for span in spans]
    for span, step in zip(spans, steps):
        assert span / composition.MAX_SUPPORT <= step < 2 ** 0.25 * span / composition.MAX_SUPPORT
    assert len(set(steps)) <= 5  # spans a factor 2 apart meet at most 5 rungs 2^(1/4) apart
    assert composition._interval([], [150.0]) == composition.FINEST_STEP
