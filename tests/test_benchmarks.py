"""The population benchmark runs as its docs show and prints every figure it promises."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_population_benchmark_measures_both_sides():
    out = subprocess.run([sys.executable, "benchmarks/bench_flower_overhead.py", "--rounds", "2", "--clients", "4",
                          "--examples-per-client", "8", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert [r["clients"] for r in result["results"]] == [4]
    for row in result["results"]:  # the report's shape: the figures themselves are the benchmark's, not asserted
        assert row["train_examples"] == 8 * row["clients"] and row["per_round"] == row["clients"]
        for side in ("plain_fedavg", "fedprune"):
            assert set(row[side]) == {"round_seconds", "per_update_seconds", "total_seconds", "peak_memory_gb"}
            assert all(isinstance(value, float) and math.isfinite(value) for value in row[side].values())
