"""The centralized baseline end to end through the `fedprune` command line, on small settings."""

import json

import pytest

from fedprune import run_folder
from simulations.cli import main


def test_centralized_writes_a_report_with_every_figure(tmp_path, capsys):
    code = main(["centralized", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--sparsities", "0.5,0.9",
                 "--prune-steps", "2", "--finetune-epochs", "1", "--out", str(tmp_path), "--name", "c"])
    assert code == 0
    summary = json.loads((tmp_path / "c" / run_folder.SUMMARY).read_text())
    dense, pruned = summary["dense"], summary["pruned"]
    assert dense["accuracy"] > 0.85  # digits is easy: a real trained model, not chance
    assert [p["target_sparsity"] for p in pruned] == [0.5, 0.9]
    for result in pruned:
        assert result["density"] == pytest.approx(1 - result["target_sparsity"], abs=1e-3)
        assert result["nonzero_parameters"] < dense["nonzero_parameters"]
        assert result["compressed_bytes"] < dense["dense_bytes"]
        assert set(result["latency"]) == {"batch_1_ms", "batch_64_ms"}
    assert pruned[1]["compressed_bytes"] < pruned[0]["compressed_bytes"]
    report = (tmp_path / "c" / run_folder.REPORT).read_text()
    assert "| 90% sparse |" in report and "Schedule geometric (2 steps)" in report
    out = capsys.readouterr().out
    assert "dense: accuracy" in out
    assert out.startswith("7 training epochs in all: 3 dense, then 2 targets x 2 pruning step(s) x 1 fine-tuning")


def test_a_oneshot_report_says_one_step(tmp_path):
    assert main(["centralized", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--sparsities", "0.5",
                 "--schedule", "oneshot", "--finetune-epochs", "1", "--out", str(tmp_path), "--name", "o"]) == 0
    assert "Schedule oneshot (one step)" in (tmp_path / "o" / run_folder.REPORT).read_text()


@pytest.mark.parametrize("args, message", [
    (["--scorer", "l3"], "unknown scorer 'l3'; valid scorers: l1_units, l2_units, magnitude, obd, random, taylor"),
    (["--sparsities", "1.0"], r"must be in \[0, 1\)"),
    (["--schedule", "cosine"], "valid schedules: geometric, oneshot"),
    (["--dataset", "imagenet"], "valid datasets: digits, mnist1d"),
    (["--structure", "n:m", "--sparsities", "0.5"], "N:M with M=4 needs M to divide"),
])
def test_bad_settings_fail_before_training(tmp_path, capsys, args, message):
    # digits + mlp: the first layer has 64 inputs, so M=4 divides it; cnn2d's first conv has 9 (3x3).
    base = ["centralized", "--dataset", "digits", "--model", "cnn2d", "--out", str(tmp_path), "--name", "bad"]
    assert main(base + args) == 2
    error = capsys.readouterr()
    assert "error:" in error.err and __import__("re").search(message, error.err)
    assert "dense epoch" not in error.out and not (tmp_path / "bad" / run_folder.SUMMARY).exists()
