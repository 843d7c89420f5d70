"""The kernel paths a pruned weight can take: which are worth timing (``candidates``) and how to build one."""

from __future__ import annotations

import numpy as np

from fedprune.deploy.kernels.base import (
    INT32_MAX,
    DenseKernel,
    Kernel,
    RowsKernel,
    TorchCsrKernel,
    as_weight,
    rows_valid,
)
from fedprune.deploy.kernels.native import CsrKernel
from fedprune.deploy.kernels.structured import BlockKernel, NmKernel, block_shape, nm_pattern
from fedprune.validation import ConfigError

PATHS: tuple[str, ...] = ("dense", "csr", "block", "nm", "rows", "torch-csr")

_KERNELS = {"dense": DenseKernel, "csr": CsrKernel, "block": BlockKernel, "nm": NmKernel,
            "rows": RowsKernel, "torch-csr": TorchCsrKernel}

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
