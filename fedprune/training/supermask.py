"""Supermasks: weights frozen at a seeded random initialisation, learned keep-probabilities, a private sample.

The mask-only mode (``fedprune.federated.mask_only``; FedPM, Isik et al. 2023; edge-popup, Ramanujan et
al. 2020) trains no weight. Every party rebuilds the same frozen network from the run's seed
(:func:`frozen_state`): the seeded model's prunable weights replaced by their sign times
sqrt(2 / (fan_in * density)), the scaled signed Kaiming constant that Ramanujan et al. found best
for supermasks, and the biases of pruned layers set to zero (edge-popup's networks have none).
Nothing of it is ever sent.

A client learns one real score s per prunable weight. Its keep-probability is
theta = sigmoid(s - tau), where tau (one per layer, or one for all layers under the global
distribution) is solved so that the expected kept count is the target (a budget like
ProbMask's, Zhou et al. 2021): the sampled masks the client trains with then have the density the
server's final model will have. Each forward pass samples a Bernoulli(theta) mask with a
straight-through gradient to theta.

The report is ``fedprune.privacy.mechanisms.clipped_bernoulli.ClippedBernoulli``: one Bernoulli
draw per weight from theta clipped to [q, 1 - q], q = 1 / (1 + e^eps), randomized response at
eps per coordinate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fedprune.config import RunConfig
from fedprune.federated.local import new_model
from fedprune.pruning.masks import prunable_parameters
from fedprune.training.train import TrainConfig
from fedprune.validation import ConfigError

SCORE_FLOOR = 0.01  # global probabilities are clipped to [0.01, 0.99] before the logit: no score starts dead


# --- the frozen network ------------------------------------------------------------------------

def frozen_state(config: RunConfig) -> dict[str, np.ndarray]:
    """The frozen network's full state (float32, read-only), the same on every party for the run's seed."""
    return _frozen(config.dataset, config.model, config.seed, 1.0 - config.target_sparsity)


@functools.lru_cache(maxsize=4)
def _frozen(dataset: str, model: str, seed: int, density: float) -> dict[str, np.ndarray]:
    network = new_model(RunConfig(dataset=dataset, model=model, seed=seed))
    prunable = prunable_parameters(network)
    state = {}
    for name, value in network.state_dict().items():
        value = value.detach().numpy().astype(np.float32)
        if name in prunable:
            fan_in = math.prod(value.shape[1:])
            value = np.where(value >= 0, 1.0, -1.0).astype(np.float32) * np.float32(math.sqrt(2.0 / (fan_in * density)))
        elif name.endswith(".bias") and name[:-len("bias")] + "weight" in prunable:
            value = np.zeros_like(value)
        value.flags.writeable = False
        state[name] = value
    return state


# --- keep-probabilities under a kept-count budget -----------------------------------------------

def solve_shift(scores: Tensor, kept: int, start: float = 0.0) -> float:
    """tau with sum(sigmoid(scores - tau)) = ``kept`` (to 1e-3 of a weight): safeguarded Newton in float64.

    ``kept`` 0 gives +inf (nothing kept), ``kept`` = len(scores) gives -inf (everything kept).
    """
    size = scores.numel()
    if kept <= 0:
        return math.inf
    if kept >= size:
        return -math.inf
    values = scores.detach().double().reshape(-1)
    low, high = float(values.min()) - 40.0, float(values.max()) + 40.0  # the count is ~size at low, ~0 at high
    tau = min(max(start, low), high) if math.isfinite(start) else (low + high) / 2
    for _ in range(100):
        theta = torch.sigmoid(values - tau)
        excess = float(theta.sum()) - kept
        if abs(excess) <= 1e-3:
            break
        if excess > 0:
            low = tau
        else:
            high = tau
        slope = float((theta * (1 - theta)).sum())
        step = tau + excess / slope if slope > 0 else math.nan
        tau = step if low < step < high else (low + high) / 2
    return tau


def initial_scores(probabilities: Tensor) -> Tensor:
    """Scores whose sigmoid is ``probabilities`` clipped to [SCORE_FLOOR, 1 - SCORE_FLOOR]."""
    p = probabilities.double().clamp(SCORE_FLOOR, 1.0 - SCORE_FLOOR)
    return torch.log(p / (1 - p)).float()


class ScoreModel:
    """The frozen network gated by masks sampled from learned keep-probabilities.

    ``groups`` lists (names, kept): the weights whose expected kept count is held at ``kept``
    together (one group for the global distribution, one per layer otherwise).
    """

    def __init__(self, model: nn.Module, frozen: Mapping[str, np.ndarray], probabilities: Mapping[str, Tensor],
                 groups: list[tuple[list[str], int]]):
        self.model = model
        self.frozen = {name: torch.from_numpy(np.array(value)) for name, value in frozen.items()}
        self.scores = {name: initial_scores(p).requires_grad_(True) for name, p in probabilities.items()}
        covered = [name for names, _ in groups for name in names]
        if sorted(covered) != sorted(self.scores):
            raise ConfigError(f"score groups cover {sorted(covered)}, the scores are {sorted(self.scores)}")
        self.groups = groups
        self._shifts = [0.0] * len(groups)

    def keep_probabilities(self) -> dict[str, Tensor]:
        """theta = sigmoid(score - tau) per weight (differentiable in the scores; tau is not)."""
        out = {}
        for index, (names, kept) in enumerate(self.groups):
            flat = torch.cat([self.scores[name].detach().reshape(-1) for name in names])
            self._shifts[index] = tau = solve_shift(flat, kept, self._shifts[index])
            for name in names:
                out[name] = torch.sigmoid(self.scores[name] - tau)
        return out

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The network under one Bernoulli(theta) mask, with a straight-through gradient to theta."""
        state = dict(self.frozen)
        for name, theta in self.keep_probabilities().items():
            sample = torch.bernoulli(theta.detach(), generator=generator)
            state[name] = self.frozen[name] * (sample + theta - theta.detach())
        return functional_call(self.model, state, (x,))

    def train(self, loader, config: TrainConfig, generator: torch.Generator) -> float:
        """Train the scores (the frozen weights never change); returns the mean cross-entropy."""
        scores = list(self.scores.values())
        if config.optimizer == "adam":
            optimizer = torch.optim.Adam(scores, lr=config.learning_rate, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.SGD(scores, lr=config.learning_rate, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        total, examples = 0.0, 0
        for _ in range(config.epochs):
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(self.forward(x, generator), y)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(y)
                examples += len(y)
        return total / examples if examples else math.nan


__all__ = ["ScoreModel", "frozen_state", "initial_scores", "solve_shift"]
