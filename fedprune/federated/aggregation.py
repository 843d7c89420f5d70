"""The server's arithmetic: average weights under the mask, and turn keep-frequencies into a mask.

Pure functions over numpy arrays. Masks here are flat bool vectors over the prunable weights
in ``fedprune.pruning.bits.flatten_masks`` order; ``fedprune.pruning.bits.unflatten_masks`` gives them their
shapes back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedprune.pruning.masks import keep_highest
from fedprune.validation import ConfigError


def weighted_average(arrays: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Average of same-shaped tensors weighted by ``weights`` (examples), in float64, returned float32."""
    if not arrays:
        raise ConfigError("nothing to average: no replies")
    if len(arrays) != len(weights):
        raise ConfigError(f"{len(arrays)} replies but {len(weights)} weights")
    weights = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ConfigError(f"weights must be finite and positive, got {weights.tolist()}")
    total = weights.sum()
    out = {}
    for name in arrays[0]:
        acc = np.zeros(np.shape(arrays[0][name]), dtype=np.float64)
        for reply, weight in zip(arrays, weights):
            acc += weight * np.asarray(reply[name], dtype=np.float64)
        out[name] = (acc / total).astype(np.float32)
    return out


def select_mask(
    frequencies: np.ndarray,
    kept: int,
    *,
    tie_break: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the ``kept`` coordinates with the highest estimated keep-frequency
    (``fedprune.pruning.masks.keep_highest``).

    Ties (common with exact votes: every client keeps the same strong weights) go to the larger
    ``tie_break`` (the averaged weight's magnitude), then to the lower index. Coordinates not
    ``eligible`` (pruned before, when pruning is monotone) are never kept; asking for more than
    are eligible keeps every eligible one.
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    if frequencies.ndim != 1:
        raise ConfigError(f"frequencies must be 1-D, got shape {frequencies.shape}")
    size = frequencies.size
    if isinstance(kept, bool) or not isinstance(kept, (int, np.integer)) or not 0 <= kept <= size:
        raise ConfigError(f"kept must be an integer in [0, {size}], got {kept!r}")
    if np.isnan(frequencies).any():
        raise ConfigError("frequencies contain NaN")
    tie = np.zeros(size) if tie_break is None else np.abs(np.asarray(tie_break, dtype=np.float64))
    if tie.shape != (size,):
        raise ConfigError(f"tie_break must have shape ({size},), got {tie.shape}")
    if eligible is not None:
        eligible = np.asarray(eligible, dtype=bool)
        if eligible.shape != (size,):
            raise ConfigError(f"eligible must have shape ({size},), got {eligible.shape}")
        kept = min(int(kept), int(eligible.sum()))
        frequencies = np.where(eligible, frequencies, -np.inf)
    tie = None if tie_break is None else torch.from_numpy(np.where(np.isnan(tie), -np.inf, tie))  # NaN loses ties
    keep = keep_highest(torch.from_numpy(np.ascontiguousarray(frequencies)), int(kept), tie)
    return keep.numpy()


def select_layer_masks(
    frequencies: np.ndarray,
    kept: Mapping[str, int],
    sizes: Mapping[str, int],
    *,
    tie_break: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """``select_mask`` applied layer by layer: ``kept[name]`` of each layer's ``sizes[name]`` slice."""
    if list(kept) != list(sizes):
        raise ConfigError(f"kept counts name {list(kept)}, layers are {list(sizes)}")
    total = sum(sizes.values())
    if np.shape(frequencies) != (total,):
        raise ConfigError(f"frequencies must have shape ({total},), got {np.shape(frequencies)}")
    parts, start = [], 0
    for name, size in sizes.items():
        part = slice(start, start + size)
        parts.append(select_mask(
            frequencies[part], kept[name],
            tie_break=None if tie_break is None else tie_break[part],
            eligible=None if eligible is None else eligible[part],
        ))
        start += size
    return np.concatenate(parts)


def scatter(values: np.ndarray, positions: np.ndarray, fill: float = -np.inf) -> np.ndarray:
    """A full-length vector holding ``values`` at the True ``positions`` and ``fill`` elsewhere.

    Reports cover only the weights the global mask still keeps; this puts their estimates back
    in place over all prunable weights.
    """
    positions = np.asarray(positions, dtype=bool)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (int(positions.sum()),):
        raise ConfigError(f"{values.size} values for {int(positions.sum())} positions")
    out = np.full(positions.shape, fill, dtype=np.float64)
    out[positions] = values
    return out
