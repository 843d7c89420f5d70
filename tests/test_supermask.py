"""Supermasks: the frozen network, score training under a kept-count budget, and the clipped Bernoulli report.

Statistical bounds (fixed seeds; each rate is what fresh randomness would give a correct
implementation): the clipping-range checks use 6 standard deviations (false failure < 2e-9
each); the audits run at confidence 0.999 (a correct sampler fails with probability <= 0.001);
the unbiasedness check is 5 standard deviations on each of 48 coordinates (false failure
< 48 x 5.8e-7 = 2.8e-5 under the normal approximation of a mean of 3000 bounded draws).
"""

import math

import numpy as np
import pytest
import torch

from fedprune.pruning.bits import pack, unpack
from fedprune.config import RunConfig
from fedprune.data.datasets import make_loader
from fedprune.federated.local import client_data, new_model
from fedprune.pruning.masks import prunable_parameters
from fedprune.privacy.audit import audit
from fedprune.privacy.mechanisms import ExactVotes, RandomizedResponse
from fedprune.privacy.mechanisms.clipped_bernoulli import ClippedBernoulli, clipped_sample
from fedprune.privacy.mechanisms.packed import SCALE, threshold
from fedprune.privacy.mechanisms.randomized_response import flip_probability
from fedprune.privacy.rng import privacy_rng
from fedprune.privacy.spec import ReportSpec
from fedprune.training.supermask import ScoreModel, _frozen, frozen_state, initial_scores, solve_shift
from fedprune.training.train import TrainConfig
from fedprune.validation import ConfigError

DIGITS = dict(dataset="digits", model="mlp", seed=3, target_sparsity=0.5)


def test_frozen_weights_come_from_the_seed_alone():
    config = RunConfig(**DIGITS)
    first = {name: value.copy() for name, value in frozen_state(config).items()}
    _frozen.cache_clear()  # rebuilt from scratch, as another party would
    again = frozen_state(config)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not any(value.flags.writeable for value in again.values())
    seeded = new_model(config).state_dict()
    for name in prunable_parameters(new_model(config)):
        fan_in = math.prod(first[name].shape[1:])
        scale = math.sqrt(2.0 / (fan_in * 0.5))
        assert np.allclose(np.abs(first[name]), scale)  # scaled signed Kaiming constant
        assert np.array_equal(first[name] > 0, seeded[name].numpy() >= 0)  # signs of the seeded init
        assert not first[name.replace("weight", "bias")].any()
    other = frozen_state(RunConfig(**{**DIGITS, "seed": 4}))
    assert not np.array_equal(other["head.weight"], first["head.weight"])


@pytest.mark.parametrize("kept", [1, 37, 500, 999])
def test_solve_shift_holds_the_expected_kept_count(kept):
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 4
    tau = solve_shift(scores, kept)
    assert float(torch.sigmoid(scores.double() - tau).sum()) == pytest.approx(kept, abs=1e-3)
    for start in (tau + 30, tau - 30):  # any start converges
        shifted = solve_shift(scores, kept, start=start)
        assert float(torch.sigmoid(scores.double() - shifted).sum()) == pytest.approx(kept, abs=1e-3)
    assert solve_shift(scores, 0) == math.inf and solve_shift(scores, 1000) == -math.inf


def test_initial_scores_invert_the_probabilities_inside_the_floor():
    p = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0])
    assert torch.sigmoid(initial_scores(p)).tolist() == pytest.approx([0.01, 0.3, 0.5, 0.9, 0.99], abs=1e-6)


def test_score_training_learns_a_mask_and_leaves_the_frozen_weights_alone():
    config = RunConfig(**DIGITS)
    frozen = frozen_state(config)
    model = new_model(config)
    names = list(prunable_parameters(model))
    kept = sum(frozen[name].size for name in names) // 2
    start = {name: torch.full(frozen[name].shape, 0.5) for name in names}
    scores = ScoreModel(model, frozen, start, [(names, kept)])
    x, y = client_data(config, 0, 1)
    generator = torch.Generator().manual_seed(0)
    loader = make_loader(x, y, 64, shuffle=True, generator=generator)
    first = scores.train(loader, TrainConfig(epochs=1, optimizer="adam", learning_rate=0.1), generator)
    later = scores.train(loader, TrainConfig(epochs=3, optimizer="adam", learning_rate=0.1), generator)
    assert later < 0.7 * first  # cross-entropy falls: the mask is learned
    assert all(np.array_equal(scores.frozen[name].numpy(), frozen[name]) for name in frozen)
    theta = scores.keep_probabilities()
    assert sum(float(t.detach().sum()) for t in theta.values()) == pytest.approx(kept, abs=1e-2)  # the budget holds
    # the thresholded mask at the budget classifies the training data far above chance (10 classes)
    flat = torch.cat([theta[name].detach().reshape(-1) for name in names])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, descending=True)[:kept]] = True
    state, start_index = {name: torch.from_numpy(np.array(v)) for name, v in frozen.items()}, 0
    for name in names:
        size = frozen[name].size
        state[name] = state[name] * keep[start_index:start_index + size].reshape(frozen[name].shape)
        start_index += size
    model.load_state_dict(state)
    with torch.no_grad():
        accuracy = float((model(torch.as_tensor(x)).argmax(1) == torch.as_tensor(y)).float().mean())
    assert accuracy > 0.6


# --- the sampler -------------------------------------------------------------------------------

