"""Reference models: an MLP, the MNIST-1D CNN and a small image CNN.

Every model records its architecture in ``model.spec`` (``name``, ``input_shape``,
``num_classes`` and its keyword arguments), so ``build_model(**model.spec)`` rebuilds it, also
after a JSON round trip. Parameter names are stable (``features.0.weight``, ``head.weight``...):
masks are keyed by them. Only torch is imported.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator

import torch
from torch import nn

from fedprune.validation import ConfigError, pick


def _shape(input_shape, dims: int | None, model: str, expected: str) -> tuple[int, ...]:
    try:  # operator.index refuses 1.5 and "40" where int() would truncate or parse them
        shape = tuple(operator.index(s) for s in input_shape)
    except TypeError:
        shape = None
    if shape is None or any(isinstance(s, bool) for s in input_shape):
        raise ConfigError(f"input shape must be a sequence of integers, got {input_shape!r}")
    if not shape or any(s < 1 for s in shape) or (dims is not None and len(shape) != dims):
        raise ConfigError(f"{model} expects an input shape {expected}, got {shape}")
    return shape


def _classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"number of classes must be an integer >= 2, got {num_classes!r}")
    return num_classes


def _widths(name: str, values, count: int | None = None) -> tuple[int, ...]:
    values = tuple(values)
    if (count is not None and len(values) != count) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
    ):
        size = f"{count} " if count is not None else ""
        raise ConfigError(f"{name} must be {size}integers >= 1, got {values!r}")
    return values


class MLP(nn.Module):
    """Flatten, then fully connected layers with ReLU, then a linear head."""

    name = "mlp"

    def __init__(self, input_shape, num_classes: int, hidden=(256, 256)):
        super().__init__()
        shape = _shape(input_shape, None, "mlp", "of positive sizes")
        hidden = _widths("hidden sizes", hidden)
        self.spec = {"name": self.name, "input_shape": shape, "num_classes": _classes(num_classes), "hidden": hidden}
        layers: list[nn.Module] = []
        width = math.prod(shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.flatten(1)))


class CNN1D(nn.Module):
    """The MNIST-1D convolutional baseline (Greydanus 2020, ``ConvBase``), widened to 64 channels.

    Three Conv1d layers of ``channels`` channels, stride 2, padding 1, kernel sizes 5, 3, 3,
    each followed by ReLU, then a linear head: on (1, 40) the lengths go 19, 10, 5 and the head
    reads 5 * channels features. Input: (channels, length).

    ConvBase's 25 channels (5210 parameters) reach 92% dense but lose 27 points at 90% sparsity
    (about 500 weights left); 64 channels (28298 parameters) reach 96% dense and keep within
    2 points of it at 90% sparsity under iterative magnitude pruning.
    """

    name = "cnn1d"

    def __init__(self, input_shape, num_classes: int, channels: int = 64, kernel_sizes=(5, 3, 3)):
        super().__init__()
        shape = _shape(input_shape, 2, "cnn1d", "(channels, length), e.g. (1, 40)")
        (channels,) = _widths("channels", (channels,), 1)
        kernel_sizes = _widths("kernel sizes", kernel_sizes)
        self.spec = {"name": self.name, "input_shape": shape, "num_classes": _classes(num_classes),
                     "channels": channels, "kernel_sizes": kernel_sizes}
        layers: list[nn.Module] = []
        in_channels, length = shape
        for kernel in kernel_sizes:
            length = (length + 2 - kernel) // 2 + 1
            if length < 1:
                raise ConfigError(f"cnn1d: input length {shape[1]} is too short for kernels {kernel_sizes}")
            layers += [nn.Conv1d(in_channels, channels, kernel, stride=2, padding=1), nn.ReLU()]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class CNN2D(nn.Module):
    """Two 3x3 Conv2d layers (padding 1), each with ReLU and 2x2 max pooling, then a linear head.

    Fits any (channels, height, width) with height and width >= 4: 8x8 digits, 28x28 MNIST,
    32x32 CIFAR-10. The head's input size is computed from the input shape.
    """

    name = "cnn2d"

    def __init__(self, input_shape, num_classes: int, channels=(32, 64)):
        super().__init__()
        shape = _shape(input_shape, 3, "cnn2d", "(channels, height, width), e.g. (1, 8, 8)")
        channels = _widths("channels", channels, 2)
        in_channels, height, width = shape
        if height < 4 or width < 4:
            raise ConfigError(f"cnn2d needs images of at least 4x4 (two 2x2 poolings), got {height}x{width}")
        self.spec = {"name": self.name, "input_shape": shape, "num_classes": _classes(num_classes),
                     "channels": channels}
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(channels[1] * (height // 4) * (width // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


# cnn1d-small is cnn1d at 32 channels (8,010 parameters, not 28,298; its spec says cnn1d): DP-SGD's noise norm grows
# with the square root of the parameter count, and on MNIST-1D the narrower network is the better private one
MODELS = {"mlp": MLP, "cnn1d": CNN1D, "cnn1d-small": functools.partial(CNN1D, channels=32), "cnn2d": CNN2D}


def build_model(name: str, input_shape, num_classes: int, *, seed: int = 0, **kwargs) -> nn.Module:
    """Build a model by name with weights initialised from ``seed``.

    The global torch random state is left as it was (the init runs under ``fork_rng``).
    ``kwargs`` go to the model (``hidden`` for mlp, ``channels`` for the CNNs...); lists are
    accepted for tuples, so a spec read back from JSON rebuilds the same architecture.
    """
    cls = pick("model", name, MODELS)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    options = [p for p in inspect.signature(cls).parameters if p not in ("input_shape", "num_classes")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(f"{name} has no option(s) {', '.join(unknown)}; options: {', '.join(options)}")
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}
    # Only the CPU generator is seeded (torch.manual_seed would also reseed CUDA's, which
    # fork_rng(devices=[]) does not restore); parameters are created on the CPU.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return cls(input_shape, num_classes, **kwargs)
