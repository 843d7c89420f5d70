"""Mask-only federated training: clients release nothing but privatized mask samples.

Weights stay frozen at the seeded initialisation every party rebuilds
(``fedprune.training.supermask.frozen_state``). Each round the server sends the global keep-probabilities
(one per prunable weight); a client starts its scores at their logits, trains them on its data
(``fedprune.training.supermask.ScoreModel``), and replies with one Bernoulli sample of its
keep-probabilities, clipped to [q, 1 - q] so the sample is randomized response at eps per weight
(``fedprune.privacy.mechanisms.ClippedBernoulli``), and its client id (public: the server sees who took part).
No weight, score, probability, loss, time or example count leaves the client.

The server (:class:`MaskOnlyCoordinator`, the interface the strategy and driver use for the
default mode) checks each reply, tallies the samples and debiases them, (y - q) / (1 - 2q), into
the next global keep-probabilities: an unbiased estimate of the clients' mean of
r = (clip(theta, q, 1 - q) - q) / (1 - 2q), theta stretched from [q, 1 - q] onto [0, 1] (0 below q,
1 above 1 - q; theta itself at eps inf, where the samples are exact votes (mechanism
``exact``) and the estimate is their plain mean, FedPM's aggregate). The final model keeps the
top (1 - ``target-sparsity``) share of weights by global keep-probability (per layer for the
uniform and ERK distributions), ties broken by a fixed order drawn from the run's seed.

Privacy: a sample of d coordinates can differ in all d between neighbouring datasets (every
score depends on every record), so the Hamming bound is d and a report costs d x eps, at record
and client level alike. The ledger records it as the randomized-response event it is; nothing
else is released, so the mask channel's figure is the end-to-end one. At eps inf the samples are
unclipped, exact votes, and there is no guarantee (None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedprune.config import RunConfig
from fedprune.data.datasets import make_loader
from fedprune.federated import keys, wire
from fedprune.federated.aggregation import select_layer_masks, select_mask
from fedprune.federated.coordinator import UNITS, Coordinator, Reply, reply_identity
from fedprune.federated.keys import MalformedReply
from fedprune.federated.layouts.weights import layer_counts
from fedprune.federated.local import new_model, train_config
from fedprune.federated.rounds import RoundPlan
from fedprune.privacy import events, mechanisms
from fedprune.privacy.mechanisms import Mechanism
from fedprune.pruning.bits import unflatten_masks
from fedprune.pruning.masks import kept_count, prunable_parameters
from fedprune.training.supermask import ScoreModel, frozen_state
from fedprune.validation import ConfigError

FINAL_MASK = ("threshold: the top (1 - target-sparsity) share of global keep-probabilities (per layer unless the "
              "distribution is global), ties broken by a fixed order drawn from the run's seed")
FROZEN_WEIGHTS = ("seeded initialisation, prunable weights sign(w) sqrt(2 / (fan_in density)) (scaled signed "
                  "Kaiming constant), biases of pruned layers zero; rebuilt by every party, never sent")
AGGREGATION = ("unweighted mean of the clients' samples, debiased (y - q) / (1 - 2q) and clipped to [0, 1] "
               "(FedPM's Beta posterior with the prior reset every round)")


# --- what every party derives from the settings ------------------------------------------------

def score_groups(config: RunConfig, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[list[str], int]]:
    """(names, kept) whose expected kept count a client's keep-probabilities hold at the target."""
    counts = layer_counts(config, shapes, config.target_sparsity)
    if counts is None:
        return [(list(shapes), kept_count(sum(math.prod(s) for s in shapes.values()), config.target_sparsity))]
    return [([name], int(counts[name])) for name in shapes]


def plan_mask_only(config: RunConfig, round: int, length: int, kept: int) -> RoundPlan:
    """Every mask-only round reports a sample of all ``length`` weights (Hamming bound ``length``)."""
    return RoundPlan(round=round, sparsity=float(config.target_sparsity), prune=True, report=True,
                     report_length=length, kept=kept, hamming_bound=length,
                     public_seed=(config.seed * 1_000_003 + round) % 2**63)


def sampler_for(config: RunConfig, length: int) -> Mechanism:
    """The report's mechanism: clipped-bernoulli at ``epsilon-per-decision`` per weight (exact samples at inf).

    A sample of all ``length`` weights, unconstrained (Hamming bound ``length``, no kept count).
    """
    return mechanisms.build(config, name="clipped-bernoulli", length=length, hamming_bound=length)


