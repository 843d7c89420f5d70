"""`fedprune analyze RUN_DIR [RUN_DIR ...]`: group accuracy gaps and the Lipschitz bound of runs' final models.

What the pruning literature asks of a pruned model beyond its accuracy (``fedprune.pruning.analysis``):
does pruning cost some groups more than others, and does it change the network's certified
Lipschitz upper bound (the product of its layers' spectral norms)? For each run folder this loads
the final global model (``simulations.run_files.load_run``) and measures accuracy per class on the
test set, accuracy per client on that client's own training share (the run's partition, rebuilt
from its config) and on the test set reweighted to that client's label mix, the gaps between the
best and worst group, the Lipschitz bound and the density.
It writes ``analysis.json`` into the run folder and prints one table row per run, so a dense run
and pruned runs of the same federation compare side by side.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fedprune import run_folder
from fedprune.federated.local import client_data, run_dataset
from fedprune.pruning.analysis import gap, group_accuracy, lipschitz_bound, predictions
from fedprune.pruning.masks import density
from simulations.reporting import markdown_table, write_json
from simulations.run_files import load_run

HEADERS = ["run", "accuracy", "density", "worst class", "class gap", "worst client (own data)", "client gap",
           "client gap (label mix)", "Lipschitz bound"]


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run folders of `fedprune run`")
    parser.add_argument("--json", action="store_true", help="print the analyses as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    results = [analyze_run(folder) for folder in args.run_dirs]
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


def analyze_run(run_dir) -> dict:
    """Measure the final model of the run in ``run_dir``, write RUN_DIR/analysis.json and return it."""
    loaded = load_run(run_dir)
    config, model = loaded.config, loaded.model
    data = run_dataset(config)
    clients = {str(i): client_data(config, i, config.num_clients) for i in range(config.num_clients)}
    groups = group_accuracy(model, (data.x_test, data.y_test), data.num_classes, clients)
    result = {
        "run": loaded.folder.name,
        "run_dir": str(loaded.folder),
        "round": loaded.round,
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "accuracy": float(np.mean(predictions(model, data.x_test) == data.y_test)),
        "summary_accuracy": loaded.summary.get("final_accuracy"),
        "density": density(loaded.masks),
        **groups,
        "worst_class_accuracy": min(v for v in groups["per_class"] if v is not None),
        "worst_client_accuracy": min(groups["per_client"].values()),
        "client_examples": {name: int(len(y)) for name, (_, y) in clients.items()},
        **label_mix_accuracy(groups["per_class"], clients),
        "lipschitz_bound": lipschitz_bound(model, data.input_shape),
        "notes": "per_class: accuracy on the test set's examples of each class; per_client: accuracy on the "
                 "client's own training share; gaps: best minus worst group; lipschitz_bound: product of the "
                 "layers' spectral norms (fedprune.pruning.analysis), "
                 "an upper bound on the model's l2 Lipschitz constant; "
                 "per_client_label_mix: test accuracy a client sees on test examples drawn with its own label mix "
                 "(per-class test accuracy weighted by the client's label frequencies), which a model that "
                 "memorised the client's training share cannot inflate",
    }
    write_json(loaded.folder / run_folder.ANALYSIS, result)
    return result


def label_mix_accuracy(per_class: list, clients: dict) -> dict:
    """Per-class test accuracy weighted by each client's label frequencies, and the gap between clients."""
    mix = {}
    for name, (_, y) in clients.items():
        counts = np.bincount(y, minlength=len(per_class))
        present = [(n, a) for n, a in zip(counts, per_class) if n and a is not None]
        mix[name] = float(sum(n * a for n, a in present) / sum(n for n, _ in present)) if present else None
    return {"per_client_label_mix": mix, "client_gap_label_mix": gap(list(mix.values()))}


def format_table(results: list[dict]) -> str:
    """One Markdown row per analysed run."""
    rows = [[r["run_dir"], r["accuracy"], r["density"], r["worst_class_accuracy"], r["class_gap"],
             r["worst_client_accuracy"], r["client_gap"], r["client_gap_label_mix"], r["lipschitz_bound"]]
            for r in results]
    return markdown_table(HEADERS, rows)