def _ones_rate(p: float, limit: int, n: int = 200_000) -> float:
    return float(unpack(clipped_sample(np.full(n, p), limit, privacy_rng(11)), n).mean())


@pytest.mark.parametrize("epsilon", [1.0, 2.0, 4.0])
def test_sampler_clips_to_the_randomized_response_range(epsilon):
    sampler = ClippedBernoulli(length=8, spec=ReportSpec(hamming_bound=8), epsilon=epsilon)
    q = sampler.prune_report
    assert q >= flip_probability(epsilon) and q - flip_probability(epsilon) <= 2**-32  # rounded up: never optimistic
    assert sampler.clip_limit == threshold(flip_probability(epsilon))
    n = 200_000
    for p, expected in ((0.0, q), (1.0, 1 - q), (0.5, 0.5), (q / 2, q), (1 - q / 2, 1 - q)):
        sd = math.sqrt(expected * (1 - expected) / n)
        assert abs(_ones_rate(p, sampler.clip_limit, n) - expected) <= 6 * sd
    inside = (q + 1) / 2 - 0.1  # probabilities inside [q, 1 - q] are sampled as they are
    assert abs(_ones_rate(inside, sampler.clip_limit, n) - inside) <= 6 * math.sqrt(inside * (1 - inside) / n)


def test_exact_samples_are_unclipped():
    exact = ExactVotes(length=1000, spec=ReportSpec(threat_model="none", hamming_bound=1000))
    draws = unpack(exact.sample(np.array([0.0, 1.0] * 500), privacy_rng(2)).bits, 1000)
    assert not draws[::2].any() and draws[1::2].all()


def test_the_report_is_a_randomized_response_report():
    spec = ReportSpec(hamming_bound=16)
    sampler = ClippedBernoulli(length=16, spec=spec, epsilon=1.5)
    plain = RandomizedResponse(length=16, spec=spec, epsilon=1.5)
    assert sampler.event() == plain.event() and sampler.prune_report == plain.prune_report
    assert sampler.epsilon_per_report == 16 * 1.5
    report = sampler.sample(np.linspace(0, 1, 16), privacy_rng(0))
    assert report.mechanism == "clipped-bernoulli" and report.bits.size == 2 and sampler.check_report(report)
    tally = sampler.aggregate([report, report])
    assert np.array_equal(sampler.estimate(tally), plain.estimate(plain._tally([report, report], None)))
    with pytest.raises(ConfigError, match="cannot be aggregated"):
        sampler.check_report(plain.encode(pack(np.ones(16, dtype=bool)), privacy_rng(0)))
    with pytest.raises(ConfigError, match="keep-probabilities"):
        sampler.sample(np.full(15, 0.5), privacy_rng(0))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        clipped_sample(np.array([0.5, 1.5]), sampler.clip_limit, privacy_rng(0))


class LooseSampler(ClippedBernoulli):
    """Clips to randomized response at 1.5 but claims (and is accounted at) its own epsilon 1.0."""

    @property
    def clip_limit(self):
        return threshold(flip_probability(1.5))


@pytest.mark.parametrize("bound", [1, 2])
def test_audit_passes_the_real_sampler_at_its_claimed_epsilon(bound):
    sampler = ClippedBernoulli(length=8, spec=ReportSpec(hamming_bound=bound), epsilon=1.0 / bound)
    result = audit(sampler, rng=privacy_rng(5), trials=10000)
    assert result.passed and result.claimed_epsilon == pytest.approx(1.0)
    assert result.epsilon_lower_bound > 0.6  # and it is close to tight


def test_audit_catches_a_sampler_clipped_too_loosely():
    loose = LooseSampler(length=8, spec=ReportSpec(hamming_bound=1), epsilon=1.0)
    assert loose.epsilon_per_report == 1.0 and loose.clip_limit < ClippedBernoulli(
        length=8, spec=ReportSpec(hamming_bound=1), epsilon=1.0).clip_limit
    result = audit(loose, rng=privacy_rng(5), trials=20000)
    assert not result.passed and result.epsilon_lower_bound > 1.2


def test_debiased_estimate_is_unbiased_for_the_stretched_probabilities():
    """E[(y - q) / (1 - 2q)] is the clients' mean of r = (clip(theta, q, 1 - q) - q) / (1 - 2q)."""
    clients, length, trials = 10, 48, 3000
    sampler = ClippedBernoulli(length=length, spec=ReportSpec(hamming_bound=length), epsilon=1.0)
    q = sampler.prune_report
    thetas = np.random.default_rng(1).uniform(0, 1, size=(clients, length))  # many outside [q, 1 - q]
    thetas[:, :4] = [0.0, 1.0, q, 1 - q]
    clipped = np.floor(np.clip(thetas, q, 1 - q) * SCALE) / SCALE  # what the integer thresholds implement
    clipped = np.clip(clipped, q, 1 - q)
    target = ((clipped - q) / (1 - 2 * q)).mean(axis=0)
    rng = privacy_rng(7)
    estimates = np.array([sampler.estimate(sampler.aggregate([sampler.sample(t, rng) for t in thetas]))
                          for _ in range(trials)])
    sd = np.sqrt((clipped * (1 - clipped)).sum(axis=0)) / (clients * (1 - 2 * q)) / math.sqrt(trials)
    assert np.all(np.abs(estimates.mean(axis=0) - target) <= 5 * sd)