def report_events(sampler: Mechanism) -> list[events.Event]:
    """What one client's reply releases in one round: its mask sample, nothing else."""
    return [sampler.event()]


# --- the client's round ------------------------------------------------------------------------

def client_round_mask_only(config: RunConfig, plan: RoundPlan, probabilities: Mapping[str, np.ndarray],
                           examples: tuple[np.ndarray, np.ndarray], *, client: int, generator: torch.Generator,
                           privacy_rng: np.random.Generator) -> wire.TrainReply:
    """Train scores from the global ``probabilities`` on ``examples``; reply with a privatized mask sample only."""
    model = new_model(config)
    names = list(prunable_parameters(model))
    frozen = frozen_state(config)
    shapes = {name: tuple(frozen[name].shape) for name in names}
    start = _check_probabilities(probabilities, shapes)
    groups = score_groups(config, shapes)
    length = sum(math.prod(shape) for shape in shapes.values())
    if plan.report_length != length or plan.kept != sum(kept for _, kept in groups):
        raise ConfigError(f"the plan asks for {plan.report_length} coordinates keeping {plan.kept}, this model has "
                          f"{length}: client and server run different models or settings")
    scores = ScoreModel(model, frozen, {name: torch.from_numpy(start[name]) for name in names}, groups)
    x, y = examples
    scores.train(make_loader(x, y, config.batch_size, shuffle=True, generator=generator),
                 train_config(config), generator)
    with torch.no_grad():
        theta = np.concatenate([p.double().reshape(-1).numpy() for p in scores.keep_probabilities().values()])
    report = sampler_for(config, length).sample(theta, privacy_rng)
    # the mask sample is the only release: no loss, time or example count leaves the client
    return wire.TrainReply(weights={}, metrics={keys.CLIENT_ID: int(client)}, report=report)


def _check_probabilities(values: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]):
    """``values`` as float32 arrays if they are keep-probabilities for exactly ``shapes``, else ConfigError."""
    if sorted(values) != sorted(shapes):
        raise ConfigError(f"keep-probabilities name {sorted(values)}, the model's prunable weights are "
                          f"{sorted(shapes)}")
    out = {}
    for name, shape in shapes.items():
        value = np.asarray(values[name])
        if value.dtype != np.float32 or value.shape != tuple(shape) or not np.all((value >= 0) & (value <= 1)):
            raise ConfigError(f"keep-probabilities {name!r} must be float32 of shape {tuple(shape)} in [0, 1]")
        out[name] = np.array(value)
    return out


# --- the server ----------------------------------------------------------------------------------

