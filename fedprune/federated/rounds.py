"""One federated round, minus the transport: the plan, the mechanism, the client's mask, the server's mask.

The server makes a :class:`RoundPlan` from the schedule and the current global mask and sends
it with the round's messages; client and server then build the very same mechanism from it
(``mechanism_for``), so their settings cannot drift apart.

What a report's coordinates are (weights, output units) is the run's vote layout
(``fedprune.federated.layouts``): it sizes the report, makes a client's bits and the next global mask. Each
client's local mask keeps exactly the planned count, which fixes the Hamming bound Delta the
privacy figures use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedprune.federated.layouts import layout_for
from fedprune.privacy import events, mechanisms
from fedprune.privacy.mechanisms import MaskReport, Mechanism
from fedprune.pruning.bits import pack
from fedprune.pruning.scorers import DATA_SCORERS
from fedprune.validation import ConfigError

if TYPE_CHECKING:  # the settings check layouts and rounds: a runtime import would be a cycle
    from fedprune.config import RunConfig


@dataclass(frozen=True)
class RoundPlan:
    """What round ``round`` asks of every client (plain scalars: it travels in a ConfigRecord)."""

    round: int
    sparsity: float       # target sparsity of the mask after this round
    prune: bool           # whether the global mask changes this round
    report: bool          # whether clients report their masks (votes) this round
    report_length: int    # coordinates a report covers (kept weights; all with regrowth)
    kept: int             # coordinates each local mask keeps among them
    hamming_bound: int    # Delta: most coordinates two such masks can differ in
    public_seed: int      # public randomness for coordinate sampling

    def to_mapping(self) -> dict:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> RoundPlan:
        try:
            return cls(**{name: values[name] for name in cls.__dataclass_fields__})
        except KeyError as missing:
            raise ConfigError(f"the round plan lacks {missing}: "
                              "client and server run different fedprune versions") from None


def plan_round(config: RunConfig, schedule, round: int, current_sparsity: float, eligible: np.ndarray,
               shapes: Mapping[str, tuple[int, ...]]) -> RoundPlan:
    """The plan for ``round`` given the global mask's ``eligible`` (kept) flat coordinates.

    A round is a pruning round when the schedule updates the mask and the target sparsity
    rises; a no-op update is skipped, so it costs no privacy.
    """
    target = schedule.sparsity_at(round)
    prune = config.method != "dense" and schedule.is_update_round(round) and target > current_sparsity
    length, kept, delta = layout_for(config).plan_sizes(config, eligible, shapes, target)
    report = prune and config.method == "votes" and 0 < kept < length  # else the mask is fixed
    public_seed = (config.seed * 1_000_003 + round) % 2**63
    return RoundPlan(round=round, sparsity=float(target if prune else current_sparsity), prune=prune,
                     report=report, report_length=length, kept=kept, hamming_bound=max(1, delta),
                     public_seed=public_seed)


def mechanism_for(config: RunConfig, plan: RoundPlan) -> Mechanism:
    """The report mechanism of a reporting round (``exact`` for non-private votes)."""
    if not plan.report:
        raise ConfigError(f"round {plan.round} asks for no mask report: it has no mechanism")
    return mechanisms.build(config, length=plan.report_length, kept=plan.kept, hamming_bound=plan.hamming_bound)


def local_mask_bits(config: RunConfig, plan: RoundPlan, params: Mapping[str, Tensor],
                    global_masks: Mapping[str, Tensor], *, grads=None, fisher=None,
                    generator: torch.Generator | None = None) -> np.ndarray:
    """A client's own mask at the plan's sparsity, as bools over the report's coordinates."""
    bits = layout_for(config).local_bits(config, plan, params, global_masks, grads=grads, fisher=fisher,
                                         generator=generator)
    if int(bits.sum()) != plan.kept or bits.size != plan.report_length:
        raise ConfigError(f"the local mask keeps {int(bits.sum())} of {bits.size} coordinates, the plan says "
                          f"{plan.kept} of {plan.report_length}: client and server disagree on the model or settings")
    return bits


def encode_local_mask(config: RunConfig, plan: RoundPlan, bits: np.ndarray, rng: np.random.Generator,
                      client: int) -> MaskReport:
    """The reply's mask report, through the plan's mechanism (``exact``: the packed mask itself)."""
    return mechanism_for(config, plan).encode(pack(bits), rng, public_seed=(plan.public_seed, int(client)))


def next_global_masks(config: RunConfig, plan: RoundPlan, frequencies: np.ndarray, average_weights: np.ndarray,
                      global_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The new global mask from estimated keep-frequencies over the report's coordinates.

    Ties go to the larger averaged weight; without regrowth only weights the mask still keeps
    can stay.
    """
    return layout_for(config).next_masks(config, plan, frequencies, average_weights, global_masks)


def server_scores(config: RunConfig, magnitudes: np.ndarray, global_masks: Mapping[str, Tensor]) -> np.ndarray:
    """What ``server-magnitude`` ranks in place of vote frequencies, over the report's coordinates."""
    return layout_for(config).server_scores(config, magnitudes, global_masks)


def mask_events(config: RunConfig, plan: RoundPlan,
                mechanism: Mechanism | None = None) -> list[tuple[events.Event, tuple[str, ...]]]:
    """(event, units) one client's mask report releases this round (nothing outside pruning rounds).

    ``mechanism``: the round's mechanism where the caller holds it (else built from the plan).

    In a unit where the client's trained weights are already a DP output (DP-SGD: record level) and
    the scorer reads only the weights, the mask is post-processing of them and costs nothing more.
    """
    event = mask_release(config, plan, mechanism)
    if event is None:
        return []
    free = mask_post_processing_units(config)
    charged = tuple(unit for unit in events.UNITS if unit not in free)
    out = [(event, charged)] if charged else []
    if free:
        out.append((events.PostProcessing(f"mask reports scored by {config.scorer} from the {config.weight_channel}-"
                                          "trained weights alone"), free))
    return out


def mask_release(config: RunConfig, plan: RoundPlan, mechanism: Mechanism | None = None) -> events.Event | None:
    """The mask report's own event, as if it were the only release (None outside reporting rounds)."""
    if not plan.report:
        return None
    return (mechanism or mechanism_for(config, plan)).event()


def mask_post_processing_units(config: RunConfig) -> tuple[str, ...]:
    """Units in which a client's local mask is post-processing of its protected weights (free)."""
    if config.scorer in DATA_SCORERS:
        return ()
    return config.build_weight_channel().protects_weights


def no_guarantee(config: RunConfig) -> str | None:
    """Why the run's declared unit cannot have an end-to-end figure whatever happens, or None."""
    if config.mode != "mask-only":
        channel = config.build_weight_channel()
        if channel.trust(config.unit) == "none":
            return f"weight channel {config.weight_channel} gives no {config.unit}-level guarantee"
    if config.method == "votes" and not config.private_votes and config.unit not in mask_post_processing_units(config):
        return "exact mask votes (mechanism exact, or its epsilon inf) are sent without privacy"
    return None
