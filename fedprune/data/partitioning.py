"""Split a dataset over clients with flwr-datasets' partitioners, and batch it for torch.

``partition`` returns index arrays into the labels it was given. What each method guarantees:

- ``"iid"``: flwr-datasets' ``IidPartitioner`` cuts the dataset into contiguous shards, so the
  rows are first put in a seeded random order. Every index is in exactly one partition; sizes
  differ by at most one.
- ``"dirichlet"``: ``DirichletPartitioner(partition_by="label", alpha, seed)`` splits every
  class over the partitions in Dirichlet(alpha) proportions. Every index is in exactly one
  partition. Each partition holds at least ``min_partition_size`` examples (default
  ``min(10, n // (2 * num_partitions))``, at least 1): the partitioner redraws up to 10 times,
  after which this fails with advice. Small alpha: few classes per partition and unequal sizes;
  large alpha: close to IID. No self-balancing, so sizes follow the draw.
- ``"pathological"``: ``PathologicalPartitioner`` with ``class_assignment_mode=
  "first-deterministic"`` (as in Li et al. 2021: partition p gets class p mod C, the rest of its
  classes at random): each partition holds exactly ``classes_per_partition`` classes and each
  class is split evenly among the partitions that hold it. No index is in two partitions, but
  the examples of a class no partition drew are left out (possible only when
  ``num_partitions * classes_per_partition`` is small against the number of classes; a warning
  names them).

Returned arrays are int64, sorted. flwr-datasets is imported inside ``partition`` only, so
the core imports neither it nor Flower at import time.
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedprune.validation import ConfigError, pick, positive, positive_int

PARTITION_METHODS = ("iid", "dirichlet", "pathological")


@contextlib.contextmanager
def global_random_state_kept():
    """Restore numpy's and Python's global random state on exit.

    Third-party code draws from them behind our back: importing ``datasets`` (through rich)
    or scikit-learn advances Python's ``random``, and mnist1d reseeds both. fedprune's promise
    that loading or partitioning data leaves global random state alone rests on this guard.
    """
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def partition(
    labels,
    num_partitions: int,
    method: str,
    *,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    seed: int = 0,
    min_partition_size: int | None = None,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``num_partitions`` index arrays by ``method``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be a non-empty 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    pick("partitioning method", method, {name: name for name in PARTITION_METHODS})
    positive_int("number of partitions", num_partitions)
    if num_partitions > labels.size:
        raise ConfigError(f"number of partitions ({num_partitions}) exceeds the number of examples ({labels.size})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    num_classes = len(np.unique(labels))

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    with global_random_state_kept():
        import datasets
        from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    order = np.arange(labels.size)
    if method == "iid":
        order = np.random.default_rng(seed).permutation(labels.size)
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif method == "dirichlet":
        positive("dirichlet alpha", alpha)
        if min_partition_size is None:
            min_partition_size = max(1, min(10, labels.size // (2 * num_partitions)))
        elif isinstance(min_partition_size, bool) or not isinstance(min_partition_size, int) or min_partition_size < 0:
            raise ConfigError(f"min_partition_size must be an integer >= 0, got {min_partition_size!r}")
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=float(alpha),
            min_partition_size=min_partition_size, self_balancing=False, seed=seed,
        )
    else:
        if isinstance(classes_per_partition, bool) or not isinstance(classes_per_partition, (int, np.integer)) \
                or not 1 <= classes_per_partition <= num_classes:
            raise ConfigError(f"classes per partition must be an integer in [1, {num_classes}] "
                              f"(the number of classes present), got {classes_per_partition!r}")
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions, partition_by="label",
            num_classes_per_partition=int(classes_per_partition),
            class_assignment_mode="first-deterministic", seed=seed,
        )

    table = datasets.Dataset.from_dict({"label": labels[order].astype(np.int64), "index": order.astype(np.int64)})
    partitioner.dataset = table
    try:
        with warnings.catch_warnings(), global_random_state_kept():
            # Dirichlet redraws are reported by the ConfigError below if they all fail.
            warnings.filterwarnings("ignore", message="The specified min_partition_size")
            # Left-out classes are reported below in fedprune's terms (flwr's text names a
            # parameter fedprune does not have).
            warnings.filterwarnings("ignore", message="Classes: .* will NOT be used")
            parts = [partitioner.load_partition(i).with_format("numpy")[:]["index"] for i in range(num_partitions)]
    except ValueError as error:
        advice = {
            "dirichlet": f"raise alpha (now {alpha}), use fewer partitions or pass a smaller min_partition_size "
                         f"(now {min_partition_size})",
            "pathological": "use fewer partitions or fewer classes per partition",
        }.get(method, "check the settings")
        raise ConfigError(f"{method} partitioning failed: {error} Fix: {advice}.") from error
    parts = [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    if method == "pathological":
        used = np.unique(labels[np.concatenate(parts)])
        left_out = np.setdiff1d(np.unique(labels), used)
        if left_out.size:
            warnings.warn(f"pathological partitioning leaves out the examples of classes {left_out.tolist()}: "
                          f"no partition drew them. Use more partitions or more classes per partition to "
                          f"cover every class.", stacklevel=2)
    return parts


class BatchedTensors(TensorDataset):
    """A TensorDataset that gathers a batch with one index per tensor: DataLoader calls ``__getitems__`` with the
    batch's indices (the sampler's, unchanged), where TensorDataset would index and stack example by example,
    which on MNIST-1D takes longer than the model's forward pass."""

    def __getitems__(self, indices) -> list[torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [tensor[index] for tensor in self.tensors]


def _gathered(batch):  # the batch as BatchedTensors gathered it: [inputs, targets], as default_collate gives
    return batch


def make_loader(x, y, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader over ``TensorDataset(x, y)`` (numpy arrays are shared, not copied).

    Shuffling needs an explicit ``generator``. Without one, the loader still gets a private
    generator: torch's DataLoader otherwise draws a base seed from the global generator on
    every iteration, even when it does not shuffle.
    """
    positive_int("batch size", batch_size)
    if shuffle and generator is None:
        raise ConfigError("shuffle=True needs an explicit torch.Generator (e.g. torch.Generator().manual_seed(seed))")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    inputs, targets = torch.as_tensor(x), torch.as_tensor(y)
    if len(inputs) != len(targets):
        raise ConfigError(f"x has {len(inputs)} examples but y has {len(targets)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return DataLoader(BatchedTensors(inputs, targets), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=_gathered)
