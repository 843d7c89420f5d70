"""The preset frontier's table and plot from finished runs, and the commands it runs (each a valid `fedprune run`)."""

from pathlib import Path

from fedprune import presets
from simulations.cli import build_parser
from simulations.preset_frontier import command, plot, table
from simulations.run import config_from_args


def rows():
    private = [{"label": f"eps {e:g}", "command": "c", "seed": s, "accuracy": 0.2 * e ** 0.5 + s / 100,
                "density": 0.2, "epsilon": e, "seconds": 100, "trust_model": "local"} for e in (1, 4) for s in (0, 1)]
    return private + [{"label": "dense, non-private", "command": "d", "seed": s, "accuracy": 0.98, "density": 1.0,
                       "epsilon": None, "seconds": 50, "trust_model": "none"} for s in (0, 1)]


def test_the_table_states_mean_sd_per_seed_and_the_figure(tmp_path):
    text = table(presets.get("cross-silo"), rows())
    assert "| eps 4 | 0.4050 ± 0.0050 | 0.4000 / 0.4100 | 4.000 | local | 0.200 | 100 | `c` |" in text
    assert "| dense, non-private | 0.9800 ± 0.0000 | 0.9800 / 0.9800 | none | none | 1.000 | 50 | `d` |" in text
    plot(tmp_path / "f.png", presets.get("cross-silo"), rows())
    assert Path(tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_cell_is_a_valid_fedprune_run():
    argv = command("cross-device", {**presets.get("cross-device").non_private("dense"), "seed": 1})
    config = config_from_args(build_parser(argv[1:]).parse_args(argv[1:]))
    assert (config.method, config.weight_channel, config.seed, config.num_clients) == ("dense", "clear", 1, 1000)
