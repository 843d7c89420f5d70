"""The pruning strategy on real Flower messages from the real ClientApp handler, without a simulation engine.

tests/strategy_helpers.py holds the grid and the calls these tests share with test_units.py.
"""

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.serverapp.exception import AggregationError, PrivacyBudgetExhausted

from fedprune.federated import keys, wire
from fedprune.validation import ConfigError
from strategy_helpers import client_reply, replace_arrays, request_for, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")


def test_private_round_sends_only_encoded_masks_and_prunes():
    config = small_config()
    coordinator, strategy, messages = setup(config)
    assert len(messages) == 4
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    for reply in replies:
        report = dict(reply.content.config_records[keys.REPORT])
        assert report["mechanism"] != "exact"  # never the exact mask
        assert report["mechanism"] == "randomized-response" and report["setting.epsilon"] == 1.0
        assert wire.decode_report(report).bits.size == (strategy.plan.report_length + 7) // 8
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 4 and coordinator.density() == pytest.approx(0.5, abs=1e-3)
    kept = {name: int(mask.sum()) for name, mask in coordinator.masks.items()}
    assert {name: arrays[name].numpy().shape[0] for name in kept} == kept  # compact under the new mask
    eps = coordinator.epsilon()
    assert eps["client"] is None and eps["record"] is None  # weights went in the clear
    assert coordinator.epsilon(mask_channel=True)["client"] > 0


@pytest.mark.parametrize("change", [{"epsilon_per_decision": float("inf")}, {"mechanism": "exact"}])
def test_exact_votes_rounds_are_counted_as_unprotected(change):
    config = small_config(**change)
    coordinator, strategy, messages = setup(config)
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    for reply in replies:  # an ordinary mask report of the exact mechanism: the true mask, kept count checked
        report = wire.decode_report(dict(reply.content.config_records[keys.REPORT]))
        assert report.mechanism == "exact" and report.settings["kept"] == strategy.plan.kept
    strategy.aggregate_train(1, replies)
    assert coordinator.epsilon(mask_channel=True) == {"record": None, "client": None}


def test_the_round_mechanism_is_built_once_per_round(monkeypatch):
    from fedprune.privacy import mechanisms
    coordinator, strategy, messages = setup(small_config())
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    built = []
    real = mechanisms.build
    monkeypatch.setattr(mechanisms, "build", lambda *a, **kw: built.append(1) or real(*a, **kw))
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 4 and len(built) == 1  # checks and tally of four replies, one build


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
    report = dict(replies[0].content.config_records[keys.REPORT])
    report["length"] = report["length"] - 1
    wrong_length[keys.REPORT] = ConfigRecord(report)
    other_mechanism = RecordDict(dict(replies[1].content))
    report = dict(replies[1].content.config_records[keys.REPORT])
    report["mechanism"] = "oue"
    other_mechanism[keys.REPORT] = ConfigRecord(report)
    no_metrics = RecordDict({keys.ARRAYS: replies[2].content[keys.ARRAYS]})
    broken = [Message(content=c, reply_to=request_for(r)) for c, r in
              [(wrong_length, replies[0]), (other_mechanism, replies[1]), (no_metrics, replies[2])]]
    dropout = Message(Error(code=0, reason="client crashed"), reply_to=request_for(replies[3]))
    with pytest.raises(AggregationError, match="0 well-formed replies, min-replies is 2"):
        strategy.aggregate_train(1, broken + [dropout])
    reasons = " | ".join(r["reason"] for r in coordinator.rejected)
    assert "covers" in reasons and "'oue' report" in reasons and "lacks" in reasons
    assert len(coordinator.rejected) == 3 and coordinator.dropouts == 1


def test_round_completes_with_enough_replies_after_a_dropout():
    coordinator, strategy, messages = setup(small_config())
    replies = [client_reply(m, i) for i, m in enumerate(messages[:3])]
    dropout = Message(Error(code=0, reason="timeout"), reply_to=request_for(replies[0]))
    _, metrics = strategy.aggregate_train(1, replies + [dropout])
    assert metrics["valid-replies"] == 3 and coordinator.dropouts == 1


@pytest.mark.parametrize("changes, why", [
    ({}, "weight channel clear gives no client-level guarantee"),
    ({"weight_channel": "dpsgd"}, "weight channel dpsgd gives no client-level guarantee"),
    ({"weight_channel": "server-clipping", "epsilon_per_decision": float("inf")}, "exact mask votes"),
])
def test_a_budget_that_no_round_could_meet_is_refused_before_any_work(changes, why):
    with pytest.raises(ConfigError, match=f"budget-epsilon 100 binds.*{why}"):
        setup(small_config(budget_epsilon=100.0, **changes))
    setup(small_config(budget_epsilon=100.0, weight_channel="dpsgd", unit="record"))  # records are protected


def test_budget_refuses_the_round_that_would_overspend():
    with pytest.raises(PrivacyBudgetExhausted, match="epsilon .* budget of 0.5"):
        setup(small_config(budget_epsilon=0.5, weight_channel="server-clipping"))
