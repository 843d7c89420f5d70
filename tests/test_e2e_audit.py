"""The end-to-end audit passes the pipeline as built and fails the two pipelines the review found.

1. Example-weighted DP-FedAvg (Flower's wrappers over FedAvg): a client that claims many examples
   moves the noised average far more than the 2C/n the ledger charges.
2. The mask chosen from the exact average before the noise: it moves with one client's update
   whatever the noise.

Each broken pipeline is the real one with one piece swapped back to what it was. Seeds are fixed;
a correct pipeline would fail with probability at most 2 x 0.001 under fresh noise.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from fedprune.config import RunConfig
from fedprune.federated.coordinator import Coordinator, flatten_weights
from fedprune.privacy import weight_channel
from fedprune.privacy.rng import privacy_rng
from fedprune.privacy.weight_channel import NoisedMean, clip
from fedprune.federated.rounds import next_global_masks, server_scores
from simulations.e2e_audit import audit_pipeline

pytestmark = pytest.mark.slow


def config(**changes) -> RunConfig:
    settings = dict(dataset="digits", model="mlp", num_clients=10, min_replies=2, num_server_rounds=1, local_epochs=1,
                    schedule="oneshot", prune_start=1, prune_end=1, target_sparsity=0.9, batch_size=64,
                    method="server-magnitude", weight_channel="server-clipping", noise_multiplier=5.0,
                    clipping_norm=1.0)
    settings.update(changes)
    return RunConfig(**settings)


@dataclass(frozen=True)
class ExampleWeighted(NoisedMean):
    """Flower's wrappers over FedAvg: clipped updates averaged by the example counts clients claim."""

    metrics: tuple = ("client-id", "num-examples")

    def combine(self, sent, replies, examples, rng):
        share = np.asarray(examples, np.float64) / np.sum(examples)
        out = {}
        for name in sent:
            update = sum(w * clip({n: r[n] - sent[n] for n in sent}, self.clipping_norm)[name]
                         for w, r in zip(share, replies))
            noise = rng.normal(0.0, self.noise_multiplier * self.clipping_norm / len(replies), update.shape)
            out[name] = (sent[name] + update + noise).astype(np.float32)
        return out


class MaskFromExactAverage(Coordinator):
    """Publishes the noised average but picks the mask from the exact one, as the wrappers made it do."""

    def aggregate(self, plan, replies, sent):
        weights = [r.weights for r in self.accept(plan, replies)]
        rng = privacy_rng(self.config.privacy_seed, stream=(plan.round, 0, 1))
        noised = self.expand(self.weight_channel.combine(sent, weights, None, rng))
        exact = self.expand(NoisedMean("exact", 1e-12, self.config.clipping_norm).combine(sent, weights, None, rng))
        magnitudes = np.abs(flatten_weights(exact, self.masks))
        self.masks = next_global_masks(self.config, plan, server_scores(self.config, magnitudes, self.masks),
                                       magnitudes, self.masks)
        self.sparsity = plan.sparsity
        return self.compact(noised)


def test_the_pipeline_as_built_passes():
    result = audit_pipeline(config(), trials=600)
    assert result.passed, result


def test_example_weighted_averaging_fails(monkeypatch):
    real = weight_channel.build

    def build(name, noise, clipping, **sampling):
        channel = real(name, noise, clipping, **sampling)
        return ExampleWeighted(name, noise, clipping) if isinstance(channel, NoisedMean) else channel

    monkeypatch.setattr(weight_channel, "build", build)
    result = audit_pipeline(config(), trials=600)
    assert not result.weight.passed, result
    assert result.weight.epsilon_lower_bound > 1.5 * result.claimed_epsilon


def test_a_mask_from_the_exact_average_fails():
    result = audit_pipeline(config(noise_multiplier=1000.0), trials=200, coordinator_class=MaskFromExactAverage)
    assert result.claimed_epsilon < 0.01
    assert not result.mask.passed and result.mask.epsilon_lower_bound > 2.0, result


def test_the_cross_device_pipeline_with_secret_poisson_sampling_passes():
    result = audit_pipeline(config(client_sampling="poisson", fraction_train=0.5, noise_multiplier=1.5), trials=400)
    assert 0 < result.claimed_epsilon < 6.129  # amplified: below the unsampled Gaussian's 6.129
    assert result.passed, result


def test_amplification_claimed_while_every_client_takes_part_fails(monkeypatch):
    """The ledger charges the Poisson-sampled figure (q = 0.01) but the server takes every reply: the canary is
    always in, so the truth is the unamplified Gaussian (10.0) and the audit must see more than the 0.209 claimed.
    No pruning, so the canary weight is always published."""
    monkeypatch.setattr(Coordinator, "sample", lambda self, plan, nodes: list(nodes))
    result = audit_pipeline(config(client_sampling="poisson", fraction_train=0.01, noise_multiplier=1.0, method="dense",
                                   target_sparsity=0.0), trials=400)
    assert result.claimed_epsilon == pytest.approx(0.209, abs=0.01)
    assert not result.weight.passed and result.weight.epsilon_lower_bound > 1.5 * result.claimed_epsilon, result
