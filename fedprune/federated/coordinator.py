"""The server's side of the rounds, minus the transport: global mask, checks, aggregation, ledger.

The Flower strategy parses messages and calls a :class:`Coordinator`; everything that decides
something (what a round asks, whether a reply is well formed, what the new global model and
mask are, what every release costs) lives here, testable without Flower.

Ledgers are keyed by the client id a reply names (its partition id), which stays the same when
a run is resumed, unlike Flower's node ids. A reply the server received counts against its
client's budget even when it is rejected as malformed: the server saw it.

What a reply may carry is what the ledger counts: weights through the run's weight channel
(``fedprune.privacy.weight_channel``), the mask report through its mechanism, and metrics only
where they cost nothing (the client id, public; the example count where the channel uses it and
it is public in the unit claimed) or where nothing is protected anyway. A reply with any other
metric is rejected. Everything the server publishes is computed from the channel's (noised)
average and the privatized reports.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedprune.config import RunConfig
from fedprune.federated import keys, wire
from fedprune.federated.compact import check_compact, compact, compact_shapes, expand
from fedprune.federated.keys import MalformedReply
from fedprune.federated.server_optimizer import ServerOptimizer
from fedprune.federated.rounds import (
    RoundPlan,
    mask_events,
    mask_release,
    mechanism_for,
    next_global_masks,
    plan_round,
    server_scores,
)
from fedprune.federated.sampling import fixed_sample_size
from fedprune.privacy import events, weight_channel
from fedprune.privacy.accountant import Accountant
from fedprune.privacy.mechanisms import MaskReport, Mechanism
from fedprune.privacy.rng import privacy_rng
from fedprune.privacy.statement import statement
from fedprune.pruning.bits import flatten_masks, pack, unflatten_masks, unpack
from fedprune.pruning.masks import density, full_masks
from fedprune.validation import ConfigError

UNITS = ("record", "client")
WEIGHT_NOISE_STREAM = (0, 1)  # privacy_rng stream suffix of the server's weight noise (clients use (round, id))
SAMPLING_STREAM = (0, 2)  # ... of the server's secret Poisson client sampling
FIXED_SAMPLING_STREAM = (0, 3)  # SeedSequence suffix of a fixed sample's draw, from the run's (public) seed
RESUMABLE = ("num-server-rounds", "resume", "run-name", "output-dir")  # may change when a run resumes


class BudgetExhausted(RuntimeError):
    """The next round's releases would take some client past the run's privacy budget."""


class TooFewReplies(RuntimeError):
    """Fewer well-formed replies than ``min-replies``: the round cannot be aggregated."""


@dataclass(frozen=True)
class Reply:
    """A client's reply after the server's checks."""

    client: str
    examples: int | None  # None where the weight channel does not weight by examples (then it is not sent)
    weights: dict[str, np.ndarray]
    report: MaskReport | None
    metrics: dict
    dpsgd: dict | None = None  # the DP-SGD releases the reply states (weight channel dpsgd)


class Coordinator:
    """Holds the global mask, the schedule position and the ledger across rounds."""

    def __init__(self, config: RunConfig, state_shapes: Mapping[str, tuple[int, ...]], prunable: list[str]):
        self.config = config
        self.schedule = config.pruning_schedule
        self.shapes = {name: tuple(shape) for name, shape in state_shapes.items()}
        missing = sorted(set(prunable) - set(self.shapes))
        if missing:
            raise ConfigError(f"prunable tensors {missing} are not in the model's state")
        self.masks = full_masks({name: torch.empty(self.shapes[name]) for name in prunable})
        self.sparsity = 0.0
        self.weight_channel = config.build_weight_channel()
        self.server_optimizer = ServerOptimizer(config.server_learning_rate, config.server_momentum)
        self.accountant = Accountant()
        self.mask_accountant = Accountant()  # the mask channel alone, shown beside the end-to-end figures
        self.rejected: list[dict] = []
        self.dropouts = 0
        self.upload_bytes: list[int] = []
        self.last_report_plan: RoundPlan | None = None
        self.last_votes: dict | None = None  # the last vote event's inputs, for votes.npz (fedprune.privacy.replay)
        self._mechanism: tuple[RoundPlan, Mechanism] | None = None  # the round's mechanism, built once per plan

    # --- what a round asks ------------------------------------------------------------------

    def plan(self, round: int) -> RoundPlan:
        return plan_round(self.config, self.schedule, round, self.sparsity, self.eligible, self.mask_shapes)

    @property
    def mask_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(mask.shape) for name, mask in self.masks.items()}

    @property
    def eligible(self) -> np.ndarray:
        return flatten_masks(self.masks)

    def packed_mask(self) -> tuple[np.ndarray, int]:
        bits = self.eligible
        return pack(bits), bits.size

    def numpy_masks(self) -> dict[str, np.ndarray]:
        return {name: mask.numpy() for name, mask in self.masks.items()}

    def compact(self, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return compact(state, self.numpy_masks())

    def expand(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return expand(weights, self.numpy_masks(), self.shapes)

    def mechanism(self, plan: RoundPlan) -> Mechanism:
        """The reporting round's mechanism, built once per plan (every reply of the round is checked by it)."""
        if self._mechanism is None or self._mechanism[0] != plan:
            self._mechanism = (plan, mechanism_for(self.config, plan))
        return self._mechanism[1]

    def _round_mechanism(self, plan: RoundPlan) -> Mechanism | None:
        return self.mechanism(plan) if plan.report else None

    # --- checks -----------------------------------------------------------------------------

    def check_reply(self, plan: RoundPlan, reply: wire.TrainReply) -> Reply:
        """The reply as a :class:`Reply`, or MalformedReply naming what is wrong."""
        client, examples = self.reply_identity(reply.metrics)
        checked = check_compact(reply.weights, compact_shapes(self.numpy_masks(), self.shapes))
        report = reply.report
        if plan.report:
            if report is None:
                raise MalformedReply("a reporting round's reply has no mask report")
            try:
                self.mechanism(plan).check_report(report)
            except ConfigError as error:
                raise MalformedReply(str(error)) from None
        elif report is not None:
            raise MalformedReply("a mask report in a round that asked for none")
        return Reply(str(client), examples, checked, report, dict(reply.metrics), reply.dpsgd)

    def reject(self, plan: RoundPlan, client: str | None, reason: str) -> None:
        """Count a malformed reply (its release still counts: the server received it).

        Under Poisson client sampling every client is charged for every round anyway (``accept``).
        """
        self.rejected.append({"round": plan.round, "client": client, "reason": reason})
        if client is not None and not self.poisson:
            self.record(plan, [client])

    @property
    def poisson(self) -> bool:
        """Whether clients take part by secret Poisson sampling (DP-FedAvg's; mask-only sends no weights)."""
        return self.weight_channel is not None and self.weight_channel.sampled

    def sample(self, plan: RoundPlan, clients: list[int]) -> list[int]:
        """The clients (partition ids, ascending) that take part in ``plan``'s round, where not all do.

        Poisson: each independently with probability fraction-train, from the privacy randomness (secret: the
        figure's amplification rests on it). Fixed: ``fixed_sample_size`` of them, drawn from the run's seed
        (public: a fixed sample is not accounted as amplification).
        Drawn over client ids, not Flower's node ids (random each time a simulation starts): a seeded run
        draws the same clients every time, resumed or not.
        """
        clients = sorted(clients)
        if self.poisson:
            seed = self.config.privacy_seed
            rng = privacy_rng(None if seed < 0 else seed, stream=(plan.round, *SAMPLING_STREAM))
            chosen = rng.random(len(clients)) < self.weight_channel.sampling_rate
            return [client for client, take in zip(clients, chosen) if take]
        size = min(len(clients), fixed_sample_size(self.config))
        rng = np.random.default_rng(np.random.SeedSequence((self.config.seed, plan.round, *FIXED_SAMPLING_STREAM)))
        return sorted(int(c) for c in rng.choice(clients, size=size, replace=False))

    def dropout(self) -> None:
        """Count a client that did not reply (nothing was received, so nothing is charged)."""
        self.dropouts += 1

    def reply_identity(self, metrics: Mapping) -> tuple[int, int | None]:
        """(client id, examples or None) of a reply whose metrics are exactly what this run may receive."""
        allowed = set(self.weight_channel.metrics)
        extra = sorted(set(metrics) - allowed)
        if extra:
            raise MalformedReply(f"metrics {extra} are not counted by this run's guarantee (weight channel "
                                 f"{self.weight_channel.name}); a client sends only {sorted(allowed)}")
        return reply_identity(metrics, examples=weight_channel.uses_examples(self.weight_channel),
                              population=self.config.num_clients)

    # --- privacy ----------------------------------------------------------------------------

    def round_events(self, plan: RoundPlan, dpsgd: Mapping | None = None):
        """(event, units) pairs one participating client releases this round.

        None depends on how many clients reply: weight noise is scaled to the sum, vote noise too.
        """
        mask = mask_events(self.config, plan, self._round_mechanism(plan))
        weights = self.weight_channel.events(dpsgd)
        if self.poisson and mask:  # central votes: the round's vote and weight sums come from one secret sample
            return [(events.joint([event for event, _ in mask + weights]), UNITS)]
        return mask + weights

    def record(self, plan: RoundPlan, clients: list[str], dpsgd=None) -> None:
        for event, units in self.round_events(plan, dpsgd):
            self.accountant.record(event, units=units, clients=clients)
        # post-processing is free only beside what it processes
        alone = mask_release(self.config, plan, self._round_mechanism(plan))
        if alone is not None:
            self.mask_accountant.record(alone, units=UNITS, clients=clients)

    def privacy(self) -> dict:
        """The privacy statement: per channel and end to end, per unit, and whom each figure holds against."""
        return statement(self.config, self.weight_channel, self.accountant, self.mask_accountant)

    def epsilon(self, mask_channel: bool = False) -> dict[str, float | None]:
        """The worst client's epsilon at the run's delta, per unit (None: no guarantee).

        ``mask_channel``: the mask reports alone, as if nothing else were released.
        """
        ledger = self.mask_accountant if mask_channel else self.accountant
        return {unit: ledger.epsilon(self.config.delta, unit) for unit in UNITS}

    def check_budget(self, plan: RoundPlan) -> None:
        """BudgetExhausted if this round would take any client past ``budget-epsilon`` (in ``unit``).

        The preview charges every client the round's full releases; no release costs more when fewer
        clients reply (see ``round_events``), so an accepted round never overspends. DP-SGD releases are
        reported by the clients afterwards: the preview cannot see them (DP-SGD's own budget is Opacus's).
        """
        budget = self.config.budget_epsilon
        if budget <= 0:
            return
        preview = self.accountant.copy()
        clients = list(preview.clients) or ["any"]
        for event, units in self.round_events(plan):
            preview.record(event, units=units, clients=clients + ["new"])
        spent = preview.epsilon(self.config.delta, self.config.unit)
        if spent is None or spent > budget:
            shown = "no guarantee" if spent is None else f"epsilon {spent:.4g}"
            raise BudgetExhausted(f"round {plan.round} would reach {shown} ({self.config.unit} level, delta "
                                  f"{self.config.delta:g}) against a budget of {budget:g}; the run stops here "
                                  "with the model of the last round")

    # --- aggregation ------------------------------------------------------------------------

    def accept(self, plan: RoundPlan, replies: list[Reply]) -> list[Reply]:
        """Enough well-formed replies, each client's release charged, upload counted; in a fixed order.

        Under Poisson client sampling a round is one sampled release whoever replied: any number of replies
        (none included) is aggregated, and every client of the population is charged the round.
        """
        if self.poisson:
            self.record(plan, [str(client) for client in range(self.config.num_clients)])
        elif len(replies) < self.config.min_replies:
            raise TooFewReplies(f"round {plan.round}: {len(replies)} well-formed replies, min-replies is "
                                f"{self.config.min_replies} ({len(self.rejected)} rejected so far, "
                                f"{self.dropouts} dropouts); lower min-replies or fix the failing clients")
        replies = sorted(replies, key=lambda r: int(r.client))  # a fixed order: same sums on resume
        for reply in replies if not self.poisson else ():
            self.record(plan, [reply.client], dpsgd=reply.dpsgd)
        self.upload_bytes = [reply_bytes(r) for r in replies]
        return replies

    def aggregate(self, plan: RoundPlan, replies: list[Reply], sent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """New global weights (compact under the new mask) from well-formed replies to the model ``sent``.

        The weight channel averages (and noises) first; the new mask and its tie-breaks are computed
        from that average only.
        """
        replies = self.accept(plan, replies)
        seed = self.config.privacy_seed
        rng = privacy_rng(None if seed < 0 else seed, stream=(plan.round, *WEIGHT_NOISE_STREAM))
        average = self.weight_channel.combine(sent, [r.weights for r in replies], [r.examples for r in replies], rng)
        dense = self.server_optimizer.step(self.expand(sent), self.expand(average))
        if plan.prune:
            magnitudes = np.abs(flatten_weights(dense, self.masks))
            if self.config.method == "server-magnitude":
                frequencies = server_scores(self.config, magnitudes, self.masks)
            else:
                frequencies = self.frequencies(plan, replies)
                self.last_report_plan = plan
                self.last_votes = dict(plan=plan, clients=len(replies), frequencies=frequencies, tie_break=magnitudes,
                                       eligible=self.eligible)
            self.move_mask(plan, frequencies, magnitudes)
        return self.compact(dense)

    def move_mask(self, plan: RoundPlan, frequencies: np.ndarray, magnitudes: np.ndarray) -> None:
        """Take a pruning round's step: the new global mask from the round's scores (ties: ``magnitudes``)."""
        self.masks = next_global_masks(self.config, plan, frequencies, magnitudes, self.masks)
        self.sparsity = plan.sparsity
        self.server_optimizer.forget(self.numpy_masks())

    def forecast_step(self, plan: RoundPlan, magnitudes: np.ndarray) -> None:
        """Move the mask as the round would, from stand-in ``magnitudes`` (flat over every prunable weight, zero
        where pruned, as a round's average): a forecast (``fedprune.federated.forecast``) needs the mask's sizes,
        which later plans depend on."""
        if plan.prune:
            self.move_mask(plan, server_scores(self.config, magnitudes, self.masks), magnitudes)

    def frequencies(self, plan: RoundPlan, replies: list[Reply]) -> np.ndarray:
        mechanism = self.mechanism(plan)
        seed = self.config.privacy_seed
        rng = privacy_rng(None if seed < 0 else seed, stream=(plan.round,))  # central noise only
        return mechanism.estimate(mechanism.aggregate([r.report for r in replies], rng))

    def density(self) -> float:
        return density(self.masks)

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """JSON-able state for a checkpoint (the weights are saved beside it)."""
        packed, length = self.packed_mask()
        return {"config": self.config.to_mapping(), "sparsity": self.sparsity,
                "mask": base64.b64encode(packed.tobytes()).decode(), "mask_length": length,
                "accountant": self.accountant.state_dict(), "mask_accountant": self.mask_accountant.state_dict(),
                "rejected": self.rejected, "dropouts": self.dropouts,
                "server_momentum": self.server_optimizer.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a checkpoint's state; the run's settings must match the checkpoint's."""
        mine = {k: v for k, v in self.config.to_mapping().items() if k not in RESUMABLE}
        theirs = {k: v for k, v in state["config"].items() if k not in RESUMABLE}
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ConfigError(f"the checkpoint was written with other settings ({', '.join(diff)}); "
                              "resume with the run's own config.json")
        length = int(state["mask_length"])
        if length != self.eligible.size:
            raise ConfigError(f"the checkpoint's mask covers {length} weights, the model has {self.eligible.size}")
        bits = unpack(np.frombuffer(base64.b64decode(state["mask"]), dtype=np.uint8), length)
        self.masks = unflatten_masks(bits, self.mask_shapes)
        self.sparsity = float(state["sparsity"])
        self.accountant.load_state_dict(state["accountant"])
        self.mask_accountant.load_state_dict(state["mask_accountant"])
        self.rejected, self.dropouts = list(state["rejected"]), int(state["dropouts"])
        self.server_optimizer.load_state_dict(state.get("server_momentum", {}))


def reply_identity(metrics: Mapping, *, population: int, examples: bool = True) -> tuple[int, int | None]:
    """(client id, examples) a reply's metrics must carry (examples only when asked); MalformedReply otherwise.

    The client id is a partition id, below ``population`` (num-clients): the ledgers are keyed by it.
    """
    client = metrics.get(keys.CLIENT_ID)
    if isinstance(client, bool) or not isinstance(client, int) or not 0 <= client < population:
        raise MalformedReply(f"metrics lack a client-id in [0, {population}) (got {client!r})")
    if not examples:
        return client, None
    examples = metrics.get(keys.NUM_EXAMPLES)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise MalformedReply(f"num-examples must be an integer >= 1, got {examples!r}")
    return client, examples


def reply_bytes(reply: Reply) -> int:
    """Bytes of a reply's payload: weight values and the mask report (framing not counted)."""
    size = sum(value.nbytes for value in reply.weights.values())
    if reply.report is not None:
        size += sum(a.nbytes for a in (reply.report.bits, reply.report.indices) if a is not None)
    return size


def flatten_weights(state: Mapping[str, np.ndarray], masks: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The prunable tensors of ``state`` as one vector, in the masks' order."""
    return np.concatenate([np.asarray(state[name], dtype=np.float64).reshape(-1) for name in masks])
