"""Accuracy against end-to-end epsilon for one preset: `python -m simulations.preset_frontier PRESET`.

For each budget the noise multiplier that spends it (``fedprune budget --preset P --epsilon E``) is
searched on the run's own ledger, then ``fedprune run --preset P --set noise-multiplier=Z --seed S``
runs (with the settings ``--tune EPS:KEY=VALUE`` gives that budget, e.g. a smaller step where the noise is
larger); beside them, on the same population and local training, dense non-private FedAvg and the
preset's pruning without privacy. ``--set KEY=VALUE`` runs a variant of the preset (another model, more
clients, more rounds): the setting goes into every run, the baselines' own training settings excepted. Writes
``OUT/frontier-PRESET.json``, ``OUT/frontier-PRESET.png`` and ``OUT/frontier-PRESET.md`` (a table, each row
with its command). Runs already finished with the same settings are reused; a folder holding a run of other
settings stops the script before it runs anything more.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from fedprune import presets
from fedprune.config import resolve
from fedprune.federated.forecast import calibrate
from fedprune.validation import ConfigError
from simulations.reporting import markdown_table


def cells(name: str, budgets: list[float], seeds: list[int], tuned: dict[float, dict[str, str]] | None = None,
          variant: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    """(label, settings) of every run: the private ones at each budget (with ``tuned[budget]``'s settings, the
    noise found on their own ledger), then the two non-private baselines; ``variant``'s settings in every one."""
    out, variant = [], variant or {}
    for budget in budgets:
        given = (tuned or {}).get(budget, {})
        noise = calibrate(resolve({"preset": name, **variant, **given}), budget)
        label = f"eps {budget:g}" + "".join(f", {key} {value}" for key, value in given.items())
        out += [(label, {**variant, "noise-multiplier": noise, **given, "seed": seed}) for seed in seeds]
    config, preset = resolve({"preset": name, **variant}), presets.get(name)
    for label, method in (("dense, non-private", "dense"), ("pruned, non-private", config.method)):
        changed = {key: value for key, value in preset.non_private(method, variant).items()
                   if preset.settings.get(key) != value}
        out += [(label, {**changed, "seed": seed}) for seed in seeds]
    return out


def command(name: str, settings: dict) -> list[str]:
    """The cell's `fedprune run` (its folder and --quiet are added where it runs)."""
    sets = [arg for key, value in settings.items() if key != "seed" for arg in ("--set", f"{key}={value}")]
    return ["fedprune", "run", "--preset", name, "--seed", str(settings["seed"]), *sets, "--set", "privacy-seed=0"]


def reusable(folder: Path, shown: list[str]) -> bool:
    """Whether ``folder`` holds a finished run of ``shown``; SystemExit if it holds a run of other settings."""
    from simulations.cli import build_parser as run_parser
    from simulations.run import config_from_args

    if not (folder / "summary.json").exists():
        return False
    where = {"run-name", "output-dir"}
    wanted = config_from_args(run_parser(shown[1:]).parse_args(shown[1:])).to_mapping()
    wanted = {key: value for key, value in json.loads(json.dumps(wanted)).items() if key not in where}
    stored = {key: value for key, value in json.loads((folder / "config.json").read_text()).items() if key not in where}
    differ = sorted(key for key in wanted.keys() | stored.keys() if wanted.get(key) != stored.get(key))
    if differ:
        raise SystemExit(f"{folder} holds a run of other settings ({', '.join(differ)} differ from "
                         f"`{shlex.join(shown)}`): move it away or give another --out")
    return True


