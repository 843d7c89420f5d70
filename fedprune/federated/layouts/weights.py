"""Weight votes (structure ``unstructured``): one report bit per prunable weight.

Reports cover only the weights the global mask still keeps (pruning is monotone: a pruned weight
stays pruned, so nobody needs to vote on it); with ``regrowth`` they cover every prunable weight.
Each client's local mask keeps exactly the planned count, per layer for the uniform and ERK
distributions, which fixes the Hamming bound Delta the privacy figures use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedprune.federated.aggregation import scatter, select_layer_masks, select_mask
from fedprune.federated.layouts.base import Layout
from fedprune.pruning.bits import flatten_masks, unflatten_masks
from fedprune.pruning.compute import compute_masks
from fedprune.pruning.distributions import get_distribution
from fedprune.pruning.masks import kept_count
from fedprune.validation import ConfigError

if TYPE_CHECKING:  # the settings check layouts and rounds: a runtime import would be a cycle
    from fedprune.config import RunConfig


def layer_counts(config: RunConfig, shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, int] | None:
    """Kept weights per layer at ``sparsity``; None for the global distribution (one total count)."""
    if config.distribution == "global":
        return None
    return get_distribution(config.distribution)(shapes, sparsity)


class WeightLayout(Layout):
    """A report bit is one prunable weight."""

    name = "unstructured"

    def check(self, config: RunConfig) -> None:
        if config.scorer in ("l1_units", "l2_units"):
            raise ConfigError(f"scorer {config.scorer!r} scores whole units; federated runs vote on single weights: "
                              "use magnitude, random, taylor or obd")

    def plan_sizes(self, config: RunConfig, eligible: np.ndarray, shapes: Mapping[str, tuple[int, ...]],
                   sparsity: float) -> tuple[int, int, int]:
        positions = np.ones_like(eligible) if config.regrowth else eligible
        length = int(positions.sum())
        counts = layer_counts(config, shapes, sparsity)
        if counts is None:
            kept = kept_count(eligible.size, sparsity)
            return length, kept, min(2 * kept, 2 * (length - kept), length)
        kept, delta, start = 0, 0, 0
        for name, shape in shapes.items():
            size = math.prod(shape)
            m = int(positions[start:start + size].sum())
            k = min(counts[name], m)
            kept, delta, start = kept + k, delta + min(2 * k, 2 * (m - k)), start + size
        return length, kept, min(delta, length)

    def local_bits(self, config: RunConfig, plan, params: Mapping[str, Tensor], global_masks: Mapping[str, Tensor],
                   *, grads=None, fisher=None, generator: torch.Generator | None = None) -> np.ndarray:
        previous = None if config.regrowth else global_masks
        local = compute_masks(params, sparsity=plan.sparsity, scorer=config.scorer, distribution=config.distribution,
                              structure=config.structure, previous=previous, grads=grads, fisher=fisher,
                              generator=generator)
        bits = flatten_masks(local)
        return bits if config.regrowth else bits[flatten_masks(dict(global_masks))]

    def next_masks(self, config: RunConfig, plan, frequencies: np.ndarray, average_weights: np.ndarray,
                   global_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shapes = {name: tuple(mask.shape) for name, mask in global_masks.items()}
        eligible = flatten_masks(dict(global_masks))
        full = frequencies if config.regrowth else scatter(frequencies, eligible)
        limit = None if config.regrowth else eligible
        counts = layer_counts(config, shapes, plan.sparsity)
        if counts is None:
            flat = select_mask(full, kept_count(eligible.size, plan.sparsity), tie_break=average_weights,
                               eligible=limit)
        else:
            sizes = {name: math.prod(shape) for name, shape in shapes.items()}
            flat = select_layer_masks(full, counts, sizes, tie_break=average_weights, eligible=limit)
        return unflatten_masks(flat, shapes)

    def server_scores(self, config: RunConfig, magnitudes: np.ndarray,
                      global_masks: Mapping[str, Tensor]) -> np.ndarray:
        return magnitudes if config.regrowth else magnitudes[flatten_masks(dict(global_masks))]
