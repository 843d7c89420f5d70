"""How a total sparsity is split over layers.

One signature for all::

    distribution(shapes, sparsity, scores=None) -> {name: kept count}

``shapes`` maps layer names to tensor shapes; ``scores``, where a distribution needs them,
maps the same names to tensors of those shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import Tensor

from fedprune.pruning.masks import global_masks, kept_count
from fedprune.validation import ConfigError, pick
from fedprune.validation import sparsity as check_sparsity

Shapes = Mapping[str, tuple[int, ...]]
Distribution = Callable[..., dict[str, int]]


def uniform(shapes: Shapes, sparsity: float, scores: Mapping[str, Tensor] | None = None) -> dict[str, int]:
    """Every layer at ``sparsity``, rounded as torch.nn.utils.prune rounds."""
    sizes = _sizes(shapes)
    sparsity = check_sparsity(sparsity)
    return {name: kept_count(size, sparsity) for name, size in sizes.items()}


def global_(shapes: Shapes, sparsity: float, scores: Mapping[str, Tensor] | None = None) -> dict[str, int]:
    """One threshold over all layers' scores: each layer keeps what a global top-k keeps there."""
    _sizes(shapes)
    sparsity = check_sparsity(sparsity)
    if scores is None:
        raise ConfigError("the global distribution needs scores: it keeps the highest scores over all layers")
    if list(scores) != list(shapes):
        raise ConfigError(f"scores name {list(scores)} but shapes name {list(shapes)}")
    for name, score in scores.items():
        if tuple(score.shape) != tuple(shapes[name]):
            raise ConfigError(f"scores for {name!r} have shape {tuple(score.shape)}, expected {tuple(shapes[name])}")
    return {name: int(mask.sum()) for name, mask in global_masks(scores, sparsity).items()}


def erk(shapes: Shapes, sparsity: float, scores: Mapping[str, Tensor] | None = None) -> dict[str, int]:
    """Erdos-Renyi-Kernel (Evci et al. 2020, RigL): density proportional to sum(dims) / prod(dims).

    Layers whose density would exceed 1 are made dense and the others rescaled, as in RigL's
    ``get_sparsities``, until every density is at most 1. Counts are then rounded by largest
    remainder so the total kept equals ``kept_count(total, sparsity)`` (no layer above its size).
    """
    sizes = _sizes(shapes)
    sparsity = check_sparsity(sparsity)
    total = sum(sizes.values())
    target = kept_count(total, sparsity)
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    dense: set[str] = set()
    while True:
        sparse = [name for name in sizes if name not in dense]
        if not sparse:
            break
        # Kept weights left for the sparse layers, over the sum of their raw densities * sizes.
        scale = (total * (1 - sparsity) - sum(sizes[name] for name in dense)) / sum(raw[n] * sizes[n] for n in sparse)
        largest = max(raw[name] for name in sparse)
        if largest * scale <= 1:
            break
        dense.update(name for name in sparse if raw[name] == largest)
    exact = {name: float(sizes[name]) if name in dense else min(1.0, raw[name] * scale) * sizes[name]
             for name in sizes}
    return _largest_remainder(exact, sizes, target)


DISTRIBUTIONS: dict[str, Distribution] = {"uniform": uniform, "global": global_, "erk": erk}


def get_distribution(name: str) -> Distribution:
    """The distribution called ``name``; ConfigError listing the valid names otherwise."""
    return pick("distribution", name, DISTRIBUTIONS)


def _largest_remainder(exact: Mapping[str, float], sizes: Mapping[str, int], target: int) -> dict[str, int]:
    """Integer counts in [0, size] near ``exact`` summing to ``target`` (Hamilton's method).

    Each layer gets the floor of its exact count; the units still missing go one each to the
    largest fractional parts (ties: dict order).
    """
    counts = {name: min(sizes[name], max(0, math.floor(value))) for name, value in exact.items()}
    order = sorted(exact, key=lambda name: math.floor(exact[name]) - exact[name])  # stable
    short = target - sum(counts.values())
    for name in order:
        if short <= 0:
            break
        if counts[name] < sizes[name]:
            counts[name] += 1
            short -= 1
    # Only float error can leave the sum off target now; settle it where there is room.
    for name in order:
        while short > 0 and counts[name] < sizes[name]:
            counts[name] += 1
            short -= 1
    for name in reversed(order):
        while short < 0 and counts[name] > 0:
            counts[name] -= 1
            short += 1
    return counts


def _sizes(shapes: Shapes) -> dict[str, int]:
    if not shapes:
        raise ConfigError("no layers to distribute sparsity over")
    sizes = {}
    for name, shape in shapes.items():
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ConfigError(f"shape of {name!r} must be a non-empty tuple of positive ints, got {shape!r}")
        sizes[name] = math.prod(shape)
    return sizes
