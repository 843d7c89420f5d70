"""Pruning masks: explicit bool tensors keyed by parameter name (True = keep).

No parametrizations or hooks: a mask is data, applied by zeroing weights in place.

Ties: every top-k here uses a stable descending sort, so among equal scores the earlier
weight wins. "Earlier" is the flat (row-major) index inside a tensor and, for a global
top-k, the order of the dict before that. The same scores always give the same mask.

Monotone pruning: ``monotone_scores(scores, previous)`` sets the score of every weight that
``previous`` pruned to -inf, so a top-k takes it only when a layer asks for more weights than
``previous`` kept; ``intersect`` with ``previous`` afterwards removes even those, so a
pruned weight is never revived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fedprune.validation import ConfigError, positive_int
from fedprune.validation import sparsity as check_sparsity

Masks = dict[str, Tensor]
"""Parameter name -> bool tensor of the parameter's shape; True keeps the weight."""

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --- what can be pruned ----------------------------------------------------------------------

def prunable_parameters(model: nn.Module, include_bias: bool = False) -> dict[str, nn.Parameter]:
    """Weights (and, if asked, biases) of the model's Linear and Conv1d/2d/3d layers.

    Names are those of ``model.named_parameters()``, in its order; normalization layers and
    every other module are never included.
    """
    wanted = set()
    for module in model.modules():
        if isinstance(module, PRUNABLE_MODULES):
            wanted.add(id(module.weight))
            if include_bias and module.bias is not None:
                wanted.add(id(module.bias))
    found = {name: p for name, p in model.named_parameters() if id(p) in wanted}
    if not found:
        raise ConfigError(f"{type(model).__name__} has nothing to prune: fedprune prunes the weights "
                          "of nn.Linear and nn.Conv1d/2d/3d layers, and this model has none")
    return found


