"""Drive the FedPrune strategy on real Flower messages and the real ClientApp handler, without an engine.

The grid only lists node ids (the transport is tested in test_simulation.py); the messages, records,
the ClientApp's train handler, the strategy and its coordinator are the real ones. Test modules that
use these call the ``task_identity`` fixture from conftest.py.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

import clients.app
from fedprune.federated import modes, keys
from fedprune.config import RunConfig, resolve
from fedprune.federated.local import new_model
from fedprune.pruning.masks import prunable_parameters
from server.strategy import FedPrune, to_record

NODES = [11, 12, 13, 14]


class ListGrid:
    """Just enough of a Grid for node sampling and the roster query (node NODES[i] is partition i)."""

    def get_node_ids(self):
        return list(NODES)

    def send_and_receive(self, messages, *, timeout=None):
        return [client_reply(m, NODES.index(m.metadata.dst_node_id)) for m in messages]


def small_config(**changes) -> RunConfig:
    settings = dict(dataset="digits", model="mlp", num_clients=4, min_replies=2, num_server_rounds=3,
                    schedule="oneshot", prune_start=1, prune_end=1, target_sparsity=0.5, privacy_seed=3,
                    epsilon_per_decision=1.0, batch_size=64)
    settings.update(changes)
    return RunConfig(**settings)


def mask_only_config(**changes) -> RunConfig:
    """A small mask-only run on digits (kebab-case ``changes``)."""
    settings = {"mode": "mask-only", "dataset": "digits", "model": "mlp", "num-clients": 4, "min-replies": 2,
                "num-server-rounds": 3, "privacy-seed": 3, "epsilon-per-decision": 2.0, "batch-size": 64,
                "local-epochs": 1}
    settings.update(changes)
    return resolve(settings)


def setup(config):
    """(coordinator of the config's mode, strategy, round 1's messages)."""
    model = new_model(config)
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    shapes = {name: value.shape for name, value in state.items()}
    coordinator = modes.get(config).coordinator(config, shapes, list(prunable_parameters(model)))
    strategy = FedPrune(coordinator, fraction_train=1.0, min_train_nodes=len(NODES), min_available_nodes=len(NODES))
    messages = list(strategy.configure_train(1, to_record(coordinator.compact(state)), ConfigRecord(), ListGrid()))
    return coordinator, strategy, messages


def client_reply(message: Message, partition: int) -> Message:
    context = Context(run_id=1, node_id=message.metadata.dst_node_id, state=RecordDict(), run_config={},
                      node_config={"partition-id": partition, "num-partitions": len(NODES)})
    return clients.app.app(message, context)  # the whole ClientApp: its mods, then the train handler


def replace_arrays(reply: Message, change) -> Message:
    arrays = {name: array.numpy() for name, array in reply.content[keys.ARRAYS].items()}
    change(arrays)
    content = RecordDict(dict(reply.content))
    content[keys.ARRAYS] = ArrayRecord({name: Array(np.asarray(v)) for name, v in arrays.items()})
    return Message(content=content, reply_to=request_for(reply))


def request_for(reply: Message) -> Message:
    """The request ``reply`` answers, for building a reply by hand."""
    return Message(content=RecordDict(), dst_node_id=reply.metadata.src_node_id, message_type="train")
