"""One file per run that a killed run resumes from: weights, mask, ledger and schedule position.

``checkpoint.npz`` holds the global model (compact), the global mask (packed) and a JSON entry
with the rest of the coordinator's state and the round it was written after. It is written to
a temporary name and renamed, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from fedprune.atomic import replacing
from fedprune.validation import ConfigError

FILE = "checkpoint.npz"
FORMAT = 1
_WEIGHT = "weight/"


def save(folder: Path, round: int, weights: dict[str, np.ndarray], state: dict) -> Path:
    """Write the checkpoint after ``round`` atomically; returns its path."""
    path = Path(folder) / FILE
    meta = json.dumps({"format": FORMAT, "round": int(round), "state": state})
    arrays = {_WEIGHT + name: value for name, value in weights.items()}
    with replacing(path) as file:
        np.savez(file, meta=np.array(meta), **arrays)
    return path


def load(folder: Path) -> tuple[int, dict[str, np.ndarray], dict]:
    """(round, compact weights, coordinator state) of the run in ``folder``."""
    meta, weights = _read(folder, weights=True)
    return int(meta["round"]), weights, meta["state"]


def last_round(folder: Path) -> int:
    """The round the checkpoint in ``folder`` was written after."""
    return int(_read(folder, weights=False)[0]["round"])


def _read(folder: Path, weights: bool) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(folder) / FILE
    fix = f"start the run again under another --name (or delete {folder})"
    if not path.exists():
        raise ConfigError(f"no {FILE} in {folder}: the run never finished a round; {fix}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            arrays = {key[len(_WEIGHT):]: stored[key] for key in stored.files if weights and key.startswith(_WEIGHT)}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{path} is unreadable ({error}); {fix}") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} has checkpoint format {meta.get('format')!r}; this fedprune reads {FORMAT}: resume "
                          "it with the fedprune that wrote it")
    return meta, arrays
