"""DP-SGD: one accountant across training calls, exact state round trips, closed-form checks."""

import copy
import json
import math
import pickle

import dp_accounting
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from opacus.accountants import create_accountant
from torch import nn

from fedprune.data.datasets import make_loader
from fedprune.training.dpsgd import DPSGD
from fedprune.training.models import build_model
from fedprune.privacy.events import Gaussian
from fedprune.training.train import TrainConfig, train
from fedprune.validation import ConfigError

DELTA = 1e-5


def problem(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=g), torch.randint(0, 4, (n,), generator=g)


def model(seed=0):
    return build_model("mlp", (20,), 4, seed=seed, hidden=(16,))


def train_dp(net, dp, n=200, batch=20, epochs=1, seed=0, steps=0):
    x, y = problem(n)
    loader = make_loader(x, y, batch, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return train(net, loader, TrainConfig(epochs=epochs, steps=steps, batch_size=batch), dp=dp,
                 generator=torch.Generator().manual_seed(seed + 1))


def fresh_opacus_epsilon(mechanism, history, delta=DELTA):
    accountant = create_accountant(mechanism)
    accountant.history = [tuple(entry) for entry in history]
    return accountant.get_epsilon(delta=delta)


def analytic_gaussian_epsilon(mu, delta):
    """Exact epsilon of mu-GDP at delta (Balle & Wang 2018), by bisection on the closed-form delta."""
    def phi(t):
        return 0.5 * math.erfc(-t / math.sqrt(2))

    def delta_of(eps):
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    low, high = 0.0, 100.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_of(middle) > delta else (low, middle)
    return high


# --- settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("noise, clip", [(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0), ("x", 1.0),
                                         (1.0, 0.0), (1.0, -2.0), (1.0, math.inf)])
def test_bad_settings_fail(noise, clip):
    with pytest.raises(ConfigError):
        DPSGD(noise, clip)


def test_unknown_accountant_lists_valid_ones_and_secure_is_a_bool():
    with pytest.raises(ConfigError, match="valid accountants: prv, rdp"):
        DPSGD(1.0, 1.0, accountant="gdp")
    with pytest.raises(ConfigError, match="secure"):
        DPSGD(1.0, 1.0, secure="yes")


def test_no_steps_cost_nothing_and_delta_is_checked():
    dp = DPSGD(1.0, 1.0)
    assert dp.epsilon(DELTA) == 0.0 and dp.events() == [] and dp.steps == 0
    for delta in (0.0, 1.0, math.nan):
        with pytest.raises(ConfigError):
            dp.epsilon(delta)


@pytest.mark.parametrize("steps", [3, 10, 23])
def test_a_step_count_takes_and_charges_exactly_those_poisson_batches(steps):
    # 10 batches an epoch: 3 stops inside the first pass, 23 crosses two epoch boundaries
    dp = DPSGD(1.1, 1.0)
    result = train_dp(model(), dp, epochs=5, steps=steps)
    assert result["steps"] == dp.steps == steps
    assert dp.history == [(1.1, 0.1, steps)]


# --- one accountant across calls -----------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["prv", "rdp"])
def test_accountant_adds_up_across_training_calls(mechanism):
    dp = DPSGD(1.1, 1.0, accountant=mechanism)
    net = model()
    first = train_dp(net, dp)  # 200 records, batch 20: 10 batches, Poisson rate 1/10
    assert first["steps"] == 10
    assert dp.history == [(1.1, 0.1, 10)]
    eps_one = dp.epsilon(DELTA)
    assert eps_one == fresh_opacus_epsilon(mechanism, dp.history)

    second = train_dp(net, dp, seed=5)
    assert dp.history == [(1.1, 0.1, 20)] and dp.steps == first["steps"] + second["steps"]
    eps_two = dp.epsilon(DELTA)
    assert eps_two > eps_one
    assert eps_two == fresh_opacus_epsilon(mechanism, [(1.1, 0.1, 20)])

    third = train_dp(net, dp, n=205, batch=20)  # 11 batches: a new rate, a new run
    assert third["steps"] == 11
    assert dp.history == [(1.1, 0.1, 20), (1.1, 1 / 11, 11)]
    assert dp.events() == [Gaussian(1.1, 0.1, 20), Gaussian(1.1, 1 / 11, 11)]
    assert dp.epsilon(DELTA) == fresh_opacus_epsilon(mechanism, dp.history) > eps_two


def test_model_is_clean_after_dp_training():
    net = model()
    dp = DPSGD(1.0, 1.0)
    train_dp(net, dp)
    for param in net.parameters():
        assert not any(hasattr(param, a) for a in ("grad_sample", "summed_grad", "_forward_counter"))
        assert param.grad is None
    for module in net.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not hasattr(module, "activations")
    clone = copy.deepcopy(net)
    restored = pickle.loads(pickle.dumps(net))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), restored.state_dict().values()))
    train_dp(clone, dp)  # a copy trains again, under the same accountant
    assert dp.steps == 20


# --- state -----------------------------------------------------------------------------------------

