"""compute_masks: monotone pruning, densities on target, scorers plugged in, errors that name the fix."""

import math

import pytest
import torch
from torch import nn

from fedprune.pruning.distributions import DISTRIBUTIONS
from fedprune.pruning.masks import density, global_masks, kept_count, layer_densities, prunable_parameters
from fedprune.pruning.compute import STRUCTURES, compute_masks
from fedprune.pruning.scorers import SCORERS, random, taylor
from fedprune.validation import ConfigError

SHAPES = {"conv.weight": (8, 4, 3, 3), "fc1.weight": (16, 48), "fc2.weight": (8, 16)}
TOTAL = sum(math.prod(s) for s in SHAPES.values())


def random_params(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) * scale for name, shape in SHAPES.items()}


def is_subset(new, old):
    return all(not bool((new[name] & ~old[name]).any()) for name in new)


STRUCTURE_SETTINGS = [("unstructured", {}), ("units", {}), ("blocks", {"block": (2, 4)})]


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
@pytest.mark.parametrize("structure, extra", STRUCTURE_SETTINGS)
def test_monotone_pruning_never_revives_a_weight(distribution, structure, extra):
    params = random_params(0)
    g = torch.Generator().manual_seed(1)
    previous = None
    revived_without_previous = False
    for sparsity in (0.3, 0.5, 0.7, 0.85):
        # Weights move between pruning steps, pruned ones included, so a fresh top-k would revive some.
        params = {name: p + 0.8 * torch.randn(p.shape, generator=g) for name, p in params.items()}
        masks = compute_masks(params, sparsity=sparsity, distribution=distribution, structure=structure,
                              previous=previous, **extra)
        if previous is not None:
            assert is_subset(masks, previous)
            fresh = compute_masks(params, sparsity=sparsity, distribution=distribution, structure=structure, **extra)
            revived_without_previous |= not is_subset(fresh, previous)
            assert density(masks) <= density(previous)
        previous = masks
    assert revived_without_previous  # the test would catch a revival: without previous there is one


def test_monotone_nm_keeps_only_what_previous_kept():
    params = random_params(2)
    params = {"fc1.weight": params["fc1.weight"], "fc2.weight": params["fc2.weight"]}
    first = compute_masks(params, sparsity=0.5, structure="n:m", n=2, m=4)
    moved = {name: torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) for name, p in params.items()}
    second = compute_masks(moved, sparsity=0.5, structure="n:m", n=2, m=4, previous=first)
    assert is_subset(second, first)
    assert all(bool((m.reshape(-1, 4).sum(1) <= 2).all()) for m in second.values())


def test_a_layer_asking_for_more_than_previous_kept_keeps_only_previous():
    params = random_params(4)
    params["fc2.weight"] = params["fc2.weight"] * 0.01  # global pruning empties this layer first
    previous = compute_masks(params, sparsity=0.6, distribution="global")
    assert layer_densities(previous)["fc2.weight"] < 0.3
    masks = compute_masks(params, sparsity=0.7, distribution="uniform", previous=previous)
    assert is_subset(masks, previous)
    assert torch.equal(masks["fc2.weight"], previous["fc2.weight"])  # wanted 30%, had less
    assert layer_densities(masks)["fc1.weight"] == kept_count(16 * 48, 0.7) / (16 * 48)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.97])
@pytest.mark.parametrize("distribution", ["global", "erk"])
def test_unstructured_density_is_exactly_the_target_count(sparsity, distribution):
    masks = compute_masks(random_params(5), sparsity=sparsity, distribution=distribution)
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(TOTAL, sparsity)
    previous = compute_masks(random_params(6), sparsity=sparsity / 2, distribution=distribution)
    monotone = compute_masks(random_params(5), sparsity=sparsity, distribution=distribution, previous=previous)
    assert sum(int(m.sum()) for m in monotone.values()) == kept_count(TOTAL, sparsity)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("structure, extra, group", [("unstructured", {}, 1), ("units", {}, 48),
                                                      ("blocks", {"block": (2, 4)}, 8)])
@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
def test_density_matches_the_target_within_rounding(sparsity, structure, extra, group, distribution):
    masks = compute_masks(random_params(7), sparsity=sparsity, distribution=distribution, structure=structure, **extra)
    # Each layer rounds to at most half a group (uniform, erk); global misses by under one group.
    assert abs(density(masks) - (1 - sparsity)) <= len(SHAPES) * group / TOTAL


