"""`python -m simulations.experiments_report`: the tables and frontier plots of docs/EXPERIMENTS.md.

Reads the run folders the experiment sweeps left (``simulations/sweeps/experiments-*.toml``, run
with the command in each file's first line), runs ``fedprune analyze`` on the seed-0 runs that
have no analysis.json yet, draws one privacy-utility frontier per dataset (accuracy against
client-level epsilon: the mask channel's where weights travel in the clear, end to end where they
are noised; runs without privacy as horizontal lines) and prints the Markdown tables: results (accuracy,
density, epsilon per unit end to end and of the mask channel, upload bytes, wall time, command)
and group gaps with the Lipschitz bound. Runs still missing are listed, not silently dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from fedprune import run_folder
from simulations.reporting import markdown_table
from simulations.sweep_report import flatten

SWEEPS = {
    "mnist1d": ["experiments-mnist1d-baselines", "experiments-mnist1d-votes", "experiments-mnist1d-votes-seeds",
                "experiments-mnist1d-control", "experiments-mnist1d-channels", "experiments-mnist1d-dp"],
    "digits": ["experiments-digits-baselines", "experiments-digits-votes", "experiments-digits-control",
               "experiments-digits-channels", "experiments-digits-dp"],
}
SWEEP_FILES = Path("simulations/sweeps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="folder holding the sweep folders (default runs)")
    parser.add_argument("--img", default="docs/img", help="where the frontier PNGs go (default docs/img)")
    parser.add_argument("--no-analyze", action="store_true", help="use existing analysis.json files only")
    args = parser.parse_args(argv)
    for dataset, sweeps in SWEEPS.items():
        rows = [row for sweep in sweeps for row in load_rows(Path(args.runs), sweep)]
        if not args.no_analyze:
            analyze_missing(rows)
        print(f"## {dataset}\n")
        print(results_table(rows) + "\n")
        print(analysis_table(rows) + "\n")
        missing = missing_cells(Path(args.runs), sweeps)
        if missing:
            print("missing (not finished): " + ", ".join(missing) + "\n")
        if rows:
            Path(args.img).mkdir(parents=True, exist_ok=True)
            print(f"frontier: {plot_frontier(Path(args.img) / run_folder.frontier_name(dataset), rows, dataset)}\n")
    return 0


def sweep_command(sweep: str) -> str:
    """The command in the sweep file's first line (each experiments file starts with it)."""
    first = (SWEEP_FILES / f"{sweep}.toml").read_text().splitlines()[0]
    return first.removeprefix("#").strip()


def load_rows(root: Path, sweep: str) -> list[dict]:
    """One row per finished run of a sweep: settings (config.*), flattened summary, analysis if any."""
    rows = []
    for folder in sorted((root / sweep).glob(f"*/{run_folder.SUMMARY}")):
        folder = folder.parent
        config = json.loads((folder / run_folder.CONFIG).read_text())
        row = {"sweep": sweep, "cell": folder.name, "folder": folder, **{f"config.{k}": v for k, v in config.items()}}
        row.update(flatten(json.loads((folder / run_folder.SUMMARY).read_text())))
        analysis = folder / run_folder.ANALYSIS
        row["analysis"] = json.loads(analysis.read_text()) if analysis.exists() else None
        rows.append(row)
    return rows


def missing_cells(root: Path, sweeps: list[str]) -> list[str]:
    from simulations.sweep import load_grid, plan_cells

    out = []
    for sweep in sweeps:
        cells = plan_cells(*load_grid(SWEEP_FILES / f"{sweep}.toml"), root / sweep)
        out += [f"{sweep}/{cell.name}" for cell in cells if not cell.done]
    return out


def analyze_missing(rows: list[dict]) -> None:
    from simulations.analyze import analyze_run

    for row in rows:
        if row["analysis"] is None and row["config.seed"] == 0:
            row["analysis"] = analyze_run(row["folder"])


def label(row: dict) -> str:
    """The row's name in the tables: method, and for votes the structure and epsilon per decision."""
    if row["config.method"] == "dense":
        return "dense FedAvg"
    if row["config.method"] == "server-magnitude":
        if row["config.weight-channel"] != "clear":
            channel, noise = row["config.weight-channel"], row["config.noise-multiplier"]
            return f"server magnitude + DP weights ({channel}, z={noise:g})"
        return "server magnitude (no reports)"
    kind = "channel votes" if row["config.structure"] == "units" else "weight votes"
    eps = row["config.epsilon-per-decision"]
    return f"{kind}, exact (eps inf)" if eps is None or eps == math.inf or eps == "inf" else f"{kind}, RR eps {eps:g}"


def _eps(value) -> str:
    return "null" if value in (None, "") else f"{value:.4g}"


