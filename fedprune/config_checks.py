"""Checks of a run's settings that need more than the setting itself: the registries of named
choices and what federated rounds support. RunConfig runs them when it is built, so a wrong
setting fails where it enters, before any work (``fedprune.config.resolve``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedprune.validation import ConfigError, pick

if TYPE_CHECKING:
    from fedprune.config import RunConfig

# Mask-only mode (fedprune.federated.mask_only) has one mechanism, weight-level masks, no weight channel or
# dense baseline.
MASK_ONLY_REQUIRES = {"method": "votes", "mechanism": "randomized-response", "weight_channel": "clear",
                      "structure": "unstructured", "dense_baseline": False, "server_learning_rate": 1.0,
                      "server_momentum": 0.0, "local_steps": 0}


def check_names(config: RunConfig) -> None:
    """Every named choice against its registry, so a misspelt one fails here and not rounds later."""
    from fedprune.data.datasets import DATASETS  # imported here: the registries pull in torch and the models
    from fedprune.data.partitioning import PARTITION_METHODS
    from fedprune.privacy.mechanisms import REGISTRY
    from fedprune.privacy.weight_channel import CHANNELS
    from fedprune.pruning.distributions import DISTRIBUTIONS
    from fedprune.pruning.scorers import SCORERS
    from fedprune.training.models import MODELS
    from fedprune.training.train import OPTIMIZERS

    pick("mechanism", config.mechanism, REGISTRY)
    pick("weight-channel", config.weight_channel, CHANNELS)
    pick("scorer", config.scorer, SCORERS)
    pick("distribution", config.distribution, DISTRIBUTIONS)
    pick("optimizer", config.optimizer, {**OPTIMIZERS, "auto (the mode's)": None})
    pick("model", config.model, MODELS)
    pick("partitioner", config.partitioner, dict.fromkeys(PARTITION_METHODS))
    if not str(config.dataset).startswith("hf:"):
        pick("dataset", config.dataset, {**DATASETS, "hf:<name or local path>": None})


def check_federated(config: RunConfig) -> None:
    """Settings the federated rounds do not support: structure, mode mask-only's requirements, unit scorers,
    a budget that could never bind."""
    from fedprune.federated.layouts import layout_for  # imported here: the round logic imports this package's config
    from fedprune.federated.rounds import no_guarantee

    why = no_guarantee(config) if config.budget_epsilon > 0 else None
    if why:
        raise ConfigError(f"budget-epsilon {config.budget_epsilon:g} binds the end-to-end {config.unit}-level figure, "
                          f"but {why}: the first round would be refused. Use weight-channel server-clipping or "
                          "client-clipping (client level), dpsgd with unit record, or mode mask-only; or set "
                          "budget-epsilon 0")
    layout = layout_for(config)  # ConfigError for a structure no layout votes on
    if config.client_sampling == "poisson":
        check_poisson(config)
    if config.mode == "mask-only":
        for name, value in MASK_ONLY_REQUIRES.items():
            if getattr(config, name) != value:
                key = name.replace("_", "-")
                raise ConfigError(f"mode mask-only sends one clipped Bernoulli mask sample per round and nothing else "
                                  f"(randomized response per weight): {key} must be {value!r}, got "
                                  f"{getattr(config, name)!r}; leave {key} at its default or use mode default")
        if config.target_sparsity <= 0:
            raise ConfigError("mode mask-only learns which weights to keep: target-sparsity must be > 0 (its default "
                              "is 0.5)")
    layout.check(config)


def check_poisson(config: RunConfig) -> None:
    """Poisson client sampling is accounted (amplified) only where every release comes from sums the server noises.

    The amplification holds against whoever sees the released model and mask, who must not learn who
    took part: a local mask report or DP-SGD release of a sampled client would tell them. Central votes are
    noised on their sum, as the weights are; the two sums of one sample are charged as one sampled Gaussian.
    """
    if config.weight_channel not in ("server-clipping", "client-clipping"):
        raise ConfigError(f"client-sampling poisson amplifies DP-FedAvg's client-level figure; weight-channel "
                          f"{config.weight_channel} has none to amplify: use weight-channel server-clipping or "
                          "client-clipping, or client-sampling fixed")
    from fedprune.privacy.mechanisms import mechanism_class  # imported here, as in check_names

    if config.method == "votes" and mechanism_class(config).name != "central":
        raise ConfigError("client-sampling poisson is accounted only where the mask comes from the noised average "
                          "(method server-magnitude), from votes noised on their sum by the same trusted server "
                          "(mechanism central) or there is none (method dense): local mask reports of the sampled "
                          "clients would reveal who took part; use method server-magnitude, mechanism central, "
                          "or client-sampling fixed")
    if not config.fraction_train < 1:
        raise ConfigError("client-sampling poisson samples each client with probability fraction-train: set "
                          "fraction-train below 1 (100 of 1,000 clients a round: 0.1)")

