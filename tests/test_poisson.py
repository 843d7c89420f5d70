"""Poisson client sampling: secret, really Poisson, charged to every client each round, amplified only where allowed."""

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from flwr.app import ConfigRecord

from fedprune.config import RunConfig
from fedprune.federated import keys
from fedprune.privacy.accountant import Accountant
from fedprune.privacy.closed_form import analytic_gaussian_epsilon
from fedprune.privacy.events import Gaussian
from fedprune.validation import ConfigError
from strategy_helpers import NODES, ListGrid, client_reply, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")
DELTA = 1e-5


def poisson_config(**changes) -> RunConfig:
    settings = dict(weight_channel="server-clipping", method="server-magnitude", client_sampling="poisson",
                    fraction_train=0.5, noise_multiplier=1.0, clipping_norm=1.0)
    return small_config(**{**settings, **changes})


@pytest.mark.parametrize("changes, fix", [
    ({"weight_channel": "clear"}, "weight-channel clear has none to amplify"),
    ({"weight_channel": "dpsgd", "unit": "record"}, "weight-channel dpsgd has none to amplify"),
    ({"method": "votes"}, "local mask reports of the sampled clients would reveal who took part"),
    ({"fraction_train": 1.0}, "set fraction-train below 1"),
])
def test_amplification_is_refused_where_the_trust_model_does_not_allow_it(changes, fix):
    with pytest.raises(ConfigError, match=fix):
        poisson_config(**changes)


def test_the_sampling_is_poisson_and_secret():
    coordinator, strategy, _ = setup(poisson_config(fraction_train=0.1, privacy_seed=-1))
    nodes = list(range(1000))
    rounds = [coordinator.sample(coordinator.plan(r), nodes) for r in range(1, 101)]
    counts = np.array([len(chosen) for chosen in rounds])
    # 100 x 1000 independent Bernoulli(0.1): total ~ Binomial(1e5, 0.1), sd 94.9; 6 sd: false failure < 2e-9
    assert abs(counts.sum() - 10_000) < 6 * math.sqrt(1e5 * 0.1 * 0.9)
    assert len(set(counts)) > 5  # the count varies: not Flower's fixed-size sampling
    per_node = np.bincount(np.concatenate(rounds), minlength=1000)
    assert per_node.min() < 10 < per_node.max()  # every node on its own coin, not a rotation
    # OS entropy: another coordinator draws other participants; a privacy seed repeats them
    other, _, _ = setup(poisson_config(fraction_train=0.1, privacy_seed=-1))
    assert other.sample(other.plan(1), nodes) != rounds[0]
    seeded = [setup(poisson_config(fraction_train=0.1, privacy_seed=7))[0] for _ in range(2)]
    assert seeded[0].sample(seeded[0].plan(1), nodes) == seeded[1].sample(seeded[1].plan(1), nodes)


def test_every_client_is_charged_every_round_with_the_sampled_gaussian():
    config = poisson_config(privacy_seed=5)
    coordinator, strategy, messages = setup(config)  # round 1 configured
    participants, arrays = [], None
    for server_round in (1, 2, 3):
        if server_round > 1:
            messages = strategy.configure_train(server_round, arrays, ConfigRecord(), ListGrid())
        participants.append(sorted(m.metadata.dst_node_id for m in messages))
        replies = [client_reply(m, NODES.index(m.metadata.dst_node_id)) for m in messages]
        for m in messages:  # the round's request carries no trace of the sampling setting
            assert not any("sampling" in key for key in m.content.config_records[keys.CONFIG])
        arrays, _ = strategy.aggregate_train(server_round, replies)
    assert any(len(chosen) != len(NODES) for chosen in participants)  # Flower's FedAvg would send to all 4
    expected = Accountant()
    expected.record(Gaussian(1.0, 0.5, sensitivity=2.0), units=["record", "client"], clients=["0"], count=3)
    assert coordinator.accountant.clients == ["0", "1", "2", "3"]  # non-participants too
    for client in coordinator.accountant.clients:
        assert coordinator.accountant.epsilon(DELTA, "client", client) == expected.epsilon(DELTA, "client")
    assert coordinator.epsilon()["client"] < analytic_gaussian_epsilon(1.0, DELTA, sensitivity=2 * math.sqrt(3))
    statement = coordinator.privacy()
    assert statement["client_sampling"]["amplified"] and statement["end_to_end"]["client"]["trust_model"] == "central"


