"""Measuring kernels on this machine: interleaved timing, medians, and the per-batch choice.

The choice is measured, not guessed: every candidate path (dense always) runs on the same
input, the paths taking turns call by call so that drifting load and cache state hit all of
them alike, and the median of each path's calls decides. Dense is a candidate, so the choice
is never slower than dense as measured.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedprune.deploy.kernels.paths import build, candidates
from fedprune.validation import ConfigError, positive


@dataclass(frozen=True)
class Calibration:
    """choice: batch size -> fastest path; timings: path -> batch size -> median seconds."""

    choice: dict[int, str]
    timings: dict[str, dict[int, float]]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch (and so every kernel) on ``threads`` threads, then restore."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def interleaved(calls: Mapping[str, Callable[[], object]], *, budget_s: float,
                min_rounds: int = 3, max_rounds: int = 200) -> dict[str, list[float]]:
    """Seconds of each call over rounds in which every call runs once, order rotating per round.

    One warm-up call each (not timed) sizes the rounds to ``budget_s`` in all, within
    [min_rounds, max_rounds].
    """
    names = list(calls)
    start = time.perf_counter()
    for name in names:
        calls[name]()
    warmup = time.perf_counter() - start
    rounds = int(min(max_rounds, max(min_rounds, budget_s / max(warmup, 1e-9))))
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            begin = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - begin)
    return seconds


def _batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(batch_sizes) if not isinstance(batch_sizes, (str, bytes)) else ()
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes must be a non-empty sequence of positive integers, got {batch_sizes!r}")
    return tuple(dict.fromkeys(sizes))


def calibrate(weight, batch_sizes: Sequence[int] = (1, 64), threads: int = 1,
              budget_s: float = 0.2) -> Calibration:
    """Time every candidate path of ``weight`` at each batch size on this machine; pick the fastest.

    ``budget_s`` is split over the batch sizes; each path runs at least 5 timed calls per size
    (a median of fewer is at the mercy of one interruption), so a large layer can take longer.
    Torch's thread count is set to ``threads`` and restored.
    """
    sizes = _batch_sizes(batch_sizes)
    budget_s = positive("budget_s", budget_s)
    kernels = {path: build(path, weight) for path in candidates(weight)}
    width = next(iter(kernels.values())).shape[1]
    generator = torch.Generator().manual_seed(0)
    choice: dict[int, str] = {}
    timings: dict[str, dict[int, float]] = {path: {} for path in kernels}
    with torch_threads(threads), torch.no_grad():
        for batch in sizes:
            x = torch.randn(batch, width, generator=generator)
            calls = {path: (lambda kernel=kernel: kernel(x)) for path, kernel in kernels.items()}
            seconds = interleaved(calls, budget_s=budget_s / len(sizes), min_rounds=5)
            for path, values in seconds.items():
                timings[path][batch] = statistics.median(values)
            # dense first in candidates: a tie keeps dense
            choice[batch] = min(kernels, key=lambda path: timings[path][batch])
    return Calibration(choice=choice, timings=timings)
