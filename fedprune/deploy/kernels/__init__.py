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

from fedprune.deploy.kernels.base import Kernel
from fedprune.deploy.kernels.calibrate import Calibration, calibrate
from fedprune.deploy.kernels.native import describe
from fedprune.deploy.kernels.paths import PATHS, build, candidates
from fedprune.deploy.kernels.structured import BLOCK_SHAPES, NM_PATTERNS, block_shape, nm_pattern
from fedprune.validation import ConfigError

__all__ = ["PATHS", "BLOCK_SHAPES", "NM_PATTERNS", "Calibration", "ConfigError", "Kernel",
           "block_shape", "build", "calibrate", "candidates", "describe", "nm_pattern"]