class MaskOnlyCoordinator(Coordinator):
    """The default Coordinator's interface for mask-only rounds; the arrays that travel are keep-probabilities.

    ``compact`` gives round 1's global keep-probabilities (the expected density everywhere),
    ``aggregate`` the next ones, and ``expand`` the model they stand for: the frozen weights
    under the final (thresholded) mask. Checkpoints, ledgers and rejections work as the
    default mode's; the keep-probabilities are the checkpoint's weights.
    """

    def __init__(self, config: RunConfig, state_shapes: Mapping[str, tuple[int, ...]], prunable: list[str]):
        super().__init__(config, state_shapes, prunable)
        self.frozen = frozen_state(config)
        if {name: tuple(value.shape) for name, value in self.frozen.items()} != self.shapes:
            raise ConfigError("the frozen network's tensors differ from the model's: rebuild both from the same "
                              "settings")
        self.length = self.eligible.size
        self.groups = score_groups(config, self.mask_shapes)
        self.kept = sum(kept for _, kept in self.groups)
        self.sampler = sampler_for(config, self.length)
        self.tie_break = np.random.default_rng(config.seed).random(self.length)  # public, fixed for the run
        self.masks = self.final_masks(self.compact({}))
        self.sparsity = float(config.target_sparsity)
        self.weight_channel = None  # no weights travel

    def plan(self, round: int) -> RoundPlan:
        return plan_mask_only(self.config, round, self.length, self.kept)

    # --- the arrays that travel: keep-probabilities --------------------------------------------

    def compact(self, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Round 1's global keep-probabilities: each group's target density (no part of ``state`` travels)."""
        out = {}
        for names, kept in self.groups:
            size = sum(math.prod(self.shapes[name]) for name in names)
            for name in names:
                out[name] = np.full(self.shapes[name], kept / size, dtype=np.float32)
        return {name: out[name] for name in self.masks}

    def expand(self, probabilities: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The final sparse model ``probabilities`` stand for: frozen weights under the thresholded mask."""
        masks = self.final_masks(_check_probabilities(probabilities, self.mask_shapes))
        return {name: np.where(masks[name].numpy(), value, np.float32(0)) if name in masks else np.array(value)
                for name, value in self.frozen.items()}

    def final_masks(self, probabilities: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        flat = np.concatenate([np.asarray(probabilities[name], dtype=np.float64).reshape(-1) for name in self.masks])
        if len(self.groups) == 1:
            bits = select_mask(flat, self.kept, tie_break=self.tie_break)
        else:
            sizes = {name: math.prod(self.shapes[name]) for name in self.masks}
            bits = select_layer_masks(flat, {names[0]: kept for names, kept in self.groups}, sizes,
                                      tie_break=self.tie_break)
        return unflatten_masks(bits, self.mask_shapes)

    # --- checks ----------------------------------------------------------------------------------

    def check_reply(self, plan: RoundPlan, reply: wire.TrainReply) -> Reply:
        """The reply as a :class:`Reply`, or MalformedReply: it must carry one mask sample and no weights."""
        client, examples = self.reply_identity(reply.metrics)
        if reply.weights:
            raise MalformedReply(f"a mask-only reply carries no weights, got {sorted(reply.weights)}")
        report = reply.report
        if report is None:
            raise MalformedReply(f"a mask-only round needs exactly one {self.sampler.name} report")
        try:
            self.sampler.check_report(report)
        except ConfigError as error:
            raise MalformedReply(str(error)) from None
        return Reply(str(client), examples, {}, report, dict(reply.metrics))

    # --- privacy ----------------------------------------------------------------------------------

    def reply_identity(self, metrics: Mapping) -> tuple[int, None]:
        """(client id, None): a mask-only reply's metrics hold its client id and nothing else."""
        extra = sorted(set(metrics) - {keys.CLIENT_ID})
        if extra:
            raise MalformedReply(f"metrics {extra} are not counted by mask-only's guarantee: a client sends only "
                                 f"{keys.CLIENT_ID!r} beside its mask sample")
        return reply_identity(metrics, examples=False, population=self.config.num_clients)

    def round_events(self, plan: RoundPlan, dpsgd: Mapping | None = None):
        return [(event, UNITS) for event in report_events(self.sampler)]

    def forecast_step(self, plan: RoundPlan, magnitudes: np.ndarray) -> None:
        """Nothing to move: every round's plan is the same, whatever the mask."""

    def record(self, plan: RoundPlan, clients: list[str], dpsgd=None) -> None:
        for event, units in self.round_events(plan):
            self.accountant.record(event, units=units, clients=clients)
            self.mask_accountant.record(event, units=units, clients=clients)  # the same channel: all there is

    # --- aggregation ------------------------------------------------------------------------------

    def aggregate(self, plan: RoundPlan, replies: list[Reply], sent=None) -> dict[str, np.ndarray]:
        """The next global keep-probabilities from well-formed replies (debiased mean of their samples)."""
        replies = self.accept(plan, replies)
        frequencies = self.sampler.estimate(self.sampler.aggregate([r.report for r in replies]))
        flat = np.clip(frequencies, 0.0, 1.0).astype(np.float32)
        probabilities, start = {}, 0
        for name, shape in self.mask_shapes.items():
            size = math.prod(shape)
            probabilities[name] = flat[start:start + size].reshape(shape)
            start += size
        self.masks = self.final_masks(probabilities)
        self.sparsity = plan.sparsity
        self.last_report_plan = plan
        return probabilities

    # --- what the run reports ---------------------------------------------------------------------

    def mechanism_summary(self) -> dict:
        """The mask channel (per decision, per report), for summary.json."""
        return self.sampler.describe()

    def mode_summary(self) -> dict:
        return {"final_mask": FINAL_MASK, "frozen_weights": FROZEN_WEIGHTS, "aggregation": AGGREGATION,
                "weights_sent": False}
