"""Vote layouts through their registry: each one sizes, makes and applies reports over the same coordinates."""

import numpy as np
import pytest
import torch

from fedprune.federated import layouts
from fedprune.pruning.bits import flatten_masks
from fedprune.federated.coordinator import Coordinator
from fedprune.federated.layouts import LAYOUTS, Layout, layout_for, register
from fedprune.federated.layouts.units import UnitLayout
from fedprune.federated.layouts.weights import WeightLayout
from fedprune.federated.local import new_model
from fedprune.pruning.masks import prunable_parameters
from fedprune.federated.rounds import local_mask_bits, next_global_masks, server_scores
from fedprune.validation import ConfigError
from strategy_helpers import small_config

LAYOUT_CONFIGS = {"unstructured": {}, "units": {"structure": "units", "distribution": "uniform"}}


def coordinator_of(config) -> Coordinator:
    model = new_model(config)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return Coordinator(config, shapes, list(prunable_parameters(model)))


def test_the_registry_holds_one_layout_per_federated_structure():
    assert {name: type(layout) for name, layout in LAYOUTS.items()} == {"unstructured": WeightLayout,
                                                                        "units": UnitLayout}
    assert all(name == layout.name for name, layout in LAYOUTS.items())


@pytest.mark.parametrize("structure", sorted(LAYOUT_CONFIGS))
def test_each_layout_through_the_registry_plans_makes_and_applies_one_report(structure):
    config = small_config(**LAYOUT_CONFIGS[structure])
    layout = layout_for(config)
    assert layout is LAYOUTS[structure]
    coordinator = coordinator_of(config)
    plan = coordinator.plan(1)
    length, kept, delta = layout.plan_sizes(config, coordinator.eligible, coordinator.mask_shapes, plan.sparsity)
    assert plan.report and (plan.report_length, plan.kept, plan.hamming_bound) == (length, kept, max(1, delta))

    model = new_model(config)
    params = {name: p.detach() for name, p in prunable_parameters(model).items()}
    bits = layout.local_bits(config, plan, params, coordinator.masks, generator=torch.Generator().manual_seed(0))
    assert bits.dtype == bool and bits.size == length and int(bits.sum()) == kept
    assert np.array_equal(bits, local_mask_bits(config, plan, params, coordinator.masks,
                                                generator=torch.Generator().manual_seed(0)))

    magnitudes = np.abs(np.concatenate([p.double().reshape(-1).numpy() for p in params.values()]))
    masks = layout.next_masks(config, plan, bits.astype(np.float64), magnitudes, coordinator.masks)
    assert sorted(masks) == sorted(coordinator.masks)
    # every client voting for the same mask gives that mask back: read over the report's coordinates, it is ``bits``
    kept_now = flatten_masks(masks).astype(np.float64)
    assert np.array_equal(layout.server_scores(config, kept_now, coordinator.masks), bits)
    assert np.array_equal(flatten_masks(masks), flatten_masks(next_global_masks(
        config, plan, bits.astype(np.float64), magnitudes, coordinator.masks)))
    scores = layout.server_scores(config, magnitudes, coordinator.masks)
    assert scores.size == length
    assert np.array_equal(scores, server_scores(config, magnitudes, coordinator.masks))


def test_a_second_layout_of_the_same_name_is_refused():
    before = dict(LAYOUTS)
    with pytest.raises(ValueError, match="'units' is already registered"):
        register(UnitLayout())
    assert LAYOUTS == before


def test_a_new_layout_is_one_class_and_one_registration(monkeypatch):
    class Everything(WeightLayout):  # a stand-in for e.g. blocks: the rounds reach it by its name alone
        name = "blocks"

    monkeypatch.setattr(layouts.base, "LAYOUTS", dict(LAYOUTS))
    register(Everything())
    config = small_config(structure="blocks")
    assert isinstance(layout_for(config), Everything) and isinstance(layout_for(config), Layout)
    coordinator = coordinator_of(config)  # the settings checks accept it
    assert coordinator.plan(1).report_length == coordinator.eligible.size


def test_a_structure_no_layout_votes_on_is_refused_naming_those_that_do():
    with pytest.raises(ConfigError, match="structure 'n:m' is not supported in federated runs yet; "
                                          "use one of: unstructured, units"):
        small_config(structure="n:m")
