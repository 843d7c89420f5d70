"""The `fedprune` command line: one subcommand per job.

Subcommand modules are imported only when chosen, so ``fedprune infer`` on a device loads
fedprune alone (no Flower, Ray or matplotlib).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fedprune.validation import ConfigError

# name -> (module, help); each module has add_parser(parser) and run(args)
COMMANDS = {
    "run": ("simulations.run", "run a federated private pruning simulation (the main job)"),
    "centralized": ("simulations.centralized", "train dense, prune, fine-tune and report (the centralized baseline)"),
    "budget": ("simulations.budget",
               "plan a privacy budget: the per-report setting that spends it exactly, and the error it leaves"),
    "sweep": ("simulations.sweep", "run a grid of simulations and draw the privacy-utility frontier"),
    "export": ("simulations.export",
               "write a run's pruned model to one .fpm file: compressed weights, kernel paths, privacy report"),
    "infer": ("simulations.infer", "predictions and latency of an exported .fpm model, with fedprune alone"),
    "bench": ("simulations.bench", "measure kernels: dense, torch CSR and the chosen sparse path side by side"),
    "analyze": ("simulations.analyze",
                "per-class and per-client accuracy gaps and the Lipschitz bound of runs' final models"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported to describe its options."""
    parser = argparse.ArgumentParser(
        prog="fedprune", description="Federated private pruning: simulations, baselines and tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help) in COMMANDS.items():
        child = sub.add_parser(name, help=help)
        if name == chosen:
            loaded = importlib.import_module(module)
            child.description = loaded.__doc__
            loaded.add_parser(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args) or 0
    except ConfigError as err:
        print(f"fedprune {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
