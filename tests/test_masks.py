"""Masks: magnitude masks against torch.nn.utils.prune, structured masks, and hand examples."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from fedprune.federated.aggregation import select_layer_masks, select_mask
from fedprune.pruning.masks import (apply_masks, block_masks, block_scores, check_masks, density, full_masks,
                                    global_masks, global_topk, intersect, keep_highest, layer_densities,
                                    layerwise_masks, monotone_scores, nm_masks, parameter_shapes, prunable_parameters,
                                    topk, unit_masks)
from fedprune.pruning.compute import compute_masks
from fedprune.pruning.scorers import magnitude
from fedprune.validation import ConfigError

SEEDS = [0, 1, 2]
SPARSITIES = [0.0, 0.1, 0.3, 0.5, 0.77, 0.9, 0.99]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 4, 5)
        self.conv2 = nn.Conv2d(3, 6, 3)
        self.norm = nn.BatchNorm1d(4)
        self.fc1 = nn.Linear(30, 17)
        self.fc2 = nn.Linear(17, 5, bias=False)


def random_model(seed):
    """A model whose weights are continuous random floats: ties have probability zero."""
    model = Net()  # default init is overwritten right below, from an explicit generator
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def torch_modules(model):
    return [(model.conv1, "weight"), (model.conv2, "weight"), (model.fc1, "weight"), (model.fc2, "weight")]


def torch_masks(model):
    return {f"{name}.weight": getattr(model, name).weight_mask.bool() for name in ("conv1", "conv2", "fc1", "fc2")}


def assert_same_masks(ours, theirs):
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].dtype == torch.bool
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layerwise_magnitude_equals_torch_l1_unstructured(seed, sparsity):
    model = random_model(seed)
    params = prunable_parameters(model)
    reference = copy.deepcopy(model)
    for module, name in torch_modules(reference):
        prune.l1_unstructured(module, name, amount=sparsity)
    expected = torch_masks(reference)
    assert_same_masks(layerwise_masks(magnitude(params), sparsity), expected)
    assert_same_masks(compute_masks(params, sparsity=sparsity, distribution="uniform"), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_magnitude_equals_torch_global_unstructured(seed, sparsity):
    model = random_model(seed)
    params = prunable_parameters(model)
    reference = copy.deepcopy(model)
    prune.global_unstructured(torch_modules(reference), pruning_method=prune.L1Unstructured, amount=sparsity)
    expected = torch_masks(reference)
    assert_same_masks(global_masks(magnitude(params), sparsity), expected)
    assert_same_masks(compute_masks(params, sparsity=sparsity, distribution="global"), expected)
    if sparsity > 0:  # the global split really differs from the per-layer one here
        assert any(not torch.equal(a, b) for a, b in zip(expected.values(),
                                                         layerwise_masks(magnitude(params), sparsity).values()))


def test_prunable_parameters():
    model = Net()
    assert list(prunable_parameters(model)) == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert list(prunable_parameters(model, include_bias=True)) == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight"]
    assert prunable_parameters(model)["fc1.weight"] is model.fc1.weight
    assert parameter_shapes(prunable_parameters(model))["conv2.weight"] == (6, 3, 3, 3)
    with pytest.raises(ConfigError, match="nothing to prune.*nn.Linear"):
        prunable_parameters(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError, match="nothing to prune"):
        prunable_parameters(nn.Sequential(nn.BatchNorm1d(3)))


def test_topk_ties_go_to_the_lower_index_and_counts_are_checked():
    scores = {"a": torch.tensor([1.0, 2.0, 2.0, 0.5]), "b": torch.tensor([[3.0, 3.0], [3.0, 1.0]])}
    masks = topk(scores, {"a": 2, "b": 2})
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [[True, True], [False, False]]
    assert topk(scores, {"a": 1, "b": 0})["a"].tolist() == [False, True, False, False]
    with pytest.raises(ConfigError, match="outside"):
        topk(scores, {"a": 5, "b": 0})
    with pytest.raises(ConfigError, match="no kept count for 'b'"):
        topk(scores, {"a": 1})
    with pytest.raises(ConfigError, match="NaN"):
        topk({"a": torch.tensor([1.0, float("nan")])}, {"a": 1})


def test_global_topk_by_hand():
    scores = {"a": torch.tensor([0.1, 0.9, 0.5]), "b": torch.tensor([[0.7, 0.2], [0.5, 0.8]])}
    masks = global_topk(scores, 4)  # 0.9, 0.8, 0.7, then the tie at 0.5 goes to a (dict order)
    assert masks["a"].tolist() == [False, True, True]
    assert masks["b"].tolist() == [[True, False], [False, True]]
    with pytest.raises(ConfigError, match="outside"):
        global_topk(scores, 8)


@pytest.mark.parametrize("shape, n, m", [((6, 8), 2, 4), ((5, 12), 1, 3), ((4, 3, 2, 2), 2, 4),
                                         ((7, 2, 8), 3, 8), ((16,), 1, 4)])
def test_nm_keeps_exactly_the_n_highest_of_every_m(shape, n, m):
    g = torch.Generator().manual_seed(sum(shape) + n + m)
    score = torch.rand(shape, generator=g)
    mask = nm_masks({"w": score}, n, m)["w"]
    assert mask.shape == score.shape and mask.dtype == torch.bool
    # Groups are M consecutive weights of the row-major (out, in * kernel) matrix.
    groups, keep = score.reshape(-1, m), mask.reshape(-1, m)
    assert bool((keep.sum(dim=1) == n).all())
    for group, kept in zip(groups, keep):
        assert float(group[kept].min()) > float(group[~kept].max())
    assert compute_masks({"w": score}, sparsity=1 - n / m, structure="n:m", n=n, m=m)["w"].equal(
        nm_masks({"w": score.abs()}, n, m)["w"])


def test_nm_hand_example_and_errors():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 5.0, 5.0]])
    assert nm_masks({"w": score}, 2, 4)["w"].tolist() == [[True, False, True, False, False, False, True, True]]
    with pytest.raises(ConfigError, match="M to divide the input dimension of 'w', which is 10.*dividing 10"):
        nm_masks({"w": torch.rand(3, 10)}, 2, 4)
    with pytest.raises(ConfigError, match="which is 18"):
        nm_masks({"w": torch.rand(4, 2, 3, 3)}, 1, 4)
    with pytest.raises(ConfigError, match="0 < N < M"):
        nm_masks({"w": torch.rand(3, 8)}, 4, 4)
    with pytest.raises(ConfigError, match="sparsity=0.5"):
        compute_masks({"w": torch.rand(3, 8)}, sparsity=0.6, structure="n:m", n=2, m=4)


def test_block_scores_and_masks_tile():
    score = torch.arange(16.0).reshape(4, 4)
    sums = block_scores({"w": score}, (2, 2))["w"]
    assert sums.tolist() == [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    mask = block_masks({"w": torch.tensor([[True, False], [False, True]])}, {"w": (4, 4)}, (2, 2))["w"]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    with pytest.raises(ConfigError, match="do not tile 'w', seen as a 4x4 matrix"):
        block_scores({"w": score}, (3, 2))
    with pytest.raises(ConfigError, match="pair"):
        block_scores({"w": score}, 2)
    with pytest.raises(ConfigError, match=r"must have shape \(2, 2\)"):
        block_masks({"w": torch.ones(2, 1, dtype=torch.bool)}, {"w": (4, 4)}, (2, 2))


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
def test_block_masks_from_compute_masks_keep_whole_blocks(distribution):
    g = torch.Generator().manual_seed(5)
    params = {"fc1": torch.randn(8, 12, generator=g), "conv": torch.randn(4, 2, 2, 3, generator=g)}
    masks = compute_masks(params, sparsity=0.5, distribution=distribution, structure="blocks", block=(2, 3))
    for name, mask in masks.items():
        blocks = mask.reshape(mask.shape[0], -1).reshape(mask.shape[0] // 2, 2, -1, 3)
        per_block = blocks.sum(dim=(1, 3))
        assert bool(((per_block == 0) | (per_block == 6)).all()), name
    if distribution == "uniform":  # half the blocks of each layer: 16 / 2 and 8 / 2
        assert [int(m.sum()) // 6 for m in masks.values()] == [8, 4]
        # and they are the blocks with the largest |w| sums
        sums = block_scores({"fc1": params["fc1"].abs()}, (2, 3))["fc1"].reshape(-1)
        kept = block_scores({"fc1": masks["fc1"].float()}, (2, 3))["fc1"].reshape(-1) > 0
        assert float(sums[kept].min()) > float(sums[~kept].max())


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
@pytest.mark.parametrize("scorer", ["magnitude", "l1_units", "l2_units"])
def test_unit_masks_keep_whole_rows_and_output_channels(distribution, scorer):
    g = torch.Generator().manual_seed(11)
    params = {"conv.weight": torch.randn(6, 3, 3, 3, generator=g), "fc.weight": torch.randn(10, 24, generator=g)}
    masks = compute_masks(params, sparsity=0.5, scorer=scorer, distribution=distribution, structure="units")
    for name, mask in masks.items():
        units = mask.reshape(mask.shape[0], -1)
        assert bool((units.all(dim=1) | ~units.any(dim=1)).all()), name
    if distribution == "uniform":
        assert [int(m.reshape(m.shape[0], -1).all(dim=1).sum()) for m in masks.values()] == [3, 5]
        if scorer == "l2_units":  # the kept rows are those of largest L2 norm
            norms = params["fc.weight"].norm(dim=1)
            kept = masks["fc.weight"].all(dim=1)
            assert float(norms[kept].min()) > float(norms[~kept].max())


def test_unit_masks_expand_and_check_shapes():
    masks = unit_masks({"c": torch.tensor([True, False])}, {"c": (2, 1, 2)})
    assert masks["c"].tolist() == [[[True, True]], [[False, False]]]
    with pytest.raises(ConfigError, match=r"shape \(2,\)"):
        unit_masks({"c": torch.tensor([True, False, True])}, {"c": (2, 1, 2)})


def test_apply_masks_zeroes_exactly_the_pruned_weights():
    model = random_model(3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    masks = {name: torch.rand(p.shape, generator=g) < 0.4 for name, p in prunable_parameters(model).items()}
    apply_masks(model, masks)
    for name, p in model.named_parameters():
        if name in masks:
            assert bool((p[~masks[name]] == 0).all())
            assert torch.equal(p[masks[name]], before[name][masks[name]])  # kept weights untouched
        else:
            assert torch.equal(p, before[name])  # biases and norm layers untouched
    with pytest.raises(ConfigError, match="no parameter 'fc9.weight'"):
        apply_masks(model, {"fc9.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="shape"):
        apply_masks(model, {"fc2.weight": torch.ones(17, 5, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="bool"):
        apply_masks(model, {"fc2.weight": torch.ones(5, 17)})


def test_density_and_layer_densities_by_hand():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[True, True], [True, False]]),
             "c": torch.zeros(2, dtype=torch.bool)}
    assert density(masks) == 4 / 10
    assert layer_densities(masks) == {"a": 0.25, "b": 0.75, "c": 0.0}
    assert density(full_masks({"w": torch.zeros(3, 2)})) == 1.0
    with pytest.raises(ConfigError, match="undefined"):
        density({})


def test_intersect_monotone_scores_and_check_masks():
    a = {"w": torch.tensor([True, True, False, False])}
    b = {"w": torch.tensor([True, False, True, False])}
    assert intersect(a, b)["w"].tolist() == [True, False, False, False]
    scores = monotone_scores({"w": torch.tensor([1, 5, 3, 2])}, a)
    assert scores["w"].tolist() == [1.0, 5.0, float("-inf"), float("-inf")]
    with pytest.raises(ConfigError, match="missing \\['w'\\], unexpected \\['v'\\]"):
        check_masks({"v": a["w"]}, {"w": torch.ones(4)})
    with pytest.raises(ConfigError, match="shape"):
        intersect(a, {"w": torch.ones(5, dtype=torch.bool)})


def _old_topk(flat: torch.Tensor, k: int) -> torch.Tensor:
    """fedprune.pruning.masks.topk's selection before keep_highest: one stable descending sort."""
    keep = torch.zeros(flat.shape, dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return keep


def _old_select_mask(frequencies, kept, tie_break=None, eligible=None):
    """fedprune.federated.aggregation.select_mask's selection before keep_highest:
    a lexsort on (frequency, |tie-break|)."""
    tie = np.zeros(frequencies.size) if tie_break is None else np.abs(tie_break)
    if eligible is not None:
        kept = min(kept, int(eligible.sum()))
        frequencies = np.where(eligible, frequencies, -np.inf)
    mask = np.zeros(frequencies.size, dtype=bool)
    mask[np.lexsort((-tie, -frequencies))[:kept]] = True
    return mask


@pytest.mark.parametrize("seed", range(20))
def test_keep_highest_reproduces_both_former_top_ks_with_ties(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 300))
    k = int(rng.integers(0, size + 1))
    scores = torch.from_numpy(rng.integers(0, 5, size).astype(np.float32))  # few values: many ties
    assert torch.equal(keep_highest(scores, k), _old_topk(scores, k))
    assert torch.equal(topk({"w": scores.reshape(1, -1)}, {"w": k})["w"].reshape(-1), _old_topk(scores, k))
    frequencies = rng.integers(0, 4, size) / 3
    tie = rng.integers(-3, 4, size).astype(np.float64)  # ties in the tie-break too, and signs
    tie[rng.random(size) < 0.05] = np.nan
    eligible = rng.random(size) < 0.7
    for tie_break, allowed in ((None, None), (tie, None), (tie, eligible), (None, eligible)):
        assert np.array_equal(select_mask(frequencies, k, tie_break=tie_break, eligible=allowed),
                              _old_select_mask(frequencies, k, tie_break, allowed))
    sizes = {"a": size // 2, "b": size - size // 2}
    counts = {name: int(rng.integers(0, n + 1)) for name, n in sizes.items()}
    expected = np.concatenate([_old_select_mask(frequencies[:sizes["a"]], counts["a"], tie[:sizes["a"]]),
                               _old_select_mask(frequencies[sizes["a"]:], counts["b"], tie[sizes["a"]:])])
    assert np.array_equal(select_layer_masks(frequencies, counts, sizes, tie_break=tie), expected)
