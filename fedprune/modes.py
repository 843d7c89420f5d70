"""A run's mode picks its coordinator, in one place: the driver, run folders and tools all ask here."""

from __future__ import annotations

from collections.abc import Mapping

from fedprune.config import RunConfig
from fedprune.coordinator import Coordinator
from fedprune.mask_only import MaskOnlyCoordinator


def coordinator_for(config: RunConfig, state_shapes: Mapping[str, tuple[int, ...]], prunable: list[str]) -> Coordinator:
    """The coordinator of ``config``'s mode (mask-only's keeps keep-probabilities where the default keeps weights)."""
    kind = MaskOnlyCoordinator if config.mode == "mask-only" else Coordinator
    return kind(config, state_shapes, prunable)
