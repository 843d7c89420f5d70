"""`fedprune budget --preset NAME [--set KEY=VALUE ...] [--epsilon E]`: a run's end-to-end figures before it runs.

The run's settings (a preset, then the given ones, resolved as `fedprune run` resolves them) are
charged round by round to the ledger the run keeps (``fedprune.federated.forecast``): the figure
per unit, the trust model and whom it holds against, and each channel's. With ``--epsilon E`` the
noise multiplier is first searched so that the run spends at most E in its unit.
"""

from __future__ import annotations

import argparse
import json

from fedprune import presets
from fedprune.config import resolve
from fedprune.validation import ConfigError
from simulations.reporting import markdown_table
from simulations.run import parse_sets

# the plan's options (simulations.budget) that a forecast reads from the run's settings instead
PLAN_OPTIONS = {"delta": 1e-5, "unit": "client", "mechanism": None, "length": None, "kept": None,
                "sparsity": None, "clients": None, "pruning_events": None, "sparsities": None, "regrowth": False,
                "rounds": None, "weight_noise": "clear", "sample_size": None, "frequency": None, "agreement": 0.8,
                "coarse_length": None, "no_suggestions": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, choices=list(presets.PRESETS), metavar="PRESET",
                        help="forecast a run of this preset (with --set overrides): its end-to-end figures per unit, "
                             f"before it runs; {', '.join(presets.PRESETS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --preset: any run setting, as `fedprune run --set` (repeatable)")


def wanted(args: argparse.Namespace) -> bool:
    return args.preset is not None or bool(args.set)


def run(args: argparse.Namespace) -> int:
    from fedprune.federated.forecast import calibrate, forecast

    given = [option for option, default in PLAN_OPTIONS.items() if getattr(args, option) != default]
    if given:
        names = ", ".join("--" + option.replace("_", "-") for option in given)
        raise ConfigError(f"{names} do(es) not apply to a forecast, which takes the run's settings: set them with "
                          "--set KEY=VALUE (e.g. --set delta=1e-6)")
    config = resolve({"preset": args.preset or "none", **parse_sets(args.set)})
    calibrated = ""
    if args.epsilon is not None:
        noise = calibrate(config, args.epsilon)
        config = config.replace(noise_multiplier=noise)
        calibrated = (f"noise-multiplier {noise:g} spends at most eps {args.epsilon:g} ({config.unit} level): run it "
                      f"with --set noise-multiplier={noise:g}")
    statement = forecast(config)
    if args.json:
        print(json.dumps({**statement, "noise_multiplier": config.noise_multiplier}, indent=2))
    else:
        print(format_forecast(args.preset or "none", config, statement, calibrated))
    return 0


def format_forecast(name: str, config, statement: dict, calibrated: str = "") -> str:
    rows = [[unit, "none: " + "; ".join(f["why_none"]) if f["epsilon"] is None else f"{f['epsilon']:.4g}",
             f["trust_model"], f["holds_against"]] for unit, f in statement["end_to_end"].items()]
    channels = [[name_, *(f"{c[u]['trust_model']}" for u in ("record", "client"))]
                for name_, c in statement["channels"].items()]
    sampling = statement["client_sampling"]
    return "\n".join([
        f"# Forecast: preset {name}, {config.num_server_rounds} rounds, {config.num_clients} clients, "
        f"delta {config.delta:g}, noise multiplier {config.noise_multiplier:g}",
        *(["", calibrated] if calibrated else []),
        "", f"Unit of the run's budget and progress line: {config.unit}. Client sampling: {sampling['meaning']}.",
        "", markdown_table(["unit", "epsilon end to end", "trust model", "holds against"], rows),
        "", markdown_table(["channel", "record level", "client level"], channels),
    ])
