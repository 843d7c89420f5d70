"""Central mask votes under Poisson client sampling: a round's vote and weight sums charged as one sampled Gaussian."""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedprune.config import RunConfig
from fedprune.federated.forecast import forecast
from fedprune.privacy import events
from fedprune.privacy.accountant import Accountant
from fedprune.privacy.closed_form import analytic_gaussian_epsilon, analytic_gaussian_sigma
from fedprune.privacy.events import Gaussian
from fedprune.privacy.mechanisms import build
from fedprune.pruning.bits import pack
from fedprune.validation import ConfigError
from strategy_helpers import NODES, ListGrid, client_reply, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")
DELTA = 1e-5
UNITS = ["record", "client"]


def central_config(**changes) -> RunConfig:
    settings = dict(weight_channel="server-clipping", method="votes", mechanism="central", epsilon_per_report=3.0,
                    client_sampling="poisson", fraction_train=0.5, noise_multiplier=1.0, clipping_norm=1.0)
    return small_config(**{**settings, **changes})


def vote_noise_multiplier(plan) -> float:
    """A vote's distance from absence, sqrt(kept), against its noise sigma sqrt(Delta), sigma from eps 3 per report."""
    return analytic_gaussian_sigma(3.0, DELTA) * math.sqrt(plan.hamming_bound / plan.kept)


def epsilon(*charges) -> float:
    ledger = Accountant()
    for event, count in charges:
        ledger.record(event, units=["client"], clients=["0"], count=count)
    return ledger.epsilon(DELTA, "client")


def test_joint_adds_the_distances_from_absence_in_quadrature():
    joint = events.joint([Gaussian(1.0, 0.1), Gaussian(2.0, 0.1), Gaussian(4.0, 0.1, sensitivity=1.0)])
    assert joint == Gaussian(1 / math.sqrt(1 + 1 / 4 + 1 / 64), 0.1, sensitivity=2.0)
    # unsampled, the closed form: one Gaussian whose shift is the parts' shifts in quadrature
    unsampled = events.joint([Gaussian(1.5, 1.0), Gaussian(3.0, 1.0, sensitivity=1.0)])
    assert epsilon((unsampled, 1)) == pytest.approx(
        analytic_gaussian_epsilon(1.0, DELTA, sensitivity=math.hypot(2 / 1.5, 1 / 3.0)), rel=1e-9)
    with pytest.raises(ConfigError, match="sampling rates differ"):
        events.joint([Gaussian(1.0, 0.1), Gaussian(1.0, 0.2)])


def test_two_sums_of_one_sample_at_a_small_rate_cost_more_than_two_independently_sampled_releases():
    # the joint charge, not two independently sampled releases (samples the code does not draw), which at small
    # rates would state less (at rate 1 the two agree: Gaussians compose exactly)
    weights, votes = Gaussian(1.0, 0.1), Gaussian(1.5, 0.1)
    assert epsilon((events.joint([weights, votes]), 10)) > epsilon((weights, 10), (votes, 10)) * 1.05


def test_a_central_report_must_keep_the_rounds_count():
    mechanism = build(central_config(), length=16, kept=4)
    assert mechanism.sampled and mechanism.expected_count == pytest.approx(2.0)
    assert mechanism.event() == Gaussian(mechanism.noise_std / 2.0, 0.5, sensitivity=2.0)
    rng = np.random.default_rng(0)
    five = np.zeros(16, bool)
    five[:5] = True
    with pytest.raises(ConfigError, match="keeps 5 coordinates, the round's masks keep 4"):
        mechanism.check_report(mechanism.encode(pack(five), rng, public_seed=(1, 0)))
    # nobody sampled: the sums are the noise alone, over the expected count
    assert mechanism.estimate(mechanism.aggregate([], rng)).std() > 0


@pytest.mark.parametrize("mechanism", ["randomized-response", "subset"])
def test_local_reports_stay_refused_under_poisson_sampling(mechanism):
    with pytest.raises(ConfigError, match="local mask reports of the sampled clients would reveal who took part"):
        central_config(mechanism=mechanism, sample_size=4 if mechanism == "subset" else 0)


def test_a_pruning_round_charges_every_client_one_joint_sampled_gaussian():
    coordinator, strategy, messages = setup(central_config(privacy_seed=5))  # prunes in round 1
    plan = coordinator.plan(1)
    assert plan.report
    replies = [client_reply(m, NODES.index(m.metadata.dst_node_id)) for m in messages]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert not coordinator.rejected and coordinator.density() == pytest.approx(0.5, abs=0.01)
    votes = Gaussian(vote_noise_multiplier(plan), 0.5)
    joint = Gaussian(1 / math.sqrt(1 + 1 / votes.noise_multiplier**2), 0.5)
    assert coordinator.accountant.clients == ["0", "1", "2", "3"]  # sampled or not
    for client in coordinator.accountant.clients:
        assert coordinator.accountant.epsilon(DELTA, "client", client) == pytest.approx(epsilon((joint, 1)), rel=1e-12)
    assert coordinator.epsilon(mask_channel=True)["client"] == pytest.approx(epsilon((votes, 1)), rel=1e-12)
    # the next round releases weights only
    strategy.aggregate_train(2, [client_reply(m, NODES.index(m.metadata.dst_node_id))
                                 for m in strategy.configure_train(2, arrays, ConfigRecord(), ListGrid())])
    assert coordinator.epsilon()["client"] == pytest.approx(epsilon((joint, 1), (Gaussian(1.0, 0.5), 1)), rel=1e-12)


@pytest.mark.slow
def test_a_poisson_run_with_central_votes_on_flowers_engine_states_the_joint_figure(tmp_path):
    from simulations.run import simulate

    config = RunConfig(dataset="digits", model="mlp", num_clients=6, num_server_rounds=3, local_epochs=1,
                       batch_size=64, schedule="oneshot", prune_start=2, prune_end=2, target_sparsity=0.5,
                       weight_channel="server-clipping", method="votes", mechanism="central", epsilon_per_report=3.0,
                       client_sampling="poisson", fraction_train=0.5, noise_multiplier=1.0, privacy_seed=3,
                       output_dir=str(tmp_path), run_name="poisson-votes")
    plan = setup(config)[0].plan(2)  # the pruning round's sizes (the first mask is full)
    summary = simulate(config, progress=lambda line: None)
    votes = Gaussian(vote_noise_multiplier(plan), 0.5)
    joint = events.joint([Gaussian(1.0, 0.5), votes])
    assert summary["epsilon"]["client"] == pytest.approx(epsilon((Gaussian(1.0, 0.5), 2), (joint, 1)), rel=1e-12)
    assert summary["mask_channel_epsilon"]["client"] == pytest.approx(epsilon((votes, 1)), rel=1e-12)
    assert summary["density"] == pytest.approx(0.5, abs=0.01)
    # the planner's figure before the run is the run's
    assert forecast(config)["end_to_end"]["client"]["epsilon"] == pytest.approx(summary["epsilon"]["client"], rel=1e-9)
