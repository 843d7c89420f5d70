"""Mask-only mode: real Flower messages through the real ClientApp handler, strategy and MaskOnlyCoordinator.

The fast tests drive the strategy without a simulation engine (as tests/test_strategy.py does);
the slow one runs `fedprune run --mode mask-only --rounds 2` on the default data (one local epoch instead of
eight, to stay well under 90 s) and resumes it to a third round.
"""

import hashlib
import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from implemented_rr import rr_exact
from strategy_helpers import NODES, ListGrid, mask_only_config

import clients.app
from fedprune import run_folder
from fedprune.federated import keys, wire
from fedprune.config import resolve
from fedprune.federated.coordinator import BudgetExhausted
from fedprune.federated.local import client_data, new_model
from fedprune.federated.mask_only import MaskOnlyCoordinator, client_round_mask_only
from fedprune.pruning.masks import prunable_parameters
from fedprune.privacy.rng import privacy_rng
from fedprune.training.supermask import frozen_state
from fedprune.validation import ConfigError
from server.strategy import FedPrune, to_record

pytestmark = pytest.mark.usefixtures("task_identity")

DELTA = 1e-5



def coordinator_for(config) -> MaskOnlyCoordinator:
    model = new_model(config)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return MaskOnlyCoordinator(config, shapes, list(prunable_parameters(model)))


def setup(config):
    coordinator = coordinator_for(config)
    strategy = FedPrune(coordinator, fraction_train=1.0, min_train_nodes=len(NODES), min_available_nodes=len(NODES))
    arrays = to_record(coordinator.compact({}))
    return coordinator, strategy, list(strategy.configure_train(1, arrays, ConfigRecord(), ListGrid()))


def client_reply(message: Message, partition: int) -> Message:
    context = Context(run_id=1, node_id=message.metadata.dst_node_id, state=RecordDict(), run_config={},
                      node_config={"partition-id": partition, "num-partitions": len(NODES)})
    return clients.app.train(message, context)


def rebuilt(reply: Message, change) -> Message:
    content = RecordDict(dict(reply.content))
    change(content)
    request = Message(content=RecordDict(), dst_node_id=reply.metadata.src_node_id, message_type="train")
    return Message(content=content, reply_to=request)


def closed_form(config, coordinates: int) -> float:
    return rr_exact(config.epsilon_per_decision, coordinates, DELTA, name="clipped-bernoulli")


def assert_matches(figure, exact):
    assert exact - 1e-9 <= figure <= exact * (1 + 1e-5) + 2e-4


# --- settings ------------------------------------------------------------------------------------

def test_mode_defaults_apply_only_to_settings_not_given():
    config = resolve({"mode": "mask-only", "num-server-rounds": 2})  # two rounds: the pruning schedule does not apply
    assert (config.optimizer, config.learning_rate, config.local_epochs, config.target_sparsity) == \
        ("adam", 0.2, 8, 0.5)
    assert resolve({"mode": "mask-only", "learning-rate": 0.05}).learning_rate == 0.05
    assert resolve({}).optimizer == "sgd"


@pytest.mark.parametrize("change", [{"mechanism": "subset"}, {"weight-channel": "dpsgd"}, {"method": "dense"},
                                    {"structure": "units"}, {"dense-baseline": True}, {"target-sparsity": 0.0},
                                    {"local-steps": 4}, {"server-momentum": 0.9}])
def test_settings_mask_only_cannot_honour_fail_before_any_work(change):
    with pytest.raises(ConfigError, match="mask-only"):
        resolve({"mode": "mask-only", **change})


