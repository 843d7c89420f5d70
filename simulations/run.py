"""`fedprune run`: a federated private pruning simulation on Flower's simulation engine.

Settings are the ``[tool.flwr.app.config]`` keys (``fedprune run --help`` lists the common
ones; ``--set KEY=VALUE`` reaches every key). They are checked before the engine starts.
Results go to ``runs/NAME/``: config.json, metrics.jsonl, summary.json, report.md, PNG plots
and checkpoint.npz; ``--resume runs/NAME`` continues a killed run from its last round.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from fedprune import presets, run_folder
from fedprune.config import MODE_DEFAULTS, RunConfig, resolve
from fedprune.validation import ConfigError

WORKER = "FEDPRUNE_RUN_WORKER"  # the resolved settings, in the environment of the supervised child
CODE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding fedprune/, clients/, server/, simulations/
PACKAGES = ("fedprune", "clients", "server", "simulations")
SHORTCUTS = {  # option -> config key
    "rounds": "num-server-rounds", "clients": "num-clients", "dataset": "dataset", "model": "model",
    "sparsity": "target-sparsity", "method": "method", "mechanism": "mechanism",
    "epsilon": "epsilon-per-decision", "weight_channel": "weight-channel", "mode": "mode", "seed": "seed",
    "name": "run-name", "out": "output-dir",
}


def add_parser(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig().to_mapping()
    parser.add_argument("--preset", default=None, choices=list(presets.PRESETS), metavar="PRESET",
                        help=f"a trust model's settings, which the other options override: "
                             f"{', '.join(presets.PRESETS)} (default {presets.MAIN}; none for another mode or "
                             "--resume)")
    for option, key in SHORTCUTS.items():
        parser.add_argument(f"--{option.replace('_', '-')}", dest=option, default=None, metavar=key.upper(),
                            help=f"sets {key} (default: the preset's if it sets it, else {_default(key, defaults)})")
    parser.add_argument("--dense-baseline", action="store_true", help="also train dense FedAvg (same seed, rounds)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any [tool.flwr.app.config] key, e.g. --set dirichlet-alpha=0.1 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its last finished round, with its config.json")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _default(key: str, defaults: dict) -> str:
    name = key.replace("-", "_")
    if name in MODE_DEFAULTS["default"]:  # mode-dependent: say so
        return "the mode's: " + ", ".join(f"{values[name]!r} in {mode}" for mode, values in MODE_DEFAULTS.items())
    return repr(defaults[key])


def config_from_args(args: argparse.Namespace) -> RunConfig:
    settings: dict[str, object] = {}
    if args.resume:
        folder = Path(args.resume)
        try:
            settings.update(json.loads((folder / run_folder.CONFIG).read_text()))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read {folder / run_folder.CONFIG} to resume: {error}") from None
        settings.update({"run-name": folder.name, "output-dir": str(folder.parent), "resume": True})
    for option, key in SHORTCUTS.items():
        if getattr(args, option) is not None:
            settings[key] = getattr(args, option)
    if args.dense_baseline:
        settings["dense-baseline"] = True
    settings.update(parse_sets(args.set))
    settings["preset"] = args.preset or ("none" if args.resume or settings.get("mode", "default") != "default"
                                         else presets.MAIN)
    return resolve(settings)


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` options as settings (resolve() checks the keys and values)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    return settings


def check_working_directory() -> None:
    """ConfigError if the working directory holds a module or package named like one of ours (a Flower example's
    ``server.py``, say): Ray puts the working directory first on its workers' path, so the simulated clients would
    import that in place of fedprune's own and every client would fail."""
    here = Path.cwd().resolve()
    shadows = [path.name for package in PACKAGES for path in (here / package, here / f"{package}.py")
               if (path.is_file() or (path / "__init__.py").is_file())
               and path.resolve() != (CODE_ROOT / package).resolve()]
    if shadows:
        raise ConfigError(f"the working directory {here} holds {', '.join(shadows)}, which Flower's simulation "
                          "workers would import in place of fedprune's own (Ray puts the working directory first on "
                          "their path); run fedprune from another directory (--out says where results go), or, if "
                          "this is a copy of fedprune's source, install that copy with pip install -e .")


def simulate(settings: RunConfig | Mapping[str, object], progress=print, num_cpus: int | None = None) -> dict:
    """Run ``settings`` (a RunConfig or kebab-case keys, resolved here) on Flower's simulation engine,
    one virtual SuperNode per client.

    ``num_cpus``: CPUs Ray may use (default all), so clients train one per CPU.
    """
    from fedprune.federated.local import check_data, data_notice

    config = run_folder.with_name(resolve(settings))
    check_working_directory()
    notice = data_notice(config)
    if notice:
        progress(notice)
    check_data(config)
    try:
        with run_folder.owned(config):  # checked, created and locked before the engine starts
            return _simulate(config, progress, num_cpus)
    except run_folder.RunFinished as finished:
        progress(str(finished))
        return json.loads((finished.folder / run_folder.SUMMARY).read_text())


def _simulate(config: RunConfig, progress, num_cpus: int | None) -> dict:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    import clients.app
    import server.app
    from server.driver import run_federation

    outcome: dict = {}

    def run_and_keep(grid, conf, show):
        outcome["summary"] = run_federation(grid, conf, show)

    server_app = server.app.make_app(config, progress, runner=run_and_keep)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server_app, client_app=clients.app.app, num_supernodes=config.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False}},
    )
    if "summary" not in outcome:
        raise RuntimeError("the simulation ended without a result; see the log above for the ServerApp's error")
    return outcome["summary"]


def run(args: argparse.Namespace) -> int:
    """Check the settings and the run folder here (exit 2 before any work), then run the job supervised."""
    from simulations.supervise import supervise

    progress = (lambda line: None) if args.quiet else print
    if WORKER in os.environ:  # the supervised child: the settings were resolved by the supervisor
        return _report(simulate(resolve(json.loads(os.environ[WORKER])), progress=progress))
    config = run_folder.with_name(config_from_args(args))  # resolved and checked: exit 2 before any work
    check_working_directory()
    try:
        run_folder.check(config)
    except run_folder.RunFinished as finished:
        print(finished)
        return 0
    folder = run_folder.folder_of(config)
    command = [sys.executable, "-m", "simulations.cli", "run"] + (["--quiet"] if args.quiet else [])
    return supervise(command, {**os.environ, WORKER: json.dumps(config.to_mapping())},
                     on_stop=lambda: f"the run stopped; its last finished round is kept in {folder}. Continue it with "
                                     f"`fedprune run --resume {folder}`")


def _report(summary: dict) -> int:
    from server.report import number

    print(f"final accuracy {summary['final_accuracy']:.4f}  density {summary['density']:.3f}")
    for unit, figure in summary["privacy"]["end_to_end"].items():
        shown = (f"{number(figure['epsilon'])} at delta {summary['delta']:g}, {figure['trust_model']} trust model: "
                 f"holds against {figure['holds_against']}" if figure["epsilon"] is not None
                 else f"none ({'; '.join(figure['why_none'])})")
        print(f"epsilon, {unit} level, end to end: {shown}")
    mask = summary["privacy"]["channels"].get("mask", {}).get("epsilon")
    if mask is not None and summary["epsilon"]["client"] is None and mask["client"] is not None:
        print(f"  (the mask channel alone, client level: {number(mask['client'])})")
    print(f"results in {summary['run_dir']}")
    return 0
