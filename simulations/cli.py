"""The `fedprune` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys

from fedprune.validation import ConfigError
from simulations import budget, centralized, run

COMMANDS = {"run": run, "centralized": centralized, "budget": budget}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedprune", description="Federated private pruning: simulations, baselines and tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except ConfigError as err:
        print(f"fedprune {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