def test_taylor_obd_and_random_scorers_plug_in():
    params = random_params(8)
    g = torch.Generator().manual_seed(9)
    grads = {name: torch.randn(p.shape, generator=g) for name, p in params.items()}
    fisher = {name: torch.rand(p.shape, generator=g) for name, p in params.items()}
    by_taylor = compute_masks(params, sparsity=0.6, scorer="taylor", grads=grads)
    expected = global_masks({n: (params[n] * grads[n]).abs() for n in params}, 0.6)
    assert all(torch.equal(by_taylor[n], expected[n]) for n in params)
    assert all(torch.equal(by_taylor[n], global_masks(taylor(params, grads=grads), 0.6)[n]) for n in params)
    by_obd = compute_masks(params, sparsity=0.6, scorer="obd", fisher=fisher)
    expected = global_masks({n: 0.5 * params[n] ** 2 * fisher[n] for n in params}, 0.6)
    assert all(torch.equal(by_obd[n], expected[n]) for n in params)
    assert any(not torch.equal(by_obd[n], by_taylor[n]) for n in params)
    by_random = compute_masks(params, sparsity=0.6, scorer="random", generator=torch.Generator().manual_seed(10))
    again = compute_masks(params, sparsity=0.6, scorer="random", generator=torch.Generator().manual_seed(10))
    reference = global_masks(random(params, generator=torch.Generator().manual_seed(10)), 0.6)
    assert all(torch.equal(by_random[n], again[n]) and torch.equal(by_random[n], reference[n]) for n in params)
    with pytest.raises(ConfigError, match="generator"):
        compute_masks(params, sparsity=0.6, scorer="random")
    with pytest.raises(ConfigError, match="needs grads"):
        compute_masks(params, sparsity=0.6, scorer="taylor")


@pytest.mark.parametrize("kind, setting, table", [("scorer", "scorer", SCORERS),
                                                  ("distribution", "distribution", DISTRIBUTIONS),
                                                  ("structure", "structure", STRUCTURES)])
def test_unknown_names_list_the_valid_ones(kind, setting, table):
    with pytest.raises(ConfigError, match=f"unknown {kind} 'nope'") as error:
        compute_masks(random_params(0), sparsity=0.5, **{setting: "nope"})
    for name in table:
        assert name in str(error.value)


@pytest.mark.parametrize("sparsity", [-0.01, 1.0, 1.5, float("nan"), "half"])
def test_sparsity_outside_zero_one_fails(sparsity):
    with pytest.raises(ConfigError, match="sparsity"):
        compute_masks(random_params(0), sparsity=sparsity)


@pytest.mark.parametrize("scorer", ["l1_units", "l2_units"])
@pytest.mark.parametrize("structure", ["unstructured", "n:m", "blocks"])
def test_unit_scorers_need_the_units_structure(scorer, structure):
    with pytest.raises(ConfigError, match="structure='units'"):
        compute_masks(random_params(0), sparsity=0.5, scorer=scorer, structure=structure)


def test_bad_inputs_fail_before_scoring():
    with pytest.raises(ConfigError, match="nothing to prune"):
        compute_masks(prunable_parameters(nn.Sequential(nn.ReLU())), sparsity=0.5)
    with pytest.raises(ConfigError, match="non-empty dict"):
        compute_masks({}, sparsity=0.5)
    with pytest.raises(ConfigError, match="at least one dimension"):
        compute_masks({"w": torch.tensor(1.0)}, sparsity=0.5)
    params = random_params(0)
    with pytest.raises(ConfigError, match="previous masks"):
        compute_masks(params, sparsity=0.5, previous={"fc1.weight": torch.ones(16, 48, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="do not tile"):
        compute_masks(params, sparsity=0.5, structure="blocks", block=(3, 3))
    with pytest.raises(ConfigError, match="M to divide"):
        compute_masks(params, sparsity=0.8, structure="n:m", n=1, m=5)


def test_units_average_per_weight_scores_across_layers():
    # Global over units of different fan-in: a unit's score is its mean |w|, not its sum.
    params = {"wide": torch.full((2, 100), 0.1), "narrow": torch.tensor([[0.5, 0.5], [0.4, 0.4]])}
    params["wide"][1] = 0.05
    masks = compute_masks(params, sparsity=0.5, distribution="global", structure="units")
    # 204 weights, budget 102: the narrow rows (means 0.5, 0.4) first, then wide row 0 (mean 0.1,
    # 100 weights) would make 104 and does not fit. Summed scores would take wide row 0 (sum 10) first.
    assert masks["narrow"].all() and not masks["wide"].any()
    masks = compute_masks(params, sparsity=0.4, distribution="global", structure="units")
    # budget 204 - round(81.6) = 122: now wide row 0 fits (104), wide row 1 would not (204).
    assert masks["narrow"].all() and masks["wide"][0].all() and not masks["wide"][1].any()
