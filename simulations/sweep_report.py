"""What a sweep leaves: results.csv (one row per finished run), frontier.png and report.md.

results.csv: the cell's name, its full settings (``config.<key>``) and every summary.json field,
nested ones flattened with dots (``epsilon.client``, ``mechanism.hamming_bound``), lists as JSON.

frontier.png: final accuracy against client-level epsilon, one panel per target sparsity, one
line per mechanism (and per any other setting the grid varies, seeds and epsilon aside), mean and
standard deviation over seeds. The x value is the end-to-end epsilon where the run has one; where
weight updates travel in the clear there is none, and the mask channel's own epsilon is plotted,
which the axis label says. Runs without privacy (exact votes) sit at the right, past a broken
axis; runs without mask reports (server-magnitude, dense) are horizontal reference lines.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from fedprune.run_folder import FRONTIER, REPORT, RESULTS, SUMMARY
from simulations.reporting import markdown_table

PER_LINE_EXCLUDED = ("epsilon-per-decision", "seed", "privacy-seed", "target-sparsity", "run-name", "output-dir",
                     "resume")


def write(out: Path, cells, command: str, failed: dict[str, str] | None = None) -> dict:
    """results.csv, frontier.png and report.md in ``out`` from the cells that finished."""
    rows = collect(cells)
    write_csv(out / RESULTS, rows)
    frontier = plot_frontier(out / FRONTIER, rows) if rows else None
    (out / REPORT).write_text(markdown(rows, command, frontier, failed or {}, len(cells)))
    return {"results": out / RESULTS, "frontier": frontier, "report": out / REPORT}


def collect(cells) -> list[dict]:
    """One row per finished cell: name, settings, flattened summary."""
    rows = []
    for cell in cells:
        path = cell.folder / SUMMARY
        if path.exists():
            row = {"cell": cell.name, **{f"config.{k}": v for k, v in cell.config.to_mapping().items()}}
            row.update(flatten(json.loads(path.read_text())))
            rows.append(row)
    return rows


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns or ["cell"], restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


# --- the frontier --------------------------------------------------------------------------------

def frontier_points(rows: list[dict]) -> dict:
    """{sparsity: {line: [point]}} with each point's epsilon kind, x, accuracy mean / sd and seeds."""
    votes = [row for row in rows if row["config.method"] == "votes"]
    varying = [key for key in (rows[0] if rows else {}) if key.startswith("config.")
               and key[7:] not in PER_LINE_EXCLUDED and len({json.dumps(r[key]) for r in votes}) > 1]
    groups = defaultdict(list)
    for row in rows:
        label = _line_label(row, varying)
        groups[(row["config.target-sparsity"], label, row["config.epsilon-per-decision"])].append(row)
    panels = defaultdict(lambda: defaultdict(list))
    for (sparsity, label, setting), members in groups.items():
        accuracy = [r["final_accuracy"] for r in members if r["final_accuracy"] is not None]
        kind, x = _epsilon(members)
        panels[sparsity][label].append({
            "setting": setting, "kind": kind, "x": x, "seeds": len(accuracy),
            "accuracy": statistics.fmean(accuracy) if accuracy else math.nan,
            "sd": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
            "density": statistics.fmean(r["density"] for r in members), "baseline": members[0]["config.method"]})
    for lines in panels.values():
        for points in lines.values():
            points.sort(key=lambda p: (p["kind"] == "none", p["x"] if p["x"] is not None else math.inf))
    return panels


def _line_label(row: dict, varying: list[str]) -> str:
    if row["config.method"] != "votes":
        return f"{row['config.method']} (no mask reports)"
    parts = [row["config.mechanism"]] + [f"{k[7:]}={row[k]}" for k in varying if k != "config.mechanism"]
    return ", ".join(str(p) for p in parts)


def _epsilon(members: list[dict]) -> tuple[str, float | None]:
    """('end-to-end' | 'mask channel' | 'none', mean client-level epsilon) of one setting's runs."""
    end = [r.get("epsilon.client") for r in members]
    if all(v is not None and v != "" for v in end):
        return "end-to-end", statistics.fmean(end)
    mask = [r.get("mask_channel_epsilon.client") for r in members]
    if members[0]["config.method"] == "votes" and all(v is not None and v != "" for v in mask):
        return "mask channel", statistics.fmean(mask)
    return "none", None


def x_label(panels: dict) -> str:
    kinds = {p["kind"] for lines in panels.values() for points in lines.values() for p in points
             if p["baseline"] == "votes" and p["kind"] != "none"}
    if kinds == {"mask channel"}:
        return "client-level ε of the mask channel alone\n(weight updates sent in the clear: no end-to-end guarantee)"
    if kinds == {"end-to-end"}:
        return "client-level ε, end to end (worst client)"
    return "client-level ε: end to end (filled) or mask channel alone (hollow: weights in the clear)"


