"""Exported models against dense torch: file size and latency at batch 1 and 64 (fedprune issue 5).

Two models at 90% sparsity with magnitude masks (fedprune.pruning.compute.compute_masks, global
distribution): the MNIST-1D CNN (``build_model("cnn1d", (1, 40), 10)``) and a 3x1024 MLP
(``build_model("mlp", (1024,), 10, hidden=(1024, 1024, 1024))``). The CNN is first trained for
``--train-epochs`` on MNIST-1D: on an untrained CNN a global magnitude mask prunes the whole head
(its init is the smallest) and the exported model is a constant. Dense torch runs the masked model
with torch's dense kernels (what a masked model costs without this runtime). Latency: median of
``--repeats`` forward passes, after warm-up, on ``--threads`` threads; the export calibrates on
the same threads.

    python benchmarks/bench_runtime.py [--threads 1] [--repeats 50] [--train-epochs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from fedprune.deploy import footprint
from fedprune.deploy.export import export_model
from fedprune.deploy.runtime import load
from fedprune.pruning.compute import compute_masks
from fedprune.pruning.masks import apply_masks, prunable_parameters
from fedprune.training.models import build_model
from simulations.reporting import markdown_table

BATCHES = (1, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--train-epochs", type=int, default=5, help="MNIST-1D epochs for the CNN before pruning")
    parser.add_argument("--budget", type=float, default=0.2, help="calibration seconds per layer")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {"cnn1d (MNIST-1D)": cnn1d(args.train_epochs),
              "mlp 3x1024": build_model("mlp", (1024,), 10, hidden=(1024, 1024, 1024))}
    rows, results = [], []
    with tempfile.TemporaryDirectory() as folder:
        for label, model in models.items():
            result = measure(label, model, args, Path(folder) / "m.fpm")
            results.append(result)
            for b in BATCHES:
                dense, sparse = result["dense_ms"][b], result["runtime_ms"][b]
                rows.append([label, b, dense, sparse, dense / sparse, result["paths"][b]])
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"# Runtime against dense torch, {args.sparsity:.0%} sparse, {args.threads} thread(s), "
          f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}\n")
    print(markdown_table(["model", "file bytes", "dense torch.save bytes", "ratio", "density", "export s"],
                         [[r["model"], r["bytes"], r["dense_bytes"], r["bytes"] / r["dense_bytes"], r["density"],
                           r["export_seconds"]] for r in results]))
    print()
    print(markdown_table(["model", "batch", "dense torch (ms)", "fedprune runtime (ms)", "speedup", "layer paths"],
                         rows))


def cnn1d(epochs: int) -> torch.nn.Module:
    model = build_model("cnn1d", (1, 40), 10)
    if epochs:
        from fedprune.data.datasets import load_dataset, make_loader
        from fedprune.training.train import TrainConfig, train

        data = load_dataset("mnist1d")
        generator = torch.Generator().manual_seed(0)
        loader = make_loader(data.x_train, data.y_train, 64, shuffle=True, generator=generator)
        train(model, loader, TrainConfig(epochs=epochs, optimizer="adam", learning_rate=3e-3, momentum=0.0,
                                         batch_size=64), generator=generator)
    return model


def measure(label: str, model: torch.nn.Module, args, path: Path) -> dict:
    params = {name: p.detach() for name, p in prunable_parameters(model).items()}
    masks = compute_masks(params, sparsity=args.sparsity, scorer="magnitude", distribution="global")
    apply_masks(model, masks)
    model.eval()
    started = time.perf_counter()
    written = export_model(model, masks, path, batch_sizes=BATCHES, threads=args.threads, budget_s=args.budget)
    seconds = time.perf_counter() - started
    runtime = load(path)
    paths = {b: ", ".join(f"{layer['name']} {runtime.path_for(layer, b) if 'paths' in layer else layer['path']}"
                          for layer in runtime.layers) for b in BATCHES}
    return {
        "model": label, "bytes": written["bytes"], "dense_bytes": footprint.dense_bytes(model),
        "density": written["density"], "export_seconds": seconds, "paths": paths,
        "dense_ms": {b: 1e3 * footprint.latency_seconds(model, model.spec["input_shape"], b, repeats=args.repeats,
                                                        threads=args.threads) for b in BATCHES},
        "runtime_ms": {b: 1e3 * runtime.latency(b, repeats=args.repeats) for b in BATCHES},
    }


if __name__ == "__main__":
    main()
