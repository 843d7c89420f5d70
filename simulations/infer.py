"""`fedprune infer model.fpm INPUT.npy`: predictions and latency of an exported model.

Loads with fedprune alone (torch and numpy; no Flower, Ray or matplotlib), so it runs on the
device the model was exported for. INPUT.npy holds one example of the model's input shape or a
batch of them (n, *input_shape). Predictions (class indices) go to stdout or to ``-o``; the
latency is the median over ``--repeats`` forward passes of one batch of ``--batch-size``
(inputs tiled to fill it), on ``--threads`` CPU threads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fedprune.deploy.runtime import load
from fedprune.validation import ConfigError


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model file written by `fedprune export`")
    parser.add_argument("inputs", metavar="INPUT.npy", help="one example or a batch (n, *input_shape), numeric")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes for the latency (default 30)")
    parser.add_argument("-o", "--output", default=None, help="write the predictions (int64) to this .npy file")
    parser.add_argument("--json", action="store_true", help="print predictions, latency and model facts as JSON")


def run(args: argparse.Namespace) -> int:
    for option in ("batch_size", "threads", "repeats"):
        value = getattr(args, option)
        if value < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    model = load(args.model)
    inputs = _inputs(Path(args.inputs), model.input_shape)
    predictions = model.predict(inputs, batch_size=args.batch_size)
    seconds = model.latency(args.batch_size, repeats=args.repeats, inputs=inputs)
    if args.output:
        np.save(args.output, predictions)
    layers = {layer["name"]: _path(model, layer, args.batch_size) for layer in model.layers}
    result = {"model": args.model, "name": model.spec.get("name"), "examples": len(inputs),
              "batch_size": args.batch_size, "threads": args.threads,
              "latency_ms": 1e3 * seconds, "repeats": args.repeats, "kernel_paths": layers,
              "accuracy": model.metadata.get("accuracy"), "density": model.metadata.get("density"),
              "predictions": None if args.output else predictions.tolist(), "output": args.output}
    if args.json:
        print(json.dumps(result))
        return 0
    if args.output:
        print(f"wrote {len(predictions)} predictions to {args.output}")
    else:
        print("predictions: " + " ".join(map(str, predictions.tolist())))
    print(f"latency {result['latency_ms']:.4g} ms per batch of {args.batch_size} (median of {args.repeats}, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''}); {result['name']}, density "
          f"{result['density']:.4f}; paths: " + ", ".join(f"{name} {path}" for name, path in layers.items()))
    return 0


def _inputs(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"no input file {path}; pass a .npy file (numpy.save) of shape (n, "
                          f"{', '.join(map(str, input_shape))})") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path} as a .npy array without pickle ({error}); save the inputs with "
                          "numpy.save from a numeric array") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise ConfigError(f"{path} must hold a numeric array, got dtype {getattr(array, 'dtype', type(array))}")
    if tuple(array.shape) == input_shape:
        array = array[None]
    if tuple(array.shape[1:]) != input_shape:
        raise ConfigError(f"{path} has shape {array.shape}; the model takes one example {input_shape} or a batch "
                          f"(n, {', '.join(map(str, input_shape))})")
    return np.ascontiguousarray(array, dtype=np.float32)


def _path(model, layer: dict, batch_size: int) -> str:
    return model.path_for(layer, batch_size) if "paths" in layer else layer.get("path", "dense")
