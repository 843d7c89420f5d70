"""Trust models as named presets: one word picks a whole private configuration.

A preset is a set of kebab-case settings plus what its figure means: the unit it protects, the
party it holds against and why it is built so. ``fedprune.config.resolve`` reads a ``preset``
key: the preset's settings first, then every setting given beside it (which wins). ``none`` is
no preset: the plain defaults, with weights in the clear and no end-to-end figure.
``fedprune run`` starts from :data:`MAIN` (the main job) unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fedprune.validation import ConfigError, pick, register_unique


@dataclass(frozen=True)
class Preset:
    """Settings that realise one trust model, and what their end-to-end figure means."""

    name: str
    unit: str  # the unit the end-to-end figure protects: record or client
    trust_model: str  # local (holds against the server too) or central (against everyone but the server)
    summary: str  # one line: who is protected, against whom, by what
    settings: Mapping[str, object] = field(default_factory=dict)
    # what its accuracy is measured against: these settings over the preset's, with weights in the clear, plain
    # FedAvg and no mask reports (dense) or exact ones (pruned); training (local, or the server's step) as the
    # stronger non-private FedAvg we measured on the preset's population
    baseline: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "baseline", MappingProxyType(dict(self.baseline)))

    def non_private(self, method: str, over: Mapping[str, object] = MappingProxyType({})) -> dict[str, object]:
        """Settings of the non-private comparison on the same population: ``method`` dense or the preset's.

        ``over`` changes the preset's settings (a variant of it: another model, more clients); the baseline's own
        training settings still win, since they are how non-private FedAvg trains on the population.
        """
        return {**self.settings, **over, "weight-channel": "clear", "client-sampling": "fixed",
                "server-learning-rate": 1.0, "server-momentum": 0.0, "mechanism": "exact", **self.baseline,
                "method": method}


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    """Add ``preset``; a second preset of the same name is refused."""
    return register_unique("preset", PRESETS, preset.name, preset)


def get(name: str) -> Preset:
    """The preset ``name``, or a ConfigError listing the presets there are."""
    return pick("preset", name, PRESETS)


register(Preset(
    name="none", unit="client", trust_model="none",
    summary="no preset: the plain defaults (weights in the clear: no end-to-end figure)"))

# Cross-silo: few clients with many records each. Every client trains with Opacus DP-SGD, so the noise is added on the
# client and the record-level figure holds against the server. Its magnitude mask is computed from the DP-SGD weights
# alone (post-processing: free at record level) and reported through randomized response on top, which gives the mask
# channel a client-level figure of its own. Weights carry no client-level guarantee. What DP-SGD wants, measured on
# MNIST-1D (docs/EXPERIMENTS.md, "Presets"): many records a client at a fixed batch (96,000 records, Poisson batches
# of 512: sampling rate 1/188, so eps 8 over 400 steps needs only z 0.4724: 0.942 over two seeds, where 16,000 records
# at z 0.8539 reached 0.925; the server evaluates 40,000 test examples), many short rounds (100 of 4 steps: server
# momentum turns many small rounds into more progress than few long ones: 0.918 where 40 rounds of 8 steps reached
# 0.858), a large step on the clipped gradients without client momentum, the 32-channel CNN (a quarter of the
# parameters: under 3 minutes a run, where the 64-channel one takes 5 for 0.959), and pruning in steps over the middle
# of the run (polynomial from round 30 to 60, every 5 rounds: a mask from weights that have learnt, smaller drops than
# one step, where the noise costs most, and 40 rounds to recover; at 16,000 records 0.925 over two seeds where one
# step at round 50 reached 0.916). Replace-one neighbours. Its non-private baselines train as FedAvg would: batch 32,
# step 0.05, momentum 0.9, 125 steps a round for 40 rounds, pruned at round 20 (they have converged by then; 4 epochs
# a round reached 0.987 by round 8, then diverged at round 25). The 64-channel CNN at 200 rounds (z 0.5063, pruned
# every 10 rounds from 60 to 120) is within 3 points of its dense baseline (0.966 against 0.991, two seeds), but takes
# 10 minutes a run here: the preset stays the main job's recipe.
register(Preset(
    name="cross-silo", unit="record", trust_model="local",
    summary="10 clients x 96,000 records, Opacus DP-SGD on every client: record level, holds against everyone, "
            "the server included; magnitude masks from the DP-SGD weights through randomized response",
    settings={"num-clients": 10, "examples-per-client": 96000, "test-examples": 40000, "partitioner": "iid",
              "model": "cnn1d-small", "unit": "record", "weight-channel": "dpsgd", "noise-multiplier": 0.4724,
              "clipping-norm": 1.0, "batch-size": 512, "optimizer": "sgd", "learning-rate": 5.0, "momentum": 0.0,
              "local-steps": 4, "server-momentum": 0.9, "num-server-rounds": 100, "method": "votes",
              "mechanism": "randomized-response", "epsilon-per-decision": 2.0, "target-sparsity": 0.8,
              "schedule": "polynomial", "prune-start": 30, "prune-end": 60, "prune-every": 5},
    baseline={"batch-size": 32, "learning-rate": 0.05, "momentum": 0.9, "local-steps": 125, "num-server-rounds": 40,
              "schedule": "oneshot", "prune-start": 20, "prune-end": 20}))

# Cross-device: many clients with few records each. DP-FedAvg: each update clipped to C, Gaussian noise on the
# sum by the server (a trusted aggregator: central), clients drawn by secret Poisson sampling at rate q, which
# amplifies the figure against everyone who sees the released model and mask. The mask is the magnitude of the
# noised average (post-processing: free). Server momentum averages the noise of successive rounds; z 1.22 spends
# eps 8 (delta 1e-5) in 100 rounds at q 0.1 (`fedprune budget --preset cross-device --epsilon 8`). The 64-channel
# CNN pruned early (polynomial from round 10: density 0.3 at round 20, 0.2 at 30) trains 70 rounds on a fifth of its
# 28,298 weights, so the noise falls on fewer coordinates than the 32-channel CNN's 8,010, in a network that keeps
# more when pruned: 0.658 over two seeds at eps 8, where the 32-channel CNN pruned at rounds 60-80 reached 0.649 and
# the 64-channel one pruned so late 0.576 (docs/EXPERIMENTS.md, "cross-device"). Its non-private baselines keep the
# server's step and momentum: dense FedAvg with them reaches 0.892 over two seeds, plain FedAvg 0.763.
_CROSS_DEVICE = {"num-clients": 1000, "examples-per-client": 32, "partitioner": "iid", "model": "cnn1d",
                 "unit": "client", "client-sampling": "poisson", "fraction-train": 0.1,
                 "weight-channel": "server-clipping", "noise-multiplier": 1.22, "clipping-norm": 1.0,
                 "server-learning-rate": 0.3, "server-momentum": 0.9, "batch-size": 32, "optimizer": "sgd",
                 "learning-rate": 0.1, "momentum": 0.9, "local-epochs": 5, "num-server-rounds": 100,
                 "method": "server-magnitude", "target-sparsity": 0.8, "schedule": "polynomial", "prune-start": 10,
                 "prune-end": 30, "prune-every": 10}
register(Preset(
    name="cross-device", unit="client", trust_model="central",
    summary="1,000 clients x 32 records, 10% Poisson-sampled each round, DP-FedAvg (server clips and noises) with "
            "server momentum: client level, holds against everyone but the server; mask from the noised average",
    settings=_CROSS_DEVICE,
    baseline={key: _CROSS_DEVICE[key] for key in ("server-learning-rate", "server-momentum")}))

MAIN = "cross-silo"  # what `fedprune run` starts from: the one preset with a useful model in minutes here


def apply(settings: Mapping[str, object]) -> dict[str, object]:
    """``settings`` with its ``preset`` key (if any) expanded: the preset's settings, then the given ones."""
    given = dict(settings)
    name = given.pop("preset", "none")
    if not isinstance(name, str):
        raise ConfigError(f"preset must be a string, got {name!r}")
    preset = get(name)
    if preset.settings and given.get("mode", "default") != "default":
        raise ConfigError(f"preset {name} configures mode default; mode {given['mode']} has its own settings: "
                          "add --preset none (preset = \"none\")")
    return {**preset.settings, **given}
