"""Training with masks enforced, evaluation and gradient statistics, against hand counts and controls."""

import copy
import math
import pickle
from functools import lru_cache

import numpy as np
import pytest
import torch
from torch import nn

from fedprune.data.datasets import load_dataset, make_loader
from fedprune.training.dpsgd import DPSGD
from fedprune.pruning.masks import apply_masks, prunable_parameters
from fedprune.training.models import build_model
from fedprune.pruning.compute import compute_masks
from fedprune.training.train import MaskEnforcer, TrainConfig, evaluate, gradient_statistics, train
from fedprune.validation import ConfigError


def random_problem(seed=0, n=200, features=20, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def random_masks(model, seed=0, keep=0.5):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=g) < keep for name, p in prunable_parameters(model).items()}


def detached(model):
    return {name: p.detach().clone() for name, p in prunable_parameters(model).items()}


@lru_cache(maxsize=1)
def digits():
    return load_dataset("digits", seed=0)


# --- masks stay enforced -----------------------------------------------------------------------

ENFORCED = {
    "sgd-momentum": (TrainConfig(epochs=10, batch_size=10, learning_rate=0.05, momentum=0.9), None),
    "adam": (TrainConfig(epochs=10, batch_size=10, optimizer="adam", learning_rate=0.01), None),
    "sgd-weight-decay": (TrainConfig(epochs=10, batch_size=10, momentum=0.9, weight_decay=0.05), None),
    "adam-weight-decay": (TrainConfig(epochs=10, batch_size=10, optimizer="adam", learning_rate=0.01,
                                      weight_decay=0.05), None),
    "dp-sgd": (TrainConfig(epochs=10, batch_size=10, momentum=0.9, weight_decay=0.05), (1.0, 1.0)),
}


@pytest.mark.parametrize("case", sorted(ENFORCED))
def test_pruned_weights_stay_exactly_zero_for_200_steps(case):
    config, dp_settings = ENFORCED[case]
    x, y = random_problem()
    loader = make_loader(x, y, config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(1))
    model = build_model("mlp", (20,), 4, seed=0, hidden=(32,))
    masks = random_masks(model)
    before = detached(model)
    assert all(bool((before[n][~m] != 0).all()) for n, m in masks.items())  # pruned start non-zero
    dp = DPSGD(*dp_settings) if dp_settings else None
    result = train(model, loader, config, masks=masks, dp=dp, generator=torch.Generator().manual_seed(2))
    assert result["steps"] == 200
    after = detached(model)
    for name, keep in masks.items():
        assert torch.equal(after[name][~keep], torch.zeros(int((~keep).sum())))
        # The kept weights trained (some sit on ReLU units that never fire, so not all of them).
        assert (after[name][keep] != before[name][keep]).float().mean() > 0.5

    # Control: zeroing the pruned weights once and training without the enforcer revives them.
    control = build_model("mlp", (20,), 4, seed=0, hidden=(32,))
    apply_masks(control, masks)
    train(control, loader, config, dp=DPSGD(*dp_settings) if dp_settings else None,
          generator=torch.Generator().manual_seed(2))
    revived = detached(control)
    assert all((revived[n][~m] != 0).float().mean() > 0.5 for n, m in masks.items())


