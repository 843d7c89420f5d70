"""`fedprune sweep CONFIG`: run a grid of simulations side by side and draw the privacy-utility frontier.

CONFIG is a TOML file with two tables: ``[base]``, run settings every cell shares (the kebab-case
``[tool.flwr.app.config]`` keys), and ``[grid]``, a list of values per setting; every combination
is a cell, one ``fedprune run`` in its own process. Every cell is checked (settings, and what
federated runs support) before any run starts. A cell's folder is named from its grid values
(``epsilon-per-decision-8__seed-0``) inside the sweep folder; a cell whose folder holds
summary.json is skipped, one with only a checkpoint resumes from it, so a killed sweep continues
where it stopped when started again. Finished cells give results.csv, frontier.png and report.md
(``simulations.sweep_report``).

Each run's Ray is given ``--cpus-per-run`` CPUs, so its clients train one per CPU, and ``--jobs``
cells (default: the cores divided by that) run at once. A cell's own output goes to its cell.log.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import sys
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from fedprune import run_folder
from fedprune.config import RunConfig, resolve
from fedprune.validation import ConfigError

OWNED = ("run-name", "output-dir", "resume")  # the sweep sets these for every cell
TABLES = ("base", "grid")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its folder name, its grid values and its full, checked settings."""

    name: str
    values: dict
    config: RunConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir) / self.name

    @property
    def done(self) -> bool:
        return (self.folder / run_folder.SUMMARY).exists()


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="TOML file with [base] settings and [grid] lists")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/sweep-<CONFIG's name>)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="cells run at once (default: cores // --cpus-per-run, at least 1)")
    parser.add_argument("--cpus-per-run", type=int, default=1,
                        help="CPUs one run's Ray uses: clients training at once (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="check the grid and list its cells; run nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="write results.csv, frontier.png and report.md from the finished cells; run nothing")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("runs") / f"sweep-{Path(args.config).stem}")
    cells = plan_cells(*load_grid(args.config), out)
    cpus = _at_least_one("--cpus-per-run", args.cpus_per_run)
    jobs = _at_least_one("--jobs", args.jobs if args.jobs is not None else max(1, (os.cpu_count() or 1) // cpus))
    given = [a for a in sys.argv[2:] if a != "--report-only"] if sys.argv[1:2] == ["sweep"] else \
        [str(args.config), "--out", str(out)]  # the command that runs the cells
    command = "fedprune sweep " + " ".join(shlex.quote(a) for a in given)
    if args.dry_run:
        for cell in cells:
            print(f"{'done' if cell.done else 'todo'}  {cell.name}")
        print(f"{len(cells)} cells, {sum(c.done for c in cells)} done; they would run {jobs} at once, "
              f"{cpus} CPU(s) each, in {out}")
        return 0
    if not args.report_only:
        from simulations.run import check_working_directory

        check_working_directory()  # every cell would fail on it, after starting Ray
    out.mkdir(parents=True, exist_ok=True)
    (out / run_folder.SWEEP_CONFIG).write_text(Path(args.config).read_text())
    failed = {} if args.report_only else run_cells(cells, jobs=jobs, cpus=cpus)
    from simulations import sweep_report

    paths = sweep_report.write(out, cells, command, failed)
    print(f"results in {paths['results']}, {paths['report']}" + (f", {paths['frontier']}" if paths["frontier"] else ""))
    return 1 if failed else 0


# --- the grid ------------------------------------------------------------------------------------

def load_grid(path: str | Path) -> tuple[dict, dict]:
    """([base] settings, [grid] lists) of a sweep file, with the file's mistakes named."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read the sweep file {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start}); save the sweep file as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML ({error}); write [base] key = value and [grid] key = [values]")
    extra = sorted(set(data) - set(TABLES))
    if extra:
        raise ConfigError(f"{path}: unknown table(s) or top-level key(s) {', '.join(extra)}; a sweep file has "
                          "[base] (settings every cell shares) and [grid] (a list of values per setting)")
    base, grid = data.get("base", {}), data.get("grid", {})
    for name, table in (("base", base), ("grid", grid)):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid setting {key} must be a non-empty list, e.g. {key} = "
                              f"[{json.dumps(values) if not isinstance(values, list) else '...'}]")
        if any(isinstance(v, (list, dict)) for v in values):
            raise ConfigError(f"{path}: grid setting {key} must list single values, got {values!r}")
        if len({json.dumps(v) for v in values}) < len(values):
            raise ConfigError(f"{path}: grid setting {key} repeats a value: {values!r}")
    both = sorted(set(base) & set(grid))
    if both:
        raise ConfigError(f"{path}: {', '.join(both)} in both [base] and [grid]; keep each setting in one of them")
    owned = sorted(set(OWNED) & (set(base) | set(grid)))
    if owned:
        raise ConfigError(f"{path}: {', '.join(owned)} are set by the sweep for every cell (its folder, "
                          "resuming); remove them and choose the folder with --out")
    return base, grid


def plan_cells(base: dict, grid: dict, out: Path) -> list[Cell]:
    """Every cell of the grid, each checked as a run would check it, before anything runs."""
    cells, names = [], {}
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        where = ", ".join(f"{k} = {v!r}" for k, v in values.items()) or "the base settings"
        try:
            config = resolve({**base, **values})
        except ConfigError as error:
            raise ConfigError(f"cell ({where}): {error}") from None
        name = cell_name({key: getattr(config, key.replace("-", "_")) for key in values})
        if name in names:
            raise ConfigError(f"cells ({names[name]}) and ({where}) resolve to the same settings; drop the duplicate "
                              "grid value")
        names[name] = where
        cell = Cell(name, values, config.replace(run_name=name, output_dir=str(out)))
        _check_previous(cell)
        cells.append(cell)
    return cells


def cell_name(values: dict) -> str:
    """A folder name from a cell's grid values: ``key-value`` pairs joined by ``__``, in grid order."""
    if not values:
        return "base"
    return "__".join(f"{key}-{_text(value)}" for key, value in values.items())


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-") or "empty"


def _check_previous(cell: Cell) -> None:
    """A cell folder left by an earlier sweep must hold a run of the same settings."""
    saved = cell.folder / run_folder.CONFIG
    if not saved.exists():
        return
    try:
        theirs = json.loads(saved.read_text())
    except ValueError as error:
        raise ConfigError(f"{saved} is unreadable ({error}); delete {cell.folder} to run the cell again") from None
    mine = cell.config.to_mapping()
    differ = sorted(k for k in mine if k not in OWNED and theirs.get(k) != mine[k])
    if differ:
        raise ConfigError(f"{cell.folder} holds a run with other settings ({', '.join(differ)}): this sweep changed; "
                          "pick another --out or delete the folder")


def _at_least_one(option: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be an integer >= 1, got {value!r}")
    return value


# --- running -------------------------------------------------------------------------------------

def run_cells(cells: list[Cell], *, jobs: int, cpus: int, progress=print) -> dict[str, str]:
    """Run the unfinished cells, ``jobs`` at once, each in a fresh process; returns {cell: error} of failures."""
    todo = [cell for cell in cells if not cell.done]
    done, total, failed = len(cells) - len(todo), len(cells), {}
    progress(f"sweep: {total} cells, {done} finished before, {len(todo)} to run, {min(jobs, len(todo) or 1)} at "
             f"once with {cpus} CPU(s) each")
    if not todo:
        return failed
    started = time.perf_counter()
    context = get_context("spawn")  # a fresh interpreter per cell: its own Ray, no state shared with this one
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context, max_tasks_per_child=1) as pool:
        pending = {pool.submit(run_cell, cell.config.to_mapping(), cpus): cell for cell in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    cell, done = pending.pop(future), done + 1
                    clock = _clock(time.perf_counter() - started)
                    try:
                        summary = future.result()
                    except Exception as error:  # one failed cell does not stop the others
                        failed[cell.name] = f"{type(error).__name__}: {error}"
                        progress(f"[{done}/{total}] {cell.name}  FAILED: {failed[cell.name]} (see "
                                 f"{cell.folder / run_folder.CELL_LOG})  elapsed {clock}")
                        continue
                    progress(f"[{done}/{total}] {cell.name}  accuracy {summary['final_accuracy']:.4f}  "
                             f"{describe_epsilon(summary)}  run {summary['wall_seconds']:.0f} s  elapsed {clock}")
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return failed


def run_cell(settings: dict, cpus: int) -> dict:
    """One cell in a worker process: ``fedprune run`` with these settings; its output goes to cell.log."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    config = resolve(settings)
    folder = Path(config.output_dir) / config.run_name
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / run_folder.CELL_LOG, "a", buffering=1)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)  # Ray's and Flower's processes inherit these
    if (folder / run_folder.CHECKPOINT).exists():
        config = config.replace(resume=True)  # a killed cell continues from its last round
    from simulations.run import simulate

    summary = simulate(config, progress=print, num_cpus=cpus)
    log.flush()
    return summary


def describe_epsilon(summary: dict) -> str:
    """The client-level epsilon a progress line shows: end to end, else the mask channel's, else none."""
    end, mask = summary["epsilon"].get("client"), summary["mask_channel_epsilon"].get("client")
    if end is not None:
        return f"eps(client) {end:.4g}"
    if mask is not None and summary.get("method") == "votes":
        return f"eps(client) none, mask channel {mask:.4g}"
    return "eps(client) none" + (" (exact votes)" if summary.get("method") == "votes" else "")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"
