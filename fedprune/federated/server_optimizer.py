"""The server's step from the weight channel's average: FedAvg, or FedAvg with server momentum (FedAvgM).

The pseudo-gradient is the average minus the model sent; with momentum beta and server learning rate
eta the new model is sent + eta * m, m = beta * m + (average - sent) (Hsu et al. 2019). DP-FedAvg
results use it because it averages the noise of successive rounds away. It reads nothing but the
channel's output, so under a DP channel it is post-processing and costs no privacy.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import numpy as np

from fedprune.validation import ConfigError


class ServerOptimizer:
    """Server learning rate and momentum; the momentum buffer is dense, keyed by state name."""

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.0):
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.buffer: dict[str, np.ndarray] = {}

    @property
    def plain(self) -> bool:
        """Whether the step is plain FedAvg (the new model is the average)."""
        return self.learning_rate == 1.0 and self.momentum == 0.0

    def step(self, sent: Mapping[str, np.ndarray], average: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The new dense model from the dense model ``sent`` and the channel's dense ``average``."""
        if self.plain:
            return dict(average)
        out = {}
        for name, value in average.items():
            if not np.issubdtype(value.dtype, np.floating):  # counters and the like: the average's
                out[name] = value
                continue
            delta = value.astype(np.float64) - sent[name]
            buffer = self.momentum * self.buffer.get(name, 0.0) + delta
            self.buffer[name] = buffer
            out[name] = (sent[name] + self.learning_rate * buffer).astype(value.dtype)
        return out

    def forget(self, keep: Mapping[str, np.ndarray]) -> None:
        """Zero the buffer where ``keep`` (name -> bool array, the new mask) prunes: a pruned weight's old
        momentum must not move it if it is ever kept again."""
        for name, mask in keep.items():
            if name in self.buffer:
                self.buffer[name] = np.where(mask, self.buffer[name], 0.0)

    def state_dict(self) -> dict:
        """JSON-able buffer (float64, base64) for a checkpoint."""
        return {name: {"shape": list(value.shape), "data": base64.b64encode(value.astype("<f8").tobytes()).decode()}
                for name, value in self.buffer.items()}

    def load_state_dict(self, state: Mapping) -> None:
        try:
            self.buffer = {name: np.frombuffer(base64.b64decode(item["data"]), dtype="<f8").reshape(item["shape"])
                           .copy() for name, item in state.items()}
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"the checkpoint's server momentum is unreadable ({error}); start the run again "
                              "under another --name") from None
