"""Load a finished run folder of `fedprune run` back into Python: settings, summary, model, masks.

`fedprune export` and `fedprune analyze` both start from a run folder; this is the one place
that reads its files (named in ``fedprune.run_folder``) and turns them into the run's
RunConfig, its summary, the global model with the last checkpoint's weights and the global masks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedprune import run_folder
from fedprune.config import RunConfig, resolve
from fedprune.federated import modes
from fedprune.federated.local import new_model
from fedprune.pruning.masks import prunable_parameters
from fedprune.validation import ConfigError


@dataclass
class LoadedRun:
    """A run folder's content: ``model`` holds the global weights (zero where masked) of ``round``."""

    folder: Path
    config: RunConfig
    summary: dict
    model: nn.Module
    masks: dict[str, torch.Tensor]
    round: int


def load_run(run_dir) -> LoadedRun:
    """The run in ``run_dir``; ConfigError naming the missing or mismatched file otherwise."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; pass a run folder of `fedprune run` (runs/NAME)")
    config = resolve(read_json(folder / run_folder.CONFIG))
    summary = read_json(folder / run_folder.SUMMARY)
    round, weights, state = run_folder.load_checkpoint(folder)
    model = new_model(config)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    coordinator = modes.get(config).coordinator(config, shapes, list(prunable_parameters(model)))
    coordinator.load_state_dict(state)
    try:
        dense = coordinator.expand(weights)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in dense.items()})
    except (KeyError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{folder / run_folder.CHECKPOINT} does not fit the run's model ({error}); "
                          "the folder mixes files of different runs") from None
    return LoadedRun(folder, config, summary, model.eval(), dict(coordinator.masks), round)


def read_json(path: Path) -> dict:
    """A run file's JSON; ConfigError saying which file is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {path.name} in {path.parent}: pass a finished run folder of `fedprune run`") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path} ({error}); the run folder is damaged") from None
