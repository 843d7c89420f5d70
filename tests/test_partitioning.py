"""Tests for fedprune.data.partitioning: partitions over clients and torch loaders."""

import random
import warnings

import numpy as np
import pytest
import torch

from fedprune.data.partitioning import make_loader, partition
from fedprune.validation import ConfigError

# 1003 labels over 10 classes (fixed seed): every class has about 100 examples.
LABELS = np.random.default_rng(12).integers(0, 10, size=1003)


def assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64 and len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))  # every index once, none twice
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


def test_iid_covers_everything_in_near_equal_random_shards():
    parts = partition(LABELS, 10, "iid", seed=0)
    assert_exact_cover(parts, len(LABELS))
    assert sorted(len(p) for p in parts) == [100] * 7 + [101] * 3
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))  # shards of a shuffled order
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(LABELS, 10, "iid", seed=0)))
    assert not np.array_equal(parts[0], partition(LABELS, 10, "iid", seed=1)[0])


def test_dirichlet_covers_everything_and_is_deterministic():
    parts = partition(LABELS, 10, "dirichlet", alpha=0.5, seed=0)
    assert_exact_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 10  # default min_partition_size: min(10, n // 20)
    assert len({len(p) for p in parts}) > 1  # not balanced: sizes follow the draw
    again = partition(LABELS, 10, "dirichlet", alpha=0.5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 10, "dirichlet", alpha=0.5, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_small_alpha_concentrates_classes():
    def classes_per_partition(alpha):
        parts = partition(LABELS, 10, "dirichlet", alpha=alpha, seed=0)
        assert_exact_cover(parts, len(LABELS))
        return [len(np.unique(LABELS[p])) for p in parts]

    # Fixed seeds, so these counts are fixed; the margins are wide (about 5 classes against 10).
    skewed, close_to_iid = classes_per_partition(0.1), classes_per_partition(100.0)
    assert close_to_iid == [10] * 10
    assert np.mean(skewed) < 8 and min(skewed) < 5


def test_pathological_gives_each_partition_its_classes_split_evenly():
    parts = partition(LABELS, 10, "pathological", classes_per_partition=2, seed=0)
    assert_exact_cover(parts, len(LABELS))  # 10 partitions: each class is some partition's first
    holders = {}
    for index, part in enumerate(parts):
        classes = np.unique(LABELS[part])
        assert len(classes) == 2 and index in classes  # partition p always holds class p
        for label in classes:
            holders.setdefault(int(label), []).append(int(np.sum(LABELS[part] == label)))
    for label, shares in holders.items():  # a class is cut evenly among the partitions holding it
        assert sum(shares) == np.sum(LABELS == label) and max(shares) - min(shares) <= 1
    again = partition(LABELS, 10, "pathological", classes_per_partition=2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_pathological_leaves_out_undrawn_classes_with_a_warning():
    with pytest.warns(UserWarning, match="leaves out the examples of classes") as record:
        parts = partition(LABELS, 2, "pathological", classes_per_partition=2, seed=0)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # still no index twice
    used = np.unique(LABELS[joined])
    assert len(used) in (3, 4) and 0 in used and 1 in used
    left_out = [c for c in range(10) if c not in used]
    assert str(left_out) in str(record[0].message)
    assert np.array_equal(np.sort(joined), np.flatnonzero(np.isin(LABELS, used)))  # all of each drawn class


def test_partition_leaves_global_random_state_alone():
    numpy_before, python_before = np.random.get_state(), random.getstate()
    for method in ("iid", "dirichlet", "pathological"):
        partition(LABELS, 10, method, seed=3)
    numpy_after = np.random.get_state()
    assert np.array_equal(numpy_before[1], numpy_after[1]) and numpy_before[2:] == numpy_after[2:]
    assert random.getstate() == python_before


def test_partition_rejects_bad_inputs():
    with pytest.raises(ConfigError, match="unknown partitioning method 'shards'.*dirichlet, iid, pathological"):
        partition(LABELS, 4, "shards")
    with pytest.raises(ConfigError, match=r"number of partitions \(1004\) exceeds the number of examples \(1003\)"):
        partition(LABELS, 1004, "iid")
    with pytest.raises(ConfigError, match="number of partitions must be an integer >= 1"):
        partition(LABELS, 0, "iid")
    for alpha in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="dirichlet alpha"):
            partition(LABELS, 4, "dirichlet", alpha=alpha)
    with pytest.raises(ConfigError, match=r"classes per partition must be an integer in \[1, 10\]"):
        partition(LABELS, 4, "pathological", classes_per_partition=11)
    with pytest.raises(ConfigError, match="1-D integer array"):
        partition(LABELS.astype(float), 4, "iid")
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        partition(LABELS, 4, "iid", seed=-1)
    # 50 partitions of a class-skewed draw with min size 20: impossible, fails with advice.
    with pytest.raises(ConfigError, match="raise alpha"):
        partition(LABELS, 50, "dirichlet", alpha=0.05, min_partition_size=20)


# --- make_loader --------------------------------------------------------------------------------


def labels_in_order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_make_loader_needs_a_generator_to_shuffle():
    x, y = np.zeros((10, 3), np.float32), np.arange(10)
    with pytest.raises(ConfigError, match="needs an explicit torch.Generator"):
        make_loader(x, y, 4, shuffle=True)
    with pytest.raises(ConfigError, match="must be a torch.Generator"):
        make_loader(x, y, 4, shuffle=True, generator=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="x has 10 examples but y has 9"):
        make_loader(x, y[:9], 4, shuffle=False)
    with pytest.raises(ConfigError, match="batch size"):
        make_loader(x, y, 0, shuffle=False)


def test_make_loader_order_follows_the_generator_seed():
    x, y = np.arange(50, dtype=np.float32)[:, None], np.arange(50)
    first = labels_in_order(make_loader(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(3)))
    again = labels_in_order(make_loader(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(3)))
    other = labels_in_order(make_loader(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(4)))
    assert first == again and first != other and sorted(first) == list(range(50))
    unshuffled = make_loader(x, y, 8, shuffle=False)
    assert labels_in_order(unshuffled) == list(range(50))
    assert [len(batch) for batch, _ in unshuffled] == [8] * 6 + [2]
    assert np.shares_memory(unshuffled.dataset.tensors[0].numpy(), x)  # shared, not copied


@pytest.mark.parametrize("examples, batch", [(100, 32), (3, 1)])
def test_make_loader_batches_are_torchs_own_also_under_opacus_poisson_sampling(examples, batch):
    # a batch is gathered with one index per tensor: the same batches as TensorDataset's example-by-example
    # stacking, shuffled, unshuffled and as Opacus's Poisson batches (3 records at rate 1/3: empty ones too)
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    x, y = np.random.default_rng(0).normal(size=(examples, 1, 4)).astype(np.float32), np.arange(examples) % 10
    reference = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    pairs = [(make_loader(x, y, batch, shuffle=True, generator=torch.Generator().manual_seed(5)),
              DataLoader(reference, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(5)))]
    pairs += [(DPDataLoader.from_data_loader(make_loader(x, y, batch, shuffle=False), generator=torch.Generator()
                                             .manual_seed(1)),
               DPDataLoader.from_data_loader(DataLoader(reference, batch_size=batch), generator=torch.Generator()
                                             .manual_seed(1)))]
    for ours, torchs in pairs:
        got, want = [b for _ in range(10) for b in ours], [b for _ in range(10) for b in torchs]
        assert len(got) == len(want) and all(
            a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b) for g, w in zip(got, want)
            for a, b in zip(g, w))
    assert examples > 3 or any(len(b[1]) == 0 for b in got)  # the empty Poisson batches were compared too


def test_make_loader_leaves_torch_global_rng_alone():
    x, y = np.zeros((20, 2), np.float32), np.arange(20)
    before = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for loader in (make_loader(x, y, 6, shuffle=True, generator=torch.Generator().manual_seed(0)),
                       make_loader(x, y, 6, shuffle=False)):
            for _ in range(2):
                labels_in_order(loader)
    assert torch.equal(before, torch.random.get_rng_state())
