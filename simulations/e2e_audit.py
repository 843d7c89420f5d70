"""An end-to-end privacy audit that can fail: what the server publishes, with a canary client replaced.

One round of the real pipeline (the FedPrune strategy and its coordinator, the real ClientApp for
every client) is run ``trials`` times in each of two neighbouring worlds that differ only in the
canary client's data (replace-one, the relation the ledger accounts). The canary's update in the
two worlds is the worst a replaced dataset can give: +-C along one coordinate (an update canary,
as in Nasr et al. 2021), wrapped in the canary's real ClientApp reply; it may claim any example
count it likes where the run lets clients send one. Every other client's reply is computed once by
the real ClientApp (they are the same in both worlds); only the server's privacy noise is drawn
afresh, from seed ``noise_seed + trial`` (world B from a disjoint range).

The canary coordinate is the prunable weight whose magnitude in the noiseless round without the
canary is closest to the pruning threshold. In world A the canary pushes it outwards by C (kept),
in world B back to zero (pruned; a step of at most C): a mask chosen from anything but the
noised average moves with the canary. Two statistics of what the server publishes are audited
(oriented so that world A scores high), each with
``fedprune.privacy.audit.bound_from_scores``: the published value of that weight, and whether the
published mask keeps it. The claim is the ledger's figure for the canary after the round.

Under ``client-sampling poisson`` (the cross-device path) every trial draws who takes part afresh
with the coordinator's own secret sampling, and only those clients' replies reach the server; the
claim is then the amplified, Poisson-sampled figure, which the audit holds to what is published.

False failures: each statistic exceeds a correct claim with probability at most
``1 - confidence``, so a correct pipeline fails with probability at most ``2 (1 - confidence)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

import clients.app
from fedprune.config import RunConfig
from fedprune.federated import keys
from fedprune.federated.coordinator import Coordinator
from fedprune.federated.local import new_model
from fedprune.privacy.audit import AuditResult, bound_from_scores
from fedprune.privacy.weight_channel import clip
from fedprune.pruning.masks import prunable_parameters
from fedprune.validation import ConfigError
from server.strategy import FedPrune, from_record, to_record

CLAIMED_EXAMPLES = 10**6  # what the canary claims where a run lets clients send an example count


@dataclass(frozen=True)
class PipelineAudit:
    """The ledger's claim for the canary and the audited lower bound of each statistic."""

    claimed_epsilon: float
    weight: AuditResult   # the published value of the canary coordinate
    mask: AuditResult     # whether the published mask keeps it

    @property
    def passed(self) -> bool:
        return self.weight.passed and self.mask.passed


class _Nodes:
    """Just enough of a Grid for FedAvg's node sampling."""

    def __init__(self, count: int):
        self.ids = list(range(1, count + 1))

    def get_node_ids(self):
        return list(self.ids)


