"""Run an exported model (.fpm) with fedprune alone: shrunk convolutions, sparse linear kernels.

``load(path)`` reads and checks the file, rebuilds the masked weights, derives the shrunk
network (``fedprune.deploy.shrink``: pruned channels and rows become physically smaller layers, with
constant outputs folded into the next layer's bias) and builds each linear layer's kernel on the
path the exporter measured fastest for each calibrated batch size. A batch size that was not
calibrated uses the path of the nearest calibrated one (on a log scale). Imports torch, numpy
and fedprune only: this is what a device runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from fedprune.deploy import fpm, kernels, shrink
from fedprune.deploy.footprint import median_seconds
from fedprune.training.models import build_model
from fedprune.validation import ConfigError

_FUNCTIONAL = {1: F.conv1d, 2: F.conv2d}


class RuntimeModel:
    """A loaded .fpm model: call it on a (batch, *input_shape) float32 tensor to get logits."""

    def __init__(self, header: dict, arrays: list[np.ndarray], source: str = "model file"):
        self.source = source
        try:
            self.spec = dict(header["spec"])
            self.metadata = dict(header.get("metadata", {}))
            entries, recorded = header["tensors"], list(header["layers"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{source}: the header lacks spec, tensors or layers; export the model again") from None
        self.input_shape = tuple(int(s) for s in self.spec.get("input_shape", ()))
        model = build_model(**self.spec)  # the architecture only; its initial weights are replaced
        expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        if set(entries) != set(expected):
            raise ConfigError(f"{source}: its tensors do not match a {self.spec.get('name')} model "
                              f"(missing {sorted(set(expected) - set(entries))}, unexpected "
                              f"{sorted(set(entries) - set(expected))}); export the model again")
        self.state, self.masks = {}, {}
        for name, shape in expected.items():
            value, mask = fpm.decode(name, entries[name], arrays)
            if value.shape != shape:
                raise ConfigError(f"{source}: tensor {name!r} has shape {value.shape}, the model needs {shape}")
            self.state[name] = torch.from_numpy(value)
            if mask is not None:
                self.masks[name] = torch.from_numpy(mask)
        self.steps = shrink.plan(model, self.state)
        self.layers = recorded
        self.kernels: dict[str, dict[str, object]] = {}  # linear layer -> path -> built kernel
        self._ops = [self._op(step, layer) for step, layer in zip(self.steps, _match(self.steps, recorded, source))]

    @torch.no_grad()
    def __call__(self, x) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"inputs have shape {tuple(x.shape)}; this model takes (batch, "
                              f"{', '.join(map(str, self.input_shape))})")
        for op in self._ops:
            x = op(x)
        return x

    def predict(self, x, batch_size: int = 64) -> np.ndarray:
        """Class indices (int64) of every row of ``x``, run ``batch_size`` rows at a time.

        Non-finite inputs are refused: a NaN row would silently come out as class 0.
        """
        x = np.asarray(x, dtype=np.float32)
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.ndim else ~np.isfinite(x)
        if np.any(bad):
            rows = np.flatnonzero(bad)
            raise ConfigError(f"{rows.size} input row(s) hold NaN or infinite values (first: row {int(rows[0])}); "
                              "clean or impute them before predicting")
        x = torch.as_tensor(x)
        parts = [self(x[start:start + batch_size]).argmax(1) for start in range(0, len(x), batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.int64)

    def latency(self, batch_size: int, repeats: int = 30, inputs=None) -> float:
        """Median seconds of one forward pass at ``batch_size`` (on ``inputs`` tiled to fill it, else zeros)."""
        if inputs is None or len(inputs) == 0:
            batch = torch.zeros((batch_size, *self.input_shape))
        else:
            batch = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
            batch = batch.repeat(math.ceil(batch_size / len(batch)), *[1] * (batch.dim() - 1))[:batch_size]
        return median_seconds(self, batch, repeats)

    def path_for(self, layer: dict, batch_size: int) -> str:
        """The recorded path of a linear layer at ``batch_size`` (nearest calibrated batch size)."""
        paths = layer["paths"]
        nearest = min(paths, key=lambda b: (abs(math.log(int(b) / batch_size)), int(b)))
        return paths[nearest]

    def _op(self, step: shrink.Step, layer: dict | None):
        if step.kind == "select":
            return lambda x, index=step.index: x.index_select(1, index)
        if step.kind == "flatten":
            return lambda x: x.flatten(1)
        if step.kind == "relu":
            return torch.relu_
        if step.kind == "pool":
            return step.module
        if step.kind == "constant":
            return lambda x, bias=step.bias: bias.expand(x.shape[0], -1).clone()
        if step.kind == "conv":
            module, conv = step.module, _FUNCTIONAL[step.weight.dim() - 2]
            bias_map = step.bias_map

            def run_conv(x, weight=step.weight, bias=step.bias):
                out = conv(x, weight, bias, module.stride, module.padding, module.dilation)
                return out if bias_map is None else out.add_(bias_map)
            return run_conv
        built = {}
        for path in sorted(set(layer["paths"].values())):
            if path not in kernels.PATHS:
                raise ConfigError(f"{self.source}: layer {step.name} was calibrated for kernel path {path!r}, "
                                  f"which this fedprune lacks ({', '.join(kernels.PATHS)}); upgrade fedprune or "
                                  "export the model again on this fedprune")
            built[path] = kernels.build(path, step.weight)
        self.kernels[step.name] = built
        choice: dict[int, object] = {}

        def run_linear(x, bias=step.bias):
            batch = x.shape[0]
            kernel = choice.get(batch)
            if kernel is None:
                kernel = choice[batch] = built[self.path_for(layer, max(batch, 1))]
            return kernel(x) + bias
        return run_linear


def load(path: str | Path) -> RuntimeModel:
    """Read, check and prepare a .fpm file (ConfigError for a corrupt, truncated or foreign file)."""
    header, arrays = fpm.read(path)
    return RuntimeModel(header, arrays, source=str(path))


def _match(steps: list[shrink.Step], recorded: list[dict], source: str) -> list[dict | None]:
    """Pair each step with its recorded layer, checking the file's plan is the one its weights give."""
    layers = iter(recorded)
    out = []
    for step in steps:
        if step.kind not in ("linear", "conv", "constant"):
            out.append(None)
            continue
        layer = next(layers, None)
        shape = list(step.weight.shape) if step.weight is not None else list(step.bias.shape)
        if not isinstance(layer, dict) or layer.get("name") != step.name or layer.get("kind") != step.kind \
                or layer.get("shape") != shape or (step.kind == "linear" and not layer.get("paths")):
            raise ConfigError(f"{source}: its recorded layers do not match its weights at {step.name} "
                              f"({step.kind} {shape}); export the model again")
        out.append(layer)
    return out


def layer_record(step: shrink.Step) -> dict:
    """What the file records about one computing step (before calibration adds paths)."""
    shape = list(step.weight.shape) if step.weight is not None else list(step.bias.shape)
    record = {"name": step.name, "kind": step.kind, "shape": shape, "units": list(step.units),
              "inputs": list(step.inputs)}
    if step.kind == "conv":
        record["path"] = "shrunk" if step.units[0] < step.units[1] or step.inputs[0] < step.inputs[1] else "dense"
    if step.kind == "constant":
        record["path"] = "constant"
    return record
