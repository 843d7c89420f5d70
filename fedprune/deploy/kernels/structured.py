"""Structured sparse paths: block sparse (BSR) and N:M, both compiled (_structured.c).

Each finds its own layout in the weight, so a path name alone rebuilds the same kernel:
block takes the largest block shape (of BLOCK_SHAPES) whose blocks hold the nonzeros whole,
N:M the sparsest pattern (of NM_PATTERNS) no group exceeds. A weight from
fedprune.pruning.masks.block_masks / nm_masks fits by construction; an unstructured one does not.
"""

from __future__ import annotations

import numpy as np

from fedprune.deploy.kernels.native import NativeKernel, pointer, threads
from fedprune.validation import ConfigError

# largest area first, then wider: fewer indices per value, and rows of 8 fill a vector
BLOCK_SHAPES = ((8, 8), (4, 8), (2, 8), (4, 4), (1, 8), (2, 4), (1, 4))
# (n, m): sparsest first, then the smaller group
NM_PATTERNS = ((1, 8), (1, 4), (2, 8), (1, 2), (2, 4), (4, 8))
# a kept block may hold a few exact zeros (a trained weight that hit 0.0): at most 1% of stored
BLOCK_FILL = 0.99


def _block_flags(weight: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """(out/bh, in/bw) flags: which blocks hold a nonzero."""
    out, width = weight.shape
    return (weight.reshape(out // bh, bh, width // bw, bw) != 0).any(axis=(1, 3))


def _fill_ok(weight: np.ndarray, bh: int, bw: int, nonzeros: int) -> bool:
    """Whether the blocks holding a nonzero are (nearly) full."""
    return nonzeros >= BLOCK_FILL * int(_block_flags(weight, bh, bw).sum()) * bh * bw


def block_shape(weight: np.ndarray) -> tuple[int, int] | None:
    """The block shape the block path stores this weight in, or None where no shape fits."""
    out, width = weight.shape
    nonzeros = np.count_nonzero(weight)
    # every listed shape splits into whole 1x4 blocks, so where 1x4 does not fit none does
    if width % 4 or not _fill_ok(weight, 1, 4, nonzeros):
        return None
    for bh, bw in BLOCK_SHAPES:
        if out % bh == 0 and width % bw == 0 and _fill_ok(weight, bh, bw, nonzeros):
            return bh, bw
    return None


class BlockKernel(NativeKernel):
    """Block sparse rows: per kept block one int32 block-column index and bh*bw values."""

    path = "block"

    def __init__(self, weight: np.ndarray):
        shape = block_shape(weight)
        if shape is None:
            raise ConfigError(f"the block path needs the nonzeros of the {weight.shape[0]}x{weight.shape[1]} "
                              f"weight to form whole blocks of one of {list(BLOCK_SHAPES)}; use csr for "
                              "unstructured sparsity or prune with fedprune.pruning.masks.block_masks")
        super().__init__(weight)
        if self.fallback is not None:
            return
        bh, bw = self.block = shape
        out, width = weight.shape
        flags = _block_flags(weight, bh, bw)
        block_rows, block_cols = np.nonzero(flags)
        tiles = weight.reshape(out // bh, bh, width // bw, bw).transpose(0, 2, 1, 3)
        values = np.ascontiguousarray(tiles[block_rows, block_cols], dtype=np.float32)
        pointers = np.zeros(out // bh + 1, dtype=np.int32)
        np.cumsum(np.bincount(block_rows, minlength=out // bh), out=pointers[1:])
        self.arrays = (pointers, block_cols.astype(np.int32), values)
        self.pointers = tuple(pointer(array) for array in self.arrays)
        blocks = len(block_cols)
        self.bytes_read = 4 * blocks * bh * bw + 4 * blocks + 4 * (out // bh + 1)
        self.layout = f"bsr {bh}x{bw}, {blocks} blocks"

    def _native(self, x, b8, y):
        bh, bw = self.block
        status = self.lib.fp_bsr(bh, bw, self.shape[0] // bh, *self.pointers, x.data_ptr(), b8,
                                 y.data_ptr(), y.shape[0], threads(self.arrays[2].size * b8))
        assert status == 0, f"block shape {bh}x{bw} not compiled"


def nm_pattern(weight: np.ndarray) -> tuple[int, int] | None:
    """The sparsest (n, m) such that every m consecutive inputs of a row hold at most n nonzeros."""
    out, width = weight.shape
    most: dict[int, int] = {}
    for n, m in NM_PATTERNS:
        if width % m:
            continue
        if m not in most:
            most[m] = int((weight.reshape(out, width // m, m) != 0).sum(axis=2).max())
        if most[m] <= n:
            return n, m
    return None


class NmKernel(NativeKernel):
    """N:M: per group of m inputs, n values and n one-byte positions (5 bytes per stored value)."""

    path = "nm"

    def __init__(self, weight: np.ndarray):
        pattern = nm_pattern(weight)
        if pattern is None:
            raise ConfigError(f"the nm path needs an N:M weight (at most N nonzeros in every M consecutive "
                              f"inputs, one of {[f'{n}:{m}' for n, m in NM_PATTERNS]}); this "
                              f"{weight.shape[0]}x{weight.shape[1]} weight is not: use csr, or prune with "
                              "fedprune.pruning.masks.nm_masks")
        super().__init__(weight)
        if self.fallback is not None:
            return
        n, m = self.pattern = pattern
        out, width = weight.shape
        groups = weight.reshape(out, width // m, m)
        # nonzero positions first (stable: in order), then zeros as padding up to n
        order = np.argsort(groups == 0, axis=2, kind="stable")[:, :, :n]
        values = np.ascontiguousarray(np.take_along_axis(groups, order, axis=2), dtype=np.float32)
        self.arrays = (values, np.ascontiguousarray(order, dtype=np.uint8))
        self.pointers = tuple(pointer(array) for array in self.arrays)
        self.groups = width // m
        self.bytes_read = 5 * out * self.groups * n
        self.layout = f"n:m {n}:{m}"

    def _native(self, x, b8, y):
        n, m = self.pattern
        status = self.lib.fp_nm(n, m, self.shape[0], self.groups, *self.pointers, x.data_ptr(), b8,
                                y.data_ptr(), y.shape[0], threads(self.arrays[0].size * b8))
        assert status == 0, f"n:m with n={n} not compiled"

