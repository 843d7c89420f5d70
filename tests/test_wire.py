"""The wire format: typed request and reply, only what a client needs, Flower's own keys left alone."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict

from fedprune.federated import keys, wire
from fedprune.federated.keys import MalformedReply
from fedprune.config import SERVER_ONLY
from fedprune.privacy.mechanisms import MaskReport
from fedprune.validation import ConfigError
from strategy_helpers import client_reply, request_for, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")


def test_a_request_carries_only_what_a_client_needs_and_reads_back_the_same():
    config = small_config(run_name="private-name", output_dir="/srv/secret", budget_epsilon=1e9,
                          weight_channel="server-clipping")
    coordinator, strategy, messages = setup(config)
    values = dict(messages[0].content.config_records[keys.CONFIG])
    sent = {key[len(keys.SETTING_PREFIX):] for key in values if key.startswith(keys.SETTING_PREFIX)}
    assert sent == set(config.to_mapping()) - SERVER_ONLY
    assert not any("/srv/secret" in str(value) or "private-name" in str(value) or value == 1e9
                   for value in values.values())
    request = wire.TrainRequest.from_config(values)
    assert request.plan == strategy.plan
    for key in sent:  # the client resolves what it was sent to the server's values
        assert request.config.to_mapping()[key] == config.to_mapping()[key]
    packed, length = coordinator.packed_mask()
    assert np.array_equal(request.mask_for(length), packed)
    with pytest.raises(ConfigError, match="client and server run different models"):
        request.mask_for(length + 1)


def test_keys_flower_adds_are_left_alone_by_the_client():
    coordinator, strategy, messages = setup(small_config())
    message = messages[0]
    values = dict(message.content.config_records[keys.CONFIG])
    assert values["server-round"] == 1  # FedAvg's own key travels beside fedprune's
    values["some-key-a-later-flower-adds"] = "x"
    content = RecordDict({**dict(message.content), keys.CONFIG: ConfigRecord(values)})
    changed = Message(content=content, dst_node_id=message.metadata.dst_node_id, message_type="train")
    reply = client_reply(changed, 0)
    assert not reply.has_error()
    parsed = strategy.check_replies([reply])
    assert len(parsed) == 1 and not coordinator.rejected


def test_client_clipping_sends_flowers_clipping_norm():
    config = small_config(weight_channel="client-clipping", clipping_norm=0.7)
    values = dict(setup(config)[2][0].content.config_records[keys.CONFIG])
    assert values[keys.CLIPPING_NORM] == 0.7
    assert keys.CLIPPING_NORM not in dict(setup(small_config())[2][0].content.config_records[keys.CONFIG])


def test_a_reply_round_trips_and_a_bad_one_is_malformed():
    report = MaskReport(mechanism="randomized-response", length=10, settings={"epsilon": 1.0},
                        bits=np.array([0b1010], dtype=np.uint8).repeat(2))
    reply = wire.TrainReply(weights={"w": np.ones(3, np.float32)}, metrics={keys.CLIENT_ID: 4},
                                report=report, dpsgd={"history": [(1.2, 0.1, 30)]})
    arrays, metrics, values = reply.to_records()
    back = wire.TrainReply.from_records(arrays, metrics, values)
    assert back.metrics == metrics and back.dpsgd == {"history": [(1.2, 0.1, 30)]}
    assert np.array_equal(back.report.bits, report.bits) and back.report.mechanism == report.mechanism
    with pytest.raises(MalformedReply, match="DP-SGD metrics need all of"):
        wire.TrainReply.from_records(arrays, {keys.CLIENT_ID: 4, "dpsgd-noise": [1.0]}, None)
    with pytest.raises(MalformedReply, match="not a known byte array"):
        wire.TrainReply.from_records(arrays, metrics, {**values, "array.bogus": b"\x00"})


def test_the_strategy_counts_a_dropout_through_the_coordinator():
    coordinator, strategy, messages = setup(small_config())
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    replies[0] = Message(Error(code=0, reason="gone"), reply_to=request_for(replies[0]))
    assert len(strategy.check_replies(replies)) == 3 and coordinator.dropouts == 1


def test_a_client_accepts_every_setting_the_server_accepted():
    # a client resolves what it is sent with defaults for the server's own settings: no check may then fail
    for config in (small_config(num_clients=1, min_replies=1), small_config(mode="mask-only", local_epochs=1),
                   small_config(schedule="geometric", prune_start=2, prune_end=3, num_server_rounds=3)):
        coordinator, strategy, messages = setup(config)
        request = wire.TrainRequest.from_config(dict(messages[0].content.config_records[keys.CONFIG]))
        assert {k: v for k, v in request.config.to_mapping().items() if k not in SERVER_ONLY} == \
            {k: v for k, v in config.to_mapping().items() if k not in SERVER_ONLY}
