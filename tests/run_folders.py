"""A run folder as `fedprune run` leaves it (config.json, summary.json, checkpoint.npz), without a simulation."""

import json

import numpy as np
import torch

from fedprune.federated import modes

from fedprune import run_folder
from fedprune.config import RunConfig
from fedprune.federated.local import new_model
from fedprune.pruning.masks import apply_masks, prunable_parameters
from fedprune.privacy.rng import RandomnessSource
from fedprune.pruning.compute import compute_masks
from server import report


def write_run_folder(folder, *, clients: int, sparsity: float, accuracy: float, mode: str = "default"):
    """A 2-round digits/cnn2d run pruned to ``sparsity`` by magnitude, one mask report per client.

    A mask-only run's checkpoint holds random keep-probabilities instead, and its model is the frozen
    network under the mask they select. Returns (config, masked model in eval mode, masks, summary).
    """
    folder.mkdir(parents=True)
    config = RunConfig(dataset="digits", model="cnn2d", num_server_rounds=2, num_clients=clients, schedule="oneshot",
                       prune_start=1, prune_end=2, privacy_seed=0, run_name=folder.name,
                       output_dir=str(folder.parent), mode=mode,
                       **({"target_sparsity": sparsity} if mode == "mask-only" else {}))
    model = new_model(config)
    state = {n: v.detach().numpy() for n, v in model.state_dict().items()}
    coordinator = modes.get(config).coordinator(config, {n: v.shape for n, v in state.items()},
                                                list(prunable_parameters(model)))
    names = [str(c) for c in range(clients)]
    coordinator.record(coordinator.plan(1), names)
    if mode == "mask-only":
        rng = np.random.default_rng(0)
        weights = {n: rng.random(v.shape).astype(np.float32) for n, v in coordinator.compact(state).items()}
        coordinator.masks = coordinator.final_masks(weights)
        model.load_state_dict({n: torch.from_numpy(v) for n, v in coordinator.expand(weights).items()})
    else:
        coordinator.masks = compute_masks({n: p.detach() for n, p in prunable_parameters(model).items()},
                                          sparsity=sparsity)
        weights = coordinator.compact(state)
    coordinator.sparsity = sparsity
    run_folder.save_checkpoint(folder, 2, weights, coordinator.state_dict())
    (folder / run_folder.CONFIG).write_text(json.dumps(config.to_mapping()))
    summary = report.summary(config, coordinator, [{"round": 2, "accuracy": accuracy, "upload_bytes": [1]}], 1.0,
                             None, None, RandomnessSource.from_seed(0))
    summary["run_dir"] = str(folder)
    (folder / run_folder.SUMMARY).write_text(json.dumps(summary))
    apply_masks(model, coordinator.masks)
    return config, model.eval(), coordinator.masks, summary