def test_a_round_nobody_was_sampled_in_still_releases_noise_only():
    coordinator, strategy, _ = setup(poisson_config(privacy_seed=5, prune_start=2, prune_end=2))  # round 1 set up
    sent = dict(strategy.sent)
    arrays, _ = strategy.aggregate_train(1, [])
    moved = [np.abs(a.numpy() - sent[n]).max() for n, a in arrays.items()]
    assert max(moved) > 0  # noise alone, scaled by the expected count, not a failed round
    assert coordinator.accountant.clients == ["0", "1", "2", "3"]


@pytest.mark.parametrize("z, q, rounds", [(1.0, 0.1, 30), (1.5, 0.1, 100), (2.0, 0.5, 10)])
def test_the_sampled_gaussian_figure_between_its_closed_form_bounds(z, q, rounds):
    ours = Accountant()
    ours.record(Gaussian(z, q, sensitivity=2.0), units=["client"], clients=["0"], count=rounds)
    eps = ours.epsilon(DELTA, "client")
    # replace-one is remove-then-add: never below dp-accounting's add-or-remove figure (PLD, and RDP above it)
    add_remove = dpa.pld.PLDAccountant()
    add_remove.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds)
    rdp = dpa.rdp.RdpAccountant()
    rdp.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds)
    assert add_remove.get_epsilon(DELTA) <= eps and add_remove.get_epsilon(DELTA) <= rdp.get_epsilon(DELTA) + 1e-6
    # sampling never costs more than taking part every round: the analytic Gaussian at sensitivity 2 sqrt(T)
    assert eps <= analytic_gaussian_epsilon(z, DELTA, sensitivity=2 * math.sqrt(rounds))
    # and the same figure from dp-accounting's replace-one PLD directly
    direct = pld_lib.from_gaussian_mechanism(z, sensitivity=1.0, sampling_prob=q,
                                             neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE,
                                             value_discretization_interval=1e-4).self_compose(rounds)
    assert eps == pytest.approx(direct.get_epsilon_for_delta(DELTA), rel=1e-3)


def test_at_rate_one_the_figure_is_the_analytic_gaussian():
    ours = Accountant()
    ours.record(Gaussian(1.3, 1.0, sensitivity=2.0), units=["client"], clients=["0"], count=12)
    assert ours.epsilon(DELTA, "client") == pytest.approx(
        analytic_gaussian_epsilon(1.3, DELTA, sensitivity=2 * math.sqrt(12)), rel=1e-9)


@pytest.mark.slow
def test_a_poisson_run_on_flowers_engine_reports_the_amplified_figure(tmp_path):
    from simulations.run import simulate

    config = RunConfig(dataset="digits", model="mlp", num_clients=6, num_server_rounds=3, local_epochs=1,
                       batch_size=64, schedule="oneshot", prune_start=2, prune_end=2, target_sparsity=0.5,
                       weight_channel="server-clipping", method="server-magnitude", client_sampling="poisson",
                       fraction_train=0.5, noise_multiplier=1.0, privacy_seed=3, output_dir=str(tmp_path),
                       run_name="poisson")
    summary = simulate(config, progress=lambda line: None)
    expected = Accountant()
    expected.record(Gaussian(1.0, 0.5, sensitivity=2.0), units=["client"], clients=["0"], count=3)
    assert summary["epsilon"]["client"] == pytest.approx(expected.epsilon(DELTA, "client"), rel=1e-12)
    assert summary["privacy"]["client_sampling"]["amplified"] and summary["density"] == pytest.approx(0.5, abs=0.01)