def test_enforcer_zeroes_gradients_and_inherited_optimizer_state():
    x, y = random_problem()
    model = build_model("mlp", (20,), 4, seed=0, hidden=(32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    for _ in range(3):  # dense steps: momentum buffers become non-zero everywhere
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    masks = random_masks(model, seed=3)
    params = prunable_parameters(model)
    assert all(bool((optimizer.state[params[n]]["momentum_buffer"][~m] != 0).all()) for n, m in masks.items())
    with MaskEnforcer(model, masks) as enforcer:
        enforcer.attach(optimizer)
        for name, keep in masks.items():
            assert torch.equal(params[name][~keep], torch.zeros(int((~keep).sum())))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for name, keep in masks.items():  # the tensor hooks masked the gradient during backward
            assert torch.equal(params[name].grad[~keep], torch.zeros(int((~keep).sum())))
            assert bool((params[name].grad[keep] != 0).any())
        optimizer.step()
        for name, keep in masks.items():
            assert torch.equal(params[name][~keep], torch.zeros(int((~keep).sum())))
            buffer = optimizer.state[params[name]]["momentum_buffer"]
            assert torch.equal(buffer[~keep], torch.zeros(int((~keep).sum())))
            assert bool((buffer[keep] != 0).all())
    # After exit the hooks are gone: gradients reach pruned weights again, and the model copies.
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(bool((params[n].grad[~m] != 0).any()) for n, m in masks.items())
    assert all(not p._backward_hooks for p in model.parameters() if p._backward_hooks is not None)
    copy.deepcopy(model)
    pickle.loads(pickle.dumps(model))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_enforcer_works_through_opacus_wrapping_and_noise():
    x, y = random_problem(n=16)
    model = build_model("mlp", (20,), 4, seed=0, hidden=(8,))
    masks = random_masks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(x, y, 16, shuffle=False)
    with MaskEnforcer(model, masks) as enforcer, \
            DPSGD(1.0, 1.0).make_private(model, optimizer, loader, torch.Generator().manual_seed(0)) as private:
        enforcer.attach(private.optimizer)
        assert "_module.features.0.weight" in dict(private.module.named_parameters())  # renamed by Opacus
        private.optimizer.zero_grad()
        nn.functional.cross_entropy(private.module(x), y).backward()
        enforcer.mask_gradients()
        for name, keep in masks.items():
            sample = model.get_parameter(name).grad_sample  # per-example gradients, (16, *shape)
            assert sample.shape == (16, *keep.shape)
            assert torch.equal(sample[:, ~keep], torch.zeros_like(sample[:, ~keep]))
            assert bool((sample[:, keep] != 0).any())
        private.optimizer.step()
        for name, keep in masks.items():
            # What the wrapped optimizer stepped with: the noisy gradient, masked after the noise.
            grad = model.get_parameter(name).grad
            assert torch.equal(grad[~keep], torch.zeros(int((~keep).sum())))
            assert bool((grad[keep] != 0).all())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    copy.deepcopy(model)


# --- random labels and a real-label sanity check -----------------------------------------------

DIGITS_CONFIG = TrainConfig(epochs=15, optimizer="adam", learning_rate=0.003, momentum=0.0, batch_size=64)


def dense_then_pruned(y_train, y_test, seed=0):
    """Train an MLP dense, prune 90% by magnitude, fine-tune; accuracies on train and test labels."""
    data = digits()
    loader = make_loader(data.x_train, y_train, 64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    train_eval = make_loader(data.x_train, y_train, 512, shuffle=False)
    test_eval = make_loader(data.x_test, y_test, 512, shuffle=False)
    model = build_model("mlp", data.input_shape, data.num_classes, seed=seed, hidden=(128,))
    train(model, loader, DIGITS_CONFIG)
    dense = (evaluate(model, train_eval)["accuracy"], evaluate(model, test_eval)["accuracy"])
    masks = compute_masks(detached(model), sparsity=0.9)
    train(model, loader, TrainConfig(epochs=5, optimizer="adam", learning_rate=0.003, momentum=0.0), masks=masks)
    pruned = (evaluate(model, train_eval)["accuracy"], evaluate(model, test_eval)["accuracy"])
    return dense, pruned


def test_real_digit_labels_are_learned_dense_and_pruned():
    data = digits()
    (_, dense), (_, pruned) = dense_then_pruned(data.y_train, data.y_test)
    assert dense > 0.9 and pruned > 0.8


def test_random_labels_give_chance_accuracy_dense_and_pruned():
    # Labels drawn i.i.d. uniform over the 10 classes for train AND test (seeded). Given the
    # trained model, each test prediction then matches its label independently with
    # probability exactly 1/10, so test accuracy ~ Binomial(360, 0.1) / 360 exactly.
    # (With the true test labels it is not binomial: predictions of similar digits are
    # correlated, and over 30 seeds the spread was about 0.04, 2.5x the binomial 0.0158.)
    # Bound: 0.1 +- 4 sd, i.e. fail if 13 or fewer or 59 or more of 360 match; exact tail
    # probability 1.2e-4 per check, 2.4e-4 for the two checks (over the choice of seed).
    data = digits()
    rng = np.random.default_rng(12345)
    y_train = rng.integers(0, 10, len(data.y_train)).astype(np.int64)
    y_test = rng.integers(0, 10, len(data.y_test)).astype(np.int64)
    (dense_fit, dense_test), (pruned_fit, pruned_test) = dense_then_pruned(y_train, y_test)
    n = len(y_test)
    half_width = 4 * math.sqrt(0.1 * 0.9 / n)
    assert abs(dense_test - 0.1) <= half_width and abs(pruned_test - 0.1) <= half_width
    # The model did fit its random training labels (so chance on test is not "did not train"):
    # without fitting, train accuracy ~ Binomial(1437, 0.1) / 1437, and 0.1 + 6 sd = 0.1475 is
    # exceeded with probability 9e-9.
    assert dense_fit > 0.1 + 6 * math.sqrt(0.09 / len(y_train))


# --- evaluate and train's figures ----------------------------------------------------------------

def hand_linear():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model.bias.zero_()
    return model


def test_evaluate_matches_hand_count_and_loss():
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-1.0, -1.0], [1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 2, 1, 0])
    # logits = (x0, x1, 0): predictions 0, 1, 2, 0, and 0 for the all-tied last row (lowest
    # index wins) -> rows 0, 1, 2 and 4 are right: 4 of 5.
    logits = [(2, 0, 0), (0, 2, 0), (-1, -1, 0), (1, 0, 0), (0, 0, 0)]
    loss = sum(math.log(sum(math.exp(v) for v in row)) - row[label] for row, label in zip(logits, y.tolist())) / 5
    model = hand_linear()
    model.train()
    result = evaluate(model, make_loader(x, y, 2, shuffle=False))  # batches of 2, 2, 1
    assert result["accuracy"] == 4 / 5 and result["examples"] == 5
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert model.training  # mode restored
    model.eval()
    evaluate(model, make_loader(x, y, 2, shuffle=False))
    assert not model.training


def test_train_reports_example_weighted_mean_loss_and_counts():
    x, y = random_problem(n=23)  # batches of 10, 10, 3
    model = build_model("mlp", (20,), 4, seed=0, hidden=(8,))
    loader = make_loader(x, y, 10, shuffle=False)
    initial = evaluate(model, loader)["loss"]
    # A learning rate so small the weights barely move: every batch loss is the initial one.
    result = train(model, loader, TrainConfig(epochs=2, learning_rate=1e-12, momentum=0.0, batch_size=10))
    assert result["examples"] == 46 and result["steps"] == 6
    assert result["loss"] == pytest.approx(initial, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_a_step_count_overrides_epochs_and_cycles_the_loader():
    x, y = random_problem(n=23)  # batches of 10, 10, 3
    model = build_model("mlp", (20,), 4, seed=0, hidden=(8,))
    loader = make_loader(x, y, 10, shuffle=False)
    result = train(model, loader, TrainConfig(epochs=9, steps=5, learning_rate=1e-12, momentum=0.0))
    assert result["steps"] == 5 and result["examples"] == 10 + 10 + 3 + 10 + 10
    with pytest.raises(ConfigError, match="at least one batch"):
        train(model, [], TrainConfig(steps=1))


def test_training_is_reproducible_and_leaves_global_rng_alone():
    x, y = random_problem()
    state = torch.random.get_rng_state()
    weights = []
    for _ in range(2):
        model = build_model("mlp", (20,), 4, seed=0, hidden=(16,))
        loader = make_loader(x, y, 20, shuffle=True, generator=torch.Generator().manual_seed(7))
        train(model, loader, TrainConfig(epochs=2), dp=DPSGD(1.0, 1.0), generator=torch.Generator().manual_seed(8))
        train(model, loader, TrainConfig(epochs=1))
        weights.append(detached(model))
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert torch.equal(state, torch.random.get_rng_state())


# --- gradient statistics -------------------------------------------------------------------------

def closed_form_gradient(model, x, y):
    """d mean CE / dW for a Linear model: (softmax(xW^T + b) - onehot(y))^T x / n."""
    w, b = model.weight.detach().double(), model.bias.detach().double()
    p = torch.softmax(x.double() @ w.T + b, dim=1)
    p[torch.arange(len(y)), y] -= 1
    return p.T @ x.double() / len(y)


def test_gradient_statistics_match_closed_form():
    x, y = random_problem(n=12, features=3, classes=4)
    model = nn.Linear(3, 4)
    loader = make_loader(x, y, 5, shuffle=False)  # batches of 5, 5, 2
    batches = [closed_form_gradient(model, x[i:i + 5], y[i:i + 5]) for i in (0, 5, 10)]
    grads, fisher = gradient_statistics(model, loader)
    assert set(grads) == set(fisher) == {"weight"}
    assert torch.allclose(grads["weight"].double(), sum(batches) / 3, atol=1e-6)
    assert torch.allclose(fisher["weight"].double(), sum(g.square() for g in batches) / 3, atol=1e-6)
    assert model.weight.grad is None

    first, first_fisher = gradient_statistics(model, loader, max_batches=1)
    assert torch.allclose(first["weight"].double(), batches[0], atol=1e-6)
    assert torch.allclose(first_fisher["weight"].double(), batches[0].square(), atol=1e-6)


# --- bad input -----------------------------------------------------------------------------------

def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'; valid optimizers: adam, sgd"):
        TrainConfig(optimizer="rmsprop")


@pytest.mark.parametrize("settings", [{"epochs": 0}, {"learning_rate": 0.0}, {"learning_rate": math.nan},
                                      {"momentum": 1.0}, {"momentum": -0.1}, {"weight_decay": -1e-4},
                                      {"batch_size": 0}, {"epochs": 1.5}, {"steps": -1}, {"steps": 2.0},
                                      {"steps": True}])
def test_bad_train_settings_fail(settings):
    with pytest.raises(ConfigError):
        TrainConfig(**settings)


@pytest.mark.parametrize("bad", ["unknown name", "wrong shape", "not bool"])
def test_masks_that_do_not_match_the_model_fail_before_training(bad):
    x, y = random_problem(n=20)
    model = build_model("mlp", (20,), 4, seed=0, hidden=(8,))
    masks = random_masks(model)
    if bad == "unknown name":
        masks["features.9.weight"] = masks.pop("features.0.weight")
    elif bad == "wrong shape":
        masks["head.weight"] = masks["head.weight"].T.contiguous()
    else:
        masks["head.weight"] = masks["head.weight"].float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError):
        train(model, make_loader(x, y, 10, shuffle=False), TrainConfig(), masks=masks)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_other_bad_arguments_fail():
    x, y = random_problem(n=20)
    model = build_model("mlp", (20,), 4, seed=0, hidden=(8,))
    loader = make_loader(x, y, 10, shuffle=False)
    with pytest.raises(ConfigError, match="TrainConfig"):
        train(model, loader, {"epochs": 1})
    with pytest.raises(ConfigError, match="DPSGD"):
        train(model, loader, TrainConfig(), dp="dp")
    with pytest.raises(ConfigError, match="at least one example"):
        evaluate(model, make_loader(x[:0], y[:0], 10, shuffle=False))
