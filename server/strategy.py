"""The pruning strategy: Flower's FedAvg round loop, with fedprune deciding what each round does.

``FedPrune`` extends FedAvg (messaging and the loop stay Flower's): it adds the round's plan and the
global mask to every training message, parses the replies, and hands them to a
``fedprune.federated.coordinator.Coordinator``. Where not every client takes part in a round, the
coordinator draws who does over client ids (each node says its own once, in a query), not over Flower's
node ids, which the simulation draws at random each time it starts. Malformed replies and dropouts are
logged with their reason, counted, and left out; the round completes when ``min-replies`` well-formed replies remain.

The DP weight channels are the coordinator's, not Flower's DP strategy wrappers: those noise the
average after the inner strategy has returned it, so a mask chosen inside would come from the
un-noised average, and they weight replies by their example counts. Under ``client-clipping`` the
clients still clip with Flower's ``fixedclipping_mod`` (the clipping norm travels in the config).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, PrivacyBudgetExhausted
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedprune.federated import keys, wire
from fedprune.federated.coordinator import BudgetExhausted, Coordinator, Reply, TooFewReplies
from fedprune.federated.keys import MalformedReply
from fedprune.federated.sampling import roster


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


class FedPrune(FedAvg):
    """FedAvg whose rounds are planned, checked and aggregated by a fedprune Coordinator."""

    def __init__(self, coordinator: Coordinator, *, round_offset: int = 0, **fedavg):
        super().__init__(fraction_evaluate=0.0, min_evaluate_nodes=0, weighted_by_key=keys.NUM_EXAMPLES,
                         arrayrecord_key=keys.ARRAYS, configrecord_key=keys.CONFIG, **fedavg)
        self.coordinator = coordinator
        self.round_offset = round_offset
        self.plan = None
        self.sent: dict[str, np.ndarray] = {}  # the model this round's replies update
        self.clients: dict[int, int] | None = None  # client id -> node id, where clients are sampled (roster)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        coordinator = self.coordinator
        self.plan = coordinator.plan(self.round_offset + server_round)
        try:
            coordinator.check_budget(self.plan)
        except BudgetExhausted as error:
            raise PrivacyBudgetExhausted(str(error)) from None
        packed, length = coordinator.packed_mask()
        request = wire.TrainRequest(coordinator.config, self.plan, packed, length)
        values = {**dict(config), **request.to_config()}  # Flower's own keys (server-round) beside fedprune's
        self.sent = from_record(arrays)
        if not coordinator.poisson and self.fraction_train >= 1.0:
            return list(super().configure_train(server_round, arrays, ConfigRecord(values), grid))
        # the coordinator draws who takes part (secretly under Poisson sampling) over client ids, so that a seeded
        # run draws the same clients each time; FedAvg would draw over Flower's node ids, random at every start
        clients = self.roster(grid)
        chosen = coordinator.sample(self.plan, list(clients))
        log(INFO, "configure_train: %d of %d clients take part (%s sampling)", len(chosen), len(clients),
            coordinator.config.client_sampling)
        values[keys.SERVER_ROUND] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: ConfigRecord(values)})
        return list(self._construct_messages(record, [clients[client] for client in chosen], MessageType.TRAIN))

    def roster(self, grid: Grid) -> dict[int, int]:
        """Client id -> node id, asked once per start of the run (``fedprune.federated.sampling.roster``)."""
        if self.clients is None:
            nodes, _ = sample_nodes(grid, self.min_available_nodes, self.min_available_nodes)
            query = RecordDict({self.configrecord_key: ConfigRecord({})})
            answers = []
            for reply in grid.send_and_receive(self._construct_messages(query, sorted(nodes), MessageType.QUERY)):
                try:
                    answer = f"no answer ({reply.error.reason})" if reply.has_error() else \
                        dict(reply.content.metric_records[keys.METRICS])
                except (KeyError, TypeError) as error:
                    answer = f"its answer holds no {keys.METRICS} ({error})"
                answers.append((reply.metadata.src_node_id, answer))
            self.clients, refused = roster(answers, self.coordinator.config.num_clients)
            for node, why in refused:
                log(WARNING, "node %s is left out of client sampling: %s", node, why)
        return self.clients

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        parsed = self.check_replies(replies)
        try:
            weights = self.coordinator.aggregate(self.plan, parsed, self.sent)
        except TooFewReplies as error:
            raise AggregationError(str(error)) from None
        # only public counts and post-processing of the published model; a loss only where nothing is protected
        metrics = {"valid-replies": len(parsed), "density": self.coordinator.density(), "pruned": int(self.plan.prune)}
        if parsed and all("train-loss" in r.metrics for r in parsed):
            metrics["train-loss"] = float(np.average([r.metrics["train-loss"] for r in parsed],
                                                     weights=[r.examples or 1 for r in parsed]))
        return to_record(weights), MetricRecord(metrics)

    def check_replies(self, replies: Iterable[Message]) -> list[Reply]:
        """Well-formed replies; the others are logged, counted and dropped."""
        parsed = []
        for reply in replies:
            if reply.has_error():
                self.coordinator.dropout()
                log(WARNING, "round %d: no reply from node %s (%s)", self.plan.round,
                    reply.metadata.src_node_id, reply.error.reason)
                continue
            try:
                parsed.append(self.parse(reply))
            except MalformedReply as error:
                client = _client_id(reply)
                self.coordinator.reject(self.plan, client, str(error))
                log(WARNING, "round %d: rejected the reply of node %s (client %s): %s", self.plan.round,
                    reply.metadata.src_node_id, client, error)
        return parsed

    def parse(self, reply: Message) -> Reply:
        content = reply.content
        missing = [key for key in (keys.ARRAYS, keys.METRICS) if key not in content]
        if missing:
            raise MalformedReply(f"reply lacks {missing}")
        try:
            weights = from_record(content.array_records[keys.ARRAYS])
            metrics = dict(content.metric_records[keys.METRICS])
            values = dict(content.config_records[keys.REPORT]) if keys.REPORT in content else None
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedReply(f"reply records have the wrong types: {error}") from None
        return self.coordinator.check_reply(self.plan, wire.TrainReply.from_records(weights, metrics, values))

    def summary(self) -> None:
        log(INFO, "\t├──> fedprune: method %s, mechanism %s, target sparsity %s", self.coordinator.config.method,
            self.coordinator.config.mechanism, self.coordinator.config.target_sparsity)
        super().summary()


def _client_id(reply: Message):
    try:
        value = reply.content.metric_records[keys.METRICS][keys.CLIENT_ID]
        return str(value) if isinstance(value, int) and value >= 0 else None
    except (KeyError, TypeError):
        return None
