"""Channel votes (structure ``units``): federated rounds whose reports say which output units to keep.

With structure ``units`` a report bit is one output unit (a Linear row, a Conv output channel)
of every prunable layer but the last, whose rows are the classes and stay dense. Reports are
fan-in times shorter than weight-level ones and every decision prunes a whole channel, which is
what makes the layer physically smaller (``fedprune.deploy.shrink``). Each client keeps, per layer, a
fixed number of units (``uniform``: that fraction of the layer's units; ``erk``: its ERK weight
share rounded to whole units), capped by the units still alive: fixed counts fix the Hamming bound
Delta. ``global`` is refused: its per-layer counts depend on the client's scores, so the masks of
two clients could differ in any number of units. The target sparsity is a fraction of the voting
layers' units; the model's density also counts the dense last layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedprune.federated.aggregation import scatter, select_layer_masks
from fedprune.federated.layouts.base import Layout
from fedprune.pruning.bits import unflatten_masks
from fedprune.pruning.compute import compute_masks
from fedprune.pruning.distributions import get_distribution
from fedprune.pruning.masks import as_units, kept_count, unit_masks
from fedprune.validation import ConfigError

if TYPE_CHECKING:  # the settings check layouts and rounds: a runtime import would be a cycle
    from fedprune.config import RunConfig

UNIT_DISTRIBUTIONS = ("uniform", "erk")


def check_units(distribution: str) -> None:
    """ConfigError unless channel votes can run with this distribution."""
    if distribution not in UNIT_DISTRIBUTIONS:
        raise ConfigError(f"structure 'units' in federated runs needs a per-layer distribution "
                          f"({', '.join(UNIT_DISTRIBUTIONS)}), not {distribution!r}: with 'global' a client's "
                          "per-layer counts depend on its scores and the Hamming bound is lost")


def voting(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The layers whose units are voted on: every prunable layer but the last."""
    if len(shapes) < 2:
        raise ConfigError("structure 'units' votes on every prunable layer but the last (the classes); "
                          "this model has only one prunable layer: use structure 'unstructured'")
    return {name: tuple(shapes[name]) for name in list(shapes)[:-1]}


def unit_sizes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Output units per voting layer."""
    return {name: shape[0] for name, shape in voting(shapes).items()}


def alive_units(masks: Mapping[str, Tensor]) -> np.ndarray:
    """Flat bools over the voting layers' units: True where the unit keeps any weight."""
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    return np.concatenate([as_units(masks[name]).any(dim=1).numpy() for name in voting(shapes)])


def unit_counts(distribution: str, shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, int]:
    """Units each voting layer keeps at ``sparsity``, as ``compute_masks`` counts them for units."""
    layers = voting(shapes)
    if distribution == "uniform":
        return {name: kept_count(shape[0], sparsity) for name, shape in layers.items()}
    weights = get_distribution("erk")(layers, sparsity)
    return {name: round(weights[name] / math.prod(shape[1:])) for name, shape in layers.items()}


def plan_sizes(distribution: str, regrowth: bool, masks: Mapping[str, Tensor], sparsity: float) -> tuple[int, int, int]:
    """(report length, kept units, Hamming bound) of a channel-vote round at ``sparsity``."""
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    alive = alive_units(masks)
    counts = unit_counts(distribution, shapes, sparsity)
    kept, delta, start = 0, 0, 0
    for name, units in unit_sizes(shapes).items():
        m = units if regrowth else int(alive[start:start + units].sum())
        k = min(counts[name], int(alive[start:start + units].sum()))
        kept, delta, start = kept + k, delta + min(2 * k, 2 * (m - k)), start + units
    length = alive.size if regrowth else int(alive.sum())
    return length, kept, min(delta, length)


def local_unit_bits(config, plan, params: Mapping[str, Tensor], global_masks: Mapping[str, Tensor], *,
                    grads=None, fisher=None, generator: torch.Generator | None = None) -> np.ndarray:
    """A client's units to keep at the plan's sparsity, as bools over the report's coordinates."""
    layers = voting({name: tuple(p.shape) for name, p in params.items()})
    previous = None if config.regrowth else {name: global_masks[name] for name in layers}
    pick = {name: params[name] for name in layers}
    local = compute_masks(pick, sparsity=plan.sparsity, scorer=config.scorer, distribution=config.distribution,
                          structure="units", previous=previous, generator=generator,
                          grads=None if grads is None else {name: grads[name] for name in layers},
                          fisher=None if fisher is None else {name: fisher[name] for name in layers})
    bits = np.concatenate([as_units(local[name]).any(dim=1).numpy() for name in layers])
    return bits if config.regrowth else bits[alive_units(global_masks)]


def unit_scores(values: np.ndarray, masks: Mapping[str, Tensor]) -> np.ndarray:
    """Mean of ``values`` (flat over all prunable weights) over each voting unit's weights."""
    layers = voting({name: tuple(mask.shape) for name, mask in masks.items()})
    out, start = [], 0
    for name, mask in masks.items():
        if name in layers:
            out.append(np.asarray(values[start:start + mask.numel()],
                                  dtype=np.float64).reshape(mask.shape[0], -1).mean(1))
        start += mask.numel()
    return np.concatenate(out)


def next_unit_masks(config, plan, frequencies: np.ndarray, average_weights: np.ndarray,
                    global_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The new global mask from estimated unit keep-frequencies; the last layer keeps its mask."""
    shapes = {name: tuple(mask.shape) for name, mask in global_masks.items()}
    alive = alive_units(global_masks)
    full = frequencies if config.regrowth else scatter(frequencies, alive)
    counts = unit_counts(config.distribution, shapes, plan.sparsity)
    sizes = unit_sizes(shapes)
    flat = select_layer_masks(full, counts, sizes, tie_break=unit_scores(np.abs(average_weights), global_masks),
                              eligible=None if config.regrowth else alive)
    keep, start = {}, 0
    for name, units in sizes.items():
        keep[name] = torch.from_numpy(flat[start:start + units].copy())
        start += units
    masks = dict(global_masks)
    masks.update(unit_masks(keep, {name: shapes[name] for name in sizes}))
    return masks


class UnitLayout(Layout):
    """A report bit is one output unit (row, channel) of a voting layer."""

    name = "units"

    def check(self, config: RunConfig) -> None:
        check_units(config.distribution)

    def plan_sizes(self, config: RunConfig, eligible: np.ndarray, shapes: Mapping[str, tuple[int, ...]],
                   sparsity: float) -> tuple[int, int, int]:
        return plan_sizes(config.distribution, config.regrowth, unflatten_masks(eligible, shapes), sparsity)

    def local_bits(self, config: RunConfig, plan, params: Mapping[str, Tensor], global_masks: Mapping[str, Tensor],
                   *, grads=None, fisher=None, generator: torch.Generator | None = None) -> np.ndarray:
        return local_unit_bits(config, plan, params, global_masks, grads=grads, fisher=fisher, generator=generator)

    def next_masks(self, config: RunConfig, plan, frequencies: np.ndarray, average_weights: np.ndarray,
                   global_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return next_unit_masks(config, plan, frequencies, average_weights, global_masks)

    def server_scores(self, config: RunConfig, magnitudes: np.ndarray,
                      global_masks: Mapping[str, Tensor]) -> np.ndarray:
        scores = unit_scores(magnitudes, global_masks)
        return scores if config.regrowth else scores[alive_units(global_masks)]
