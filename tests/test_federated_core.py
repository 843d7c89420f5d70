"""The server's arithmetic and the wire format, without Flower: compact weights, averaging, mask selection, config."""

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedprune.federated.aggregation import scatter, select_layer_masks, select_mask, weighted_average
from fedprune.federated.keys import MalformedReply
from fedprune.federated.compact import check_compact, compact, compact_shapes, expand
from fedprune.config import RunConfig, resolve
from fedprune.validation import ConfigError


def test_compact_round_trip_keeps_only_kept_values():
    rng = np.random.default_rng(0)
    state = {"w": rng.normal(size=(4, 5)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    masks = {"w": rng.random((4, 5)) < 0.3}
    small = compact(state, masks)
    assert small["w"].shape == (int(masks["w"].sum()),) and small["b"].shape == (4,)
    assert np.array_equal(small["w"], state["w"][masks["w"]])
    back = expand(small, masks, {"w": (4, 5), "b": (4,)})
    assert np.array_equal(back["w"], np.where(masks["w"], state["w"], 0)) and np.array_equal(back["b"], state["b"])
    assert compact_shapes(masks, {"w": (4, 5), "b": (4,)}) == {"w": (int(masks["w"].sum()),), "b": (4,)}


@pytest.mark.parametrize("bad, reason", [
    ({"w": np.zeros(3, np.float32)}, "missing"),
    ({"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float32), "x": np.zeros(1, np.float32)}, "unexpected"),
    ({"w": np.zeros(3, np.float64), "b": np.zeros(2, np.float32)}, "float32"),
    ({"w": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}, "shape"),
    ({"w": np.array([0, np.nan, 0], np.float32), "b": np.zeros(2, np.float32)}, "NaN"),
    ({"w": np.array([0, np.inf, 0], np.float32), "b": np.zeros(2, np.float32)}, "NaN or infinite"),
])
def test_check_compact_rejects_every_malformed_reply(bad, reason):
    with pytest.raises(MalformedReply, match=reason):
        check_compact(bad, {"w": (3,), "b": (2,)})


def test_weighted_average_by_examples():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([3.0, 6.0], np.float32)}
    out = weighted_average([a, b], [1, 3])
    assert np.allclose(out["w"], [(1 + 9) / 4, (2 + 18) / 4]) and out["w"].dtype == np.float32
    with pytest.raises(ConfigError, match="positive"):
        weighted_average([a, b], [1, 0])


def test_select_mask_top_frequencies_ties_by_magnitude_then_index():
    freq = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    tie = np.array([0.1, 0.0, -0.7, 0.3, 9.0])
    # 0.9 first; among the three 0.5s the larger |weight| wins: index 2 (0.7), then 3 (0.3).
    assert select_mask(freq, 3, tie_break=tie).tolist() == [False, True, True, True, False]
    assert select_mask(np.zeros(4), 2).tolist() == [True, True, False, False]  # lower index on full ties


def test_select_mask_never_revives_ineligible_weights():
    freq = np.array([1.0, 0.9, 0.8, 0.1])
    eligible = np.array([False, True, True, True])
    assert select_mask(freq, 2, eligible=eligible).tolist() == [False, True, True, False]
    assert select_mask(freq, 4, eligible=eligible).tolist() == [False, True, True, True]  # capped at eligible


def test_select_layer_masks_counts_per_layer():
    freq = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7])
    out = select_layer_masks(freq, {"a": 2, "b": 1}, {"a": 3, "b": 3})
    assert out.tolist() == [False, True, True, True, False, False]


def test_scatter_puts_estimates_back():
    out = scatter(np.array([0.5, 0.25]), np.array([False, True, True, False]))
    assert out[1:3].tolist() == [0.5, 0.25] and np.isneginf(out[[0, 3]]).all()


def test_config_defaults_equal_pyproject_flower_config():
    table = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert list(table) == list(RunConfig().to_mapping())
    assert resolve(table) == RunConfig()
    assert {key: value for key, value in table.items() if value != "auto"} == \
        {key: value for key, value in RunConfig().to_mapping().items() if key in table and table[key] != "auto"}


def test_config_from_mapping_coerces_and_rejects():
    config = resolve({"target-sparsity": "0.8", "regrowth": "true", "num-server-rounds": 20.0})
    assert config.target_sparsity == 0.8 and config.regrowth is True and config.num_server_rounds == 20
    assert resolve(config.to_mapping()) == config
    with pytest.raises(ConfigError, match="unknown setting.*valid settings: num-server-rounds"):
        resolve({"rounds": 3})
    with pytest.raises(ConfigError, match="must be an integer"):
        resolve({"num-server-rounds": "many"})
    with pytest.raises(ConfigError, match=r"target-sparsity must be in \[0, 1\)"):
        resolve({"target-sparsity": 1.0})
    with pytest.raises(ConfigError, match="valid methods"):
        resolve({"method": "magic"})
    with pytest.raises(ConfigError, match="epsilon-per-decision must be > 0"):
        resolve({"epsilon-per-decision": 0})
    assert math.isinf(resolve({"epsilon-per-decision": "inf"}).epsilon_per_decision)
    assert not resolve({"epsilon-per-decision": "inf"}).private_votes


def test_default_schedule_reaches_the_target_by_prune_end():
    config = RunConfig()
    schedule = config.pruning_schedule
    assert schedule.sparsity_at(config.prune_end) == pytest.approx(config.target_sparsity)
    updates = [r for r in range(1, config.num_server_rounds + 1) if schedule.is_update_round(r)]
    assert updates and max(updates) == config.prune_end


@pytest.mark.parametrize("key", ["mechanism", "scorer", "distribution", "optimizer", "model", "partitioner", "dataset"])
def test_every_named_setting_is_checked_where_it_enters(key):
    with pytest.raises(ConfigError, match=f"unknown {key} 'bogus'; valid {key}s: "):
        RunConfig(**{key: "bogus"})
    with pytest.raises(ConfigError, match=f"unknown {key} 'bogus'"):
        resolve({key: "bogus"})
