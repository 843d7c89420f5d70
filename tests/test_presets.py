"""Trust models as presets: one word picks the settings, and a real run states the figure the preset promises."""

import json
import math

import pytest

from fedprune import presets, run_folder
from fedprune.config import RunConfig, resolve
from fedprune.federated.forecast import forecast
from fedprune.validation import ConfigError
from simulations.cli import build_parser
from simulations.run import config_from_args, simulate

PRIVATE = [name for name, preset in presets.PRESETS.items() if preset.settings]
# each preset at a size that runs in seconds; everything else is the preset's own
SMALL = {
    "cross-silo": {"num-clients": 2, "examples-per-client": 300, "test-examples": 0, "num-server-rounds": 3,
                   "local-epochs": 1, "prune-start": 2, "prune-end": 3, "prune-every": 1},
    "cross-device": {"num-clients": 20, "examples-per-client": 16, "fraction-train": 0.5, "num-server-rounds": 3,
                     "local-epochs": 1, "prune-start": 2, "prune-end": 3, "prune-every": 1},
}


def test_every_private_preset_has_a_small_run_here():
    assert set(SMALL) == set(PRIVATE)


def test_a_preset_gives_its_settings_and_given_settings_win():
    for name in PRIVATE:
        preset = presets.get(name)
        config = resolve({"preset": name})
        assert {key: config.to_mapping()[key] for key in preset.settings} == dict(preset.settings)
        assert config.unit == preset.unit
        assert resolve({"preset": name, "seed": 7, "noise-multiplier": 3.0}) == \
            resolve({**preset.settings, "seed": 7, "noise-multiplier": 3.0})
    assert resolve({"preset": "none"}) == RunConfig() == resolve({})


def test_an_unknown_preset_and_a_second_registration_are_refused():
    with pytest.raises(ConfigError, match="unknown preset 'cross-sillo'; valid presets: cross-device, cross-silo"):
        resolve({"preset": "cross-sillo"})
    with pytest.raises(ConfigError, match="already registered"):
        presets.register(presets.Preset(name="cross-silo", unit="record", trust_model="local", summary=""))
    with pytest.raises(ConfigError, match="preset cross-silo configures mode default.*--preset none"):
        resolve({"preset": "cross-silo", "mode": "mask-only"})


def cli(*argv: str) -> RunConfig:
    return config_from_args(build_parser(["run", *argv]).parse_args(["run", *argv]))


def test_fedprune_run_starts_from_the_main_preset_unless_told_otherwise():
    assert cli() == resolve({"preset": presets.MAIN})
    assert cli("--rounds", "60") == resolve({"preset": presets.MAIN, "num-server-rounds": 60})
    assert cli("--preset", "none") == RunConfig()
    assert cli("--preset", "cross-device") == resolve({"preset": "cross-device"})
    assert cli("--mode", "mask-only") == resolve({"mode": "mask-only"})  # another mode: no preset
    with pytest.raises(ConfigError, match="configures mode default"):
        cli("--preset", "cross-silo", "--mode", "mask-only")


def test_resume_takes_the_run_folders_settings_not_a_preset(tmp_path):
    config = RunConfig(dataset="digits", model="mlp", run_name="r", output_dir=str(tmp_path))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / run_folder.CONFIG).write_text(json.dumps(config.to_mapping()))
    assert cli("--resume", str(tmp_path / "r")) == config.replace(resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRIVATE)
def test_a_small_run_of_each_preset_states_the_figure_its_trust_model_promises(tmp_path, name):
    preset = presets.get(name)
    config = resolve({"preset": name, **SMALL[name], "privacy-seed": 1, "output-dir": str(tmp_path),
                      "run-name": name})
    predicted = forecast(config)  # before the run, on the same ledger
    summary = simulate(config, progress=lambda line: None)
    figure = summary["privacy"]["end_to_end"][preset.unit]
    for unit, stated in summary["privacy"]["end_to_end"].items():  # the forecast is the run's figure
        assert (predicted["end_to_end"][unit]["epsilon"] is None) == (stated["epsilon"] is None)
        if stated["epsilon"] is not None:
            assert predicted["end_to_end"][unit]["epsilon"] == pytest.approx(stated["epsilon"], rel=1e-9)
        assert predicted["end_to_end"][unit]["trust_model"] == stated["trust_model"]
    assert figure["epsilon"] is not None and 0 < figure["epsilon"] < math.inf
    assert figure["trust_model"] == preset.trust_model
    other = "client" if preset.unit == "record" else "record"
    if preset.unit == "record":  # DP-SGD protects records only: a client-level figure would overstate
        assert summary["privacy"]["end_to_end"][other]["epsilon"] is None
    else:  # a client-level guarantee covers each of the client's records, under the same trust model
        assert summary["privacy"]["end_to_end"][other]["epsilon"] == pytest.approx(figure["epsilon"])
    assert summary["density"] == pytest.approx(1 - config.target_sparsity, abs=0.01)


def test_fedprune_budget_forecasts_a_preset_and_refuses_plan_options(capsys):
    from simulations.cli import main

    small = {"num-clients": 200, "num-server-rounds": 50, "prune-start": 10, "prune-end": 30}
    assert main(["budget", "--preset", "cross-device", *(f"--set={k}={v}" for k, v in small.items()), "--json"]) == 0
    statement = json.loads(capsys.readouterr().out)
    config = resolve({"preset": "cross-device", **small})
    assert statement == json.loads(json.dumps({**forecast(config), "noise_multiplier": config.noise_multiplier}))
    client = statement["end_to_end"]["client"]
    assert client["trust_model"] == "central" and 0 < client["epsilon"] < 6.154  # fewer rounds than the preset's
    assert main(["budget", "--preset", "cross-device", "--clients", "30"]) == 2
    assert "--clients do(es) not apply to a forecast" in capsys.readouterr().err


def test_fedprune_budget_finds_the_noise_that_spends_a_budget(capsys):
    from simulations.cli import main

    small = {"num-clients": 100, "num-server-rounds": 20, "prune-start": 10, "prune-end": 20}
    assert main(["budget", "--preset", "cross-device", *(f"--set={k}={v}" for k, v in small.items()), "--epsilon", "4",
                 "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    config = resolve({"preset": "cross-device", **small})
    spent = forecast(config.replace(noise_multiplier=found["noise_multiplier"]))["end_to_end"]["client"]["epsilon"]
    assert 4 * 0.99 < spent <= 4  # all of the budget, never more
    assert forecast(config.replace(noise_multiplier=found["noise_multiplier"] * 0.99))["end_to_end"]["client"][
        "epsilon"] > 4
