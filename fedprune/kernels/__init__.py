"""Sparse inference kernels: the fastest correct path per pruned layer, measured on the machine.

A pruned linear layer (a 2-D float32 weight whose pruned entries are exactly 0) can run as:

    dense      torch F.linear, reads every weight
    csr        compiled CSR, int32 indices; matrix-vector at batch 1, matrix-matrix above
    block      compiled block sparse (BSR) where the nonzeros form whole blocks (block_masks)
    nm         compiled N:M (nm_masks): n values and n one-byte positions per group of m
    rows       dense on the rows and columns that are not all zero (row / unit pruning)
    torch-csr  torch's own sparse CSR with int32 indices (a reference, and what the compiled
               paths fall back to; not a candidate: the compiled csr matches or beats it)

``candidates(weight)`` lists the paths a weight can take, ``build(path, weight)`` prepares one,
``calibrate(weight)`` times them all here and picks per batch size. Paths are rebuilt from the
path name and the weight alone, so an exported model records just the name.
"""

from __future__ import annotations

import numpy as np

from fedprune.kernels.base import INT32_MAX, DenseKernel, Kernel, RowsKernel, TorchCsrKernel, as_weight, rows_valid
from fedprune.kernels.calibrate import Calibration, calibrate
from fedprune.kernels.native import CsrKernel, describe
from fedprune.kernels.structured import BLOCK_SHAPES, NM_PATTERNS, BlockKernel, NmKernel, block_shape, nm_pattern
from fedprune.validation import ConfigError

PATHS: tuple[str, ...] = ("dense", "csr", "block", "nm", "rows", "torch-csr")

_KERNELS = {"dense": DenseKernel, "csr": CsrKernel, "block": BlockKernel, "nm": NmKernel,
            "rows": RowsKernel, "torch-csr": TorchCsrKernel}

__all__ = ["PATHS", "BLOCK_SHAPES", "NM_PATTERNS", "Calibration", "ConfigError", "Kernel",
           "build", "calibrate", "candidates", "describe"]


def candidates(weight) -> list[str]:
    """The paths worth timing for this weight, "dense" first: every path that can take it, less
    those that read more bytes than csr by construction (torch-csr, which the compiled csr
    matches or beats at every batch size measured; nm where padding makes it larger than csr).
    ConfigError for a weight no path takes."""
    array = as_weight(weight)
    nonzeros = int(np.count_nonzero(array))
    pattern = nm_pattern(array)
    nm_bytes = 5 * array.size * pattern[0] // pattern[1] if pattern else None
    valid = {
        "dense": True,
        "csr": nonzeros <= INT32_MAX,
        "block": block_shape(array) is not None,
        "nm": pattern is not None and nm_bytes < 8 * nonzeros + 4 * (array.shape[0] + 1),
        "rows": rows_valid(array),
        "torch-csr": False,
    }
    return [path for path in PATHS if valid[path]]


def build(path: str, weight) -> Kernel:
    """Prepare ``weight`` (2-D (out, in) float32, pruned entries 0) to run along ``path``."""
    if not isinstance(path, str) or path not in _KERNELS:
        raise ConfigError(f"unknown kernel path {path!r}; valid paths: {', '.join(PATHS)}")
    return _KERNELS[path](as_weight(weight))
