"""`fedprune sweep`: the grid is checked before any run, finished cells are skipped, results are written."""

import argparse
import csv
import json
import math
from pathlib import Path

import pytest

from fedprune import run_folder
from fedprune.validation import ConfigError
from simulations import budget, sweep, sweep_report

TINY = Path(__file__).resolve().parents[1] / "simulations" / "sweeps" / "tiny.toml"


def args_for(config, out, *extra):
    parser = argparse.ArgumentParser()
    sweep.add_parser(parser)
    return parser.parse_args([str(config), "--out", str(out), *extra])


def grid_file(tmp_path, text) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, match", [
    ("[grid]\nepsilon = [1.0, 2.0]\n", r"cell \(epsilon = 1.0\): unknown setting\(s\) epsilon; valid settings: "),
    ("[base]\nseed = 1\n[grid]\nseed = [0, 1]\n", "seed in both"),
    ("[grid]\nseed = 3\n", "grid setting seed must be a non-empty list"),
    ("[grid]\nseed = []\n", "grid setting seed must be a non-empty list"),
    ("[grid]\nseed = [0, 0]\n", "repeats a value"),
    ("[grid]\nseed = [1, 1.0]\n", "resolve to the same settings"),
    ("[base]\nrun-name = 'x'\n", "set by the sweep"),
    ("[sweep]\njobs = 2\n", "unknown table"),
    ("[grid\n", "not valid TOML"),
    ("[grid]\nstructure = ['unstructured', 'units']\n", r"structure = 'units'\): structure 'units' in federated runs "
                                                        "needs a per-layer distribution"),
    ("[grid]\nstructure = ['unstructured', 'blocks']\n", "structure 'blocks' is not supported in federated runs"),
    ("[grid]\nscorer = ['magnitude', 'l1_units']\n", "scorer 'l1_units' scores whole units"),
    ("[grid]\ntarget-sparsity = [0.5, 1.5]\n", "target-sparsity"),
    ("[grid]\nmechanism = ['subset', 'randomised-response']\n", "unknown mechanism 'randomised-response'"),
])
def test_a_bad_grid_is_refused_with_the_fix(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):  # --dry-run: a grid that wrongly passed would run nothing
        sweep.run(args_for(grid_file(tmp_path, text), tmp_path / "out", "--dry-run"))


def test_a_sweep_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_bytes("[grid]\n# caf\u00e9\nseed = [0, 1]\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text .*save the sweep file as UTF-8"):
        sweep.run(args_for(path, tmp_path / "out", "--dry-run"))


def test_a_misspelt_grid_key_fails_before_any_run(tmp_path):
    out = tmp_path / "out"
    text = "[base]\ndataset = 'digits'\n[grid]\nseed = [0, 1]\nepsilon-per-decison = [1.0]\n"
    with pytest.raises(ConfigError,
                       match="unknown setting.*epsilon-per-decison; valid settings: .*epsilon-per-decision"):
        sweep.run(args_for(grid_file(tmp_path, text), out))
    assert not out.exists()  # nothing ran, nothing was written


def test_cells_are_every_combination_named_from_their_settings(tmp_path):
    base, grid = sweep.load_grid(grid_file(tmp_path, "[base]\nnum-clients = 4\n[grid]\n"
                                                     "epsilon-per-decision = [inf, 8, 0.5]\nseed = [0, 1]\n"))
    cells = sweep.plan_cells(base, grid, tmp_path / "out")
    assert [c.name for c in cells[:3]] == ["epsilon-per-decision-inf__seed-0", "epsilon-per-decision-inf__seed-1",
                                           "epsilon-per-decision-8__seed-0"]
    assert cells[-1].name == "epsilon-per-decision-0.5__seed-1" and len(cells) == 6
    assert all(c.config.num_clients == 4 and c.config.output_dir == str(tmp_path / "out") for c in cells)
    assert cells[2].config.epsilon_per_decision == 8.0 and math.isinf(cells[0].config.epsilon_per_decision)
    assert sweep.cell_name({"mechanism": "randomized-response", "regrowth": True}) == \
        "mechanism-randomized-response__regrowth-true"


def summary(accuracy, mask_eps, method="votes"):
    return {"final_accuracy": accuracy, "density": 0.5, "rounds": 2, "clients": 3, "method": method,
            "mode": "default", "epsilon": {"record": None, "client": None},
            "mask_channel_epsilon": {"record": mask_eps, "client": mask_eps}, "delta": 1e-5,
            "mechanism": {"mechanism": "exact" if mask_eps is None else "randomized-response"},
            "wall_seconds": 1.0, "rejections": [], "stopped": None}


def finish(cell, result):
    cell.folder.mkdir(parents=True)
    (cell.folder / run_folder.CONFIG).write_text(json.dumps(cell.config.to_mapping()))
    (cell.folder / run_folder.SUMMARY).write_text(json.dumps(result))


