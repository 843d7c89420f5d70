"""Who takes part in a round, where not every client does: drawn over client ids, never Flower's node ids.

Flower's simulation gives its nodes random ids each time it starts, so a draw over sorted node ids picks
other clients at every start: a seeded run would not repeat, nor a resumed one continue, the same draws.
Each node says once which client (partition) it is (``roster``); the coordinator draws client ids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from fedprune.config import RunConfig
from fedprune.federated import keys
from fedprune.federated.keys import MalformedReply


def fixed_sample_size(config: RunConfig) -> int:
    """Clients a round takes under fixed sampling: fraction-train of them rounded up, at least 2 (FedAvg's)."""
    return min(config.num_clients, max(2, math.ceil(config.fraction_train * config.num_clients)))


def roster(answers: Iterable[tuple[int, Mapping | str]], population: int) -> tuple[dict[int, int], list[tuple]]:
    """(client id -> node id, [(node, why left out)]) from each node's answer to the query: its metrics, or why
    there are none. An answer must hold the client id, in [0, population), and nothing else; a second node
    claiming a client id already taken is left out."""
    from fedprune.federated.coordinator import reply_identity

    clients: dict[int, int] = {}
    refused = []
    for node, answer in answers:
        try:
            if isinstance(answer, str):
                raise MalformedReply(answer)
            extra = sorted(set(answer) - {keys.CLIENT_ID})
            if extra:
                raise MalformedReply(f"it sent {extra} beside {keys.CLIENT_ID}")
            client, _ = reply_identity(answer, population=population, examples=False)
            if client in clients:
                raise MalformedReply(f"client {client} is node {clients[client]} already")
        except MalformedReply as error:
            refused.append((node, str(error)))
            continue
        clients[client] = node
    return dict(sorted(clients.items())), refused
