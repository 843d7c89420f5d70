"""A run folder: owned by one process, its files written whole, a finished run told apart from one to resume.

``owned(config)`` checks the folder before any work (a finished run, a name already taken, an
unwritable output folder, another process running in it: each a ConfigError naming the fix),
creates it and holds an exclusive lock on ``.lock`` (``fcntl.flock``) until the block ends; the
lock dies with the process, so a killed run leaves nothing to clean up. A process may re-enter a
folder it already owns (``fedprune run`` claims it before the engine starts, the ServerApp again).

Files are replaced atomically (``write_atomic``: a temporary file, then ``os.replace``);
metrics.jsonl is appended a line at a time, so a crash can tear only its last line, which
``read_metrics`` drops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from fedprune.atomic import replacing
from fedprune.config import RunConfig
from fedprune.validation import ConfigError
from server import checkpoint

CONFIG, METRICS, SUMMARY, REPORT, LOCK = "config.json", "metrics.jsonl", "summary.json", "report.md", ".lock"
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
    if not (folder / checkpoint.FILE).exists():
        return
    if not config.resume:
        raise ConfigError(f"{folder} already holds a run: continue it with `fedprune run --resume {folder}`, or pick "
                          "another --name")
    round = checkpoint.last_round(folder)
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
