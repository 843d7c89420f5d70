"""One Ctrl-C or SIGTERM stops `fedprune run` within seconds, keeps the last round's checkpoint and exits 130."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedprune import run_folder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--preset", "none", "--dataset", "digits", "--model", "mlp", "--clients", "3", "--rounds", "6",
            "--set", "local-epochs=2", "--set", "schedule=oneshot", "--set", "prune-start=1", "--set", "prune-end=1",
            "--sparsity", "0.5", "--set", "privacy-seed=1"]


def start(tmp_path, name):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "simulations.cli", "run", *SETTINGS, "--name", name, "--out",
                             str(tmp_path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own group: killpg is what a terminal's Ctrl-C does


def wait_for_round(process, round: int, limit: float = 240.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(f"round {round:>3}/"):
            return
        assert line or process.poll() is None, process.stderr.read()
    raise AssertionError(f"no round {round} within {limit} s")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_one_signal_stops_the_run_cleanly_and_it_resumes(tmp_path, how):
    process = start(tmp_path, how)
    wait_for_round(process, 1)
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # the whole foreground group, as a terminal sends it
    else:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    finally:
        process.kill()
    err = process.stderr.read()
    folder = tmp_path / how
    assert code == 130, err  # within the 30 s wait above: a hang fails there
    assert f"Continue it with `fedprune run --resume {folder}`" in err and "Traceback" not in err
    assert run_folder.last_round(folder) >= 1 and not (folder / run_folder.SUMMARY).exists()
    # nothing of the run is left running
    time.sleep(1)
    assert subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True).returncode == 1

    resumed = subprocess.run([sys.executable, "-m", "simulations.cli", "run", "--resume", str(folder)], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert run_folder.last_round(folder) == 6 and (folder / run_folder.SUMMARY).exists()
