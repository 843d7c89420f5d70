"""Export a pruned model to one .fpm file: compressed weights, masks, kernel paths, metadata.

``export_model(model, masks, path, metadata=...)`` takes any reference model (mlp, cnn1d,
cnn2d from ``fedprune.training.models``; its ``spec`` names the architecture) with its masks: a
``fedprune centralized`` result, a run folder's global model (``simulations/export.py`` reads
one), or a model trained through the Python API. Masked weights are zeroed as they are written,
so the file holds the masked model whatever the module held at pruned positions.

Each linear layer of the shrunk network (see ``fedprune.deploy.shrink``) is calibrated here with
``fedprune.deploy.kernels.calibrate``: the path measured fastest at each batch size is recorded and
the runtime uses it. Convolutions run dense on their shrunk channels ("shrunk", or "dense"
where nothing shrank): unstructured sparse convolution never beat dense on the CPUs measured.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fedprune
from fedprune.deploy import fpm, kernels, runtime, shrink
from fedprune.deploy.runtime import layer_record
from fedprune.validation import ConfigError

SUFFIX = ".fpm"


def export_model(model: nn.Module, masks: Mapping[str, object] | None, path: str | Path, *,
                 metadata: Mapping | None = None, batch_sizes=(1, 64), threads: int = 1,
                 budget_s: float = 0.2, calibrate: bool = True) -> dict:
    """Write ``model`` under ``masks`` (True keeps; None: dense) to ``path``; returns what was written.

    ``metadata``: plain JSON kept in the file, e.g. ``{"accuracy": 0.93, "privacy": {...}}``;
    ``density`` is computed from the masks. ``calibrate=False`` records the dense path for every
    layer (no timing: for tests and for machines unlike the target).
    """
    batch_sizes = _batch_sizes(batch_sizes)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise ConfigError(f"calibration budget must be > 0 seconds, got {budget_s!r}")
    shrink.operations(model)  # refuses anything but a reference model, before any work
    state = {name: value.detach().float().cpu().clone() for name, value in model.state_dict().items()}
    masks = _masks(masks, state)
    for name, mask in masks.items():
        state[name][~mask] = 0.0
    steps = shrink.plan(model, state)
    layers = [_calibrated(step, batch_sizes, threads, budget_s, calibrate) for step in steps
              if step.kind in ("linear", "conv", "constant")]
    arrays: list[np.ndarray] = []
    tensors = {name: fpm.encode(value.numpy(), masks[name].numpy() if name in masks else None, arrays)
               for name, value in state.items()}
    kept = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    header = {
        "kind": "fedprune-model",
        "fedprune_version": fedprune.__version__,
        "spec": model.spec,
        "metadata": {**dict(metadata or {}), "density": kept / total if total else 1.0,
                     "parameters": sum(v.numel() for v in state.values()),
                     "nonzero_parameters": sum(int(torch.count_nonzero(v)) for v in state.values())},
        "calibration": {"batch_sizes": list(batch_sizes), "threads": threads, "budget_s": budget_s,
                        "measured": calibrate, "machine": platform.machine(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "torch": torch.__version__, "kernel_paths": list(kernels.PATHS)},
        "tensors": tensors,
        "layers": layers,
    }
    size = fpm.write(path, header, arrays)
    _verify(model, state, path)
    return {"path": str(path), "bytes": size, "density": header["metadata"]["density"], "layers": layers}


def _calibrated(step: shrink.Step, batch_sizes: tuple[int, ...], threads: int, budget_s: float,
                measure: bool) -> dict:
    record = layer_record(step)
    if step.kind != "linear":
        return record
    if not measure:
        record["paths"] = {str(b): "dense" for b in batch_sizes}
        return record
    result = kernels.calibrate(step.weight, batch_sizes=batch_sizes, threads=threads, budget_s=budget_s)
    record["paths"] = {str(b): result.choice[b] for b in batch_sizes}
    record["seconds"] = {path: {str(b): float(f"{t:.3g}") for b, t in times.items()}
                         for path, times in result.timings.items()}
    return record


@torch.no_grad()
def _verify(model: nn.Module, state: Mapping[str, torch.Tensor], path) -> None:
    """Load the written file and compare it with the masked model on a seeded random batch."""
    loaded = runtime.load(path)
    inputs = torch.randn((8, *loaded.input_shape), generator=torch.Generator().manual_seed(0))
    expected = torch.func.functional_call(model, dict(state), (inputs,))
    got = loaded(inputs)
    scale = max(1.0, float(expected.abs().max()))
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
        raise RuntimeError(f"the exported model in {path} computes other logits than the masked model "
                           f"(max difference {float((got - expected).abs().max()):.3g}): a fedprune bug, "
                           "please report it")


def _masks(masks, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, mask in (masks or {}).items():
        if name not in state:
            raise ConfigError(f"mask {name!r} names no tensor of the model (tensors: {', '.join(state)})")
        mask = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask))
        if mask.dtype != torch.bool:
            raise ConfigError(f"mask {name!r} must be bool (True keeps), got {mask.dtype}")
        if tuple(mask.shape) != tuple(state[name].shape):
            raise ConfigError(f"mask {name!r} has shape {tuple(mask.shape)}, the tensor has {tuple(state[name].shape)}")
        out[name] = mask
    return out


def _batch_sizes(values) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(v) for v in values}))
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or any(s < 1 for s in sizes) or any(isinstance(v, bool) for v in values):
        raise ConfigError(f"batch sizes must be integers >= 1, e.g. 1,64; got {values!r}")
    return sizes
