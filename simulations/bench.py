"""`fedprune bench kernels`: dense, torch's CSR and the chosen sparse path side by side, on this machine.

Square linear layers at several sizes and unstructured sparsities, batch sizes and thread
counts; the calls take turns and medians count. Each row gives the speedups over dense, the
memory-bandwidth ideal (dense bytes over the bytes the chosen path reads) and the fraction of
it achieved. The full grid takes a few minutes; --quick one small case. The measuring lives in
benchmarks/bench_kernels.py, so this needs a source checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from fedprune.validation import ConfigError, sparsity

TARGET = {"size": 4096, "sparsity": 0.9, "batch": 1, "threads": 1}
TARGET_FRACTION = 0.85


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["kernels"], help="what to measure")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="one small case (1024, sparsity 0.9), well under a minute")
    parser.add_argument("--sizes", default=None, help="comma-separated layer sizes (default 1024,4096)")
    parser.add_argument("--sparsities", default=None, help="comma-separated sparsities (default 0.5,0.8,0.9,0.95,0.98)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,64)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2)")


def _integers(name: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated integers, e.g. 1,8,64; got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--{name} must be positive integers, got {text!r}")
    return values


def _sparsities(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(sparsity(float(part), "--sparsities entry") for part in text.split(","))
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"--sparsities must be comma-separated numbers in [0, 1), got {text!r}") from None


def _measuring_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
    if not path.exists():
        raise ConfigError(f"fedprune bench needs a source checkout ({path} not found); "
                          "run it from a clone of the repository installed with `pip install -e .`")
    spec = importlib.util.spec_from_file_location("fedprune_bench_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> int:
    options = {"sizes": _integers("sizes", args.sizes), "sparsities": _sparsities(args.sparsities),
               "batches": _integers("batches", args.batches), "threads": _integers("threads", args.threads)}
    bench = _measuring_module()
    result = bench.run(quick=args.quick, **options)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"kernels: {result['kernels']}; {result['machine']}; medians of interleaved calls")
    print(bench.table(result["rows"]))
    for row in result["rows"]:
        if all(row[key] == value for key, value in TARGET.items()):
            verdict = "meets" if row["fraction"] >= TARGET_FRACTION else "misses"
            print(f"target 4096x4096, sparsity 0.9, batch 1, one thread: {row['speedup']:.2f}x over dense, "
                  f"{row['fraction']:.2f} of the {row['ideal']:.2f}x ideal ({verdict} the {TARGET_FRACTION} goal)")
    return 0