def test_frozen_weights_are_the_same_in_another_process():
    config = mask_only_config()
    digest = hashlib.sha256(b"".join(v.tobytes() for v in frozen_state(config).values())).hexdigest()
    code = ("import hashlib; from fedprune.config import RunConfig; "
            "from fedprune.training.supermask import frozen_state; "
            "c = RunConfig(mode='mask-only', dataset='digits', model='mlp', target_sparsity=0.5); "
            "print(hashlib.sha256(b''.join(v.tobytes() for v in frozen_state(c).values())).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == digest


# --- one round on real messages ------------------------------------------------------------------

def test_a_round_uploads_one_packed_mask_sample_and_nothing_else():
    config = mask_only_config()
    coordinator, strategy, messages = setup(config)
    d = coordinator.length
    names = list(coordinator.masks)
    for message in messages:  # downlink: keep-probabilities only, never the frozen weights
        arrays = {name: array.numpy() for name, array in message.content[keys.ARRAYS].items()}
        assert list(arrays) == names and all(np.all(a == np.float32(0.5)) for a in arrays.values())
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    for reply in replies:
        assert len(reply.content[keys.ARRAYS]) == 0  # no weights, scores or probabilities
        report = dict(reply.content.config_records[keys.REPORT])
        assert report["mechanism"] == "clipped-bernoulli"
        assert report["setting.epsilon"] == 2.0 and report["setting.hamming_bound"] == d
        assert len(report["array.bits"]) == math.ceil(d / 8)
        serialized = recorddict_to_proto(reply.content).ByteSize()  # the whole serialized reply
        assert math.ceil(d / 8) < serialized < math.ceil(d / 8) + 1024
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 4 and coordinator.upload_bytes == [math.ceil(d / 8)] * 4
    probabilities = {name: array.numpy() for name, array in arrays.items()}
    assert list(probabilities) == names and all(((p >= 0) & (p <= 1)).all() for p in probabilities.values())
    assert coordinator.density() == pytest.approx(0.5, abs=1e-4)
    model = coordinator.expand(probabilities)
    frozen = frozen_state(config)
    for name in names:
        kept = coordinator.masks[name].numpy()
        assert np.array_equal(model[name][kept], frozen[name][kept]) and not model[name][~kept].any()
    eps = coordinator.epsilon()
    assert eps == coordinator.epsilon(mask_channel=True) and eps["record"] == eps["client"]
    assert_matches(eps["client"], closed_form(config, d))  # one report: d coordinates of eps-RR


def test_ledgers_are_per_client_and_compose_like_randomized_response():
    config = mask_only_config()
    coordinator = coordinator_for(config)
    d = coordinator.length
    coordinator.record(coordinator.plan(1), ["0", "1"])
    coordinator.record(coordinator.plan(2), ["0"])
    assert_matches(coordinator.accountant.epsilon(DELTA, "client", client="1"), closed_form(config, d))
    assert_matches(coordinator.epsilon()["client"], closed_form(config, 2 * d))  # the worst client
    assert coordinator.epsilon()["record"] == coordinator.epsilon()["client"]
    assert coordinator.epsilon() == coordinator.epsilon(mask_channel=True)


def test_the_budget_refuses_the_round_that_would_exceed_it():
    config = mask_only_config()
    d = coordinator_for(config).length
    coordinator = coordinator_for(config.replace(budget_epsilon=1.5 * closed_form(config, d)))
    coordinator.check_budget(coordinator.plan(1))  # one report fits
    coordinator.record(coordinator.plan(1), ["0", "1", "2", "3"])
    with pytest.raises(BudgetExhausted, match="round 2 would reach epsilon"):
        coordinator.check_budget(coordinator.plan(2))


def test_exact_samples_at_epsilon_inf_carry_no_guarantee():
    coordinator, strategy, messages = setup(mask_only_config(**{"epsilon-per-decision": "inf"}))
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    samples = []
    for reply in replies:
        report = dict(reply.content.config_records[keys.REPORT])
        decoded = wire.decode_report(report)  # an ordinary report of the exact mechanism, no kept count
        assert decoded.mechanism == "exact" and dict(decoded.settings)["threat_model"] == "none"
        assert "kept" not in decoded.settings and decoded.bits.size == math.ceil(coordinator.length / 8)
        samples.append(np.unpackbits(decoded.bits, count=coordinator.length, bitorder="little"))
    arrays, _ = strategy.aggregate_train(1, replies)
    flat = np.concatenate([array.numpy().reshape(-1) for array in arrays.values()])
    assert np.allclose(flat, np.mean(samples, axis=0))  # FedPM's mean of the sampled masks
    assert coordinator.epsilon() == {"record": None, "client": None}
    summary = coordinator.mechanism_summary()
    assert summary["mechanism"] == "exact" and summary["privacy"].startswith("none")


def _report_entry(key, value):
    def change(content):
        report = dict(content.config_records[keys.REPORT])
        report[key] = value(report[key]) if callable(value) else value
        content[keys.REPORT] = ConfigRecord(report)
    return change


BREAKAGES = {
    "weights sent": lambda c: c.__setitem__(keys.ARRAYS, ArrayRecord(
        {"head.weight": Array(np.zeros((10, 256), np.float32))})),
    "wrong length": _report_entry("length", lambda n: n - 1),
    "wrong mechanism": _report_entry("mechanism", "randomized-response"),
    "wrong dtype": _report_entry("array.bits", "not bytes"),
    "wrong byte count": _report_entry("array.bits", lambda b: b[:-1]),
    "exact votes": _report_entry("mechanism", "exact"),
    "no report": lambda c: c.pop(keys.REPORT),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_malformed_replies_are_rejected_logged_and_counted(breakage, caplog):
    coordinator, strategy, messages = setup(mask_only_config())
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    replies[0] = rebuilt(replies[0], BREAKAGES[breakage])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 3 and len(coordinator.rejected) == 1
    assert coordinator.rejected[0]["client"] == "0" and "rejected the reply" in caplog.text
    # the rejected reply still counts against its client's budget: the server received it
    assert_matches(coordinator.accountant.epsilon(DELTA, "client", client="0"),
                   closed_form(coordinator.config, coordinator.length))


# --- resume -------------------------------------------------------------------------------------

def _rounds(config, coordinator, arrays, rounds):
    for round in rounds:
        plan = coordinator.plan(round)
        replies = []
        for client in range(3):
            result = client_round_mask_only(
                config, plan, arrays, client_data(config, client, 3), client=client,
                generator=torch.Generator().manual_seed(1000 * round + client),
                privacy_rng=privacy_rng(config.privacy_seed, stream=(round, client)))
            replies.append(coordinator.check_reply(plan, result))
        arrays = coordinator.aggregate(plan, replies)
    return arrays


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(tmp_path):
    config = mask_only_config(**{"num-clients": 3})
    whole = coordinator_for(config)
    final = _rounds(config, whole, whole.compact({}), [1, 2])

    first = coordinator_for(config)
    run_folder.save_checkpoint(tmp_path, 1, _rounds(config, first, first.compact({}), [1]), first.state_dict())
    round, arrays, state = run_folder.load_checkpoint(tmp_path)
    resumed = coordinator_for(config)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    again = _rounds(config, resumed, arrays, [round + 1])

    assert all(np.array_equal(final[name], again[name]) for name in final)
    assert resumed.state_dict() == whole.state_dict()  # mask, ledgers (neither lost nor counted twice)
    assert all(np.array_equal(a, b) for a, b in zip(whole.expand(final).values(), resumed.expand(again).values()))


# --- the command line, on the default data --------------------------------------------------------

@pytest.mark.slow
def test_fedprune_run_mask_only_two_rounds_then_resume(tmp_path, capfd):
    from server.report import number
    from simulations.cli import main

    base = ["run", "--mode", "mask-only", "--out", str(tmp_path), "--name", "mo", "--quiet", "--set", "privacy-seed=5",
            "--set", "local-epochs=1"]  # a quarter of the default training: the test is about the plumbing
    assert main(base + ["--rounds", "2"]) == 0
    folder = tmp_path / "mo"
    summary = json.loads((folder / run_folder.SUMMARY).read_text())
    d = summary["mechanism"]["hamming_bound"]
    assert summary["mode"] == "mask-only" and summary["rounds"] == 2 and d == summary["mechanism"]["length"]
    assert summary["density"] == pytest.approx(0.5, abs=1e-4)
    assert summary["epsilon"] == summary["mask_channel_epsilon"]  # end to end: nothing else is released
    assert_matches(summary["epsilon"]["client"], closed_form(mask_only_config(), 2 * d))
    assert summary["upload_bytes_per_client_round"] == math.ceil(d / 8)
    assert summary["dense_upload_bytes_per_client_round"] > 32 * math.ceil(d / 8)
    report = (folder / run_folder.REPORT).read_text()
    assert "Mode **mask-only**" in report and "None" not in report
    out = capfd.readouterr().out  # the supervised child's final lines: figures for people, no Python None
    eps = summary["epsilon"]["client"]
    assert f"epsilon, client level, end to end: {number(eps)} at delta 1e-05, local trust model: holds against " \
           "everyone, the server included" in out and "None" not in out

    assert main(["run", "--resume", str(folder), "--rounds", "3", "--quiet"]) == 0
    summary = json.loads((folder / run_folder.SUMMARY).read_text())
    rounds = [json.loads(line)["round"] for line in (folder / run_folder.METRICS).read_text().splitlines()]
    assert rounds == [0, 1, 2, 3] and summary["rounds"] == 3
    assert_matches(summary["epsilon"]["client"], closed_form(mask_only_config(), 3 * d))

    # the run folder exports and analyzes like any other (the frozen weights under the final mask)
    assert main(["export", str(folder), "-o", str(tmp_path / "mo.fpm"), "--no-calibrate"]) == 0
    assert main(["analyze", str(folder)]) == 0
    analysis = json.loads((folder / run_folder.ANALYSIS).read_text())
    assert analysis["density"] == pytest.approx(0.5, abs=1e-4)
