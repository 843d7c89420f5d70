"""Scorers on small tensors whose scores are worked out by hand."""

import math

import pytest
import torch

from fedprune.pruning.scorers import (SCORERS, UNIT_SCORERS, estimate_fisher, get_scorer, l1_units, l2_units,
                                      magnitude, obd, random, taylor)
from fedprune.validation import ConfigError


def test_magnitude_is_absolute_value():
    params = {"w": torch.tensor([[1.0, -2.0], [0.5, -0.25]]), "b": torch.tensor([-3.0])}
    scores = magnitude(params)
    assert torch.equal(scores["w"], torch.tensor([[1.0, 2.0], [0.5, 0.25]]))
    assert torch.equal(scores["b"], torch.tensor([3.0]))


def test_scores_are_detached():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    assert not magnitude({"w": w})["w"].requires_grad
    assert not taylor({"w": w}, grads={"w": torch.tensor([1.0, 1.0])})["w"].requires_grad


def test_taylor_is_abs_weight_times_gradient():
    params = {"w": torch.tensor([1.0, -2.0, 3.0])}
    grads = {"w": torch.tensor([0.5, 0.5, -2.0])}
    assert torch.equal(taylor(params, grads=grads)["w"], torch.tensor([0.5, 1.0, 6.0]))


def test_obd_is_half_w_squared_times_fisher():
    params = {"w": torch.tensor([2.0, -1.0, 0.0])}
    fisher = {"w": torch.tensor([0.25, 4.0, 9.0])}
    # 0.5 * 4 * 0.25 = 0.5; 0.5 * 1 * 4 = 2; 0.5 * 0 * 9 = 0
    assert torch.equal(obd(params, fisher=fisher)["w"], torch.tensor([0.5, 2.0, 0.0]))


def test_fisher_is_mean_of_squared_batch_gradients():
    batches = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 0.0])}]
    # ((1 + 9) / 2, (4 + 0) / 2)
    assert torch.equal(estimate_fisher(batches)["w"], torch.tensor([5.0, 2.0]))
    with pytest.raises(ConfigError, match="at least one batch"):
        estimate_fisher([])


def test_unit_norms_of_linear_rows():
    params = {"fc": torch.tensor([[1.0, -2.0, 3.0], [0.0, 0.0, -4.0]])}
    assert torch.equal(l1_units(params)["fc"], torch.tensor([6.0, 4.0]))
    assert torch.allclose(l2_units(params)["fc"], torch.tensor([math.sqrt(14.0), 4.0]))


def test_unit_norms_of_conv_channels():
    weight = torch.zeros(2, 1, 2, 2)
    weight[0] = 1.0  # l1 4, l2 2
    weight[1, 0] = torch.tensor([[3.0, 0.0], [0.0, -4.0]])  # l1 7, l2 5
    assert l1_units({"conv": weight})["conv"].shape == (2,)
    assert torch.equal(l1_units({"conv": weight})["conv"], torch.tensor([4.0, 7.0]))
    assert torch.equal(l2_units({"conv": weight})["conv"], torch.tensor([2.0, 5.0]))


def test_random_is_seeded_uniform_and_needs_a_generator():
    params = {"a": torch.zeros(50, 20), "b": torch.zeros(7)}
    first = random(params, generator=torch.Generator().manual_seed(3))
    again = random(params, generator=torch.Generator().manual_seed(3))
    other = random(params, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(first[k], again[k]) for k in params)
    assert not torch.equal(first["a"], other["a"])
    assert first["a"].shape == (50, 20) and first["b"].shape == (7,)
    assert float(first["a"].min()) >= 0.0 and float(first["a"].max()) < 1.0
    with pytest.raises(ConfigError, match="generator"):
        random(params)


def test_missing_grads_or_fisher_name_the_fix():
    params = {"w": torch.ones(3)}
    with pytest.raises(ConfigError, match="taylor scorer needs grads"):
        taylor(params)
    with pytest.raises(ConfigError, match="no grads for 'w'"):
        taylor(params, grads={"other": torch.ones(3)})
    with pytest.raises(ConfigError, match="shape"):
        taylor(params, grads={"w": torch.ones(4)})
    with pytest.raises(ConfigError, match="obd scorer needs fisher.*estimate_fisher"):
        obd(params)


def test_registry_and_unknown_names():
    assert set(SCORERS) == {"magnitude", "random", "taylor", "obd", "l1_units", "l2_units"}
    assert UNIT_SCORERS <= set(SCORERS)
    assert get_scorer("magnitude") is magnitude
    with pytest.raises(ConfigError) as error:
        get_scorer("l3")
    for name in SCORERS:
        assert name in str(error.value)
