"""One resolved configuration: every entry resolves the same settings the same way and refuses a wrong one first.

The entries: ``RunConfig(...)`` (the Python API), ``resolve(mapping)`` (``fedprune run``, config.json,
the client), pyproject's ``[tool.flwr.app.config]`` (``flwr run .`` through ``server.app.config_of``)
and a sweep cell.
"""

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedprune.config import AUTO, MODE_DEFAULTS, MODES, RunConfig, resolve
from fedprune.validation import ConfigError
from server.app import config_of
from simulations import sweep

ROOT = Path(__file__).resolve().parents[1]
TABLE = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

# field -> (a wrong value, what the error must say besides the key: the allowed values or the fix)
BAD = {
    "num_server_rounds": (0, "must be an integer >= 1"),
    "num_clients": ("ten", "must be an integer"),
    "fraction_train": (1.5, r"must be in \(0, 1\]"),
    "client_sampling": ("random", "valid client-samplings: fixed, poisson"),
    "min_replies": (0, "must be an integer >= 1"),
    "local_epochs": (2.5, "must be an integer"),
    "local_steps": (-1, r"must be an integer >= 0 \(0: local-epochs decide\)"),
    "batch_size": (-1, "must be an integer >= 1"),
    "learning_rate": (0, "must be > 0"),
    "optimizer": ("adamw", "valid optimizers: adam, auto"),
    "momentum": (1.0, r"must be in \[0, 1\)"),
    "weight_decay": (-0.1, "must be >= 0"),
    "dataset": ("mnist", "valid datasets: .*hf:<name or local path>"),
    "examples_per_client": (-1, r"must be >= 0 \(0: the dataset as published\)"),
    "test_examples": (-1, r"must be >= 0 \(0: the whole test split\)"),
    "model": ("resnet", "valid models: .*cnn1d"),
    "partitioner": ("bogus", "valid partitioners: .*dirichlet"),
    "dirichlet_alpha": (0, "must be > 0"),
    "classes_per_client": (0, "must be an integer >= 1"),
    "method": ("magic", "valid methods: dense, server-magnitude, votes"),
    "target_sparsity": (1.0, r"must be in \[0, 1\)"),
    "schedule": ("linear", "valid schedules: constant, geometric, oneshot, polynomial"),
    "prune_start": (0, "must be an integer >= 1"),
    "prune_end": (40, r"must lie in \[prune-start"),
    "prune_every": (0, "must be an integer >= 1"),
    "scorer": ("magnitud", "valid scorers: .*magnitude"),
    "distribution": ("bogus", "valid distributions: .*global"),
    "structure": ("channels", "not supported in federated runs yet; use one of: unstructured, units"),
    "regrowth": ("maybe", "must be true or false"),
    "mechanism": ("randomised-response", "valid mechanisms: .*randomized-response"),
    "epsilon_per_decision": (0, r"must be > 0 \(inf for exact, non-private votes\)"),
    "epsilon_per_report": (-2, r"must be > 0 \(inf for exact, non-private votes\)"),
    "delta": (1.0, r"must be in \(0, 1\)"),
    "unit": ("user", "valid units: client, record"),
    "sample_size": (-1, r"must be >= 0 \(0: every coordinate\)"),
    "weight_channel": ("noisy", "valid weight-channels: .*clear"),
    "noise_multiplier": (0, "must be > 0"),
    "clipping_norm": (-1, "must be > 0"),
    "server_learning_rate": (0, "must be > 0"),
    "server_momentum": (1.0, r"must be in \[0, 1\)"),
    "budget_epsilon": (-1, r"must be >= 0 \(0: no budget\)"),
    "dense_baseline": ("yes", "must be true or false"),
    "mode": ("masks", "valid modes: default, mask-only"),
    "seed": (-1, "must be >= 0"),
    "privacy_seed": (-2, r"must be -1 \(fresh OS randomness\) or a seed >= 0"),
    "run_name": ("a/b", "must be a folder name.*output-dir"),
    "output_dir": (3, "must be a string"),
    "resume": ("sometimes", "must be true or false"),
}


def key(name: str) -> str:
    return name.replace("_", "-")


# --- mode defaults -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
def test_every_entry_resolves_a_mode_the_same_way(tmp_path, mode):
    direct = RunConfig(mode=mode)
    assert {name: getattr(direct, name) for name in MODE_DEFAULTS[mode]} == MODE_DEFAULTS[mode]
    assert resolve({"mode": mode}) == direct
    assert resolve({"mode": mode, **{key(name): AUTO for name in MODE_DEFAULTS[mode]}}) == direct
    assert config_of({**TABLE, "mode": mode}) == direct  # flwr run . --run-config "mode='...'"
    assert RunConfig().replace(mode=mode) == direct  # settings left to the mode follow it
    (cell,) = sweep.plan_cells({"mode": mode}, {}, tmp_path)
    assert cell.config == direct.replace(run_name="base", output_dir=str(tmp_path))
    written = direct.to_mapping()  # config.json holds the resolved values
    assert AUTO not in written.values() and resolve(written) == direct


