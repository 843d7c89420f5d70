"""Group accuracy and the Lipschitz upper bound against hand-computed and brute-force figures."""

import numpy as np
import pytest
import torch
from torch import nn

from fedprune.pruning.analysis import gap, group_accuracy, lipschitz_bound, per_class_accuracy, spectral_norm
from fedprune.training.models import build_model
from fedprune.validation import ConfigError


def test_per_class_accuracy_and_gap_by_hand():
    accuracy = per_class_accuracy(np.array([0, 1, 1, 2, 2]), np.array([0, 1, 2, 2, 2]), 4)
    assert accuracy == [1.0, 1.0, pytest.approx(2 / 3), None]
    assert gap(accuracy) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="no group"):
        gap([None])


def test_group_accuracy_per_client():
    model = build_model("mlp", (4,), 2, seed=0, hidden=(8,))
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = model(torch.from_numpy(x)).argmax(1).numpy()  # the model is right everywhere on these labels
    out = group_accuracy(model, (x, y), 2, clients={"0": (x[:20], y[:20]), "1": (x[20:], 1 - y[20:])})
    assert out["per_client"] == {"0": 1.0, "1": 0.0} and out["client_gap"] == 1.0
    assert out["class_gap"] == 0.0


def _operator_norm(layer, shape):
    """Brute force: the layer's linear part as a dense matrix, column by column."""
    size = int(np.prod(shape))
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    copy = layer.double()
    with torch.no_grad():
        columns = copy(basis) - copy(torch.zeros(1, *shape, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(columns.reshape(size, -1), ord=2))


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv1d(3, 5, 5, stride=2, padding=1), (3, 40)),
    (nn.Conv1d(4, 6, 3, stride=2, padding=1), (4, 10)),
    (nn.Conv2d(2, 3, 3, padding=1), (2, 8, 8)),
    (nn.Conv2d(2, 4, 3, stride=2), (2, 9, 9)),
])
def test_conv_spectral_norm_is_the_operator_norm(layer, shape):
    torch.manual_seed(0)
    expected = _operator_norm(layer, shape)
    assert spectral_norm(layer.float(), shape) == pytest.approx(expected, rel=1e-6)
    assert spectral_norm(layer.float(), shape, exact_size=0) == pytest.approx(expected, rel=1e-3)  # power iteration


@pytest.mark.parametrize("name, shape, kwargs", [
    ("mlp", (12,), {"hidden": (16, 8)}), ("cnn1d", (1, 40), {"channels": 8}),
    ("cnn2d", (1, 8, 8), {"channels": (4, 6)}),
])
def test_lipschitz_bound_bounds_every_pair_and_pruning_changes_it(name, shape, kwargs):
    model = build_model(name, shape, 10, seed=0, **kwargs)
    bound = lipschitz_bound(model, shape)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, *shape)).astype(np.float32))
    y = x + 0.1 * torch.from_numpy(rng.normal(size=(200, *shape)).astype(np.float32))
    with torch.no_grad():
        ratio = (model(x) - model(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= bound
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_((p.abs() > p.abs().flatten().quantile(0.9)).float())
    assert lipschitz_bound(model, shape) < bound  # magnitude pruning shrinks every norm here


def test_unknown_layers_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        lipschitz_bound(model, (4,))
    with pytest.raises(ConfigError, match="overlapping"):
        lipschitz_bound(nn.Sequential(nn.MaxPool1d(3, stride=1)), (1, 8))
