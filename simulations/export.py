"""`fedprune export RUN_DIR -o model.fpm`: one file a device runs with fedprune alone.

The file holds the run's global model as compressed weights (kept values plus a packed bitmap,
or indices where smaller), the masks, the kernel path of each layer (measured here with a short
calibration: run the export on a machine like the target), the architecture, and the run's
accuracy, density and privacy report from summary.json. `fedprune infer` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fedprune import run_folder
from fedprune.deploy import footprint
from fedprune.deploy.export import export_model
from fedprune.validation import ConfigError
from simulations.reporting import markdown_table
from simulations.run_files import load_run

PRIVACY_KEYS = ("epsilon", "mask_channel_epsilon", "delta", "mechanism", "weight_channel", "privacy_randomness")


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `fedprune run` (with checkpoint.npz)")
    parser.add_argument("-o", "--output", default=None, help="the model file to write (default RUN_DIR/model.fpm)")
    parser.add_argument("--batch-sizes", default="1,64", 
                        help="batch sizes to calibrate kernel paths for (default 1,64)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads the calibration runs on (default 1)")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of calibration per layer (default 0.2)")
    parser.add_argument("--no-calibrate", action="store_true", help="record the dense path everywhere, measure nothing")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        batch_sizes = [int(v) for v in args.batch_sizes.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes must be comma-separated integers, e.g. 1,64; got {args.batch_sizes!r}") \
            from None
    output = Path(args.output) if args.output else Path(args.run_dir) / run_folder.MODEL
    if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):  # before the minutes of calibration
        raise ConfigError(f"cannot write {output}: {output.parent} is not a folder you can write; pass -o a path in "
                          "one")
    result = export_run(args.run_dir, output, batch_sizes=batch_sizes, threads=args.threads,
                        budget_s=args.budget, calibrate=not args.no_calibrate)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def export_run(run_dir, output, **options) -> dict:
    """Export the global model of the run in ``run_dir`` to ``output``; returns what was written."""
    run = load_run(run_dir)
    folder, config, summary, model = run.folder, run.config, run.summary, run.model
    metadata = {
        "source": {"kind": "fedprune run", "run": folder.name, "round": run.round},
        "accuracy": summary.get("final_accuracy"),
        "dense_fedavg_accuracy": summary.get("dense_fedavg_accuracy"),
        "dataset": config.dataset,
        "run": {"method": summary.get("method"), "rounds": summary.get("rounds"), "clients": summary.get("clients"),
                "unit": config.unit, "stopped": summary.get("stopped")},
        "privacy": {key: summary.get(key) for key in PRIVACY_KEYS},
    }
    result = export_model(model, run.masks, output, metadata=metadata, **options)
    result["dense_bytes"] = footprint.dense_bytes(model)
    result["size_ratio"] = result["bytes"] / result["dense_bytes"]
    result["metadata"] = metadata
    return result


def format_result(result: dict) -> str:
    """What was written, for people: size against dense, figures, each layer's path."""
    meta = result["metadata"]
    rows = [[layer["name"], layer["kind"], "x".join(map(str, layer["shape"])),
             f"{layer['units'][0]}/{layer['units'][1]}",
             ", ".join(f"b={b}: {p}" for b, p in layer["paths"].items()) if "paths" in layer else layer.get("path")]
            for layer in result["layers"]]
    privacy = meta["privacy"]
    shown = lambda figures: ", ".join(f"{unit} {_figure(v)}" for unit, v in (figures or {}).items())  # noqa: E731
    return "\n".join([
        f"wrote {result['path']}: {result['bytes']} bytes, {result['size_ratio']:.3f} of the dense float32 "
        f"state_dict ({result['dense_bytes']} bytes)",
        f"accuracy {meta['accuracy']}, density {result['density']:.4f}; epsilon end to end: "
        f"{shown(privacy.get('epsilon'))}; mask channel: {shown(privacy.get('mask_channel_epsilon'))} "
        f"(delta {privacy.get('delta')})",
        "",
        markdown_table(["layer", "kind", "shape run", "units kept", "kernel path"], rows),
    ])


def _figure(value) -> str:
    return "none (no guarantee)" if value is None else f"{value:.4g}"