def test_given_settings_win_over_the_mode_and_survive_replace():
    config = resolve({"mode": "mask-only", "learning-rate": "0.05", "optimizer": "sgd"})
    assert (config.learning_rate, config.optimizer, config.local_epochs) == (0.05, "sgd", 8)
    assert config.replace(seed=3).learning_rate == 0.05
    assert resolve(config.to_mapping()) == config


def test_pyproject_lists_every_setting_and_leaves_the_mode_dependent_ones_auto():
    assert list(TABLE) == list(RunConfig().to_mapping())
    assert set(MODE_DEFAULTS["default"]) == {n.replace("-", "_") for n, v in TABLE.items() if v == AUTO}


def test_the_schedule_is_built_once():
    config = RunConfig()
    assert config.pruning_schedule is config.pruning_schedule
    assert config.replace(target_sparsity=0.5).pruning_schedule.sparsity_at(config.prune_end) == pytest.approx(0.5)


# --- every setting refused at entry ---------------------------------------------------------------

def test_every_field_has_a_wrong_value_case():
    missing = [f.name for f in dataclasses.fields(RunConfig) if f.name not in BAD]
    assert not missing, f"add a wrong value and its expected message to BAD for {missing}"


@pytest.mark.parametrize("name", list(BAD))
def test_a_wrong_value_of_every_setting_names_the_key_and_the_fix(name):
    value, fix = BAD[name]
    for build in (lambda: resolve({key(name): value}), lambda: RunConfig(**{name: value})):
        with pytest.raises(ConfigError, match=f"{key(name)}.*{fix}") as caught:
            build()
        assert key(name) in str(caught.value)


def test_unknown_keys_and_other_objects_are_refused():
    with pytest.raises(ConfigError, match="unknown setting.*epsilon.*valid settings: num-server-rounds"):
        resolve({"epsilon": 1.0})
    with pytest.raises(ConfigError, match="a RunConfig or a mapping"):
        resolve(["mode"])


@pytest.mark.parametrize("override, match", [
    ({"mechanism": "randomised-response"}, "unknown mechanism 'randomised-response'"),
    ({"mode": "mask-only", "mechanism": "subset"}, "mode mask-only .* mechanism must be 'randomized-response'"),
    ({"mode": "mask-only", "optimizer": "adamw"}, "unknown optimizer 'adamw'"),
])
def test_flwr_run_settings_are_refused_before_the_federation_starts(override, match):
    with pytest.raises(ConfigError, match=match):
        config_of({**TABLE, **override})


# --- the command line: exit 2 before any work -----------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--set", "mechanism=randomised-response"], "unknown mechanism 'randomised-response'; valid mechanisms: "),
    (["--set", "scorer=magnitud"], "unknown scorer 'magnitud'; valid scorers: "),
    (["--mode", "mask-only", "--mechanism", "subset"], "mode mask-only .* mechanism must be 'randomized-response'"),
])
def test_fedprune_run_refuses_a_wrong_setting_before_any_work(tmp_path, args, message):
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "run", "--out", str(out), "--name", "x", *args],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("fedprune run: error: ")
    assert re.search(message, done.stderr), done.stderr
    assert not out.exists()  # no run folder: nothing started


@pytest.mark.parametrize("shadow", ["server.py", "clients/__init__.py"])
def test_fedprune_run_refuses_a_working_directory_whose_modules_would_shadow_its_own(tmp_path, monkeypatch, shadow):
    # Ray puts the working directory first on its workers' path: a Flower example's server.py there would be
    # imported in place of fedprune's server package and every client would fail, after Ray had started
    (tmp_path / shadow).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / shadow).write_text("")
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "run", "--out", str(out), "--name", "x"],
                          check=False, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    name = shadow.split("/")[0]
    assert done.stderr.startswith(f"fedprune run: error: the working directory {tmp_path.resolve()} holds {name}, ")
    assert "run fedprune from another directory" in done.stderr
    assert not out.exists()

    from simulations.run import simulate  # the Python API refuses it too, before any work
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"holds {name}, which Flower's simulation workers would import"):
        simulate({"preset": "none", "output-dir": str(out), "run-name": "x"}, progress=lambda line: None)
    from simulations.cli import main  # and so does a sweep, whose every cell would fail on it

    assert main(["sweep", str(ROOT / "simulations/sweeps/experiments-digits-baselines.toml"), "--out", str(out)]) == 2
    assert not out.exists()