def test_state_round_trip_through_json_gives_the_same_epsilon():
    dp = DPSGD(0.9, 2.0)
    train_dp(model(), dp)
    train_dp(model(), dp, n=150, batch=50)
    state = json.loads(json.dumps(dp.state_dict()))
    assert state["kind"] == "fedprune.training.dpsgd" and state["version"] == 1
    assert state["noise_sources"] == {"seeded": 2, "os_entropy": 0}
    restored = DPSGD.from_state_dict(state)
    assert restored.history == dp.history and restored.events() == dp.events()
    assert restored.epsilon(DELTA) == dp.epsilon(DELTA)
    again = DPSGD(0.9, 2.0)
    again.load_state_dict(state)
    assert again.epsilon(DELTA) == dp.epsilon(DELTA)
    train_dp(model(), restored)  # and it keeps counting from there
    assert restored.steps == dp.steps + 10


def mutated(state, **changes):
    return {**state, **changes}


@pytest.mark.parametrize("change", [
    {"accountant": "rdp"}, {"noise_multiplier": 1.5}, {"max_grad_norm": 1.0}, {"secure": True},
    {"kind": "something.else"}, {"version": 2}, {"history": None}, {"history": [[0.9, 0.1]]},
    {"history": [[0.9, 0.1, 0]]}, {"history": [[0.9, 1.5, 3]]}, {"history": [[0.9, "x", 3]]},
    {"history": [[1.0, 0.1, 3]]}, {"history": [[0.9, 0.1, 2.5]]}, {"noise_sources": {"seeded": -1}},
])
def test_load_rejects_a_mismatched_or_malformed_state(change):
    source = DPSGD(0.9, 2.0)
    source.load_state_dict(mutated(source.state_dict(), history=[[0.9, 0.1, 7]]))
    state = json.loads(json.dumps(source.state_dict()))
    target = DPSGD(0.9, 2.0)
    target.load_state_dict(mutated(state, history=[[0.9, 0.2, 3]]))
    with pytest.raises(ConfigError):
        target.load_state_dict(mutated(state, **change))
    assert target.history == [(0.9, 0.2, 3)]  # unchanged by the failed load
    for missing in ("history", "noise_multiplier", "accountant"):
        with pytest.raises(ConfigError):
            target.load_state_dict({k: v for k, v in state.items() if k != missing})
    with pytest.raises(ConfigError):
        target.load_state_dict([state])


# --- the figures against closed forms --------------------------------------------------------------

@pytest.mark.parametrize("sigma, steps", [(1.0, 5), (2.0, 10), (0.8, 1)])
def test_full_batch_epsilon_is_conservative_and_tight_against_the_analytic_gaussian(sigma, steps):
    # Sampling rate 1: k Gaussian steps are one Gaussian with mu = sqrt(k) / sigma, whose exact
    # epsilon has a closed form. PRV's figure is an upper bound within its eps error (0.01).
    exact = analytic_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    for mechanism, slack in (("prv", 0.02), ("rdp", 1.0)):
        dp = DPSGD(sigma, 1.0, accountant=mechanism)
        dp.load_state_dict(mutated(dp.state_dict(), history=[[sigma, 1.0, steps]]))
        assert exact <= dp.epsilon(DELTA) <= exact + slack


@pytest.mark.parametrize("sigma, rate, steps", [(1.0, 0.05, 50), (0.8, 0.1, 30)])
def test_subsampled_epsilon_agrees_with_dp_accounting_pld(sigma, rate, steps):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)), steps)
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    pld.compose(event)
    reference = pld.get_epsilon(DELTA)  # pessimistic PLD: itself an upper bound
    dp = DPSGD(sigma, 1.0)
    dp.load_state_dict(mutated(dp.state_dict(), history=[[sigma, rate, steps]]))
    assert reference - 0.005 <= dp.epsilon(DELTA) <= reference + 0.05


# --- randomness ------------------------------------------------------------------------------------

def test_randomness_is_seeded_or_from_the_os_and_recorded():
    seeded = [model() for _ in range(2)]
    for net in seeded:
        train_dp(net, DPSGD(1.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(seeded[0].parameters(), seeded[1].parameters()))

    x, y = problem()
    entropy = DPSGD(1.0, 1.0)
    fresh = [model() for _ in range(2)]
    for net in fresh:  # no generator: noise seeded from the OS, so the two runs differ
        train(net, make_loader(x, y, 20, shuffle=False), TrainConfig(), dp=entropy)
    assert not torch.equal(fresh[0].head.weight, fresh[1].head.weight)
    assert entropy.noise_sources == {"seeded": 0, "os_entropy": 2}

    secure = DPSGD(1.0, 1.0, secure=True)
    with pytest.raises(ConfigError, match="secure"):
        train_dp(model(), secure)
    result = train(model(), make_loader(x, y, 20, shuffle=False), TrainConfig(), dp=secure)
    assert result["steps"] == 10 and secure.steps == 10


def test_models_opacus_cannot_handle_and_bad_loaders_fail():
    x = torch.randn(8, 3)
    y = torch.randint(0, 2, (8,))
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    dp = DPSGD(1.0, 1.0)
    with pytest.raises(ConfigError, match="GroupNorm"):
        dp.make_private(net, optimizer, make_loader(x, y, 4, shuffle=False))
    with pytest.raises(ConfigError, match="DataLoader"):
        dp.make_private(model(), torch.optim.SGD(model().parameters(), lr=0.1), [(x, y)])
    assert dp.steps == 0
