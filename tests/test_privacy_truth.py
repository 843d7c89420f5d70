"""End-to-end privacy truth on the real strategy, coordinator and ClientApp handler.

What a client sends is what the ledger counts; the published mask comes from the noised average;
post-processing of DP-SGD weights is free at record level and only there; the budget check never
lets a round overspend; every figure names whom it holds against.
"""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import PrivacyBudgetExhausted

from fedprune.federated import keys
from fedprune.federated.keys import MalformedReply
from fedprune.privacy.closed_form import analytic_gaussian_epsilon, rr_composition_epsilon
from strategy_helpers import ListGrid, client_reply, request_for, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")
DELTA = 1e-5


def with_metrics(reply: Message, **extra) -> Message:
    content = RecordDict(dict(reply.content))
    content[keys.METRICS] = MetricRecord({**dict(reply.content[keys.METRICS]), **extra})
    return Message(content=content, reply_to=request_for(reply))


@pytest.mark.parametrize("channel, sent", [
    ("clear", {"client-id", "num-examples", "train-loss", "train-seconds"}),
    ("server-clipping", {"client-id"}),
    ("client-clipping", {"client-id"}),
    ("dpsgd", {"client-id", "num-examples", "dpsgd-noise", "dpsgd-rate", "dpsgd-steps"}),
])
def test_clients_send_only_the_metrics_their_guarantee_counts(channel, sent):
    coordinator, strategy, messages = setup(small_config(weight_channel=channel, local_epochs=1))
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    assert all(set(reply.content[keys.METRICS]) == sent for reply in replies)
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 4 and ("train-loss" in metrics) == (channel == "clear")
    assert set(coordinator.privacy()["channels"]["metrics"]["sent"]) == sent


def test_a_reply_with_an_uncounted_metric_is_rejected_and_still_charged():
    coordinator, strategy, messages = setup(small_config(weight_channel="server-clipping", local_epochs=1))
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    replies[0] = with_metrics(replies[0], **{"train-loss": 0.5, "num-examples": 10})
    strategy.aggregate_train(1, replies)
    assert coordinator.rejected[0]["client"] == "0" and "['num-examples', 'train-loss']" in coordinator.rejected[0][
        "reason"]
    assert coordinator.accountant.epsilon(DELTA, "client", "0") == coordinator.accountant.epsilon(DELTA, "client", "1")


def test_the_published_mask_comes_from_the_noised_average():
    # Server magnitude pruning under enormous weight noise: a mask chosen from the exact average would be the
    # same whatever the noise; one chosen from the noised average is a fresh draw each time.
    masks = []
    for seed in (1, 2):
        config = small_config(method="server-magnitude", weight_channel="server-clipping", noise_multiplier=1000.0,
                              privacy_seed=seed, local_epochs=1)
        coordinator, strategy, messages = setup(config)
        strategy.aggregate_train(1, [client_reply(m, i) for i, m in enumerate(messages)])
        masks.append(np.concatenate([m.numpy().ravel() for m in coordinator.masks.values()]))
    assert masks[0].mean() == pytest.approx(masks[1].mean(), abs=1e-3)  # same density
    assert (masks[0] != masks[1]).mean() > 0.2  # but the noise picked the weights


def test_client_clipping_clients_clip_and_the_server_noises_the_clipped_mean():
    config = small_config(weight_channel="client-clipping", clipping_norm=0.05, noise_multiplier=1e-6,
                          local_epochs=1)
    coordinator, strategy, messages = setup(config)
    assert messages[0].content[keys.CONFIG][keys.CLIPPING_NORM] == 0.05
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    for reply in replies:
        update = [reply.content[keys.ARRAYS][n].numpy() - strategy.sent[n] for n in strategy.sent]
        assert math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update)) <= 0.05 * (1 + 1e-5)
    assert coordinator.privacy()["end_to_end"]["client"]["trust_model"] == "local"  # nothing released yet
    strategy.aggregate_train(1, replies)
    assert coordinator.privacy()["end_to_end"]["client"]["trust_model"] == "central"


