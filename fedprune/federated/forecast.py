"""A run's privacy statement before it runs: every round's releases charged to the same ledger a run keeps.

The mode's own coordinator plans each round and records what each client would release: the
weight channel's events (DP-FedAvg's Gaussian, Poisson-sampled where sampling is secret; each
client's DP-SGD steps, counted from its partition as its Opacus loader will take them) and the
mask reports' events. Nothing is trained. Under ``client-sampling poisson`` (every client charged
every round) and with every client in every round, the forecast is what the finished run states;
with Flower's fixed sampling of a share of clients it charges every client every round, an upper
bound on the run's worst client.
"""

from __future__ import annotations

import numpy as np
import torch

from fedprune.config import RunConfig
from fedprune.federated import modes
from fedprune.federated.coordinator import flatten_weights
from fedprune.federated.local import client_data, new_model
from fedprune.pruning.masks import prunable_parameters


def dpsgd_history(config: RunConfig, client: int) -> dict | None:
    """The (noise multiplier, sampling rate, steps) a DP-SGD client releases in one round, as its reply states it."""
    if config.weight_channel != "dpsgd":
        return None
    from opacus.data_loader import DPDataLoader

    from fedprune.data.datasets import make_loader

    x, y = client_data(config, client, config.num_clients)
    loader = make_loader(x, y, config.batch_size, shuffle=True, generator=torch.Generator())
    steps = config.local_steps or config.local_epochs * len(DPDataLoader.from_data_loader(
        loader, generator=torch.Generator()))
    return {"history": [(config.noise_multiplier, 1 / len(loader), steps)]}


def forecast(config: RunConfig) -> dict:
    """summary.json's ``privacy`` statement for a whole run of ``config``, computed before it runs."""
    model = new_model(config)
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    shapes = {name: value.shape for name, value in state.items()}
    coordinator = modes.get(config).coordinator(config, shapes, list(prunable_parameters(model)))
    clients = [str(client) for client in range(config.num_clients)]
    histories = {client: dpsgd_history(config, int(client)) for client in clients}
    for round in range(1, config.num_server_rounds + 1):
        plan = coordinator.plan(round)
        if coordinator.poisson:
            coordinator.record(plan, clients)
        else:
            for client in clients:
                coordinator.record(plan, [client], dpsgd=histories[client])
        # the initial model under the mask in force stands in for the round's average: only the mask's sizes matter
        pruned = coordinator.expand(coordinator.compact(state))
        coordinator.forecast_step(plan, np.abs(flatten_weights(pruned, coordinator.masks)))
    return coordinator.privacy()


def calibrate(config: RunConfig, epsilon: float, *, low: float = 0.3, high: float = 50.0) -> float:
    """The smallest noise multiplier (to 0.1%, 4 significant digits for the command line) at which a run of
    ``config`` ends at most at ``epsilon`` in its ``unit``, end to end: a bisection over :func:`forecast`.
    ConfigError if none in [low, high] does, or if the run has no finite figure in its unit whatever the noise."""
    from fedprune.validation import ConfigError, positive

    positive("epsilon", epsilon)

    def spent(noise: float) -> float | None:
        return forecast(config.replace(noise_multiplier=noise))["end_to_end"][config.unit]["epsilon"]

    at_high = spent(high)
    if at_high is None:
        raise ConfigError(f"a run of these settings has no finite {config.unit}-level figure whatever the noise: "
                          "pick a preset (or weight channel) that protects that unit")
    if at_high > epsilon:
        raise ConfigError(f"even noise multiplier {high:g} spends {at_high:.4g} > {epsilon:g}: fewer rounds, a "
                          "lower sampling rate or a larger budget")
    if spent(low) <= epsilon:
        return low
    while high / low > 1.001:
        middle = (low * high) ** 0.5
        low, high = (middle, high) if spent(middle) > epsilon else (low, middle)
    noise = float(f"{high:.4g}")
    while spent(noise) > epsilon:  # rounding down may overspend: step up, never stating less noise than needed
        noise = float(f"{noise * 1.001:.4g}")
    return noise
