"""The pruning strategy on real Flower messages from the real ClientApp handler, without a simulation engine.

The grid below only lists node ids (the transport is tested in test_simulation.py); the
messages, records, the ClientApp's train handler, the FedPrune strategy and its coordinator
are the real ones.
"""

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import AggregationError, PrivacyBudgetExhausted

import clients.app
from fedprune import protocol
from fedprune.config import RunConfig
from fedprune.coordinator import Coordinator
from fedprune.local import new_model
from fedprune.masks import prunable_parameters
from server.strategy import FedPrune, to_record

NODES = [11, 12, 13, 14]


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's runtime names the run and node of the process; do what it does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield


class ListGrid:
    """Just enough of a Grid for FedAvg's node sampling."""

    def get_node_ids(self):
        return list(NODES)


def small_config(**changes) -> RunConfig:
    settings = dict(dataset="digits", model="mlp", num_clients=4, min_replies=2, num_server_rounds=3,
                    schedule="oneshot", prune_start=1, prune_end=1, target_sparsity=0.5, privacy_seed=3,
                    epsilon_per_decision=1.0, batch_size=64)
    settings.update(changes)
    return RunConfig(**settings)


def setup(config):
    model = new_model(config)
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    coordinator = Coordinator(config, {n: v.shape for n, v in state.items()}, list(prunable_parameters(model)))
    strategy = FedPrune(coordinator, fraction_train=1.0, min_train_nodes=len(NODES), min_available_nodes=len(NODES))
    messages = list(strategy.configure_train(1, to_record(coordinator.compact(state)), ConfigRecord(), ListGrid()))
    return coordinator, strategy, messages


def client_reply(message: Message, partition: int) -> Message:
    context = Context(run_id=1, node_id=message.metadata.dst_node_id, state=RecordDict(), run_config={},
                      node_config={"partition-id": partition, "num-partitions": len(NODES)})
    return clients.app.train(message, context)


def replace_arrays(reply: Message, change) -> Message:
    arrays = {name: array.numpy() for name, array in reply.content[protocol.ARRAYS].items()}
    change(arrays)
    content = RecordDict(dict(reply.content))
    content[protocol.ARRAYS] = ArrayRecord({name: Array(np.asarray(v)) for name, v in arrays.items()})
    return Message(content=content, reply_to=_request(reply))


def _request(reply: Message) -> Message:
    return Message(content=RecordDict(), dst_node_id=reply.metadata.src_node_id, message_type="train")


def test_private_round_sends_only_encoded_masks_and_prunes():
    config = small_config()
    coordinator, strategy, messages = setup(config)
    assert len(messages) == 4
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    for reply in replies:
        report = dict(reply.content.config_records[protocol.REPORT])
        assert protocol.VOTES not in report  # never the exact mask
        assert report["mechanism"] == "randomized-response" and report["setting.epsilon"] == 1.0
        assert protocol.decode_report(report).bits.size == (strategy.plan.report_length + 7) // 8
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 4 and coordinator.density() == pytest.approx(0.5, abs=1e-3)
    kept = {name: int(mask.sum()) for name, mask in coordinator.masks.items()}
    assert {name: arrays[name].numpy().shape[0] for name in kept} == kept  # compact under the new mask
    eps = coordinator.epsilon()
    assert eps["client"] is None and eps["record"] is None  # weights went in the clear
    assert coordinator.epsilon(mask_channel=True)["client"] > 0


def test_exact_votes_rounds_are_counted_as_unprotected():
    config = small_config(epsilon_per_decision=float("inf"))
    coordinator, strategy, messages = setup(config)
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    assert all(protocol.VOTES in reply.content.config_records[protocol.REPORT] for reply in replies)
    strategy.aggregate_train(1, replies)
    assert coordinator.epsilon(mask_channel=True) == {"record": None, "client": None}


BREAKAGES = {
    "wrong shape": lambda a: a.update({"head.bias": np.zeros(3, np.float32)}),
    "wrong dtype": lambda a: a.update({"head.bias": a["head.bias"].astype(np.float64)}),
    "NaN weights": lambda a: a["head.bias"].__setitem__(0, np.nan),
    "infinite weights": lambda a: a["head.bias"].__setitem__(0, np.inf),
    "missing tensor": lambda a: a.pop("head.bias"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_malformed_weights_are_rejected_logged_and_counted(breakage, caplog):
    coordinator, strategy, messages = setup(small_config())
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    replies[0] = replace_arrays(replies[0], BREAKAGES[breakage])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 3 and len(coordinator.rejected) == 1
    assert coordinator.rejected[0]["client"] == "0" and "rejected the reply" in caplog.text
    # the rejected client's report still counts against its budget: the server received it
    assert coordinator.mask_accountant.epsilon(1e-5, "client", client="0") > 0


def test_bad_reports_missing_records_and_dropouts_are_rejected():
    coordinator, strategy, messages = setup(small_config())
    replies = [client_reply(m, i) for i, m in enumerate(messages)]

    wrong_length = RecordDict(dict(replies[0].content))
    report = dict(replies[0].content.config_records[protocol.REPORT])
    report["length"] = report["length"] - 1
    wrong_length[protocol.REPORT] = ConfigRecord(report)
    other_mechanism = RecordDict(dict(replies[1].content))
    report = dict(replies[1].content.config_records[protocol.REPORT])
    report["mechanism"] = "oue"
    other_mechanism[protocol.REPORT] = ConfigRecord(report)
    no_metrics = RecordDict({protocol.ARRAYS: replies[2].content[protocol.ARRAYS]})
    broken = [Message(content=c, reply_to=_request(r)) for c, r in
              [(wrong_length, replies[0]), (other_mechanism, replies[1]), (no_metrics, replies[2])]]
    dropout = Message(Error(code=0, reason="client crashed"), reply_to=_request(replies[3]))
    with pytest.raises(AggregationError, match="0 well-formed replies, min-replies is 2"):
        strategy.aggregate_train(1, broken + [dropout])
    reasons = " | ".join(r["reason"] for r in coordinator.rejected)
    assert "covers" in reasons and "'oue' report" in reasons and "lacks" in reasons
    assert len(coordinator.rejected) == 3 and coordinator.dropouts == 1


def test_round_completes_with_enough_replies_after_a_dropout():
    coordinator, strategy, messages = setup(small_config())
    replies = [client_reply(m, i) for i, m in enumerate(messages[:3])]
    dropout = Message(Error(code=0, reason="timeout"), reply_to=_request(replies[0]))
    _, metrics = strategy.aggregate_train(1, replies + [dropout])
    assert metrics["valid-replies"] == 3 and coordinator.dropouts == 1


def test_budget_refuses_a_round_without_a_guarantee():
    # Weights in the clear give no client-level guarantee, so any budget refuses the first round.
    with pytest.raises(PrivacyBudgetExhausted, match="no guarantee.*budget of 100"):
        setup(small_config(budget_epsilon=100.0))
