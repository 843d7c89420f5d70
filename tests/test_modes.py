"""Modes through their registry: the client app, the driver, the report and the run-folder loader ask the mode."""

import dataclasses

import pytest

from fedprune.federated import modes
from fedprune.config import MODES
from fedprune.federated.coordinator import Coordinator
from fedprune.federated.local import client_round
from fedprune.federated.mask_only import MaskOnlyCoordinator
from fedprune.privacy.rng import RandomnessSource
from server import report
from strategy_helpers import client_reply, mask_only_config, setup, small_config

pytestmark = pytest.mark.usefixtures("task_identity")



def test_every_mode_the_settings_accept_is_registered_once():
    assert sorted(modes.MODES) == sorted(MODES) == ["default", "mask-only"]
    with pytest.raises(ValueError, match="'mask-only' is already registered"):
        modes.register(modes.MODES["mask-only"])
    assert sorted(modes.MODES) == ["default", "mask-only"]


@pytest.mark.parametrize("config, coordinator", [(small_config(), Coordinator),
                                                 (mask_only_config(), MaskOnlyCoordinator)])
def test_a_config_picks_its_mode_once(config, coordinator):
    mode = modes.get(config)
    assert mode is modes.get(config) is modes.named(config.mode) and mode.name == config.mode
    assert mode.coordinator is coordinator
    assert (mode.client_round is client_round) == (config.mode == "default")
    built, _, _ = setup(config)  # the tests' setup builds the coordinator as the driver does
    assert type(built) is coordinator


def test_the_client_app_runs_the_round_its_mode_gives(monkeypatch):
    config = small_config()
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1].round)
        return client_round(*args, **kwargs)

    monkeypatch.setitem(modes.MODES, "default", dataclasses.replace(modes.MODES["default"], client_round=counted))
    _, _, messages = setup(config)
    client_reply(messages[0], 0)
    assert calls == [1]


def test_the_report_says_what_the_mode_states_of_itself(tmp_path):
    randomness = RandomnessSource.from_seed(0)
    config = mask_only_config()
    coordinator, _, _ = setup(config)
    summary = report.summary(config, coordinator, [], 0.0, None, None, randomness)
    assert summary["mode"] == "mask-only" and summary["mask_only"] == coordinator.mode_summary()
    assert summary["mechanism"] == coordinator.mechanism_summary()
    assert summary["weight_channel"]["name"] == "none"
    report.write(tmp_path, summary, [])
    assert "Mode **mask-only**: a client sends its mask sample" in (tmp_path / "report.md").read_text()

    config = small_config()
    coordinator, _, _ = setup(config)
    summary = report.summary(config, coordinator, [], 0.0, None, None, randomness)
    assert "mask_only" not in summary and summary["weight_channel"]["name"] == config.weight_channel
    assert summary["mechanism"]["name"] == config.mechanism
    report.write(tmp_path, summary, [])
    assert "mask sample" not in (tmp_path / "report.md").read_text()
