"""From parameters to a mask in one call: score, split the sparsity over layers, select.

Used by the centralized workflow and by the clients. Every setting is checked before any
scoring starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fedprune.pruning.distributions import get_distribution
from fedprune.pruning.masks import (
    Masks,
    as_units,
    block_masks,
    block_scores,
    check_blocks,
    check_masks,
    check_nm,
    intersect,
    kept_count,
    monotone_scores,
    nm_masks,
    parameter_shapes,
    topk,
    unit_masks,
)
from fedprune.pruning.scorers import UNIT_SCORERS, get_scorer
from fedprune.validation import ConfigError, pick
from fedprune.validation import sparsity as check_sparsity

STRUCTURES = {
    "unstructured": "any set of single weights",
    "units": "whole rows of Linear weights / output channels of Conv weights",
    "n:m": "N kept in every M consecutive weights along the input dimension",
    "blocks": "whole bh x bw blocks of the (out, in * kernel) matrix",
}
_NM_TOLERANCE = 1e-9


def compute_masks(
    params: Mapping[str, Tensor],
    *,
    sparsity: float,
    scorer: str = "magnitude",
    distribution: str = "global",
    structure: str = "unstructured",
    previous: Mapping[str, Tensor] | None = None,
    grads: Mapping[str, Tensor] | None = None,
    fisher: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    n: int = 2,
    m: int = 4,
    block: tuple[int, int] = (4, 4),
) -> Masks:
    """The mask (True = keep) of ``params`` at ``sparsity``.

    - ``scorer`` ranks weights (see ``fedprune.pruning.scorers``); the unit scorers ``l1_units`` and
      ``l2_units`` only go with ``structure="units"``. With "units", a per-weight score is
      averaged over each unit (comparable across layers of different fan-in); with "blocks",
      summed over each block.
    - ``distribution`` ("uniform", "global", "erk") splits ``sparsity``, a fraction of weights,
      over layers. With "units" or "blocks" each layer keeps whole groups: uniform keeps that
      fraction of each layer's groups, erk rounds each layer's ERK density to whole groups,
      global takes groups in descending score order while their weights fit the total budget.
    - ``structure="n:m"`` fixes every layer's sparsity at 1 - n/m: ``sparsity`` must equal it,
      and ``distribution`` is not used.
    - ``previous``: monotone pruning. A weight pruned there stays pruned (its score is -inf
      before selection and the result is intersected with ``previous``), so where a layer asks
      for more weights than ``previous`` kept, it keeps only what ``previous`` kept.
    """
    params = _check_params(params)
    sparsity = check_sparsity(sparsity)
    score = get_scorer(scorer)
    split = get_distribution(distribution)
    pick("structure", structure, STRUCTURES)
    shapes = parameter_shapes(params)
    if scorer in UNIT_SCORERS and structure != "units":
        raise ConfigError(f"scorer {scorer!r} scores whole output units: use structure='units', or a "
                          "per-weight scorer (magnitude, random, taylor, obd) for this structure")
    if structure == "n:m":
        for name, shape in shapes.items():
            check_nm(name, shape, n, m)
        if abs(sparsity - (1 - n / m)) > _NM_TOLERANCE:
            raise ConfigError(f"structure 'n:m' with n={n}, m={m} prunes exactly {1 - n / m:g} of every layer; "
                              f"set sparsity={1 - n / m:g} (got {sparsity}) or change n and m")
    if structure == "blocks":
        for name, shape in shapes.items():
            check_blocks(name, shape, block)
    if previous is not None:
        check_masks(previous, params, "previous masks")

    scores = score(params, grads=grads, fisher=fisher, generator=generator)

    if structure == "unstructured":
        if previous is not None:
            scores = monotone_scores(scores, previous)
        masks = topk(scores, split(shapes, sparsity, scores))
    elif structure == "n:m":
        masks = nm_masks(monotone_scores(scores, previous) if previous is not None else scores, n, m)
    elif structure == "units":
        if scorer not in UNIT_SCORERS:
            scores = {name: as_units(s).mean(dim=1) for name, s in scores.items()}
        if previous is not None:  # a unit with no weight left is pruned for good
            alive = {name: as_units(previous[name]).any(dim=1) for name in scores}
            scores = monotone_scores(scores, alive)
        keep = topk(scores, _group_counts(distribution, split, shapes, scores, sparsity))
        masks = unit_masks(keep, shapes)
    else:  # blocks
        scores = block_scores(scores, block)
        if previous is not None:  # a block with no weight left is pruned for good
            alive = {name: s > 0 for name, s in block_scores(
                {name: p.float() for name, p in previous.items()}, block).items()}
            scores = monotone_scores(scores, alive)
        keep = topk(scores, _group_counts(distribution, split, shapes, scores, sparsity))
        masks = block_masks(keep, shapes, block)

    return intersect(masks, previous) if previous is not None else masks


def _group_counts(distribution: str, split, weight_shapes, group_scores, sparsity: float) -> dict[str, int]:
    """Kept units / blocks per layer, with ``sparsity`` a fraction of weights.

    uniform: every layer keeps ``kept_count(groups, sparsity)`` of its groups. erk: the layer's
    ERK weight density, rounded to whole groups. global: groups in descending score order
    (ties: dict order, then index) for as long as their weights fit in
    ``kept_count(total weights, sparsity)``: one threshold, budgeted in weights, since a
    group's size differs between layers.
    """
    sizes = {name: math.prod(weight_shapes[name]) // s.numel() for name, s in group_scores.items()}
    if distribution == "erk":
        kept = split(weight_shapes, sparsity)
        return {name: round(kept[name] / sizes[name]) for name in group_scores}
    if distribution == "global":
        budget = kept_count(sum(math.prod(shape) for shape in weight_shapes.values()), sparsity)
        flat = torch.cat([s.detach().reshape(-1).cpu() for s in group_scores.values()])
        weights = torch.cat([torch.full((s.numel(),), sizes[name]) for name, s in group_scores.items()])
        owner = torch.cat([torch.full((s.numel(),), i) for i, s in enumerate(group_scores.values())])
        order = torch.sort(flat, descending=True, stable=True).indices
        fits = int((torch.cumsum(weights[order], 0) <= budget).sum())
        taken = torch.bincount(owner[order[:fits]], minlength=len(group_scores))
        return {name: int(taken[i]) for i, name in enumerate(group_scores)}
    return split(parameter_shapes(group_scores), sparsity, group_scores)


def _check_params(params) -> dict[str, Tensor]:
    if not isinstance(params, Mapping) or not params:
        raise ConfigError("compute_masks needs a non-empty dict of parameters, e.g. prunable_parameters(model)")
    for name, t in params.items():
        if not isinstance(t, Tensor) or t.dim() == 0 or t.numel() == 0:
            raise ConfigError(f"parameter {name!r} must be a non-empty tensor with at least one dimension")
    return dict(params)
