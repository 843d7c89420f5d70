"""Local training and evaluation with the mask enforced, and optional DP-SGD (Opacus).

``train`` runs cross-entropy training for ``config.epochs`` passes over a loader. With
``masks``, a :class:`MaskEnforcer` keeps every pruned weight at exactly zero: it zeroes the
weights, masks their gradients as they are computed, masks them again right before the
optimizer step (DP-SGD writes fresh noise into every coordinate), and after the step re-applies
the mask and zeroes the optimizer state (momentum, Adam's moments) at pruned positions, so
momentum and weight decay cannot revive a pruned weight. With ``dp`` (a
:class:`fedprune.training.dpsgd.DPSGD`) the call runs DP-SGD and adds its steps to that DPSGD's accountant.

Shuffling comes from the loader's own generator (``fedprune.data.datasets.make_loader``); ``generator``
seeds DP-SGD's Poisson sampling and noise. Nothing here reads or seeds global random state.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedprune.pruning.masks import check_masks, prunable_parameters
from fedprune.pruning.scorers import estimate_fisher
from fedprune.training.dpsgd import DPSGD
from fedprune.validation import ConfigError, count_or_zero, finite, pick, positive, positive_int

OPTIMIZERS = {
    "sgd": "SGD with heavy-ball momentum (``momentum``) and L2 weight decay",
    "adam": "Adam with torch's default betas (``momentum`` is not used) and L2 weight decay",
}


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings: a plain dataclass of scalars (``dataclasses.asdict`` gives JSON).

    ``batch_size`` is for callers that build the loader; ``train`` uses the loader it is given.
    ``momentum`` applies to SGD only. ``steps`` > 0 replaces ``epochs``: exactly that many
    optimizer steps, passing over the loader as often as they need (0: ``epochs`` passes).
    """

    epochs: int = 1
    steps: int = 0
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32

    def __post_init__(self):
        positive_int("epochs", self.epochs)
        count_or_zero("steps", self.steps, "epochs decide")
        positive("learning rate", self.learning_rate)
        pick("optimizer", self.optimizer, OPTIMIZERS)
        if not 0.0 <= finite("momentum", self.momentum) < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}; 0 turns it off")
        if finite("weight decay", self.weight_decay) < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        positive_int("batch size", self.batch_size)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """A fresh torch optimizer over all of ``model``'s parameters, as ``config`` asks."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


class MaskEnforcer:
    """Keeps the weights that ``masks`` prunes at exactly zero for the life of a ``with`` block.

    Parameters are resolved once, by identity, from ``model`` as given, so the enforcer keeps
    working when Opacus wraps the model (its GradSampleModule renames parameters
    ``_module.<name>``) and with optimizer state keyed by parameter. On entry: zero the pruned
    weights and register gradient hooks on their parameters. ``attach(optimizer)`` adds a
    pre-step hook (mask the gradients again: DP-SGD's noise lands after the backward hooks) and
    a post-step hook (re-apply the mask; zero the optimizer state at pruned positions). On exit
    every hook is removed, so the model stays deep-copyable and picklable.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(masks, Mapping):
            raise ConfigError(f"masks must be a dict of parameter name -> bool tensor, got {type(masks).__name__}")
        named = dict(model.named_parameters())
        self._pruned: list[tuple[nn.Parameter, Tensor]] = []
        for name, mask in masks.items():
            if name not in named:
                raise ConfigError(f"masks name {name!r}, which is not a parameter of {type(model).__name__} "
                                  f"(its parameters: {', '.join(named)}); build masks from "
                                  "prunable_parameters(model) of this model")
            check_masks({name: mask}, {name: named[name]})
            self._pruned.append((named[name], ~mask.to(named[name].device)))
        self._handles: list = []

    def __enter__(self) -> "MaskEnforcer":
        self.apply()
        for param, pruned in self._pruned:
            if param.requires_grad:
                self._handles.append(param.register_hook(_zeroing_hook(pruned)))
        return self

    def __exit__(self, *exc) -> None:
        while self._handles:
            self._handles.pop().remove()

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Mask gradients before, and weights and state after, every step of ``optimizer``.

        An Opacus DPOptimizer is unwrapped: the hooks go on the optimizer it wraps, whose step
        runs after clipping and noise.
        """
        base = getattr(optimizer, "original_optimizer", optimizer)
        self._handles.append(base.register_step_pre_hook(lambda opt, args, kwargs: self.mask_gradients()))
        self._handles.append(base.register_step_post_hook(lambda opt, args, kwargs: self.after_step(opt)))

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights in place."""
        for param, pruned in self._pruned:
            param.masked_fill_(pruned, 0)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero ``.grad`` and Opacus's per-example ``.grad_sample`` at pruned positions.

        Masking per-example gradients before clipping leaves the sensitivity at the clipping
        bound (it is a fixed map applied to each example) and spends none of it on coordinates
        that cannot move.
        """
        for param, pruned in self._pruned:
            if param.grad is not None:
                param.grad.masked_fill_(pruned, 0)
            samples = getattr(param, "grad_sample", None)
            for sample in samples if isinstance(samples, list) else [samples]:
                if isinstance(sample, Tensor) and sample.shape[1:] == pruned.shape:
                    sample.masked_fill_(pruned, 0)

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-apply the mask and zero every per-weight state tensor of ``optimizer`` there."""
        self.apply()
        base = getattr(optimizer, "original_optimizer", optimizer)
        for param, pruned in self._pruned:
            for value in base.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == pruned.shape:
                    value.masked_fill_(pruned, 0)


def _zeroing_hook(pruned: Tensor):
    def hook(grad: Tensor) -> Tensor:
        return grad.masked_fill(pruned, 0)
    return hook


def train(model: nn.Module, loader, config: TrainConfig, *, masks: Mapping[str, Tensor] | None = None,
          dp: DPSGD | None = None, generator: torch.Generator | None = None) -> dict:
    """Train ``model`` in place; returns ``{"loss", "examples", "steps"}``.

    ``loss`` is the mean cross-entropy over every example seen (each at the weights of its
    step), ``examples`` how many were seen (under DP-SGD's Poisson sampling this varies),
    ``steps`` the optimizer steps. ``masks`` (name -> bool, True keeps) are checked before any
    step. With ``dp``, ``generator`` seeds Poisson sampling and noise (OS entropy when None);
    the model is unwrapped again when the call ends, with its trained weights.
    """
    _check_model_loader(model, loader)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a fedprune.training.train.TrainConfig, got {type(config).__name__}")
    if dp is not None and not isinstance(dp, DPSGD):
        raise ConfigError(f"dp must be a fedprune.training.dpsgd.DPSGD or None, got {type(dp).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    enforcer = MaskEnforcer(model, masks) if masks is not None else None
    optimizer = make_optimizer(model, config)
    device = _device(model)
    was_training = model.training
    total_loss, examples, steps = 0.0, 0, 0
    try:
        with ExitStack() as stack:
            if enforcer is not None:
                stack.enter_context(enforcer)
            forward, step_optimizer, batches = model, optimizer, loader
            if dp is not None:
                stack.enter_context(warnings.catch_warnings())
                # Opacus's per-example hooks need gradients of module outputs only; torch warns
                # when the inputs (data) do not require grad, which is the normal case.
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                private = stack.enter_context(dp.make_private(model, optimizer, loader, generator))
                forward, step_optimizer, batches = private.module, private.optimizer, private.loader
            if enforcer is not None:
                enforcer.attach(step_optimizer)
            model.train()
            for x, y in _batches(batches, config):
                x, y = x.to(device), y.to(device)
                step_optimizer.zero_grad(set_to_none=True)
                output = forward(x)
                # An empty Poisson batch still takes its (noise-only) step; its loss is 0.
                loss = F.cross_entropy(output, y) if len(y) else output.sum() * 0.0
                loss.backward()
                if enforcer is not None:
                    enforcer.mask_gradients()
                step_optimizer.step()
                total_loss += float(loss.detach()) * len(y)
                examples += len(y)
                steps += 1
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    return {"loss": total_loss / examples if examples else math.nan, "examples": examples, "steps": steps}


def _batches(loader, config: TrainConfig) -> Iterator:
    """``config.epochs`` passes over ``loader``, or exactly ``config.steps`` batches when set."""
    if not config.steps:
        for _ in range(config.epochs):
            yield from loader
        return
    taken = 0
    while True:
        before = taken
        for batch in loader:
            yield batch
            taken += 1
            if taken == config.steps:
                return
        if taken == before:
            raise ConfigError("steps > 0 needs a loader with at least one batch")


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> dict:
    """Mean cross-entropy, accuracy (ties: the lowest class index) and example count, in eval mode."""
    _check_model_loader(model, loader)
    device = _device(model)
    was_training = model.training
    model.eval()
    total_loss, correct, examples = 0.0, 0, 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            output = model(x)
            total_loss += float(F.cross_entropy(output, y, reduction="sum"))
            correct += int((output.argmax(dim=1) == y).sum())
            examples += len(y)
    finally:
        model.train(was_training)
    if examples == 0:
        raise ConfigError("evaluate needs a loader with at least one example")
    return {"loss": total_loss / examples, "accuracy": correct / examples, "examples": examples}


def gradient_statistics(model: nn.Module, loader, *, max_batches: int | None = None
                        ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean gradient and diagonal empirical Fisher of the prunable weights, over batches.

    Per batch, the gradient of the batch's mean cross-entropy (model in eval mode; ``.grad``
    is left untouched). Returns ``(grads, fisher)`` keyed like ``prunable_parameters(model)``:
    the mean of the per-batch gradients and the mean of their squares
    (``fedprune.pruning.scorers.estimate_fisher``), as the taylor and obd scorers take them.
    """
    _check_model_loader(model, loader)
    if max_batches is not None:
        positive_int("max batches", max_batches)
    params = prunable_parameters(model)
    names, tensors = list(params), list(params.values())
    device = _device(model)
    totals: dict[str, Tensor] = {}
    count = 0

    def batch_gradients() -> Iterator[dict[str, Tensor]]:
        nonlocal count
        for index, (x, y) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                return
            if len(y) == 0:
                continue
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            grads = dict(zip(names, (g.detach() for g in torch.autograd.grad(loss, tensors))))
            for name, g in grads.items():
                totals[name] = totals[name] + g if name in totals else g.clone()
            count += 1
            yield grads

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            fisher = estimate_fisher(batch_gradients())
    finally:
        model.train(was_training)
    return {name: totals[name] / count for name in names}, fisher


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    if first is None:
        raise ConfigError(f"{type(model).__name__} has no parameters to train")
    return first.device


def _check_model_loader(model, loader) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ConfigError("the loader's dataset is empty: give at least one example")