def audit_pipeline(config: RunConfig, *, trials: int = 1000, canary: int = 0, noise_seed: int = 0,
                   confidence: float = 0.999, coordinator_class=Coordinator) -> PipelineAudit:
    """Audit one round of ``config`` (a run with a DP weight channel; round 1 should be a pruning round)."""
    if config.weight_channel not in ("server-clipping", "client-clipping"):
        raise ConfigError("the end-to-end audit replaces a client's update: use weight channel server-clipping or "
                          f"client-clipping, got {config.weight_channel!r}")
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # as Flower's runtime does
    model = new_model(config)
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    shapes, prunable = {n: v.shape for n, v in state.items()}, list(prunable_parameters(model))

    def fresh(seed: int, **changes) -> FedPrune:
        coordinator = coordinator_class(config.replace(privacy_seed=seed, **changes), shapes, prunable)
        return FedPrune(coordinator, fraction_train=1.0, min_train_nodes=config.num_clients,
                        min_available_nodes=config.num_clients)

    # every client's reply, sampled or not: under Poisson sampling each trial picks its own participants below
    # (client-sampling and fraction-train are the server's alone: the clients' requests are the same)
    strategy = fresh(noise_seed, client_sampling="fixed", fraction_train=1.0)
    sent_record = to_record(strategy.coordinator.compact(state))
    nodes = _Nodes(config.num_clients)
    messages = list(strategy.configure_train(1, sent_record, ConfigRecord(), nodes))
    plan, sent = strategy.plan, strategy.sent
    replies = [clients.app.app(m, Context(run_id=1, node_id=m.metadata.dst_node_id, state=RecordDict(),
                                          run_config={}, node_config={"partition-id": i,
                                                                      "num-partitions": config.num_clients}))
               for i, m in enumerate(messages)]
    name, index, value = _canary_coordinate(config, sent, replies, canary, strategy.coordinator)
    back = -np.sign(value) * min(config.clipping_norm, config.num_clients * abs(value))
    worlds = [_with_canary(replies, canary, sent, name, index, np.sign(value) * config.clipping_norm),
              _with_canary(replies, canary, sent, name, index, back)]

    scores = []
    for world, replies_w in enumerate(worlds):
        weights, kept = [], []
        for trial in range(trials):
            strategy = fresh(noise_seed + world * trials + trial)
            strategy.plan, strategy.sent = plan, sent
            if strategy.coordinator.poisson:  # this trial's secret sample
                chosen = set(strategy.coordinator.sample(plan, nodes.get_node_ids()))
                replies_w_ = [r for r in replies_w if r.metadata.src_node_id in chosen]
            else:
                replies_w_ = replies_w
            arrays, _ = strategy.aggregate_train(1, replies_w_)
            coordinator = strategy.coordinator
            mask = coordinator.masks[name].numpy().reshape(-1)
            position = int(mask[:index].sum())  # where the coordinate sits in the compact tensor
            published = float(arrays[name].numpy().reshape(-1)[position]) if mask[index] else 0.0
            weights.append(published * np.sign(value))  # oriented so that world A scores high
            kept.append(float(mask[index]))
        scores.append((np.array(weights), np.array(kept)))
    claimed = coordinator.accountant.epsilon(config.delta, "client", str(canary))  # the same in every trial
    if claimed is None or coordinator.rejected:
        raise ConfigError(f"the round gave no guarantee for the canary (rejected: {coordinator.rejected})")
    results = [bound_from_scores(f"{what} of the published model", scores[0][i], scores[1][i], claimed=claimed,
                                 delta=config.delta, confidence=confidence)
               for i, what in enumerate(("canary weight", "canary mask bit"))]
    return PipelineAudit(claimed_epsilon=claimed, weight=results[0], mask=results[1])


def _canary_coordinate(config: RunConfig, sent, replies, canary: int, coordinator) -> tuple[str, int, float]:
    """(tensor, flat index, value): the prunable weight nearest the threshold in the round without the canary."""
    others = [from_record(r.content[keys.ARRAYS]) for i, r in enumerate(replies) if i != canary]
    updates = [clip({k: o[k] - sent[k] for k in sent}, config.clipping_norm) for o in others]
    mean = {n: np.asarray(sent[n], np.float64) + np.sum([u[n] for u in updates], axis=0) / len(replies) for n in sent}
    dense = coordinator.expand({n: v.astype(np.float32) for n, v in mean.items()})
    names = list(coordinator.masks)
    flat = np.concatenate([np.abs(dense[n]).reshape(-1) for n in names])
    kept = int(round((1 - coordinator.plan(1).sparsity) * flat.size))
    threshold = np.sort(flat)[::-1][kept - 1]
    at = int(np.argmin(np.abs(flat - threshold)))
    for n in names:
        size = dense[n].size
        if at < size:
            return n, at, float(dense[n].reshape(-1)[at])
        at -= size
    raise AssertionError("unreachable")


def _with_canary(replies, canary: int, sent, name: str, index: int, step: float) -> list[Message]:
    """``replies`` with the canary's update replaced by ``step`` along one coordinate."""
    reply = replies[canary]
    arrays = {n: np.array(v, dtype=np.float32) for n, v in sent.items()}
    arrays[name].reshape(-1)[index] += step
    metrics = dict(reply.content[keys.METRICS])
    if keys.NUM_EXAMPLES in metrics:
        metrics[keys.NUM_EXAMPLES] = CLAIMED_EXAMPLES
    content = RecordDict(dict(reply.content))
    content[keys.ARRAYS] = ArrayRecord({n: Array(v) for n, v in arrays.items()})
    content[keys.METRICS] = MetricRecord(metrics)
    request = Message(content=RecordDict(), dst_node_id=reply.metadata.src_node_id, message_type="train")
    return [Message(content=content, reply_to=request) if i == canary else r for i, r in enumerate(replies)]
