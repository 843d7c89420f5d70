"""The preset frontier's table and plot from finished runs, and the commands it runs (each a valid `fedprune run`)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from fedprune import presets
from simulations import preset_frontier
from simulations.cli import build_parser
from simulations.preset_frontier import build_parser as frontier_parser
from simulations.preset_frontier import cells, command, main, parse_set, parse_tune, plot, reusable, table
from simulations.run import config_from_args

DOCUMENTED = re.findall(r"^python -m simulations\.preset_frontier ([^#\n]+)",
                        (Path(__file__).resolve().parents[1] / "docs" / "EXPERIMENTS.md").read_text(), re.M)


def rows():
    private = [{"label": f"eps {e:g}", "command": "c", "seed": s, "accuracy": 0.2 * e ** 0.5 + s / 100,
                "density": 0.2, "epsilon": e, "seconds": 100, "trust_model": "local"} for e in (1, 4) for s in (0, 1)]
    return private + [{"label": "dense, non-private", "command": "d", "seed": s, "accuracy": 0.98, "density": 1.0,
                       "epsilon": None, "seconds": 50, "trust_model": "none"} for s in (0, 1)]


def test_the_table_states_mean_sd_per_seed_and_the_figure(tmp_path):
    text = table(presets.get("cross-silo"), rows())
    assert "| eps 4 | 0.4050 ± 0.0050 | 0.4000 / 0.4100 | 4.000 | local | 0.200 | 100 | `c` |" in text
    assert "| dense, non-private | 0.9800 ± 0.0000 | 0.9800 / 0.9800 | none | none | 1.000 | 50 | `d` |" in text
    tuned = [{**row, "label": "eps 2, learning-rate 1", "epsilon": 2} for row in rows()[:2]]
    plot(tmp_path / "f.png", presets.get("cross-silo"), rows() + tuned)
    assert Path(tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot(tmp_path / "v.png", presets.get("cross-silo"), rows(), {"model": "cnn1d", "target-sparsity": "0.9"})
    assert Path(tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_cell_is_a_valid_fedprune_run():
    argv = command("cross-device", {**presets.get("cross-device").non_private("dense"), "seed": 1})
    config = config_from_args(build_parser(argv[1:]).parse_args(argv[1:]))
    assert (config.method, config.weight_channel, config.seed, config.num_clients) == ("dense", "clear", 1, 1000)


def test_a_finished_run_is_reused_only_when_its_settings_are_the_cells(tmp_path):
    shown = command("cross-silo", {"noise-multiplier": 1.5, "seed": 0})
    folder = tmp_path / "cell"
    assert not reusable(folder, shown)  # nothing there: run it
    config = config_from_args(build_parser(shown[1:]).parse_args(shown[1:]))
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({**config.to_mapping(), "run-name": "cell"}))
    assert reusable(folder, shown)
    (folder / "config.json").write_text(json.dumps({**config.to_mapping(), "noise-multiplier": 2.669}))
    with pytest.raises(SystemExit, match="holds a run of other settings \\(noise-multiplier differ"):
        reusable(folder, shown)


def test_a_tuned_budget_runs_its_settings_at_the_noise_found_on_their_own_ledger(monkeypatch):
    seen = []
    monkeypatch.setattr(preset_frontier, "calibrate",
                        lambda config, eps: seen.append((config.learning_rate, config.local_steps, eps)) or 1.5)
    tuned = parse_tune(["1:learning-rate=1", "1: local-steps = 8"], [1.0, 8.0])
    planned = cells("cross-silo", [1.0, 8.0], [0, 1], tuned)
    preset = presets.get("cross-silo").settings
    assert seen == [(1.0, 8, 1.0), (preset["learning-rate"], preset["local-steps"], 8.0)]
    assert planned[1] == ("eps 1, learning-rate 1, local-steps 8",
                          {"noise-multiplier": 1.5, "learning-rate": "1", "local-steps": "8", "seed": 1})
    assert [label for label, _ in planned[2:4]] == ["eps 8", "eps 8"]
    argv = command("cross-silo", planned[1][1])
    config = config_from_args(build_parser(argv[1:]).parse_args(argv[1:]))
    assert (config.learning_rate, config.local_steps, config.noise_multiplier, config.seed) == (1.0, 8, 1.5, 1)


def test_a_variant_goes_into_every_run_but_the_baselines_keep_their_own_training(monkeypatch):
    seen = []
    monkeypatch.setattr(preset_frontier, "calibrate", lambda config, eps: seen.append(config) or 0.5)
    variant = parse_set(["model=cnn1d", " num-server-rounds = 200"])
    planned = dict(cells("cross-silo", [8.0], [0], None, variant))
    assert [(c.model, c.num_server_rounds) for c in seen] == [("cnn1d", 200)]  # the noise is searched on the variant
    configs = {}
    for label, settings in planned.items():
        argv = command("cross-silo", settings)
        configs[label] = config_from_args(build_parser(argv[1:]).parse_args(argv[1:]))
    baseline = presets.get("cross-silo").baseline
    assert (configs["eps 8"].model, configs["eps 8"].num_server_rounds, configs["eps 8"].noise_multiplier) == (
        "cnn1d", 200, 0.5)
    for label in ("dense, non-private", "pruned, non-private"):
        assert (configs[label].model, configs[label].num_server_rounds) == ("cnn1d", baseline["num-server-rounds"])
        assert configs[label].weight_channel == "clear"


def test_a_variant_the_run_would_refuse_stops_the_frontier_before_it_runs(tmp_path):
    with pytest.raises(SystemExit, match="--set takes KEY=VALUE, got 'model'"):
        main(["cross-silo", "--set", "model", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--set: unknown setting\\(s\\) no-such"):
        main(["cross-silo", "--set", "no-such=1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("item", ["3:learning-rate=1", "learning-rate=1", "1:learning-rate"])
def test_a_tuned_setting_for_no_budget_or_without_a_value_is_refused(item):
    with pytest.raises(SystemExit, match="--tune takes EPS:KEY=VALUE with EPS one of --budgets \\(1, 8\\)"):
        parse_tune([item], [1.0, 8.0])


def test_a_tuned_setting_the_run_would_refuse_stops_the_frontier_before_it_runs(tmp_path):
    with pytest.raises(SystemExit, match="--tune: unknown setting\\(s\\) no-such"):
        main(["cross-silo", "--budgets", "1", "--tune", "1:no-such=1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("line", DOCUMENTED)
def test_the_documented_frontiers_plan_valid_runs(line, monkeypatch):
    monkeypatch.setattr(preset_frontier, "calibrate", lambda config, eps: 2.0)  # the search itself: test_presets
    args = frontier_parser().parse_args(shlex.split(line))
    budgets = [float(b) for b in args.budgets.split(",")]
    for _, settings in cells(args.preset, budgets, [0], parse_tune(args.tune, budgets), parse_set(args.settings)):
        argv = command(args.preset, settings)
        config_from_args(build_parser(argv[1:]).parse_args(argv[1:]))  # a ConfigError: the cell would exit 2


def test_both_presets_frontiers_are_documented():
    assert {shlex.split(line)[0] for line in DOCUMENTED} == {"cross-device", "cross-silo"}
