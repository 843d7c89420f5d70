"""Speed of pruned linear layers: dense torch, torch's default CSR and the chosen sparse path.

For each size (square size x size weights, float32), sparsity (unstructured, random), thread
count and batch size: calibrate picks the path on this machine; then dense F.linear, torch's
default CSR (``w.to_sparse_csr()``, int64 indices, through F.linear), torch's CSR with int32
indices (torch.mv / torch.sparse.mm), the compiled csr path and the chosen path take turns call
by call. Speedups over dense are of medians; "best-of x" is the fastest dense call over the
fastest path call, less sensitive to other load on the machine. The memory-bandwidth ideal is
4*rows*cols bytes over the bytes the chosen path reads, the fraction achieved speedup / ideal.
The ideal assumes the weight streams from memory: a layer that fits the last-level cache
(1024x1024 is 4 MB) runs dense from cache, and its fraction is lower. Target (issue):
4096x4096, sparsity 0.9, batch 1, one thread: fraction >= 0.85.

    python benchmarks/bench_kernels.py [--quick] [--json]   (or: fedprune bench kernels)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __name__ == "__main__":  # run as a script: import fedprune and simulations from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedprune.deploy.kernels import build, calibrate, describe  # noqa: E402
from fedprune.deploy.kernels.calibrate import interleaved, torch_threads  # noqa: E402

FULL = {"sizes": (1024, 4096), "sparsities": (0.5, 0.8, 0.9, 0.95, 0.98), "batches": (1, 8, 64),
        "threads": (1, 2), "cell_s": 1.0, "min_rounds": 9}
QUICK = {"sizes": (1024,), "sparsities": (0.9,), "batches": (1, 64), "threads": (1,),
         "cell_s": 0.15, "min_rounds": 5}
HEADERS = ("size", "sparsity", "threads", "batch", "path", "dense ms", "torch csr x", "torch csr32 x",
           "csr x", "path x", "best-of x", "ideal x", "fraction")


def random_weight(size: int, sparsity: float, seed: int = 0) -> np.ndarray:
    """A size x size float32 weight with a random ``sparsity`` fraction of exact zeros."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((size, size), dtype=np.float32)
    pruned = rng.permutation(size * size)[: int(round(sparsity * size * size))]
    weight.reshape(-1)[pruned] = 0.0
    return weight


def measure(sizes: Sequence[int], sparsities: Sequence[float], batches: Sequence[int], threads: Sequence[int],
            *, cell_s: float, min_rounds: int, seed: int = 0) -> list[dict]:
    """One row per (size, sparsity, threads, batch)."""
    rows = []
    generator = torch.Generator().manual_seed(seed)
    for size in sizes:
        for sparsity in sparsities:
            weight = random_weight(size, sparsity, seed)
            dense = torch.from_numpy(weight)
            with warnings.catch_warnings():  # torch calls its sparse CSR support beta
                warnings.simplefilter("ignore", UserWarning)
                torch_csr = dense.to_sparse_csr()
            csr, torch_csr32 = build("csr", weight), build("torch-csr", weight)
            for thread_count in threads:
                choice = calibrate(weight, batch_sizes=tuple(batches), threads=thread_count, budget_s=0.5).choice
                chosen = {path: build(path, weight) for path in set(choice.values())}
                with torch_threads(thread_count), torch.no_grad():
                    for batch in batches:
                        x = torch.randn(batch, size, generator=generator)
                        kernel = chosen[choice[batch]]
                        calls = {"dense": lambda: F.linear(x, dense), "torch_csr": lambda: F.linear(x, torch_csr),
                                 "path": lambda: kernel(x)}
                        for name, other in (("csr", csr), ("torch_csr32", torch_csr32)):
                            if kernel.path != other.path:
                                calls[name] = lambda other=other: other(x)
                        seconds = interleaved(calls, budget_s=cell_s, min_rounds=min_rounds, max_rounds=400)
                        rows.append(_row(size, sparsity, thread_count, batch, kernel, seconds))
    return rows


def _row(size, sparsity, thread_count, batch, kernel, seconds) -> dict:
    median = {name: statistics.median(values) for name, values in seconds.items()}
    median.setdefault("csr", median["path"])
    median.setdefault("torch_csr32", median["path"])
    ideal = 4 * size * size / kernel.bytes_read
    speedup = median["dense"] / median["path"]
    return {
        "size": size, "sparsity": sparsity, "threads": thread_count, "batch": batch,
        "path": kernel.path, "layout": kernel.layout, "bytes_read": kernel.bytes_read,
        "dense_s": median["dense"], "torch_csr_s": median["torch_csr"], "csr_s": median["csr"],
        "path_s": median["path"], "path_min_s": min(seconds["path"]), "dense_min_s": min(seconds["dense"]),
        "speedup_torch_csr": median["dense"] / median["torch_csr"],
        "speedup_csr": median["dense"] / median["csr"], "torch_csr32_s": median["torch_csr32"],
        "speedup_torch_csr32": median["dense"] / median["torch_csr32"], "speedup": speedup,
        "speedup_best": min(seconds["dense"]) / min(seconds["path"]),
        "ideal": ideal, "fraction": speedup / ideal, "rounds": len(seconds["path"]),
    }


def table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table."""
    from simulations.reporting import markdown_table
    return markdown_table(HEADERS, [
        (r["size"], r["sparsity"], r["threads"], r["batch"], r["path"], r["dense_s"] * 1e3,
         r["speedup_torch_csr"], r["speedup_torch_csr32"], r["speedup_csr"], r["speedup"], r["speedup_best"],
         r["ideal"], r["fraction"]) for r in rows])


def machine() -> str:
    """The CPU model (where Linux says it), core count and torch version."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def run(*, quick: bool = False, sizes=None, sparsities=None, batches=None, threads=None) -> dict:
    """Measure and return {"machine", "kernels", "settings", "rows"}."""
    settings = dict(QUICK if quick else FULL)
    for key, value in (("sizes", sizes), ("sparsities", sparsities), ("batches", batches), ("threads", threads)):
        if value:
            settings[key] = tuple(value)
    rows = measure(settings["sizes"], settings["sparsities"], settings["batches"], settings["threads"],
                   cell_s=settings["cell_s"], min_rounds=settings["min_rounds"])
    return {"machine": machine(),
            "kernels": describe(), "settings": settings, "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case, well under a minute")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(json.dumps(result, indent=2) if args.json else f"{result['kernels']}\n{table(result['rows'])}")


if __name__ == "__main__":
    main()
