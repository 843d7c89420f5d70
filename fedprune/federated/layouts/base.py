"""What one bit of a mask report stands for: the vote layout, picked once from the ``structure`` setting.

A :class:`Layout` sizes a round's report, turns a client's local mask into report bits, turns the
estimated keep-frequencies into the next global mask, and gives ``server-magnitude`` its scores, all
over the same coordinates. The federated rounds (``fedprune.federated.rounds``) call the run's layout and
never test the structure themselves; a new layout is one module and one ``register`` call in
``fedprune.federated.layouts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedprune.validation import ConfigError, register_unique

if TYPE_CHECKING:
    from fedprune.config import (
        RunConfig,  # fedprune.federated.rounds calls the layouts: importing it here would be a cycle
    )
    from fedprune.federated.rounds import RoundPlan

LAYOUTS: dict[str, Layout] = {}


class Layout:
    """One vote layout; ``name`` is the ``structure`` setting that selects it."""

    name: str

    def check(self, config: RunConfig) -> None:
        """ConfigError unless federated rounds of this layout can run with ``config``."""

    def plan_sizes(self, config: RunConfig, eligible: np.ndarray, shapes: Mapping[str, tuple[int, ...]],
                   sparsity: float) -> tuple[int, int, int]:
        """(report length, kept coordinates, Hamming bound) of a pruning round at ``sparsity``.

        ``eligible`` is the global mask flat over all prunable weights; ``shapes`` are its layers'.
        """
        raise NotImplementedError

    def local_bits(self, config: RunConfig, plan: RoundPlan, params: Mapping[str, Tensor],
                   global_masks: Mapping[str, Tensor], *,
                   grads=None, fisher=None, generator: torch.Generator | None = None) -> np.ndarray:
        """A client's own mask at the plan's sparsity, as bools over the report's coordinates."""
        raise NotImplementedError

    def next_masks(self, config: RunConfig, plan: RoundPlan, frequencies: np.ndarray, average_weights: np.ndarray,
                   global_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The new global mask from estimated keep-frequencies over the report's coordinates."""
        raise NotImplementedError

    def server_scores(self, config: RunConfig, magnitudes: np.ndarray,
                      global_masks: Mapping[str, Tensor]) -> np.ndarray:
        """What ``server-magnitude`` ranks in place of vote frequencies, over the report's coordinates."""
        raise NotImplementedError


def register(layout: Layout) -> Layout:
    """Add ``layout`` under its name; a second layout of the same name is refused (a ConfigError, a ValueError)."""
    return register_unique("vote layout", LAYOUTS, layout.name, layout)


def layout_for(config: RunConfig) -> Layout:
    """The layout of ``config.structure``; ConfigError naming the structures federated runs support."""
    try:
        return LAYOUTS[config.structure]
    except KeyError:
        raise ConfigError(f"structure {config.structure!r} is not supported in federated runs yet; "
                          f"use one of: {', '.join(LAYOUTS)}") from None
