"""A run's mode, picked once from the ``mode`` setting: its coordinator, its client round, what its report says.

The client app, the driver, the report and the run-folder loader ask ``modes.get(config)`` and call
the :class:`Mode` they get; none of them tests the mode's name. A new mode is one ``Mode`` and one
``register`` call here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedprune.config import RunConfig
from fedprune.federated import wire
from fedprune.federated.coordinator import Coordinator
from fedprune.federated.local import client_round
from fedprune.federated.mask_only import MaskOnlyCoordinator, client_round_mask_only
from fedprune.federated.rounds import RoundPlan
from fedprune.validation import register_unique

# (config, plan, model, global weights, global masks, examples, *, client, generator, privacy_rng, dp) -> result
ClientRound = Callable[..., wire.TrainReply]


@dataclass(frozen=True)
class Mode:
    """One mode of running the rounds; ``name`` is the ``mode`` setting that selects it."""

    name: str
    coordinator: type[Coordinator]  # called as (config, state shapes, prunable names)
    client_round: ClientRound
    # summary.json entries the mode states itself (they replace the run's mechanism/weight-channel entries)
    summary: Callable[[Coordinator], dict] = lambda coordinator: {}
    # report.md lines the mode adds, from summary.json's content
    notes: Callable[[dict], list[str]] = lambda summary: []


MODES: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Add ``mode`` under its name; a second mode of the same name is refused (a ConfigError, a ValueError)."""
    return register_unique("mode", MODES, mode.name, mode)


def get(config: RunConfig) -> Mode:
    """The mode ``config`` runs in (``RunConfig`` has already refused an unknown name)."""
    return MODES[config.mode]


def named(name: str) -> Mode:
    """The mode a run folder's summary names."""
    return MODES[name]


def _mask_only_round(config: RunConfig, plan: RoundPlan, model: nn.Module, global_weights: Mapping[str, np.ndarray],
                     global_masks: Mapping[str, torch.Tensor], examples: tuple[np.ndarray, np.ndarray], *,
                     client: int, generator: torch.Generator, privacy_rng: np.random.Generator,
                     dp=None) -> wire.TrainReply:
    """``client_round``'s signature for mask-only: the arrays are keep-probabilities; model, masks and DP-SGD
    play no part (the frozen network is rebuilt from the seed, and mask-only has no weight channel)."""
    return client_round_mask_only(config, plan, global_weights, examples, client=client, generator=generator,
                                  privacy_rng=privacy_rng)


def _mask_only_summary(coordinator: MaskOnlyCoordinator) -> dict:
    """Only mask samples and the client id leave a client: the sampler is the mechanism, no weight channel."""
    return {"mechanism": coordinator.mechanism_summary(),
            "weight_channel": {"name": "none", "meaning": "mask-only: weights stay frozen at the seed, never sent"},
            "mask_only": coordinator.mode_summary()}


def _mask_only_notes(summary: dict) -> list[str]:
    mode = summary["mask_only"]
    return ["", ("Mode **mask-only**: a client sends its mask sample and its client id (public), nothing else, so "
                 f"the mask channel's epsilon is the end-to-end one. Frozen weights: {mode['frozen_weights']}. "
                 f"Server: {mode['aggregation']}. Final model: {mode['final_mask']}.")]


register(Mode("default", Coordinator, client_round))
register(Mode("mask-only", MaskOnlyCoordinator, _mask_only_round, summary=_mask_only_summary,
              notes=_mask_only_notes))
