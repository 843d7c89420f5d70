"""Sparse models on the wire: the kept values of each masked tensor, every other tensor whole.

A pruned weight is zero by definition, so neither side sends it: both know the global mask, and
``compact`` / ``expand`` turn a state dict into the kept values (row-major order) and back.
Tensors without a mask (biases, norms) travel dense. ``check_compact`` is the server's gate for
what a client sends: every fault is a :class:`MalformedReply` naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedprune.federated.keys import MalformedReply
from fedprune.validation import ConfigError


def compact(state: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The kept values (1-D, float32) of every masked tensor; unmasked tensors as they are."""
    unknown = sorted(set(masks) - set(state))
    if unknown:
        raise ConfigError(f"masks name tensors the model does not have: {unknown}")
    out = {}
    for name, value in state.items():
        value = np.asarray(value, dtype=np.float32)
        if name in masks:
            mask = np.asarray(masks[name], dtype=bool)
            if mask.shape != value.shape:
                raise ConfigError(f"mask {name!r} has shape {mask.shape}, the tensor has {value.shape}")
            out[name] = np.ascontiguousarray(value[mask])
        else:
            out[name] = np.ascontiguousarray(value)
    return out


def expand(values: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
           shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Undo ``compact``: dense float32 tensors of ``shapes`` with zeros where masks prune."""
    out = {}
    for name, shape in shapes.items():
        value = np.asarray(values[name], dtype=np.float32)
        if name in masks:
            dense = np.zeros(shape, dtype=np.float32)
            dense[np.asarray(masks[name], dtype=bool)] = value
            out[name] = dense
        else:
            out[name] = value.reshape(shape)
    return out


def compact_shapes(masks: Mapping[str, np.ndarray],
                   shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shape each tensor has in compact form."""
    return {name: (int(np.count_nonzero(masks[name])),) if name in masks else tuple(shape)
            for name, shape in shapes.items()}


def check_compact(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Return ``arrays`` if they are exactly the compact tensors expected, else raise MalformedReply.

    Checks the names, float32 dtype, shapes, and that every value is finite.
    """
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise MalformedReply(f"weights do not match the model: missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        value = arrays[name]
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            dtype = getattr(value, "dtype", type(value).__name__)
            raise MalformedReply(f"weights {name!r} must be float32, got {dtype}")
        if value.shape != tuple(shape):
            raise MalformedReply(f"weights {name!r} have shape {value.shape}, expected {tuple(shape)}")
        if not np.isfinite(value).all():
            raise MalformedReply(f"weights {name!r} contain NaN or infinite values")
    return dict(arrays)


def upload_bytes(shapes: Mapping[str, tuple[int, ...]], bytes_per_value: int = 4) -> int:
    """Bytes of the float values in tensors of ``shapes`` (the payload, not the framing)."""
    return bytes_per_value * sum(int(np.prod(shape)) for shape in shapes.values())