def plot_frontier(path: Path, rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = frontier_points(rows)
    exact = any(p["kind"] == "none" and p["baseline"] == "votes"
                for lines in panels.values() for points in lines.values() for p in points)
    figure, axes = plt.subplots(len(panels), 2 if exact else 1, squeeze=False, sharey="row",
                                figsize=(7.5, 3.6 * len(panels)),
                                gridspec_kw={"width_ratios": [5, 1]} if exact else None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row_axes, (sparsity, lines) in zip(axes, sorted(panels.items())):
        main = row_axes[0]
        for i, (label, points) in enumerate(sorted(lines.items())):
            color = colors[i % len(colors)]
            if points[0]["baseline"] != "votes":
                mean = statistics.fmean(p["accuracy"] for p in points)
                for ax in row_axes:
                    ax.axhline(mean, color=color, linestyle="--", linewidth=1, label=label if ax is main else None)
                continue
            private = [p for p in points if p["kind"] != "none"]
            if private:
                main.plot([p["x"] for p in private], [p["accuracy"] for p in private], color=color, label=label)
                for p in private:
                    main.errorbar(p["x"], p["accuracy"], yerr=p["sd"], color=color, capsize=3, marker="o",
                                  markerfacecolor=color if p["kind"] == "end-to-end" else "white")
            for p in (p for p in points if p["kind"] == "none"):
                row_axes[1].errorbar(0, p["accuracy"], yerr=p["sd"], color=color, capsize=3, marker="s",
                                     label=None if private else label)
        main.set_xscale("log")
        main.set_ylabel("final test accuracy\n(mean ± sd over seeds)")
        main.set_title(f"target sparsity {sparsity:g}", fontsize=10)
        main.grid(alpha=0.3)
        if exact:
            _broken_axis(main, row_axes[1])
        handles = [h for ax in row_axes for h in ax.get_legend_handles_labels()[0]]
        labels = [t for ax in row_axes for t in ax.get_legend_handles_labels()[1]]
        main.legend(handles, labels, fontsize=7, loc="best")
    axes[-1][0].set_xlabel(x_label(panels), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _broken_axis(left, right) -> None:
    """The 'no privacy' column right of the epsilon axis, with // marks where the axis breaks."""
    right.set_xlim(-1, 1)
    right.set_xticks([0], ["no privacy\n(exact votes)"], fontsize=8)
    right.grid(alpha=0.3)
    left.spines["right"].set_visible(False)
    right.spines["left"].set_visible(False)
    right.tick_params(axis="y", left=False)
    marks = dict(marker=[(-1, -1), (1, 1)], markersize=8, linestyle="none", color="k", mec="k", mew=1, clip_on=False)
    left.plot([1, 1], [0, 1], transform=left.transAxes, **marks)
    right.plot([0, 0], [0, 1], transform=right.transAxes, **marks)


# --- report.md -----------------------------------------------------------------------------------

def markdown(rows: list[dict], command: str, frontier: Path | None, failed: dict[str, str], cells: int) -> str:
    out = ["# fedprune sweep", "", f"Command: `{command}`", "",
           f"{len(rows)} of {cells} cells finished" + (f", {len(failed)} failed" if failed else "") + "."]
    if frontier is not None:
        panels = frontier_points(rows)
        out += ["", f"![frontier]({frontier.name})", "",
                f"x axis: {x_label(panels).replace(chr(10), ' ')}. Error bars: standard deviation over seeds.", ""]
        table = []
        for sparsity, lines in sorted(panels.items()):
            for label, points in sorted(lines.items()):
                for p in points:
                    eps = "none (no privacy)" if p["kind"] == "none" else f"{p['x']:.4g} ({p['kind']})"
                    table.append([sparsity, label, p["setting"], eps, f"{p['accuracy']:.4f} ± {p['sd']:.4f}",
                                  p["seeds"], p["density"]])
        out.append(markdown_table(["target sparsity", "line", "epsilon-per-decision", "client-level ε",
                                   "accuracy", "seeds", "density"], table))
    if rows:
        runs = [[r["cell"], r["final_accuracy"], r["density"], r.get("epsilon.client"),
                 r.get("mask_channel_epsilon.client"), r["rounds"], r.get("stopped") or ""] for r in rows]
        out += ["", "## Runs", "", markdown_table(["cell", "accuracy", "density", "ε client (end to end)",
                                                   "ε client (mask channel)", "rounds", "stopped"], runs)]
    if failed:
        out += ["", "## Failed cells", ""] + [f"- `{name}`: {error} (see {name}/cell.log)"
                                               for name, error in failed.items()]
    out += ["", "Files: results.csv (every summary field of every run), each cell's folder (its run)."]
    return "\n".join(out) + "\n"