def results_table(rows: list[dict]) -> str:
    """One line per setting: the seed-0 run's figures, accuracy over seeds where there are more."""
    lines = []
    for name, members in _groups(rows).items():
        first = min(members, key=lambda r: r["config.seed"])
        accuracies = [r["final_accuracy"] for r in members]
        spread = f"{statistics.fmean(accuracies):.4f} ± {statistics.stdev(accuracies):.4f} ({len(accuracies)})" \
            if len(accuracies) > 1 else "-"
        lines.append([
            name, f"{first['final_accuracy']:.4f}", spread, f"{first['density']:.3f}",
            f"{_eps(first.get('epsilon.record'))} / {_eps(first.get('epsilon.client'))}",
            f"{_eps(first.get('mask_channel_epsilon.record'))} / {_eps(first.get('mask_channel_epsilon.client'))}",
            first.get("mechanism.hamming_bound") or "-",
            f"{first['upload_bytes_per_client_round']:.0f}", f"{first['wall_seconds']:.0f}",
            f"`{sweep_command(first['sweep'])}` cell `{first['cell']}`"])
    return markdown_table(["setting", "accuracy (seed 0)", "mean ± sd (seeds)", "density",
                           "eps end to end, record / client", "eps mask channel, record / client", "Delta",
                           "upload B per client-round", "wall s", "command"], lines)


def mask_iou(a: dict, b: dict) -> float:
    """Intersection over union of two global masks' kept weights."""
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either if either else 1.0


def analysis_table(rows: list[dict]) -> str:
    """Group gaps and Lipschitz bound of the seed-0 runs, dense first, with each final mask's IoU against
    the server-magnitude run's (same seed, so the same training up to the first pruning event)."""
    from simulations.run_files import load_run

    reference = next((load_run(r["folder"]).masks for r in rows if r["config.method"] == "server-magnitude"
                      and r["config.weight-channel"] == "clear" and r["config.seed"] == 0), None)
    lines = []
    for row in sorted(rows, key=_order):
        a = row["analysis"]
        if a is None or row["config.seed"] != 0:
            continue
        comparable = reference is not None and row["config.method"] != "dense" and row["config.structure"] != "units"
        iou = f"{mask_iou(load_run(row['folder']).masks, reference):.3f}" if comparable else "-"
        lines.append([label(row), f"{a['accuracy']:.4f}", f"{a['density']:.3f}", iou,
                      f"{a['worst_class_accuracy']:.3f}", f"{a['class_gap']:.3f}", f"{a['worst_client_accuracy']:.3f}",
                      f"{a['client_gap']:.3f}", f"{a['client_gap_label_mix']:.3f}", f"{a['lipschitz_bound']:.4g}",
                      f"`fedprune analyze {row['folder']}`"])
    return markdown_table(["setting", "accuracy", "density", "mask IoU with server magnitude", "worst class acc",
                           "class gap", "worst client acc (own data)", "client gap (own data)",
                           "client gap (label mix)", "Lipschitz bound", "command"], lines)


def plot_frontier(path: Path, rows: list[dict], title: str) -> Path:
    """Accuracy against client-level epsilon; mean and sd over seeds; no-privacy runs as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.4))
    series = defaultdict(lambda: defaultdict(list))  # line -> x -> accuracies
    styles = iter(["--", ":", "-.", (0, (5, 1)), (0, (1, 3))])
    for name, members in _groups(rows).items():
        first = members[0]
        end, mask = first.get("epsilon.client"), first.get("mask_channel_epsilon.client")
        if end not in (None, ""):
            series["server magnitude + DP weights (end to end)"][end] += [r["final_accuracy"] for r in members]
        elif first["config.method"] == "votes" and mask not in (None, ""):
            kind = "channel votes" if first["config.structure"] == "units" else "weight votes"
            series[f"{kind}, randomized response (mask channel alone)"][mask] += [r["final_accuracy"] for r in members]
        else:
            mean = statistics.fmean(r["final_accuracy"] for r in members)
            axis.axhline(mean, linestyle=next(styles), color="grey", linewidth=1, label=f"{name}: {mean:.3f}")
    for i, (line, points) in enumerate(sorted(series.items())):
        xs = sorted(points)
        means = [statistics.fmean(points[x]) for x in xs]
        sds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
        filled = "end to end" in line
        axis.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=line, color=f"C{i}",
                      markerfacecolor=f"C{i}" if filled else "white")
    axis.set_xscale("log")
    axis.set_xlabel("client-level ε at δ=1e-5, worst client, whole run\n(hollow: mask channel alone, weight updates "
                    "in the clear, no end-to-end guarantee; filled: end to end)", fontsize=8)
    axis.set_ylabel("final test accuracy (mean ± sd over seeds)", fontsize=8)
    axis.set_title(f"{title}: 10 clients, Dirichlet 0.5, 30 rounds", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)
    return path


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by setting, in reading order: dense, server magnitude, weight votes (eps falling), channel votes, DP."""
    groups = defaultdict(list)
    for row in sorted(rows, key=_order):
        groups[label(row)].append(row)
    return groups


def _order(row: dict) -> tuple:
    eps = row["config.epsilon-per-decision"]
    eps = math.inf if eps in (None, "inf") else float(eps)
    rank = {"dense": 0, "server-magnitude": 1, "votes": 2}[row["config.method"]]
    return (row["config.weight-channel"] != "clear", rank, row["config.structure"] == "units", -eps,
            -float(row["config.noise-multiplier"]), row["config.seed"])


if __name__ == "__main__":
    raise SystemExit(main())
