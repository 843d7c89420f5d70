"""The commands README.md and docs/ show are real: every `fedprune ...` one parses with the real CLI, and the
quick ones run exactly as written. (CI runs the README's two quick-start commands verbatim.)"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from simulations.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `fedprune` command in a code span or a bash block, shell variables expanded."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for span in re.findall(r"`(fedprune [^`]+)`", text):
            found.append((f"{path.name}: {span}", shlex.split(span)[1:]))
        for block in blocks(text):
            variables = {}
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                assignment = re.fullmatch(r'([A-Z_]+)="([^"]*)"', line)
                if assignment:
                    variables[assignment[1]] = assignment[2]
                elif line.startswith("fedprune "):
                    expanded = re.sub(r"\$([A-Z_]+)", lambda m: variables[m[1]], line)
                    found.append((f"{path.name}: {line}", shlex.split(expanded)[1:]))
    return found


@pytest.mark.parametrize("where, argv", commands(), ids=[where for where, _ in commands()])
def test_every_documented_fedprune_command_parses(where, argv):
    if argv[0] not in COMMANDS:
        assert argv[0].isupper(), f"{where}: unknown command {argv[0]!r}"  # a placeholder such as COMMAND
        return
    if len(argv) == 1 and argv[0] != "run":
        return  # the command named in prose (`fedprune analyze`), not a command line
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"{where}: the CLI refuses it (exit {error.code})")


RUNS = [(where, argv) for where, argv in commands() if argv[:1] == ["run"] and len(argv) > 1 and "--resume" not in argv
        and not any(re.fullmatch(r"[A-Z_]+", arg) for arg in argv)]  # placeholders (E, RUN_DIR) are not settings


@pytest.mark.parametrize("where, argv", RUNS, ids=[where for where, _ in RUNS])
def test_every_documented_fedprune_run_resolves_to_valid_settings(where, argv):
    from simulations.run import config_from_args

    config_from_args(build_parser(argv).parse_args(argv))  # a ConfigError here: the documented run would exit 2


def test_the_budget_plans_of_experiments_md_run_as_written(tmp_path):
    block = next(b for b in blocks((REPO / "docs" / "EXPERIMENTS.md").read_text()) if "fedprune budget" in b)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("# Budget plan: epsilon 8") == block.count("fedprune budget")
