"""Server momentum (FedAvgM) on the channel's average: the closed form, pruned weights stay pruned, checkpoints
keep the buffer, and it costs no privacy (it reads the noised average only)."""

import numpy as np
import pytest

from fedprune.federated.server_optimizer import ServerOptimizer
from fedprune.validation import ConfigError
from strategy_helpers import client_reply, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")


def test_plain_is_the_average_and_momentum_follows_the_closed_form():
    sent = {"w": np.array([1.0, 2.0]), "n": np.array(3)}
    average = {"w": np.array([2.0, 0.0], dtype=np.float32), "n": np.array(5)}
    assert ServerOptimizer().step(sent, average) == average
    opt = ServerOptimizer(learning_rate=0.5, momentum=0.9)
    first = opt.step(sent, average)  # m = a - s = (1, -2); new = s + 0.5 m
    np.testing.assert_allclose(first["w"], [1.5, 1.0])
    assert first["w"].dtype == np.float32 and first["n"] == 5  # a counter is the average's
    second = opt.step(first, {"w": np.array([1.5, 2.0], dtype=np.float32)})  # m = 0.9 (1, -2) + (0, 1)
    np.testing.assert_allclose(second["w"], np.array([1.5, 1.0]) + 0.5 * np.array([0.9, -0.8]), rtol=1e-6)


def test_a_pruned_weight_forgets_its_momentum_and_the_buffer_survives_a_checkpoint():
    opt = ServerOptimizer(momentum=0.5)
    opt.step({"w": np.zeros(3)}, {"w": np.array([1.0, 2.0, 3.0])})
    opt.forget({"w": np.array([True, False, True])})
    np.testing.assert_array_equal(opt.buffer["w"], [1.0, 0.0, 3.0])
    again = ServerOptimizer(momentum=0.5)
    again.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(again.buffer["w"], opt.buffer["w"])
    with pytest.raises(ConfigError, match="server momentum is unreadable"):
        again.load_state_dict({"w": {"shape": [3]}})


def test_server_momentum_changes_the_model_not_the_ledger():
    """Two coordinators fed the same replies: one with momentum. The figures are equal (post-processing); the
    models differ; a coordinator restored from the momentum one's checkpoint state steps as it does."""
    outcomes = {}
    for momentum in (0.0, 0.9):
        config = small_config(weight_channel="server-clipping", method="server-magnitude", server_momentum=momentum,
                              server_learning_rate=1 - momentum / 2, num_server_rounds=3, prune_start=2, prune_end=2)
        coordinator, strategy, messages = setup(config)
        replies = [client_reply(m, i) for i, m in enumerate(messages)]
        arrays, _ = strategy.aggregate_train(1, replies)
        outcomes[momentum] = (coordinator, {name: a.numpy() for name, a in arrays.items()})
    (plain, plain_weights), (fedavgm, weights) = outcomes[0.0], outcomes[0.9]
    assert plain.epsilon() == fedavgm.epsilon() and fedavgm.epsilon()["client"] > 0
    assert fedavgm.server_optimizer.buffer and any(not np.array_equal(plain_weights[n], weights[n]) for n in weights)
    restored = setup(fedavgm.config)[0]
    restored.load_state_dict(fedavgm.state_dict())
    for name, value in fedavgm.server_optimizer.buffer.items():
        np.testing.assert_array_equal(restored.server_optimizer.buffer[name], value)


def test_mask_only_refuses_a_server_optimizer():
    from strategy_helpers import mask_only_config
    with pytest.raises(ConfigError, match="server-momentum must be 0.0"):
        mask_only_config(**{"server-momentum": 0.9})
