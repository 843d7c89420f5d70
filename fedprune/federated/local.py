"""A client's side of one round: load the global model, train under the mask, report a mask.

``client_round`` is everything a ClientApp does between parsing a message and packing its reply.
The data a client trains on is its partition of the run's dataset (``client_data``), cut the
same way on every node from the run's seed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedprune.config import RunConfig
from fedprune.data.datasets import generation_notice, load_dataset, make_loader, partition, sized
from fedprune.federated import keys, wire
from fedprune.federated.compact import compact, expand
from fedprune.federated.rounds import RoundPlan, encode_local_mask, local_mask_bits
from fedprune.pruning.masks import prunable_parameters
from fedprune.pruning.scorers import DATA_SCORERS
from fedprune.training.models import build_model
from fedprune.training.train import TrainConfig, gradient_statistics, train
from fedprune.validation import ConfigError


def train_config(config: RunConfig) -> TrainConfig:
    return TrainConfig(epochs=config.local_epochs, steps=config.local_steps, learning_rate=config.learning_rate,
                       optimizer=config.optimizer, momentum=config.momentum, weight_decay=config.weight_decay,
                       batch_size=config.batch_size)


def run_dataset(config: RunConfig):
    """The run's dataset (sized by examples-per-client), loaded once per process and shared by clients and server."""
    return _dataset(config.dataset, config.seed, config.num_clients * config.examples_per_client)


def data_notice(config: RunConfig) -> str | None:
    """A line to show before the run's dataset is generated (its first use at this size), else None."""
    return generation_notice(config.dataset, **sized(config.dataset, config.num_clients * config.examples_per_client))


@functools.lru_cache(maxsize=4)
def _dataset(name: str, seed: int, train_examples: int):
    return load_dataset(name, seed=seed, **sized(name, train_examples))


@functools.lru_cache(maxsize=4)
def _partitions(config: RunConfig, num_partitions: int):
    labels = run_dataset(config).y_train
    return partition(labels, num_partitions, config.partitioner, alpha=config.dirichlet_alpha,
                     classes_per_partition=config.classes_per_client, seed=config.seed)


def held_out(config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The held-out examples the server evaluates on: the first test-examples of the test split (0: all of it)."""
    data = run_dataset(config)
    if config.test_examples > len(data.y_test):
        raise ConfigError(f"test-examples {config.test_examples} exceeds the {len(data.y_test)} examples of "
                          f"{config.dataset}'s test split; set test-examples to at most that, or 0 for all of it")
    count = config.test_examples or len(data.y_test)
    return data.x_test[:count], data.y_test[:count]


def check_data(config: RunConfig) -> None:
    """ConfigError, with the settings that fix it, if the run's data cannot be split among its clients or its test
    split holds fewer than test-examples.

    Run once before any work, so a split that fails does not fail inside every client instead.
    """
    held_out(config)
    try:
        _partitions(config, config.num_clients)
    except ConfigError as error:
        examples = len(run_dataset(config).y_train)
        raise ConfigError(f"cannot split {config.dataset}'s {examples} training examples among {config.num_clients} "
                          f"clients by {config.partitioner} ({error}); use fewer clients, raise dirichlet-alpha (now "
                          f"{config.dirichlet_alpha:g}) or set partitioner iid") from None


def client_data(config: RunConfig, partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """This client's training examples: partition ``partition_id`` of ``num_partitions``."""
    if isinstance(partition_id, bool) or not isinstance(partition_id, int) or not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id must be an integer in [0, {num_partitions}), got {partition_id!r}")
    data = run_dataset(config)
    parts = _partitions(config, num_partitions)
    index = parts[partition_id]
    return data.x_train[index], data.y_train[index]


def new_model(config: RunConfig) -> nn.Module:
    """The run's model at its seeded initialisation (the same on every node)."""
    data = run_dataset(config)
    return build_model(config.model, data.input_shape, data.num_classes, seed=config.seed)


def client_round(config: RunConfig, plan: RoundPlan, model: nn.Module, global_weights: Mapping[str, np.ndarray],
                 global_masks: Mapping[str, torch.Tensor], examples: tuple[np.ndarray, np.ndarray], *,
                 client: int, generator: torch.Generator, privacy_rng: np.random.Generator, dp=None) -> wire.TrainReply:
    """Train on ``examples`` under the global mask and, on a reporting round, report a local mask."""
    started = time.perf_counter()
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    numpy_masks = {name: mask.numpy() for name, mask in global_masks.items()}
    state = expand(global_weights, numpy_masks, shapes)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})

    x, y = examples
    loader = make_loader(x, y, config.batch_size, shuffle=True, generator=generator)
    # DP-SGD's noise and Poisson batches must be secret: drawn from the privacy randomness (OS entropy unless
    # privacy-seed is set), never from ``generator``, which anyone holding the run's seed can rebuild
    dp_generator = None if dp is None else torch.Generator().manual_seed(int(privacy_rng.integers(2**63)))
    trained = train(model, loader, train_config(config), masks=dict(global_masks), dp=dp,
                    generator=generator if dp is None else dp_generator)

    report = None
    if plan.report:
        params = {name: p.detach() for name, p in prunable_parameters(model).items()}
        extra = {}
        if config.scorer in DATA_SCORERS:
            grads, fisher = gradient_statistics(model, make_loader(x, y, config.batch_size, shuffle=False))
            extra = {"grads": grads} if config.scorer == "taylor" else {"fisher": fisher}
        bits = local_mask_bits(config, plan, params, global_masks, generator=generator, **extra)
        report = encode_local_mask(config, plan, bits, privacy_rng, client)

    weights = compact({name: value.detach().numpy() for name, value in model.state_dict().items()}, numpy_masks)
    values = {keys.CLIENT_ID: int(client), keys.NUM_EXAMPLES: int(len(y)), "train-loss": float(trained["loss"]),
              "train-seconds": time.perf_counter() - started}
    channel = config.build_weight_channel()
    metrics = {key: value for key, value in values.items() if key in channel.metrics}  # only what the ledger counts
    return wire.TrainReply(weights=weights, metrics=metrics, report=report)