def parse_set(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` options as {key: value}; SystemExit for one without a value."""
    variant = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        variant[key.strip()] = value.strip()
    return variant


def parse_tune(items: list[str], budgets: list[float]) -> dict[float, dict[str, str]]:
    """``--tune EPS:KEY=VALUE`` options as {budget: settings}; SystemExit for a budget the frontier does not run."""
    tuned: dict[float, dict[str, str]] = {}
    for item in items:
        budget, _, setting = item.partition(":")
        key, equals, value = setting.partition("=")
        try:
            budget_ = float(budget)
        except ValueError:
            budget_ = None
        if not equals or budget_ not in budgets:
            raise SystemExit(f"--tune takes EPS:KEY=VALUE with EPS one of --budgets "
                             f"({', '.join(f'{b:g}' for b in budgets)}), got {item!r}")
        tuned.setdefault(budget_, {})[key.strip()] = value.strip()
    return tuned


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations.preset_frontier", description=__doc__)
    parser.add_argument("preset", choices=[p for p, preset in presets.PRESETS.items() if preset.settings])
    parser.add_argument("--budgets", default="1,2,4,8", help="end-to-end epsilons in the preset's unit")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--tune", action="append", default=[], metavar="EPS:KEY=VALUE",
                        help="a setting for the runs at one budget, e.g. --tune 1:learning-rate=1 (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="a setting for every run, a variant of the preset, e.g. --set model=cnn1d (repeatable)")
    parser.add_argument("--out", default="runs/frontier")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset, out = presets.get(args.preset), Path(args.out)
    budgets, variant = [float(b) for b in args.budgets.split(",")], parse_set(args.settings)
    try:
        resolve({"preset": args.preset, **variant})
    except ConfigError as error:  # a key or value the runs would refuse, before anything runs
        raise SystemExit(f"--set: {error}") from None
    try:
        planned = cells(args.preset, budgets, [int(s) for s in args.seeds.split(",")], parse_tune(args.tune, budgets),
                        variant)
    except ConfigError as error:
        raise SystemExit(f"--tune: {error}") from None
    runs = [(label, settings, command(args.preset, settings),
             out / f"{args.preset}-{label.replace(' ', '').replace(',', '-')}-seed{settings['seed']}")
            for label, settings in planned]
    done = [reusable(folder, shown) for _, _, shown, folder in runs]  # every folder checked before any run
    rows = []
    for (label, settings, shown, folder), finished in zip(runs, done):
        if not finished:
            argv_ = [*shown, "--name", folder.name, "--out", str(folder.parent), "--quiet"]
            print("$", shlex.join(argv_), flush=True)
            subprocess.run(argv_, check=True)
        summary = json.loads((folder / "summary.json").read_text())
        rows.append({"label": label, "command": shlex.join(shown), "seed": settings["seed"],
                     "accuracy": summary["final_accuracy"], "density": summary["density"],
                     "epsilon": summary["epsilon"][preset.unit], "seconds": summary["wall_seconds"],
                     "trust_model": summary["privacy"]["end_to_end"][preset.unit]["trust_model"]})
    (out / f"frontier-{args.preset}.json").write_text(json.dumps(rows, indent=2))
    plot(out / f"frontier-{args.preset}.png", preset, rows, variant)
    (out / f"frontier-{args.preset}.md").write_text(table(preset, rows))
    print(table(preset, rows))
    return 0


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    return groups


def table(preset, rows: list[dict]) -> str:
    lines = []
    for label, members in _groups(rows).items():
        accuracy = [m["accuracy"] for m in members]
        eps = [m["epsilon"] for m in members]
        lines.append([label, f"{statistics.fmean(accuracy):.4f} ± {statistics.pstdev(accuracy):.4f}",
                      " / ".join(f"{a:.4f}" for a in accuracy),
                      "none" if None in eps else f"{max(eps):.3f}", members[0]["trust_model"],
                      f"{statistics.fmean(m['density'] for m in members):.3f}",
                      f"{statistics.fmean(m['seconds'] for m in members):.0f}", f"`{members[0]['command']}`"])
    return markdown_table(["runs", "accuracy (mean ± sd)", "per seed", f"ε, {preset.unit} level, end to end",
                           "trust model", "density", "s per run", "command (seed 0)"], lines) + "\n"


def plot(path: Path, preset, rows: list[dict], variant: dict[str, str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    private = [(statistics.fmean(m["epsilon"] for m in ms), statistics.fmean(m["accuracy"] for m in ms),
                statistics.pstdev(m["accuracy"] for m in ms), label) for label, ms in _groups(rows).items()
               if ms[0]["epsilon"] is not None]
    private.sort()
    variant = variant or {}
    density = 1 - resolve({"preset": preset.name, **variant}).target_sparsity
    count = len({m["seed"] for m in rows})
    seeds = f"{count} seed{'s' if count > 1 else ''}"
    axis.errorbar([p[0] for p in private], [p[1] for p in private], yerr=[p[2] for p in private], marker="o",
                  capsize=3, label=f"{preset.name}, private, density {density:g} ({seeds})")
    for eps, accuracy, _, label in private:  # a tuned budget names its settings beside its point
        if ", " in label:
            axis.annotate(label.split(", ", 1)[1], (eps, accuracy), xytext=(6, -10), textcoords="offset points",
                          fontsize=7)
    for (label, members), style in zip(((k, v) for k, v in _groups(rows).items() if v[0]["epsilon"] is None),
                                       ("--", ":")):
        axis.axhline(statistics.fmean(m["accuracy"] for m in members), linestyle=style, color="k", label=label)
    axis.set_xscale("log")
    axis.set_xticks([p[0] for p in private], [f"{p[0]:.3g}" for p in private])
    axis.minorticks_off()
    axis.set_xlabel(f"ε end to end, {preset.unit} level ({preset.trust_model} trust model), δ = 1e-5")
    axis.set_ylabel("final test accuracy (mean ± sd over seeds)")
    title = f"preset {preset.name}: {preset.unit} level, {preset.trust_model} trust model"
    if variant:  # wrapped between settings, never inside one
        title += "\n" + textwrap.fill(", ".join(f"{key}={value}" for key, value in variant.items()), 80,
                                      break_on_hyphens=False)
    axis.set_title(title, fontsize=8 if variant else 9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
