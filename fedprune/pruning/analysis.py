"""What the pruning literature asks of a pruned model beyond its accuracy.

Pruning can cost some groups more than others (Hooker et al. 2020, "What do compressed deep
neural networks forget?"; Tran et al. 2022 on pruning and fairness): ``group_accuracy`` gives
accuracy per class and per client with the gap between the best and worst group. Pruning also
changes robustness; ``lipschitz_bound`` is the usual certified upper bound on a network's
Lipschitz constant (Szegedy et al. 2014): the product of its layers' spectral norms, with ReLU,
max-pooling over disjoint windows and flattening 1-Lipschitz. Convolutions are measured as the
linear operators they are at the model's input size, not as their reshaped kernels, which can
under- or over-state them: exactly (SVD of the operator as a dense matrix) for inputs of up to
4096 values, which covers MNIST-1D, digits and CIFAR-sized first layers; beyond that by power
iteration with the transposed convolution, which approaches the norm from below (an estimate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedprune.validation import ConfigError

ONE_LIPSCHITZ = (nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)
POWER_STEPS = 2000
EXACT_SIZE = 4096  # inputs up to this many values get an exact norm (SVD of the dense operator)


@torch.no_grad()
def predictions(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Predicted classes of ``x`` (numpy, float32) in evaluation mode."""
    model.eval()
    out = [model(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32)).argmax(1).numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy on each class's examples (None for a class with no example)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape:
        raise ConfigError(f"{predicted.shape} predictions for {labels.shape} labels")
    return [float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else None for c in range(num_classes)]


def gap(values: Sequence[float | None]) -> float:
    """Best minus worst group accuracy, over the groups that have examples."""
    present = [v for v in values if v is not None]
    if not present:
        raise ConfigError("no group has any example")
    return float(max(present) - min(present))


def group_accuracy(model: nn.Module, test: tuple[np.ndarray, np.ndarray], num_classes: int,
                   clients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Per-class accuracy on ``test`` and per-client accuracy on each client's own data, with gaps."""
    x, y = test
    classes = per_class_accuracy(predictions(model, x), y, num_classes)
    out = {"per_class": classes, "class_gap": gap(classes)}
    if clients:
        per_client = {name: float(np.mean(predictions(model, cx) == cy)) for name, (cx, cy) in clients.items()}
        out.update(per_client=per_client, client_gap=gap(list(per_client.values())))
    return out


def spectral_norm(layer: nn.Module, input_shape: tuple[int, ...], steps: int = POWER_STEPS,
                  exact_size: int = EXACT_SIZE) -> float:
    """The l2 operator norm of a Linear or Conv layer's linear part at ``input_shape`` (no batch)."""
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d)) or layer.groups != 1:
        raise ConfigError(f"no spectral norm for {type(layer).__name__}: add it to fedprune.pruning.analysis")
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    back = F.conv_transpose1d if isinstance(layer, nn.Conv1d) else F.conv_transpose2d
    weight = layer.weight.detach().double()
    options = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    size = int(np.prod(input_shape))
    if size <= exact_size:  # the operator as a dense matrix, column by column: an exact norm
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *input_shape)
        return float(torch.linalg.matrix_norm(conv(basis, weight, **options).reshape(size, -1), ord=2))
    v = torch.randn((1, *input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # conv_transpose drops trailing positions a strided conv never reads; output_padding restores them
    extra = tuple(i - o for i, o in zip(input_shape[1:], back(conv(v, weight, **options), weight, **options).shape[2:]))
    norm = 0.0
    for _ in range(steps):  # v <- A^T A v / |v|; |A v| rises to the largest singular value
        v = v / v.norm()
        u = conv(v, weight, **options)
        norm = float(u.norm())
        v = back(u, weight, output_padding=extra, **options)
    return norm


@torch.no_grad()
def lipschitz_bound(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Product of the spectral norms of the model's layers, in the order they run (an upper bound).

    Holds for models that are a chain of Linear / Conv layers and 1-Lipschitz maps (ReLU,
    flatten, max-pooling over disjoint windows), as every reference model is.
    """
    shapes: list[tuple[nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, tuple(i[0].shape[1:]))))
             for m in model.modules() if not list(m.children())]
    try:
        model.eval()
        model(torch.zeros((1, *input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
    bound = 1.0
    for layer, shape in shapes:
        if isinstance(layer, nn.MaxPool1d | nn.MaxPool2d):
            if layer.stride != layer.kernel_size:
                raise ConfigError("max-pooling over overlapping windows is not 1-Lipschitz in l2")
        elif not isinstance(layer, ONE_LIPSCHITZ):
            bound *= spectral_norm(layer, shape)
    return bound
