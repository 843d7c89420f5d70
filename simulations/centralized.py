"""Centralized baseline: train dense, prune (one-shot or iterative), fine-tune, evaluate, report.

Every federated result is compared against this. Iterative magnitude pruning follows a
geometric schedule (density (1-p)^k after k steps); lottery-ticket rewinding resets the kept
weights to an early-epoch checkpoint after each pruning step before retraining.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import asdict, dataclass, field

import torch

from fedprune import run_folder
from fedprune.data.datasets import load_dataset, make_loader
from fedprune.deploy import footprint
from fedprune.pruning.compute import compute_masks
from fedprune.pruning.masks import apply_masks, density, prunable_parameters
from fedprune.pruning.schedules import Geometric, OneShot
from fedprune.training.models import build_model
from fedprune.training.train import TrainConfig, evaluate, train
from fedprune.validation import ConfigError, pick, positive_int, sparsity
from simulations.reporting import markdown_table, run_dir, write_json

SCHEDULE_KINDS = {"oneshot": "oneshot", "geometric": "geometric"}


@dataclass(frozen=True)
class CentralizedConfig:
    dataset: str = "mnist1d"
    model: str = "cnn1d"
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    schedule: str = "geometric"
    prune_steps: int = 10
    scorer: str = "magnitude"
    distribution: str = "global"
    structure: str = "unstructured"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, optimizer="adam", learning_rate=0.003,
                                                                   momentum=0.0, batch_size=64))
    finetune_epochs: int = 10
    rewind_epoch: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.sparsities:
            raise ConfigError("give at least one target sparsity, e.g. --sparsities 0.5,0.9")
        for value in self.sparsities:
            sparsity(value, "target sparsity")
        pick("schedule", self.schedule, SCHEDULE_KINDS)
        positive_int("prune steps", self.prune_steps)
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune epochs must be >= 0, got {self.finetune_epochs}")
        if self.rewind_epoch is not None and not 0 <= self.rewind_epoch <= self.train.epochs:
            raise ConfigError(f"rewind epoch must be in [0, epochs={self.train.epochs}], got {self.rewind_epoch}")

    def schedule_for(self, target: float):
        if self.schedule == "oneshot":
            return OneShot(sparsity=target), 1
        return Geometric.for_target(target, self.prune_steps), self.prune_steps


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist1d", help="mnist1d | digits | hf:NAME")
    parser.add_argument("--model", default="cnn1d", help="mlp | cnn1d | cnn2d")
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95", help="comma-separated targets")
    parser.add_argument("--schedule", default="geometric", help="oneshot | geometric (iterative magnitude pruning)")
    parser.add_argument("--prune-steps", type=int, default=10, help="pruning steps of the geometric schedule")
    parser.add_argument("--scorer", default="magnitude")
    parser.add_argument("--distribution", default="global", help="global | uniform | erk")
    parser.add_argument("--structure", default="unstructured", help="unstructured | units | n:m | blocks")
    parser.add_argument("--epochs", type=int, default=30, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="epochs after each pruning step")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rewind-epoch", type=int, default=None, help="lottery-ticket rewinding to this epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs", help="folder that receives the run folder")
    parser.add_argument("--name", default=None, help="run folder name (default: centralized-TIMESTAMP)")


def config_from_args(args: argparse.Namespace) -> CentralizedConfig:
    try:
        targets = tuple(float(s) for s in args.sparsities.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--sparsities must be comma-separated numbers, got {args.sparsities!r}") from None
    momentum = 0.9 if args.optimizer == "sgd" else 0.0
    train_config = TrainConfig(epochs=args.epochs, optimizer=args.optimizer, learning_rate=args.lr,
                               momentum=momentum, batch_size=args.batch_size)
    return CentralizedConfig(
        dataset=args.dataset, model=args.model, sparsities=targets, schedule=args.schedule,
        prune_steps=args.prune_steps, scorer=args.scorer, distribution=args.distribution,
        structure=args.structure, train=train_config, finetune_epochs=args.finetune_epochs,
        rewind_epoch=args.rewind_epoch, seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    steps = 1 if config.schedule == "oneshot" else config.prune_steps
    epochs = config.train.epochs + len(config.sparsities) * steps * config.finetune_epochs
    print(f"{epochs} training epochs in all: {config.train.epochs} dense, then {len(config.sparsities)} targets x "
          f"{steps} pruning step(s) x {config.finetune_epochs} fine-tuning epochs (fewer: --sparsities 0.9 "
          "--schedule oneshot --finetune-epochs 3)")
    result = run_centralized(config, progress=print)
    folder = run_dir(args.out, args.name, "centralized")
    write_json(folder / run_folder.SUMMARY, result)
    (folder / run_folder.REPORT).write_text(markdown_report(result))
    print(f"wrote {folder / run_folder.SUMMARY} and {folder / run_folder.REPORT}")
    return 0


def run_centralized(config: CentralizedConfig, progress=lambda line: None) -> dict:
    """Train, prune to each target sparsity, and measure; returns the report as a dict."""
    data = load_dataset(config.dataset, seed=config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes, seed=config.seed)
    prunable = prunable_parameters(model)  # fails now if nothing is prunable
    # A dry run of the mask settings on the untrained model, so bad settings fail before training.
    compute_masks(_detached(prunable), sparsity=config.sparsities[0], scorer=config.scorer,
                  distribution=config.distribution, structure=config.structure,
                  generator=torch.Generator().manual_seed(config.seed))
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = make_loader(data.x_train, data.y_train, config.train.batch_size, shuffle=True, generator=generator)
    test_loader = make_loader(data.x_test, data.y_test, 512, shuffle=False)

    started = time.perf_counter()
    rewind_state = copy.deepcopy(model.state_dict()) if config.rewind_epoch == 0 else None
    for epoch in range(1, config.train.epochs + 1):
        metrics = train(model, train_loader, _epochs(config.train, 1), generator=generator)
        if epoch == config.rewind_epoch:
            rewind_state = copy.deepcopy(model.state_dict())
        if epoch % 5 == 0 or epoch == config.train.epochs:
            progress(f"dense epoch {epoch}/{config.train.epochs}  train loss {metrics['loss']:.4f}  "
                     f"test acc {evaluate(model, test_loader)['accuracy']:.4f}")
    dense = _measure(model, {}, data, test_loader)
    progress(f"dense: accuracy {dense['accuracy']:.4f}")

    pruned = []
    for target in config.sparsities:
        pruned.append(_prune_to(model, target, config, train_loader, test_loader, data, rewind_state, progress))
    return {
        "kind": "centralized",
        "config": _config_dict(config),
        "dataset": {"name": data.name, "train": len(data.y_train), "test": len(data.y_test),
                    "num_classes": data.num_classes, "input_shape": list(data.input_shape)},
        "dense": dense,
        "pruned": pruned,
        "wall_seconds": time.perf_counter() - started,
    }


def _prune_to(dense_model, target, config, train_loader, test_loader, data, rewind_state, progress) -> dict:
    model = copy.deepcopy(dense_model)
    schedule, steps = config.schedule_for(target)
    generator = torch.Generator().manual_seed(config.seed + 1)
    masks = None
    for step in range(1, steps + 1):
        if not schedule.is_update_round(step):
            continue
        params = _detached(prunable_parameters(model))
        masks = compute_masks(params, sparsity=schedule.sparsity_at(step), scorer=config.scorer,
                              distribution=config.distribution, structure=config.structure,
                              previous=masks, generator=generator)
        if rewind_state is not None:
            model.load_state_dict(rewind_state)
        apply_masks(model, masks)
        epochs = config.train.epochs if rewind_state is not None else config.finetune_epochs
        if epochs:
            train(model, train_loader, _epochs(config.train, epochs), masks=masks, generator=generator)
        progress(f"sparsity {target:.2f}: step {step}/{steps}  density {density(masks):.4f}  "
                 f"test acc {evaluate(model, test_loader)['accuracy']:.4f}")
    result = _measure(model, masks, data, test_loader)
    result["target_sparsity"] = target
    result["density"] = density(masks)
    return result


def _measure(model, masks, data, test_loader) -> dict:
    counts = footprint.parameter_counts(model)
    latency = {f"batch_{b}_ms": 1e3 * footprint.latency_seconds(model, data.input_shape, b) for b in (1, 64)}
    return {
        "accuracy": evaluate(model, test_loader)["accuracy"],
        "parameters": counts["total"],
        "nonzero_parameters": counts["nonzero"],
        "dense_bytes": footprint.dense_bytes(model),
        "compressed_bytes": footprint.compressed_bytes(model, masks) if masks else footprint.dense_bytes(model),
        # Masked models still run the dense kernels: this is the latency before sparse kernels.
        "latency": latency,
    }


def markdown_report(result: dict) -> str:
    config, dense = result["config"], result["dense"]
    steps = "one step" if config["schedule"] == "oneshot" else f"{config['prune_steps']} steps"
    rows = [["dense", 1.0, dense["accuracy"], dense["nonzero_parameters"], dense["dense_bytes"],
             dense["compressed_bytes"], dense["latency"]["batch_1_ms"], dense["latency"]["batch_64_ms"]]]
    rows += [[f"{r['target_sparsity']:.0%} sparse", r["density"], r["accuracy"], r["nonzero_parameters"],
              r["dense_bytes"], r["compressed_bytes"], r["latency"]["batch_1_ms"], r["latency"]["batch_64_ms"]]
             for r in result["pruned"]]
    table = markdown_table(["model", "density", "test accuracy", "nonzero params", "dense bytes",
                            "compressed bytes", "latency b=1 (ms)", "latency b=64 (ms)"], rows)
    return (
        f"# Centralized pruning: {config['model']} on {result['dataset']['name']}\n\n"
        f"Schedule {config['schedule']} ({steps}), scorer {config['scorer']}, "
        f"distribution {config['distribution']}, structure {config['structure']}, "
        f"rewind epoch {config['rewind_epoch']}, seed {config['seed']}.\n\n{table}\n\n"
        "Latency is of the masked model on dense kernels (one thread); compressed bytes store a "
        "bitmap and the kept float32 values per pruned tensor.\n"
    )


def _epochs(base: TrainConfig, epochs: int) -> TrainConfig:
    return TrainConfig(**{**asdict(base), "epochs": epochs})


def _detached(params: dict) -> dict:
    return {name: p.detach() for name, p in params.items()}


def _config_dict(config: CentralizedConfig) -> dict:
    return asdict(config)