def parameter_shapes(params: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape as a tuple of ints (what distributions and unflatten_masks take)."""
    return {name: tuple(int(d) for d in t.shape) for name, t in params.items()}


def kept_count(numel: int, sparsity: float) -> int:
    """Weights kept out of ``numel`` at ``sparsity``, rounded as torch.nn.utils.prune rounds.

    torch prunes ``round(sparsity * numel)`` (Python's round, half to even), so this keeps
    ``numel - round(sparsity * numel)``.
    """
    sparsity = check_sparsity(sparsity)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ConfigError(f"numel must be an integer >= 0, got {numel!r}")
    return numel - round(sparsity * numel)


# --- top-k -----------------------------------------------------------------------------------

def keep_highest(scores: Tensor, kept: int, tie_break: Tensor | None = None) -> Tensor:
    """Flat bool mask of the ``kept`` highest ``scores``: the one top-k selection of fedprune.

    Ties go to the higher ``tie_break`` where one is given, then to the lower flat index. Callers
    check ``kept`` and NaNs. Two stable descending sorts, tie-break first, give that order.
    """
    flat = scores.detach().reshape(-1)
    if tie_break is None:
        order = torch.sort(flat, descending=True, stable=True).indices
    else:
        first = torch.sort(tie_break.detach().reshape(-1), descending=True, stable=True).indices
        order = first[torch.sort(flat[first], descending=True, stable=True).indices]
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    keep[order[:kept]] = True
    return keep


def topk(scores: Mapping[str, Tensor], counts: Mapping[str, int]) -> Masks:
    """Per layer, keep the ``counts[name]`` highest scores (ties: lower flat index first)."""
    masks = {}
    for name, score in scores.items():
        if name not in counts:
            raise ConfigError(f"no kept count for {name!r}")
        k = int(counts[name])
        if not 0 <= k <= score.numel():
            raise ConfigError(f"kept count {k} for {name!r} is outside [0, {score.numel()}]")
        _check_no_nan(name, score)
        masks[name] = keep_highest(score, k).reshape(score.shape)
    return masks


def global_topk(scores: Mapping[str, Tensor], kept: int) -> Masks:
    """Keep the ``kept`` highest scores over all layers together (one threshold)."""
    if not scores:
        raise ConfigError("no scores to select from")
    total = sum(s.numel() for s in scores.values())
    if not 0 <= kept <= total:
        raise ConfigError(f"kept count {kept} is outside [0, {total}]")
    for name, score in scores.items():
        _check_no_nan(name, score)
    device = next(iter(scores.values())).device
    keep = keep_highest(torch.cat([s.detach().reshape(-1).to(device) for s in scores.values()]), kept)
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = keep[start:start + score.numel()].reshape(score.shape).to(score.device)
        start += score.numel()
    return masks


def layerwise_masks(scores: Mapping[str, Tensor], sparsity: float) -> Masks:
    """Unstructured masks with every layer at ``sparsity`` (torch's l1_unstructured per layer)."""
    return topk(scores, {name: kept_count(s.numel(), sparsity) for name, s in scores.items()})


def global_masks(scores: Mapping[str, Tensor], sparsity: float) -> Masks:
    """Unstructured masks with one threshold over all layers (torch's global_unstructured)."""
    return global_topk(scores, kept_count(sum(s.numel() for s in scores.values()), sparsity))


# --- structured masks ------------------------------------------------------------------------

def as_units(t: Tensor) -> Tensor:
    """(out, everything else): one row per output unit (row / output channel; a 1-D entry)."""
    return t.reshape(t.shape[0], -1)


def as_matrix(t: Tensor) -> Tensor:
    """The 2-D view structured masks work on: (out, in * kernel...); a 1-D tensor is one row."""
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def unit_masks(unit_keep: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> Masks:
    """Expand per-unit keep flags of shape (out,) to whole rows / output channels."""
    masks = {}
    for name, keep in unit_keep.items():
        shape = tuple(shapes[name])
        if keep.dim() != 1 or keep.numel() != shape[0]:
            raise ConfigError(f"unit mask for {name!r} must have shape ({shape[0]},), got {tuple(keep.shape)}")
        masks[name] = keep.reshape((shape[0],) + (1,) * (len(shape) - 1)).expand(shape).clone()
    return masks


def check_nm(name: str, shape: tuple[int, ...], n: int, m: int) -> None:
    """ConfigError unless 0 < n < m and m divides the layer's input dimension."""
    positive_int("N of N:M", n)
    positive_int("M of N:M", m)
    if not n < m:
        raise ConfigError(f"N:M needs 0 < N < M, got N={n}, M={m}")
    width = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
    if width % m:
        raise ConfigError(f"N:M with M={m} needs M to divide the input dimension of {name!r}, "
                          f"which is {width} (shape {tuple(shape)}); pick M dividing {width}")


def nm_masks(scores: Mapping[str, Tensor], n: int, m: int) -> Masks:
    """Keep the ``n`` highest of every ``m`` consecutive weights along the input dimension.

    A Conv weight's input dimension is in_channels * kernel, flattened row-major.
    Ties inside a group: the earlier weight wins.
    """
    masks = {}
    for name, score in scores.items():
        check_nm(name, tuple(score.shape), n, m)
        _check_no_nan(name, score)
        groups = as_matrix(score.detach()).reshape(-1, m)
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
        keep.scatter_(1, order, True)
        masks[name] = keep.reshape(score.shape)
    return masks


def check_blocks(name: str, shape: tuple[int, ...], block: tuple[int, int]) -> None:
    """ConfigError unless (bh, bw) blocks tile the layer's (out, in * kernel) matrix exactly."""
    if not isinstance(block, (tuple, list)) or len(block) != 2:
        raise ConfigError(f"block must be a pair (rows, columns), got {block!r}")
    bh, bw = positive_int("block rows", block[0]), positive_int("block columns", block[1])
    rows, cols = (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else (1, shape[0])
    if rows % bh or cols % bw:
        raise ConfigError(f"{bh}x{bw} blocks do not tile {name!r}, seen as a {rows}x{cols} matrix "
                          f"(shape {tuple(shape)}); pick block sizes dividing {rows} and {cols}")


def block_scores(scores: Mapping[str, Tensor], block: tuple[int, int]) -> dict[str, Tensor]:
    """Sum of the scores in each (bh, bw) block: shape (rows / bh, cols / bw) per layer."""
    result = {}
    for name, score in scores.items():
        check_blocks(name, tuple(score.shape), block)
        bh, bw = block
        matrix = as_matrix(score.detach())
        rows, cols = matrix.shape
        result[name] = matrix.reshape(rows // bh, bh, cols // bw, bw).sum(dim=(1, 3))
    return result


def block_masks(block_keep: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]],
                block: tuple[int, int]) -> Masks:
    """Expand per-block keep flags (rows / bh, cols / bw) to the parameters' shapes."""
    masks = {}
    for name, keep in block_keep.items():
        shape = tuple(shapes[name])
        check_blocks(name, shape, block)
        bh, bw = block
        rows, cols = (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else (1, shape[0])
        if tuple(keep.shape) != (rows // bh, cols // bw):
            raise ConfigError(f"block flags for {name!r} must have shape {(rows // bh, cols // bw)}, "
                              f"got {tuple(keep.shape)}")
        masks[name] = keep.repeat_interleave(bh, dim=0).repeat_interleave(bw, dim=1).reshape(shape)
    return masks


# --- using masks -----------------------------------------------------------------------------

def full_masks(params: Mapping[str, Tensor]) -> Masks:
    """Masks that keep everything."""
    return {name: torch.ones(t.shape, dtype=torch.bool, device=t.device) for name, t in params.items()}


def check_masks(masks: Mapping[str, Tensor], params: Mapping[str, Tensor], what: str = "masks") -> None:
    """ConfigError unless ``masks`` are bool tensors with exactly the names and shapes of ``params``."""
    if set(masks) != set(params):
        missing, extra = sorted(set(params) - set(masks)), sorted(set(masks) - set(params))
        raise ConfigError(f"{what} do not match the parameters: missing {missing}, unexpected {extra}")
    for name, mask in masks.items():
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ConfigError(f"{what}[{name!r}] must be a bool tensor")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ConfigError(f"{what}[{name!r}] has shape {tuple(mask.shape)}, "
                              f"the parameter has {tuple(params[name].shape)}")


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero, in place, every weight of ``model`` that ``masks`` prunes."""
    for name, mask in masks.items():
        try:
            param = model.get_parameter(name)
        except AttributeError:
            raise ConfigError(f"the model has no parameter {name!r} to mask") from None
        check_masks({name: mask}, {name: param})
        with torch.no_grad():
            param.masked_fill_(~mask.to(param.device), 0)


def intersect(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Masks:
    """Keep a weight only where both masks keep it."""
    check_masks(b, a, "second masks")
    return {name: a[name] & b[name].to(a[name].device) for name in a}


def monotone_scores(scores: Mapping[str, Tensor], previous: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Scores with every weight that ``previous`` pruned set to -inf (shapes must match)."""
    check_masks(previous, scores, "previous masks")
    return {name: _floating(s).masked_fill(~previous[name].to(s.device), -math.inf)
            for name, s in scores.items()}


def density(masks: Mapping[str, Tensor]) -> float:
    """Fraction of all masked weights that are kept."""
    if not masks:
        raise ConfigError("density of no masks is undefined")
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 1.0


def layer_densities(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Fraction kept in each layer."""
    return {name: int(m.sum()) / m.numel() if m.numel() else 1.0 for name, m in masks.items()}


def _floating(score: Tensor) -> Tensor:
    score = score.detach()
    return score if score.is_floating_point() else score.float()


def _check_no_nan(name: str, score: Tensor) -> None:
    if score.is_floating_point() and bool(torch.isnan(score).any()):
        raise ConfigError(f"scores for {name!r} contain NaN (did training diverge?)")