def test_weight_noise_composes_like_the_analytic_gaussian_whatever_the_reply_count():
    config = small_config(weight_channel="server-clipping", noise_multiplier=4.0, method="server-magnitude",
                          local_epochs=1, num_server_rounds=3)
    coordinator, strategy, messages = setup(config)
    replies = [client_reply(m, i) for i, m in enumerate(messages)]
    dropout = Message(Error(code=0, reason="timeout"), reply_to=request_for(replies[3]))
    strategy.aggregate_train(1, replies[:2] + [dropout])
    exact = analytic_gaussian_epsilon(4.0, DELTA, sensitivity=2.0)
    for unit in ("record", "client"):
        assert exact <= coordinator.epsilon()[unit] <= exact + 1e-3
    assert coordinator.accountant.epsilon(DELTA, "client", "3") == 0.0  # it dropped out: nothing released


def test_the_budget_check_never_lets_a_round_overspend_when_clients_drop_out():
    # budget: two rounds' worth of weight noise; rounds run with half the clients dropping out
    two_rounds = analytic_gaussian_epsilon(2.0, DELTA, sensitivity=2.0 * math.sqrt(2))
    config = small_config(weight_channel="server-clipping", noise_multiplier=2.0, method="server-magnitude",
                          local_epochs=1, num_server_rounds=5, budget_epsilon=two_rounds + 0.01)
    coordinator, strategy, messages = setup(config)
    spent, arrays = [], None
    with pytest.raises(PrivacyBudgetExhausted, match="budget"):
        for server_round in range(1, 6):
            if server_round > 1:
                messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), ListGrid()))
            replies = [client_reply(m, i) for i, m in enumerate(messages[:2])]
            dropouts = [Message(Error(code=0, reason="timeout"), reply_to=request_for(replies[0]))] * 2
            arrays, _ = strategy.aggregate_train(server_round, replies + dropouts)
            spent.append(coordinator.epsilon()["client"])
    assert len(spent) == 2 and max(spent) <= config.budget_epsilon


def test_dpsgd_magnitude_masks_are_post_processing_at_record_level():
    config = small_config(weight_channel="dpsgd", epsilon_per_decision=1.0)
    coordinator, _, _ = setup(config)
    plan = coordinator.plan(1)
    history = {"history": [(1.5, 1.0, 20)]}  # full-batch DP-SGD: 20 Gaussians, replace-one sensitivity 2
    coordinator.record(plan, ["0"], dpsgd=history)
    dpsgd_alone = analytic_gaussian_epsilon(1.5, DELTA, sensitivity=2 * math.sqrt(20))
    assert dpsgd_alone <= coordinator.epsilon()["record"] <= dpsgd_alone + 1e-3  # the mask report costs nothing more
    assert coordinator.epsilon()["client"] is None
    assert coordinator.accountant.post_processed("record") == [
        "mask reports scored by magnitude from the dpsgd-trained weights alone"]
    mask_alone = rr_composition_epsilon(1.0, plan.hamming_bound, DELTA)
    for unit in ("record", "client"):  # alone, the mask is charged: post-processing is free only beside DP-SGD
        assert mask_alone <= coordinator.epsilon(mask_channel=True)[unit] <= mask_alone * (1 + 1e-6)
    statement = coordinator.privacy()
    assert statement["channels"]["mask"]["record"]["trust_model"] == "local"
    assert statement["end_to_end"]["record"]["trust_model"] == "local"
    assert statement["against_the_server"]["record"] == coordinator.epsilon()["record"]


def test_a_taylor_mask_reads_raw_gradients_and_is_charged():
    config = small_config(weight_channel="dpsgd", scorer="taylor", epsilon_per_decision=1.0)
    coordinator, _, _ = setup(config)
    plan = coordinator.plan(1)
    coordinator.record(plan, ["0"], dpsgd={"history": [(1.5, 1.0, 20)]})
    dpsgd_alone = analytic_gaussian_epsilon(1.5, DELTA, sensitivity=2 * math.sqrt(20))
    mask_alone = rr_composition_epsilon(1.0, plan.hamming_bound, DELTA)
    assert coordinator.epsilon()["record"] >= max(dpsgd_alone, mask_alone)
    assert coordinator.accountant.post_processed("record") == []


