"""Tests for fedprune.training.models: shapes, seeded construction, specs and stable parameter names."""

import json

import pytest
import torch

from fedprune.training.models import CNN1D, CNN2D, MLP, build_model
from fedprune.validation import ConfigError

CASES = [  # name, input shape, options, expected parameter names
    ("mlp", (1, 40), {"hidden": (32, 16)},
     ["features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias", "head.weight", "head.bias"]),
    ("cnn1d", (1, 40), {},
     ["features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
      "features.4.weight", "features.4.bias", "head.weight", "head.bias"]),
    ("cnn2d", (1, 8, 8), {"channels": (4, 8)},
     ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias", "head.weight", "head.bias"]),
]


@pytest.mark.parametrize("name, shape, options, names", CASES)
def test_output_shape_and_parameter_names(name, shape, options, names):
    model = build_model(name, shape, 10, seed=0, **options)
    assert model(torch.zeros(5, *shape)).shape == (5, 10)
    assert [key for key, _ in model.named_parameters()] == names


def test_layer_sizes_match_the_closed_form():
    cnn1d = build_model("cnn1d", (1, 40), 10, channels=25)
    # MNIST-1D ConvBase: lengths 40 -> 19 -> 10 -> 5, so the head reads 25 * 5 = 125 features.
    assert cnn1d.head.in_features == 125
    assert sum(p.numel() for p in cnn1d.parameters()) == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    wide = build_model("cnn1d", (1, 40), 10)
    assert sum(p.numel() for p in wide.parameters()) == (64 * 5 + 64) + 2 * (64 * 64 * 3 + 64) + (320 * 10 + 10)
    cnn2d = build_model("cnn2d", (3, 32, 32), 10)
    assert cnn2d.head.in_features == 64 * 8 * 8 and cnn2d(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("cnn2d", (1, 7, 9), 3).head.in_features == 64 * 1 * 2  # 7 // 4, 9 // 4
    mlp = build_model("mlp", (2, 3, 4), 5, hidden=())
    assert mlp.head.in_features == 24 and [k for k, _ in mlp.named_parameters()] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("name, shape, options, names", CASES)
def test_seed_fixes_the_weights_and_leaves_the_global_rng_alone(name, shape, options, names):
    before = torch.random.get_rng_state()
    first = build_model(name, shape, 10, seed=7, **options).state_dict()
    again = build_model(name, shape, 10, seed=7, **options).state_dict()
    other = build_model(name, shape, 10, seed=8, **options).state_dict()
    assert torch.equal(before, torch.random.get_rng_state())
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert all(not torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("name, shape, options, names", CASES)
def test_spec_rebuilds_the_model_after_a_json_round_trip(name, shape, options, names):
    model = build_model(name, shape, 10, seed=3, **options)
    spec = json.loads(json.dumps(model.spec))
    assert spec["name"] == name and spec["input_shape"] == list(shape) and spec["num_classes"] == 10
    rebuilt = build_model(**spec, seed=3)
    assert rebuilt.spec == model.spec and type(rebuilt) is type(model)
    original, copy = model.state_dict(), rebuilt.state_dict()
    assert list(original) == list(copy)
    assert all(torch.equal(original[key], copy[key]) for key in original)  # same seed: same weights too


def test_model_classes_match_their_names():
    assert {cls.name for cls in (MLP, CNN1D, CNN2D)} == {"mlp", "cnn1d", "cnn2d"}
    assert isinstance(build_model("cnn1d", [1, 40], 2), CNN1D)


def test_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown model 'resnet'; valid models: cnn1d, cnn1d-small, cnn2d, mlp"):
        build_model("resnet", (1, 40), 10)
    with pytest.raises(ConfigError, match="cnn1d has no option.*width; options: channels, kernel_sizes"):
        build_model("cnn1d", (1, 40), 10, width=3)
    with pytest.raises(ConfigError, match=r"cnn1d expects an input shape \(channels, length\)"):
        build_model("cnn1d", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="too short"):
        build_model("cnn1d", (1, 2), 10)
    with pytest.raises(ConfigError, match=r"cnn2d expects an input shape \(channels, height, width\)"):
        build_model("cnn2d", (1, 40), 10)
    with pytest.raises(ConfigError, match="at least 4x4"):
        build_model("cnn2d", (1, 3, 8), 10)
    for shape in ((1, 40.5), "40", 40, (True, 40), (1, 0)):
        with pytest.raises(ConfigError, match="input shape"):
            build_model("mlp", shape, 10)
    with pytest.raises(ConfigError, match="number of classes must be an integer >= 2"):
        build_model("mlp", (4,), 1)
    with pytest.raises(ConfigError, match="hidden sizes must be integers >= 1"):
        build_model("mlp", (4,), 3, hidden=(8, 0))
    with pytest.raises(ConfigError, match="channels must be 2 integers >= 1"):
        build_model("cnn2d", (1, 8, 8), 3, channels=(8,))
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        build_model("mlp", (4,), 3, seed=-1)


def test_cnn1d_small_is_cnn1d_at_32_channels_and_rebuilds_from_its_spec():
    small = build_model("cnn1d-small", (1, 40), 10, seed=0)
    assert small.spec == build_model("cnn1d", (1, 40), 10, seed=0, channels=32).spec
    assert sum(p.numel() for p in small.parameters()) == 8010
    rebuilt = build_model(**small.spec)  # what an exported model's runtime does
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
