"""The population benchmark runs as its docs show and prints every figure it promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_population_benchmark_measures_both_sides_at_each_size():
    out = subprocess.run([sys.executable, "benchmarks/bench_flower_overhead.py", "--rounds", "2", "--clients", "4", "6",
                          "--examples-per-client", "8", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert [r["clients"] for r in result["results"]] == [4, 6]
    for row in result["results"]:
        assert row["train_examples"] == 8 * row["clients"]
        for side in ("plain_fedavg", "fedprune"):
            figures = row[side]
            assert figures["round_seconds"] > 0 and figures["peak_memory_gb"] > 0.1  # Ray alone holds more
            assert figures["per_update_seconds"] == pytest.approx(figures["round_seconds"] / row["per_round"])