@pytest.mark.parametrize("changes, record, client", [
    ({}, ("none", "no one"), ("none", "no one")),
    ({"weight_channel": "server-clipping"}, ("central", "everyone but the server"),
     ("central", "everyone but the server")),
    ({"weight_channel": "dpsgd"}, ("local", "everyone, the server included"), ("none", "no one")),
    ({"weight_channel": "server-clipping", "mechanism": "central", "epsilon_per_report": 50.0},
     ("central", "everyone but the server"), ("central", "everyone but the server")),
    ({"mode": "mask-only", "target_sparsity": 0.5}, ("local", "everyone, the server included"),
     ("local", "everyone, the server included")),
])
def test_every_figure_names_its_trust_model(changes, record, client):
    coordinator, strategy, messages = setup(small_config(local_epochs=1, **changes))
    coordinator.record(strategy.plan, ["0"], dpsgd={"history": [(1.5, 1.0, 20)]})
    statement = coordinator.privacy()
    for unit, (model, against) in (("record", record), ("client", client)):
        figure = statement["end_to_end"][unit]
        assert (figure["trust_model"], figure["holds_against"]) == (model, against)
        assert (figure["epsilon"] is None) == (model == "none") == bool(figure["why_none"])
        assert (statement["against_the_server"][unit] is None) == (model != "local")
    if changes.get("mode") == "mask-only":
        assert "weights" not in statement["channels"] and statement["channels"]["metrics"]["sent"] == ["client-id"]


def test_a_mask_only_reply_with_a_loss_is_rejected():
    from fedprune.config import resolve
    from fedprune.federated.local import new_model
    from fedprune.federated.mask_only import MaskOnlyCoordinator
    from fedprune.pruning.masks import prunable_parameters

    config = resolve({"mode": "mask-only", "dataset": "digits", "model": "mlp", "num-clients": 4})
    model = new_model(config)
    coordinator = MaskOnlyCoordinator(config, {n: tuple(v.shape) for n, v in model.state_dict().items()},
                                      list(prunable_parameters(model)))
    with pytest.raises(MalformedReply, match="not counted by mask-only"):
        coordinator.reply_identity({"client-id": 0, "train-loss": 0.3})


def test_dpsgd_noise_comes_from_the_privacy_randomness_not_the_run_seed():
    import torch

    from fedprune.training.dpsgd import DPSGD
    from fedprune.federated.local import client_data, client_round, new_model
    from fedprune.pruning.masks import full_masks
    from fedprune.privacy.rng import privacy_rng

    config = small_config(weight_channel="dpsgd", local_epochs=1)
    coordinator, strategy, _ = setup(config)
    plan = strategy.plan
    plan = type(plan)(**{**plan.to_mapping(), "report": False, "prune": False})
    masks = full_masks({n: torch.empty(s) for n, s in coordinator.mask_shapes.items()})

    def weights(noise_seed):
        result = client_round(config, plan, new_model(config), strategy.sent, masks, client_data(config, 0, 4),
                              client=0, generator=torch.Generator().manual_seed(0),  # the public, seeded one
                              privacy_rng=privacy_rng(noise_seed, stream=(1, 0)), dp=DPSGD(noise_multiplier=1.0,
                                                                                            max_grad_norm=1.0))
        return np.concatenate([v.ravel() for v in result.weights.values()])

    assert np.array_equal(weights(1), weights(1))       # a privacy seed reproduces a simulation
    assert not np.allclose(weights(1), weights(2))      # the run's seed alone does not fix the noise
    assert not np.allclose(weights(None), weights(None))  # OS entropy: fresh noise every time
