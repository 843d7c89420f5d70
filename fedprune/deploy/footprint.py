"""What a model costs where it runs: parameters, bytes on disk, latency."""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
import torch
from torch import nn

from fedprune.pruning.bits import pack


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and nonzero parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"total": total, "nonzero": nonzero}


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the float32 state_dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().float() for k, v in model.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


def compressed_bytes(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Bytes of an .npz holding, per masked tensor, its packed bitmap and kept float32 values.

    A bitmap costs d/8 bytes against 4 bytes per int32 index, so it wins above a density of
    1/32; that is every density this project targets. Unmasked tensors are stored dense.
    """
    arrays = {}
    for name, tensor in model.state_dict().items():
        values = tensor.detach().float().cpu().numpy()
        if name in masks:
            keep = masks[name].cpu().numpy().reshape(-1)
            arrays[f"{name}.bitmap"] = pack(keep)
            arrays[f"{name}.values"] = values.reshape(-1)[keep]
        else:
            arrays[name] = values
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def latency_seconds(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, *, repeats: int = 30, threads: int = 1
) -> float:
    """Median wall time of one forward pass at ``batch_size`` on ``threads`` CPU threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        return median_seconds(model, torch.zeros((batch_size, *input_shape)), repeats)
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def median_seconds(forward, inputs, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``forward(inputs)`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        forward(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
