"""Channel votes (structure "units") through the real strategy, messages and ClientApp handler."""

import math

import numpy as np
import pytest
import torch

from fedprune.config import RunConfig
from fedprune.federated.coordinator import Coordinator
from fedprune.federated.layouts.units import alive_units, plan_sizes, unit_counts
from fedprune.federated.local import new_model
from fedprune.pruning.masks import as_units, prunable_parameters
from fedprune.privacy.closed_form import rr_composition_epsilon
from fedprune.validation import ConfigError
from strategy_helpers import client_reply, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")


def units_config(**changes) -> RunConfig:
    settings = dict(structure="units", distribution="uniform", model="mlp", target_sparsity=0.5)
    settings.update(changes)
    return small_config(**settings)


def test_unit_plan_counts_units_and_bounds_delta_in_units():
    config = units_config()
    coordinator, strategy, _ = setup(config)
    plan = strategy.plan
    hidden = [shape[0] for shape in list(coordinator.mask_shapes.values())[:-1]]  # MLP (256, 256) hidden units
    assert plan.report and plan.report_length == sum(hidden) == 512
    assert plan.kept == sum(math.ceil(h / 2) for h in hidden) == 256
    assert plan.hamming_bound == 2 * 256  # min(2k, 2(m - k)) per layer


@pytest.mark.parametrize("epsilon", [float("inf"), 2.0])
def test_channel_votes_prune_whole_units_and_keep_the_head(epsilon):
    config = units_config(epsilon_per_decision=epsilon)
    coordinator, strategy, messages = setup(config)
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 4
    *hidden, head = coordinator.masks
    for name in hidden:
        rows = as_units(coordinator.masks[name])
        assert torch.equal(rows.all(dim=1), rows.any(dim=1))  # every unit whole: kept or gone
        assert int(rows.any(dim=1).sum()) == rows.shape[0] // 2
    assert bool(coordinator.masks[head].all())  # the classes stay
    kept = {name: int(mask.sum()) for name, mask in coordinator.masks.items()}
    assert {name: arrays[name].numpy().shape[0] for name in kept} == kept
    if math.isinf(epsilon):
        assert coordinator.epsilon(mask_channel=True)["client"] is None
    else:  # one report: Delta = 512 unit decisions of eps 2, composed exactly
        assert coordinator.epsilon(mask_channel=True)["client"] == pytest.approx(
            rr_composition_epsilon(2.0, 512, config.delta), rel=1e-3)


def test_later_unit_rounds_vote_only_on_live_units():
    config = units_config(schedule="polynomial", prune_start=1, prune_end=2, prune_every=1, target_sparsity=0.75)
    coordinator, strategy, messages = setup(config)
    strategy.aggregate_train(1, [client_reply(m, i) for i, m in enumerate(messages)])
    alive = alive_units(coordinator.masks)
    plan = coordinator.plan(2)
    length, kept, _ = plan_sizes("uniform", False, coordinator.masks, plan.sparsity)
    assert plan.report_length == int(alive.sum()) == length and plan.kept == kept
    counts = unit_counts("uniform", coordinator.mask_shapes, plan.sparsity)
    assert kept == sum(counts.values()) < plan.report_length


def test_server_magnitude_prunes_units_without_reports():
    config = units_config(method="server-magnitude")
    coordinator, strategy, messages = setup(config)
    strategy.aggregate_train(1, [client_reply(m, i) for i, m in enumerate(messages)])
    *hidden, head = coordinator.masks
    assert all(int(as_units(coordinator.masks[n]).any(dim=1).sum()) == 128 for n in hidden)
    assert coordinator.epsilon(mask_channel=True)["client"] == 0.0


def test_unit_votes_refuse_the_global_distribution_and_one_layer_models():
    with pytest.raises(ConfigError, match="per-layer distribution"):
        setup(units_config(distribution="global"))
    config = units_config()
    model = new_model(config)
    only_head = {"head.weight": tuple(prunable_parameters(model)["head.weight"].shape)}
    with pytest.raises(ConfigError, match="only one prunable layer"):
        unit_counts("uniform", only_head, 0.5)
    assert np.all(alive_units(Coordinator(config, {n: v.shape for n, v in model.state_dict().items()},
                                          list(prunable_parameters(model))).masks))
