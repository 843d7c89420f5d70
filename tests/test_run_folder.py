"""A run folder belongs to one run: refused names and folders exit 2 before the engine starts; files are whole."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_folders import write_run_folder

from fedprune import run_folder
from fedprune.config import RunConfig
from fedprune.validation import ConfigError

REPO = Path(__file__).resolve().parents[1]


def fedprune(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_a_folder_another_process_runs_in_is_refused_at_once(tmp_path):
    config = RunConfig(run_name="busy", output_dir=str(tmp_path))
    with run_folder.owned(config):  # this test process holds it, as a running `fedprune run` would
        done = fedprune("run", "--name", "busy", "--out", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'busy'} is in use by another fedprune run (pid " in done.stderr
    assert "Ray" not in done.stderr + done.stdout  # refused before the engine started
    assert not (tmp_path / "busy" / run_folder.METRICS).exists()


def test_a_finished_run_name_is_refused_with_the_resume_command(tmp_path):
    write_run_folder(tmp_path / "done", clients=2, sparsity=0.5, accuracy=0.9)
    done = fedprune("run", "--name", "done", "--out", str(tmp_path))
    assert done.returncode == 2
    assert f"already holds a run: continue it with `fedprune run --resume {tmp_path / 'done'}`" in done.stderr


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    _, _, _, summary = write_run_folder(tmp_path / "done", clients=2, sparsity=0.5, accuracy=0.9)
    before = {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()}
    done = fedprune("run", "--resume", str(tmp_path / "done"))
    assert done.returncode == 0, done.stderr
    assert "is finished (2 of 2 rounds): nothing to do" in done.stdout
    assert {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()} == before


def test_an_output_folder_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    done = fedprune("run", "--out", str(tmp_path / "file" / "runs"))
    assert done.returncode == 2
    assert "cannot create the run folder" in done.stderr and "pass --out a folder you can write" in done.stderr


def test_an_unreadable_checkpoint_names_the_real_fix(tmp_path):
    write_run_folder(tmp_path / "broken", clients=2, sparsity=0.5, accuracy=0.9)
    (tmp_path / "broken" / run_folder.CHECKPOINT).write_bytes(b"not a zip")
    (tmp_path / "broken" / run_folder.SUMMARY).unlink()  # killed before it finished
    done = fedprune("run", "--resume", str(tmp_path / "broken"))
    assert done.returncode == 2
    assert f"start the run again under another --name (or delete {tmp_path / 'broken'})" in done.stderr


def test_a_torn_last_metrics_line_is_dropped_and_a_torn_earlier_one_is_an_error(tmp_path):
    lines = [{"round": r, "accuracy": 0.5} for r in range(3)]
    (tmp_path / run_folder.METRICS).write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"round": 3, "acc')
    assert run_folder.read_metrics(tmp_path) == lines
    assert run_folder.keep_metrics_until(tmp_path, 1) == lines[:2]
    assert (tmp_path / run_folder.METRICS).read_text().count("\n") == 2
    (tmp_path / run_folder.METRICS).write_text('{"round": 0}\n{"rou\n{"round": 2}\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        run_folder.read_metrics(tmp_path)


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / run_folder.SUMMARY
    run_folder.write_atomic(path, "old")
    run_folder.write_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == [run_folder.SUMMARY]


def test_a_split_the_data_cannot_give_is_refused_before_the_engine_starts(tmp_path):
    done = fedprune("run", "--preset", "none", "--clients", "400", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cannot split mnist1d's 8000 training examples among 400 clients by dirichlet" in done.stderr
    assert "use fewer clients, raise dirichlet-alpha (now 0.5) or set partitioner iid" in done.stderr
    assert "Ray" not in done.stderr + done.stdout and not list(tmp_path.glob("run-*"))


def test_the_file_names_are_the_documented_ones():
    # Users, scripts and older runs read these names: renaming one is a format change, not a refactor.
    assert (run_folder.CONFIG, run_folder.METRICS, run_folder.SUMMARY, run_folder.REPORT, run_folder.CHECKPOINT,
            run_folder.VOTES, run_folder.ANALYSIS, run_folder.MODEL, run_folder.LOCK) == \
        ("config.json", "metrics.jsonl", "summary.json", "report.md", "checkpoint.npz", "votes.npz", "analysis.json",
         "model.fpm", ".lock")
    assert run_folder.PLOTS == ("accuracy.png", "density.png", "epsilon.png")
    assert (run_folder.SWEEP_CONFIG, run_folder.CELL_LOG, run_folder.RESULTS, run_folder.FRONTIER,
            run_folder.frontier_name("digits")) == ("sweep.toml", "cell.log", "results.csv", "frontier.png",
                                                    "frontier-digits.png")


def test_a_checkpoint_round_trips_and_a_foreign_one_is_refused(tmp_path):
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    run_folder.save_checkpoint(tmp_path, 3, weights, {"masks": [1, 2]})
    round, loaded, state = run_folder.load_checkpoint(tmp_path)
    assert (round, state, run_folder.last_round(tmp_path)) == (3, {"masks": [1, 2]}, 3)
    assert np.array_equal(loaded["w"], weights["w"])
    with pytest.raises(ConfigError, match="never finished a round"):
        run_folder.load_checkpoint(tmp_path / "empty")