def test_finished_cells_are_skipped_and_their_results_written(tmp_path):
    config = grid_file(tmp_path, "[grid]\nepsilon-per-decision = [inf, 2.0]\nseed = [0, 1]\n")
    out = tmp_path / "out"
    cells = sweep.plan_cells(*sweep.load_grid(config), out)
    for cell, accuracy in zip(cells, (0.90, 0.92, 0.80, 0.84)):
        finish(cell, summary(accuracy, None if math.isinf(cell.config.epsilon_per_decision) else 1.3e5))
    lines = []
    assert sweep.run_cells(cells, jobs=2, cpus=1, progress=lines.append) == {}
    assert lines == ["sweep: 4 cells, 4 finished before, 0 to run, 1 at once with 1 CPU(s) each"]
    assert sweep.run(args_for(config, out)) == 0  # nothing left to run: writes the results
    with open(out / run_folder.RESULTS) as file:
        rows = list(csv.DictReader(file))
    assert [r["cell"] for r in rows] == [c.name for c in cells]
    assert rows[2]["config.epsilon-per-decision"] == "2.0" and rows[2]["mask_channel_epsilon.client"] == "130000.0"
    assert rows[0]["epsilon.client"] == "" and rows[0]["final_accuracy"] == "0.9"
    assert (out / run_folder.FRONTIER).stat().st_size > 0
    report = (out / run_folder.REPORT).read_text()
    assert "![frontier](frontier.png)" in report and "Command: `fedprune sweep" in report
    assert "| 0.9 | randomized-response | 2 | 1.3e+05 (mask channel) | 0.8200 ± 0.0283 | 2 |" in report
    assert "| 0.9 | randomized-response | inf | none (no privacy) | 0.9100 ± 0.0141 | 2 |" in report
    assert "mask channel alone" in report


def test_a_cell_folder_of_other_settings_is_refused(tmp_path):
    out = tmp_path / "out"
    (cell,) = sweep.plan_cells({}, {"seed": [0]}, out)
    finish(cell, summary(0.9, None))
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(num-clients\)"):
        sweep.plan_cells({"num-clients": 4}, {"seed": [0]}, out)


def test_the_frontier_groups_lines_and_keeps_baselines_apart():
    rows = []
    for mechanism, eps, seed, accuracy in [("randomized-response", 2.0, 0, 0.7), ("randomized-response", 2.0, 1, 0.8),
                                           ("oue", 2.0, 0, 0.6), ("oue", math.inf, 0, 0.9)]:
        rows.append({"config.method": "votes", "config.mechanism": mechanism, "config.epsilon-per-decision": eps,
                     "config.seed": seed, "config.target-sparsity": 0.9, "final_accuracy": accuracy, "density": 0.1,
                     "epsilon.client": None, "mask_channel_epsilon.client": None if math.isinf(eps) else 50.0})
    rows.append({**rows[0], "config.method": "server-magnitude", "final_accuracy": 0.85,
                 "mask_channel_epsilon.client": 0.0})
    panels = sweep_report.frontier_points(rows)
    lines = panels[0.9]
    assert set(lines) == {"randomized-response", "oue", "server-magnitude (no mask reports)"}
    (point,) = lines["randomized-response"]
    assert point["accuracy"] == pytest.approx(0.75) and point["sd"] == pytest.approx(0.0707, abs=1e-4)
    assert point["kind"] == "mask channel" and point["x"] == 50.0 and point["seeds"] == 2
    assert [p["kind"] for p in lines["oue"]] == ["mask channel", "none"]  # no privacy sorts last, at the right
    assert sweep_report.x_label(panels).startswith("client-level ε of the mask channel alone")


@pytest.mark.slow
def test_a_two_cell_sweep_runs_resumes_and_feeds_the_prediction(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep.run(args_for(TINY, out, "--jobs", "2")) == 0
    names = ["epsilon-per-decision-inf", "epsilon-per-decision-2"]
    with open(out / run_folder.RESULTS) as file:
        rows = list(csv.DictReader(file))
    assert [r["cell"] for r in rows] == names and all(float(r["final_accuracy"]) > 0 for r in rows)
    assert rows[1]["mechanism.hamming_bound"] and rows[0]["mechanism.mechanism"] == "exact"
    assert (out / run_folder.FRONTIER).exists() and (out / run_folder.REPORT).exists()
    stamps = [(out / name / run_folder.SUMMARY).stat().st_mtime_ns for name in names]

    capsys.readouterr()
    assert sweep.run(args_for(TINY, out)) == 0  # everything finished: nothing runs again
    assert "2 finished before, 0 to run" in capsys.readouterr().out
    assert [(out / name / run_folder.SUMMARY).stat().st_mtime_ns for name in names] == stamps

    # the exact and the private cell share the seed: the prediction meets the measured first-event IoU
    parser = argparse.ArgumentParser()
    budget.add_parser(parser)
    assert budget.run(parser.parse_args(["--predict", str(out), "--measured", str(out), "--json"])) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["same_training"] and row["difference"] < 0.05
