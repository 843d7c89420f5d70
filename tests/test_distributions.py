"""Splitting a total sparsity over layers: hand counts, a reference global top-k, ERK by hand."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fedprune.pruning.distributions import DISTRIBUTIONS, erk, get_distribution, global_, uniform
from fedprune.pruning.masks import kept_count
from fedprune.validation import ConfigError

SHAPES = {"conv.weight": (8, 3, 3, 3), "fc1.weight": (32, 72), "fc2.weight": (10, 32)}
shape_maps = st.dictionaries(st.sampled_from([f"l{i}" for i in range(5)]),
                             st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple), min_size=1)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.9, 0.99])
def test_uniform_is_kept_count_per_layer(sparsity):
    counts = uniform(SHAPES, sparsity)
    assert counts == {name: kept_count(math.prod(shape), sparsity) for name, shape in SHAPES.items()}
    # By hand at 0.5: 216 - 108, 2304 - 1152, 320 - 160.
    assert uniform(SHAPES, 0.5) == {"conv.weight": 108, "fc1.weight": 1152, "fc2.weight": 160}


def test_kept_count_rounds_half_to_even_like_torch():
    assert kept_count(5, 0.5) == 3  # round(2.5) = 2 pruned
    assert kept_count(7, 0.5) == 3  # round(3.5) = 4 pruned
    assert kept_count(10, 0.0) == 10 and kept_count(0, 0.3) == 0
    assert kept_count(15, 0.1) == 13  # round(1.5) = 2 pruned, as torch's amount=0.1 prunes
    for bad in (-0.1, 1.0, float("inf")):
        with pytest.raises(ConfigError, match="sparsity"):
            kept_count(10, bad)
    with pytest.raises(ConfigError, match="numel"):
        kept_count(-1, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.98])
def test_global_counts_are_a_global_topk(seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    # Different scales per layer so the global split differs from the uniform one.
    scores = {name: torch.rand(shape, generator=g) * (i + 1) for i, (name, shape) in enumerate(SHAPES.items())}
    counts = global_(SHAPES, sparsity, scores)
    total = sum(s.numel() for s in scores.values())
    kept = kept_count(total, sparsity)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    chosen = torch.topk(flat, kept).indices  # reference top-k (no ties: continuous random scores)
    bounds = torch.tensor([0] + [s.numel() for s in scores.values()]).cumsum(0)
    expected = {name: int(((chosen >= bounds[i]) & (chosen < bounds[i + 1])).sum())
                for i, name in enumerate(scores)}
    assert counts == expected
    assert sum(counts.values()) == kept


def test_global_needs_matching_scores():
    scores = {name: torch.ones(shape) for name, shape in SHAPES.items()}
    with pytest.raises(ConfigError, match="needs scores"):
        global_(SHAPES, 0.5)
    with pytest.raises(ConfigError, match="shape"):
        global_(SHAPES, 0.5, {**scores, "fc2.weight": torch.ones(3)})
    with pytest.raises(ConfigError, match="scores name"):
        global_(SHAPES, 0.5, {"fc2.weight": torch.ones(10, 32)})


def test_erk_by_hand_without_dense_layers():
    # raw densities (sum / prod): a 7/12, b 6/8; total 20, target 10; scale 10 / (7 + 6).
    # exact kept: a 70/13 = 5.38, b 60/13 = 4.62; floors 5 + 4, the missing one to b (.62 > .38).
    assert erk({"a": (4, 3), "b": (2, 4)}, 0.5) == {"a": 5, "b": 5}


def test_erk_by_hand_with_layers_made_dense():
    # raw: a 20/100 = 0.2, b 3/2 = 1.5, c 4/3; total 105, target 105 - round(84) = 21.
    # scale 21 / (20 + 3 + 4) makes b's density 1.17 > 1: b dense; then (21 - 2) / (20 + 4)
    # makes c's 1.06 > 1: c dense; then a gets (21 - 2 - 3) / 20 * 0.2 * 100 = 16.
    assert erk({"a": (10, 10), "b": (2, 1), "c": (1, 3)}, 0.8) == {"a": 16, "b": 2, "c": 3}


def test_erk_rescales_the_sparse_layers_after_making_one_dense():
    # raw: a 20/100 = 0.2, b 4/4 = 1, c 25/100 = 0.25; total 204, target 204 - round(57.12) = 147.
    # scale 147 / (20 + 4 + 25) = 3 puts b at density 3: b dense (4 kept). The rest share 143:
    # scale 143 / 45, exact a 63.56, c 79.44; floors 63 + 79, the missing one to a (.56 > .44).
    # (Clipping b at 1 without rescaling would give a 60 + 7 and c 75 + 1 after settling.)
    assert erk({"a": (10, 10), "b": (2, 2), "c": (5, 20)}, 0.28) == {"a": 64, "b": 4, "c": 79}


def test_erk_counts_kernel_dims_as_rigl_does():
    # conv (4, 2, 3, 3): raw (4 + 2 + 3 + 3) / 72 = 1/6; fc (6, 12): raw 18 / 72 = 1/4.
    # target 144 - round(0.75 * 144) = 36; scale 36 / (12 + 18) = 1.2: kept 0.2 * 72 = 14.4, 0.3 * 72 = 21.6.
    # floors 14 + 21 = 35; the missing one to fc (.6 > .4).
    assert erk({"conv": (4, 2, 3, 3), "fc": (6, 12)}, 0.75) == {"conv": 14, "fc": 22}


@settings(max_examples=150, deadline=None)
@given(shape_maps, st.floats(0.0, 0.999))
def test_erk_sums_to_the_target_and_no_layer_exceeds_its_size(shapes, sparsity):
    counts = erk(shapes, sparsity)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    assert list(counts) == list(shapes)
    assert sum(counts.values()) == kept_count(sum(sizes.values()), sparsity)
    assert all(0 <= counts[name] <= sizes[name] for name in shapes)
    for distribution in (uniform, erk):
        assert all(0 <= c <= sizes[n] for n, c in distribution(shapes, sparsity).items())


def test_erk_keeps_density_proportional_to_raw_among_sparse_layers():
    shapes = {"a": (64, 64), "b": (128, 32), "c": (16, 256)}
    counts = erk(shapes, 0.9)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    # No layer reaches density 1 here, so kept = raw * size * scale with one common scale,
    # each count within one weight of its exact share.
    scale = 0.1 * sum(sizes.values()) / sum(raw[n] * sizes[n] for n in shapes)
    assert max(raw.values()) * scale < 1
    for name in shapes:
        assert abs(counts[name] - raw[name] * sizes[name] * scale) < 1


def test_registry_errors_and_shape_checks():
    assert get_distribution("erk") is erk and get_distribution("global") is global_
    with pytest.raises(ConfigError) as error:
        get_distribution("layerwise")
    for name in DISTRIBUTIONS:
        assert name in str(error.value)
    for distribution in (uniform, erk):
        with pytest.raises(ConfigError, match="no layers"):
            distribution({}, 0.5)
        with pytest.raises(ConfigError, match="positive ints"):
            distribution({"w": (3, 0)}, 0.5)
        with pytest.raises(ConfigError, match="sparsity"):
            distribution(SHAPES, 1.0)
    # A sparsity given as text is read as its number everywhere, not used as a string.
    assert uniform({"w": (10,)}, "0.5") == {"w": 5} and erk({"w": (10,)}, "0.5") == {"w": 5}
