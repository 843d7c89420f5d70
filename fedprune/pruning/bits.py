"""Masks on the wire: one bit per weight, packed eight to a byte.

Layout: masks are flattened in the dict's order, each tensor row-major, into one bool vector
(``flatten_masks``); ``pack`` stores bit i of that vector in byte i // 8 at bit position
i % 8 (numpy's ``bitorder="little"``), padding the last byte with zeros. The receiver needs
the true length (and the shapes) to undo it: ``unpack`` and ``unflatten_masks``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from fedprune.validation import ConfigError


def packed_length(length: int) -> int:
    """Bytes that ``length`` bits pack into."""
    return (_length(length) + 7) // 8


def pack(bits) -> np.ndarray:
    """Pack a 1-D bool array (any length) into uint8 bytes, little bit order."""
    bits = np.asarray(bits.cpu() if isinstance(bits, Tensor) else bits)
    if bits.dtype != np.bool_:
        raise ConfigError(f"pack takes a bool array, got dtype {bits.dtype}")
    if bits.ndim != 1:
        raise ConfigError(f"pack takes a 1-D array, got shape {bits.shape}; flatten it first")
    return np.packbits(bits, bitorder="little")


def unpack(packed, length: int) -> np.ndarray:
    """The ``length`` bits that ``pack`` stored in ``packed``; checks length and padding."""
    packed = check_packed(np.asarray(packed), _length(length), "packed bits")
    return np.unpackbits(packed, count=length, bitorder="little").astype(bool)


def check_packed(packed, length: int, what: str) -> np.ndarray:
    """``packed`` if it is a 1-D uint8 array of ``length`` bits with zero padding, else ConfigError."""
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1:
        got = f"dtype {packed.dtype}, shape {packed.shape}" if isinstance(packed, np.ndarray) else type(packed).__name__
        raise ConfigError(f"{what} must be a 1-D uint8 array from fedprune.pruning.bits.pack, got {got}")
    expected = packed_length(length)
    if packed.size != expected:
        raise ConfigError(f"{what}: {length} bits pack into {expected} bytes, got {packed.size}: "
                          "the mask length does not match")
    if length % 8 and packed[-1] >> (length % 8):
        raise ConfigError(f"{what}: padding bits after bit {length} are not zero (corrupt, or packed for "
                          "another length)")
    return packed


def flatten_masks(masks: Mapping[str, Tensor]) -> np.ndarray:
    """All masks as one bool vector, in the dict's order, each tensor row-major."""
    parts = []
    for name, mask in masks.items():
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ConfigError(f"mask {name!r} must be a bool tensor")
        parts.append(mask.detach().cpu().reshape(-1).numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def unflatten_masks(flat, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Undo ``flatten_masks``: bool tensors of the given shapes, in ``shapes``' order."""
    flat = np.asarray(flat)
    if flat.dtype != np.bool_ or flat.ndim != 1:
        raise ConfigError(f"flat masks must be a 1-D bool array, got dtype {flat.dtype}, shape {flat.shape}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if flat.size != sum(sizes.values()):
        raise ConfigError(f"flat masks hold {flat.size} bits but the shapes need {sum(sizes.values())}")
    masks, start = {}, 0
    for name, shape in shapes.items():
        chunk = flat[start:start + sizes[name]]
        masks[name] = torch.from_numpy(chunk.copy()).reshape(tuple(shape))
        start += sizes[name]
    return masks


def _length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ConfigError(f"bit length must be an integer >= 0, got {length!r}")
    return int(length)
