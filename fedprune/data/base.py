"""The dataset type every loader returns: one train/test split as checked numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedprune.validation import ConfigError


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of one dataset; ``input_shape`` is per example, channel-first."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.float32 or y.dtype != np.int64:
                raise ConfigError(f"{self.name}: x_{split} must be float32 and y_{split} int64, "
                                  f"got {x.dtype} and {y.dtype}")
            if x.shape[1:] != self.input_shape or y.shape != (len(x),):
                raise ConfigError(f"{self.name}: x_{split} {x.shape} and y_{split} {y.shape} do not "
                                  f"match input shape {self.input_shape}")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ConfigError(f"{self.name}: y_{split} must lie in [0, {self.num_classes})")
