"""A run folder and its files: their names, one owning process, files written whole, the checkpoint.

Every file a run, a sweep or a centralized baseline leaves is named here and nowhere else: the
readers (``fedprune export``, ``analyze``, ``predict``, the sweep and experiment reports) and the
writers (the server's driver and report, ``fedprune.privacy.replay``) take the names from this module.

``owned(config)`` checks the folder before any work (a finished run, a name already taken, an
unwritable output folder, another process running in it: each a ConfigError naming the fix),
creates it and holds an exclusive lock on ``.lock`` (``fcntl.flock``) until the block ends; the
lock dies with the process, so a killed run leaves nothing to clean up. A process may re-enter a
folder it already owns (``fedprune run`` claims it before the engine starts, the ServerApp again).

Files are replaced atomically (``write_atomic``: a temporary file, then ``os.replace``);
metrics.jsonl is appended a line at a time, so a crash can tear only its last line, which
``read_metrics`` drops.

checkpoint.npz is what a killed run resumes from: the global model (compact), the global mask
(packed) and a JSON entry with the rest of the coordinator's state and the round it was written
after. It too is replaced whole, so a run killed mid-write keeps the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedprune.atomic import replacing
from fedprune.config import RunConfig
from fedprune.validation import ConfigError

# --- the files of a run folder (`fedprune run`; a centralized run writes SUMMARY and REPORT) ----------
CONFIG = "config.json"          # the run's settings, kebab-case (what --resume reads back)
METRICS = "metrics.jsonl"       # one JSON line per round
SUMMARY = "summary.json"        # the finished run's results
REPORT = "report.md"            # the same for people, with the plots
PLOTS = ACCURACY_PLOT, DENSITY_PLOT, EPSILON_PLOT = "accuracy.png", "density.png", "epsilon.png"
CHECKPOINT = "checkpoint.npz"   # what a killed run resumes from (below)
VOTES = "votes.npz"             # exact votes and masks of every pruning event (fedprune.privacy.replay)
ANALYSIS = "analysis.json"      # `fedprune analyze`'s measurements
MODEL = "model.fpm"             # `fedprune export`'s default output
LOCK = ".lock"                  # held by the process that owns the folder

# --- the files of a sweep folder (`fedprune sweep`); its report is REPORT too ------------------------
SWEEP_CONFIG = "sweep.toml"     # the sweep file, copied
CELL_LOG = "cell.log"           # in each cell's run folder: the cell's output
RESULTS = "results.csv"         # one row per finished cell
FRONTIER = "frontier.png"       # accuracy against epsilon


def frontier_name(dataset: str) -> str:
    """The frontier plot of one dataset's experiments (``fedprune experiments-report``)."""
    return f"frontier-{dataset}.png"


_held: dict[Path, int] = {}  # folders this process owns -> the locked file descriptor


class RunFinished(Exception):
    """``--resume`` of a run that has already finished all its rounds: nothing to do."""

    def __init__(self, folder: Path, rounds: int):
        super().__init__(f"{folder} is finished ({rounds} of {rounds} rounds): nothing to do; its results are "
                         f"in {folder / SUMMARY} and {folder / REPORT}")
        self.folder = folder


def with_name(config: RunConfig) -> RunConfig:
    """``config`` with a run name (a timestamp when none was given), so every entry names the same folder."""
    return config if config.run_name else config.replace(run_name=time.strftime("run-%Y%m%d-%H%M%S"))


def folder_of(config: RunConfig) -> Path:
    return Path(config.output_dir) / config.run_name


@contextlib.contextmanager
def owned(config: RunConfig) -> Iterator[Path]:
    """The run's folder, checked, created and locked for this process while the block runs."""
    folder = folder_of(config)
    key = folder.resolve()
    if key in _held:
        yield folder
        return
    check(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"cannot create the run folder {folder} ({error.strerror}); pass --out a folder you can "
                          "write") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
        os.close(handle)
        raise ConfigError(f"{folder} is in use by another fedprune run (pid {owner}); wait for it to end or pick "
                          "another --name") from None
    os.ftruncate(handle, 0)
    os.write(handle, str(os.getpid()).encode())
    _held[key] = handle
    try:
        yield folder
    finally:
        del _held[key]
        os.close(handle)  # releases the lock


def check(config: RunConfig) -> None:
    """ConfigError (or RunFinished) before any work if the folder cannot take this run."""
    folder = folder_of(config)
    if not (folder / CHECKPOINT).exists():
        return
    if not config.resume:
        raise ConfigError(f"{folder} already holds a run: continue it with `fedprune run --resume {folder}`, or pick "
                          "another --name")
    round = last_round(folder)
    if round >= config.num_server_rounds and (folder / SUMMARY).exists():
        raise RunFinished(folder, round)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole (``fedprune.atomic``)."""
    with replacing(path, "w") as file:
        file.write(text)


def append_metrics(folder: Path, line: dict) -> None:
    with open(folder / METRICS, "a") as file:
        file.write(json.dumps(line) + "\n")


def read_metrics(folder: Path) -> list[dict]:
    """metrics.jsonl's lines; a torn last line (a crash mid-write) is dropped, a torn earlier one is an error."""
    path = folder / METRICS
    if not path.exists():
        return []
    raw = [line for line in path.read_text().splitlines() if line.strip()]
    lines = []
    for number, text in enumerate(raw, start=1):
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            if number == len(raw):
                break
            raise ConfigError(f"{path} line {number} is not JSON: the file was edited or damaged; restore it or "
                              "start the run again under another --name") from None
    return lines


def keep_metrics_until(folder: Path, round: int) -> list[dict]:
    """Drop metrics lines after ``round`` (a run killed between its log and its checkpoint) and a torn last line."""
    lines = [line for line in read_metrics(folder) if line["round"] <= round]
    write_atomic(folder / METRICS, "".join(json.dumps(line) + "\n" for line in lines))
    return lines


# --- the checkpoint ------------------------------------------------------------------------------

CHECKPOINT_FORMAT = 1
_WEIGHT = "weight/"


def save_checkpoint(folder: Path, round: int, weights: dict[str, np.ndarray], state: dict) -> Path:
    """Write the checkpoint after ``round`` atomically; returns its path."""
    path = Path(folder) / CHECKPOINT
    meta = json.dumps({"format": CHECKPOINT_FORMAT, "round": int(round), "state": state})
    arrays = {_WEIGHT + name: value for name, value in weights.items()}
    with replacing(path) as file:
        np.savez(file, meta=np.array(meta), **arrays)
    return path


def load_checkpoint(folder: Path) -> tuple[int, dict[str, np.ndarray], dict]:
    """(round, compact weights, coordinator state) of the run in ``folder``."""
    meta, weights = _read_checkpoint(folder, weights=True)
    return int(meta["round"]), weights, meta["state"]


def last_round(folder: Path) -> int:
    """The round the checkpoint in ``folder`` was written after."""
    return int(_read_checkpoint(folder, weights=False)[0]["round"])


def _read_checkpoint(folder: Path, weights: bool) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(folder) / CHECKPOINT
    fix = f"start the run again under another --name (or delete {folder})"
    if not path.exists():
        raise ConfigError(f"no {CHECKPOINT} in {folder}: the run never finished a round; {fix}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            arrays = {key[len(_WEIGHT):]: stored[key] for key in stored.files if weights and key.startswith(_WEIGHT)}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{path} is unreadable ({error}); {fix}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} has checkpoint format {meta.get('format')!r}; this fedprune reads "
                          f"{CHECKPOINT_FORMAT}: resume it with the fedprune that wrote it")
    return meta, arrays
