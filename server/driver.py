"""A whole federated run on a Flower grid: set up, resume, run the rounds, write the results.

Every round ends in ``RoundLog``: evaluate the global model on the held-out test set, append a
line to metrics.jsonl, write the checkpoint, print the progress line. A run killed at any point
resumes from its last finished round (``resume = true``): the schedule position, the mask, the
ledgers and the weights come back from the checkpoint, and every random draw of a round is
derived from (seed, round, client), so a seeded resumed run ends where an uninterrupted one does
(sampled clients included: they are drawn over client ids, ``fedprune.federated.sampling``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, PrivacyBudgetExhausted

from fedprune import run_folder
from fedprune.config import RunConfig
from fedprune.data.datasets import make_loader
from fedprune.federated import modes
from fedprune.federated.coordinator import Coordinator
from fedprune.federated.local import held_out, new_model
from fedprune.federated.sampling import fixed_sample_size
from fedprune.privacy import replay, statement
from fedprune.privacy.rng import RandomnessSource
from fedprune.pruning.masks import prunable_parameters
from fedprune.training.train import evaluate
from server import report
from server.strategy import FedPrune, from_record, to_record


def build_strategy(config: RunConfig, coordinator: Coordinator, offset: int) -> FedPrune:
    """FedPrune; its coordinator runs the weight channel (DP-FedAvg included, see server/strategy.py)."""
    return FedPrune(coordinator, round_offset=offset, fraction_train=config.fraction_train,
                    min_train_nodes=fixed_sample_size(config), min_available_nodes=config.num_clients)


class RoundLog:
    """Flower's evaluate_fn: evaluate, log, checkpoint and report progress after every round."""

    def __init__(self, config: RunConfig, coordinator: Coordinator, folder: Path, offset: int, progress,
                 seconds_before: float = 0.0):
        self.config, self.coordinator, self.folder, self.offset, self.progress = \
            config, coordinator, folder, offset, progress
        self.test = make_loader(*held_out(config), 512, shuffle=False)
        self.model = new_model(config)
        self.started = time.perf_counter() - seconds_before  # a resumed run's clock goes on from its last line
        self.last = None

    def __call__(self, server_round: int, arrays):
        round = self.offset + server_round
        weights = from_record(arrays)
        state = self.coordinator.expand(weights)
        self.model.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
        result = evaluate(self.model, self.test)
        if server_round == 0 and self.offset > 0:
            return None  # the resumed round was logged by the run that wrote the checkpoint
        line = {"round": round, "accuracy": result["accuracy"], "loss": result["loss"],
                "density": self.coordinator.density(), "epsilon": self.coordinator.epsilon(),
                "mask_channel_epsilon": self.coordinator.epsilon(mask_channel=True),
                "rejected": len(self.coordinator.rejected), "dropouts": self.coordinator.dropouts,
                "upload_bytes": self.coordinator.upload_bytes if server_round else [],
                "seconds": time.perf_counter() - self.started}
        run_folder.append_metrics(self.folder, line)
        votes = self.coordinator.last_votes  # before the checkpoint: a resumed run rewrites the same event
        if server_round > 0 and votes is not None and votes["plan"].round == round:
            replay.record_event(self.folder, votes, self.coordinator.eligible, exact=not self.config.private_votes)
        if server_round > 0:
            run_folder.save_checkpoint(self.folder, round, weights, self.coordinator.state_dict())
        self.last = line
        privacy = statement.short(self.config, self.coordinator.privacy())
        self.progress(f"round {round:>3}/{self.config.num_server_rounds}  accuracy {result['accuracy']:.4f}  "
                      f"density {line['density']:.3f}  {privacy}  rejected {line['rejected']}")
        return None


def run_federation(grid: Grid, config: RunConfig, progress=print) -> dict:
    """Run (or resume) the federated pruning run ``config`` on ``grid``; returns summary.json's content."""
    config = run_folder.with_name(config)
    try:
        with run_folder.owned(config) as folder:
            return _run(grid, config, folder, progress)
    except run_folder.RunFinished as finished:
        progress(str(finished))
        return json.loads((finished.folder / run_folder.SUMMARY).read_text())


def _run(grid: Grid, config: RunConfig, folder: Path, progress) -> dict:
    model = new_model(config)
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    shapes = {name: value.shape for name, value in state.items()}
    coordinator = modes.get(config).coordinator(config, shapes, list(prunable_parameters(model)))
    offset, weights, seconds_before = 0, coordinator.compact(state), 0.0
    if config.resume and (folder / run_folder.CHECKPOINT).exists():
        offset, weights, saved = run_folder.load_checkpoint(folder)
        coordinator.load_state_dict(saved)
        kept = run_folder.keep_metrics_until(folder, offset)
        seconds_before = kept[-1]["seconds"] if kept else 0.0
        progress(f"resuming {folder} after round {offset}")
    else:
        (folder / run_folder.METRICS).unlink(missing_ok=True)
        (folder / run_folder.VOTES).unlink(missing_ok=True)
    run_folder.write_atomic(folder / run_folder.CONFIG, json.dumps(config.to_mapping(), indent=2) + "\n")

    log = RoundLog(config, coordinator, folder, offset, progress, seconds_before)
    stopped = None
    remaining = config.num_server_rounds - offset
    if remaining > 0:
        try:
            build_strategy(config, coordinator, offset).start(
                grid, initial_arrays=to_record(weights), num_rounds=remaining, evaluate_fn=log)
        except PrivacyBudgetExhausted as error:
            stopped = f"privacy budget: {error.reason if hasattr(error, 'reason') else error}"
            progress(f"stopped: {stopped}")
        except AggregationError as error:
            _finish(folder, config, coordinator, log, f"failed: {error}", None)
            raise
    dense_accuracy = None
    if config.dense_baseline and config.method != "dense":
        progress("dense FedAvg baseline (same seed, same rounds)")
        dense = config.replace(method="dense", run_name=f"{folder.name}-dense",
                               budget_epsilon=0.0, dense_baseline=False)
        dense_accuracy = run_federation(grid, dense, progress)["final_accuracy"]
    return _finish(folder, config, coordinator, log, stopped, dense_accuracy)


def _finish(folder, config, coordinator, log, stopped, dense_accuracy) -> dict:
    lines = run_folder.read_metrics(folder)
    seconds = time.perf_counter() - log.started  # the whole run's, across resumes
    summary = report.summary(config, coordinator, lines, seconds, stopped, dense_accuracy,
                             RandomnessSource.from_seed(config.privacy_seed if config.privacy_seeded else None))
    summary["run_dir"] = str(folder)
    run_folder.write_atomic(folder / run_folder.SUMMARY, json.dumps(summary, indent=2) + "\n")
    report.write(folder, summary, lines)
    return summary
