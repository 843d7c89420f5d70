"""How important each weight is: pure functions from parameters (and gradients) to scores.

Every scorer has one signature::

    scorer(params, *, grads=None, fisher=None, generator=None) -> dict[name, Tensor]

Higher scores mean "keep". Per-weight scorers return a tensor shaped like each parameter;
the structured scorers (``l1_units``, ``l2_units``) return one score per output unit: shape
``(out_features,)`` for a Linear weight, ``(out_channels,)`` for a Conv weight. Scores are
detached from the autograd graph and live on the parameter's device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from fedprune.pruning.masks import as_units
from fedprune.validation import ConfigError, pick

Scores = dict[str, Tensor]
Scorer = Callable[..., Scores]


def magnitude(params: Mapping[str, Tensor], *, grads=None, fisher=None, generator=None) -> Scores:
    """|w|: the classic magnitude criterion."""
    return {name: w.detach().abs() for name, w in params.items()}


def random(params: Mapping[str, Tensor], *, grads=None, fisher=None,
           generator: torch.Generator | None = None) -> Scores:
    """Uniform [0, 1) scores drawn from ``generator`` in the order of ``params`` (a baseline)."""
    if not isinstance(generator, torch.Generator):
        raise ConfigError("the random scorer needs an explicit generator: pass "
                          "generator=torch.Generator().manual_seed(seed)")
    return {name: torch.rand(w.shape, generator=generator, device=generator.device).to(w.device)
            for name, w in params.items()}


def taylor(params: Mapping[str, Tensor], *, grads=None, fisher=None, generator=None) -> Scores:
    """|w * g|: first-order Taylor estimate of the loss change from removing each weight."""
    grads = _companion("taylor", "grads", grads, params,
                       "pass grads={name: parameter.grad} from a backward pass of the loss")
    return {name: (w.detach() * grads[name].detach().to(w.device)).abs() for name, w in params.items()}


def obd(params: Mapping[str, Tensor], *, grads=None, fisher=None, generator=None) -> Scores:
    """0.5 * w^2 * F: Optimal Brain Damage saliency with the diagonal Fisher F as the Hessian."""
    fisher = _companion("obd", "fisher", fisher, params,
                        "pass fisher=estimate_fisher(per-batch gradients), the mean squared gradient")
    return {name: 0.5 * w.detach().square() * fisher[name].detach().to(w.device)
            for name, w in params.items()}


def l1_units(params: Mapping[str, Tensor], *, grads=None, fisher=None, generator=None) -> Scores:
    """L1 norm of each output unit (row of a Linear, output channel of a Conv): shape (out,)."""
    return {name: as_units(w.detach()).abs().sum(dim=1) for name, w in params.items()}


def l2_units(params: Mapping[str, Tensor], *, grads=None, fisher=None, generator=None) -> Scores:
    """L2 norm of each output unit (row of a Linear, output channel of a Conv): shape (out,)."""
    return {name: as_units(w.detach()).square().sum(dim=1).sqrt() for name, w in params.items()}


def estimate_fisher(batch_gradients: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Diagonal empirical Fisher: the mean over batches of the squared per-batch gradients."""
    total: dict[str, Tensor] = {}
    count = 0
    for grads in batch_gradients:
        if total and set(grads) != set(total):
            raise ConfigError("every batch's gradients must cover the same parameters")
        for name, g in grads.items():
            square = g.detach().square()
            total[name] = total[name] + square if name in total else square.clone()
        count += 1
    if count == 0:
        raise ConfigError("estimate_fisher needs the gradients of at least one batch")
    return {name: value / count for name, value in total.items()}


SCORERS: dict[str, Scorer] = {
    "magnitude": magnitude,
    "random": random,
    "taylor": taylor,
    "obd": obd,
    "l1_units": l1_units,
    "l2_units": l2_units,
}
UNIT_SCORERS = frozenset({"l1_units", "l2_units"})
"""Scorers that return one score per output unit instead of one per weight."""
DATA_SCORERS = {"taylor": "grads", "obd": "fisher"}
"""Scorers that read the data (gradients, Fisher information), with what they need: their masks are new
releases of the data, never post-processing of protected weights."""


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name``; ConfigError listing the valid names otherwise."""
    return pick("scorer", name, SCORERS)


def _companion(scorer: str, what: str, values, params: Mapping[str, Tensor], fix: str) -> Mapping[str, Tensor]:
    """Check that ``values`` has a tensor shaped like every parameter."""
    if values is None:
        raise ConfigError(f"the {scorer} scorer needs {what}: {fix}")
    for name, w in params.items():
        if name not in values or values[name] is None:
            raise ConfigError(f"the {scorer} scorer has no {what} for {name!r}: {fix}")
        if tuple(values[name].shape) != tuple(w.shape):
            raise ConfigError(f"{what} for {name!r} has shape {tuple(values[name].shape)}, "
                              f"the parameter has {tuple(w.shape)}")
    return values
