"""What every kernel shares: the Kernel base, the checks on weights and inputs, and the torch paths.

A kernel multiplies x (batch, in) by a fixed pruned weight (out, in): y = x @ W.T, no bias.
The torch paths live here: dense (F.linear), rows (dense on the rows and columns that are not
all zero, the output scattered back) and torch's own CSR with int32 indices, which is also
what the compiled paths fall back to where the compiled module is missing.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from fedprune.validation import ConfigError

INT32_MAX = 2**31 - 1


class Kernel:
    """A prepared weight: call it on x (batch, in) float32 to get (batch, out).

    ``bytes_read`` counts the weight bytes one call reads (values and indices), the figure the
    memory-bandwidth ideal is judged by; ``layout`` says what was stored, for people. Inference
    only (no autograd); a call uses torch's thread count (torch.set_num_threads).
    """

    path: str = ""
    shape: tuple[int, int] = (0, 0)
    bytes_read: int = 0
    layout: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(check_input(x, self.shape[1], self.path))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, shape={self.shape}, layout={self.layout!r})"


def as_weight(weight) -> np.ndarray:
    """The weight as a C-contiguous float32 (out, in) array; ConfigError for anything else."""
    if isinstance(weight, torch.Tensor):
        if not weight.dtype.is_floating_point:
            raise ConfigError(f"weight must be a float tensor, got dtype {weight.dtype}; pass weight.float()")
        array = weight.detach().to("cpu", torch.float32).numpy()
    elif isinstance(weight, np.ndarray):
        if weight.dtype.kind != "f":
            raise ConfigError(f"weight must be a float array, got dtype {weight.dtype}; pass weight.astype(np.float32)")
        array = weight
    else:
        raise ConfigError(f"weight must be a numpy array or torch tensor, got {type(weight).__name__}")
    if array.ndim != 2:
        raise ConfigError(f"weight must be 2-D (out, in), got shape {tuple(array.shape)}; "
                          "reshape a conv weight to (out, in * kernel) first")
    if 0 in array.shape:
        raise ConfigError(f"weight must have at least one row and column, got shape {tuple(array.shape)}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ConfigError("weight has NaN or infinite entries; a kernel needs finite weights (check training)")
    return array


def check_input(x: torch.Tensor, width: int, path: str) -> torch.Tensor:
    """x as a contiguous float32 (batch, width) tensor, or a ConfigError saying what is wrong."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != width:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"{path} kernel takes x of shape (batch, {width}), got {got}")
    if x.dtype != torch.float32:
        raise ConfigError(f"{path} kernel takes float32 x, got {x.dtype}; pass x.float()")
    return x if x.is_contiguous() else x.contiguous()


class DenseKernel(Kernel):
    """torch's dense F.linear: reads every weight."""

    path = "dense"

    def __init__(self, weight: np.ndarray):
        self.weight = torch.from_numpy(weight.copy())
        self.shape = tuple(weight.shape)
        self.bytes_read = 4 * weight.size
        self.layout = f"dense {self.shape[0]}x{self.shape[1]}"

    def _run(self, x):
        return F.linear(x, self.weight)


def kept_lines(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows and of the columns holding any nonzero."""
    nonzero = weight != 0
    return np.flatnonzero(nonzero.any(axis=1)), np.flatnonzero(nonzero.any(axis=0))


def rows_valid(weight: np.ndarray) -> bool:
    """The rows path is worth having where all-zero rows and columns drop an eighth of the matrix."""
    rows, cols = kept_lines(weight)
    return len(rows) * len(cols) <= 0.875 * weight.size


class RowsKernel(Kernel):
    """Dense on the kept rows and columns only: what row / channel pruning leaves within one layer."""

    path = "rows"

    def __init__(self, weight: np.ndarray):
        if not rows_valid(weight):
            raise ConfigError("the rows path needs all-zero rows or columns covering at least 1/8 of the "
                              "weight; this one has too few, use dense or csr")
        rows, cols = kept_lines(weight)
        self.shape = tuple(weight.shape)
        self.rows = torch.from_numpy(rows) if len(rows) < weight.shape[0] else None
        self.cols = torch.from_numpy(cols) if len(cols) < weight.shape[1] else None
        self.weight = torch.from_numpy(np.ascontiguousarray(weight[rows][:, cols]))
        self.bytes_read = 4 * len(rows) * len(cols) + 8 * (len(rows) * (self.rows is not None)
                                                            + len(cols) * (self.cols is not None))
        self.layout = f"dense {len(rows)}x{len(cols)} of {self.shape[0]}x{self.shape[1]}"

    def _run(self, x):
        if self.cols is not None:
            x = x.index_select(1, self.cols)
        y = F.linear(x, self.weight)
        if self.rows is None:
            return y
        out = y.new_zeros(y.shape[0], self.shape[0])
        return out.index_copy_(1, self.rows, y)


def csr_arrays(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pointers, column indices (both int32) and values of the nonzeros, row-major."""
    rows, cols = np.nonzero(weight)
    if len(rows) > INT32_MAX:
        raise ConfigError(f"csr takes at most 2**31-1 nonzeros (int32 indices), this weight has {len(rows)}")
    pointers = np.zeros(weight.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=weight.shape[0]), out=pointers[1:])
    return pointers, cols.astype(np.int32), np.ascontiguousarray(weight[rows, cols])


class TorchCsrKernel(Kernel):
    """torch's sparse CSR with int32 indices: torch.mv at batch 1, torch.sparse.mm above."""

    path = "torch-csr"

    def __init__(self, weight: np.ndarray, path: str = "torch-csr"):
        pointers, cols, values = csr_arrays(weight)
        self.path = path
        self.shape = tuple(weight.shape)
        with warnings.catch_warnings():  # torch calls its sparse CSR support beta, once per process
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = torch.sparse_csr_tensor(torch.from_numpy(pointers), torch.from_numpy(cols),
                                                  torch.from_numpy(values), size=self.shape,
                                                  check_invariants=False)
        self.bytes_read = 8 * len(values) + 4 * (self.shape[0] + 1)
        self.layout = f"torch int32 csr, {len(values)} nonzeros"

    def _run(self, x):
        if x.shape[0] == 1:
            return torch.mv(self.matrix, x[0]).unsqueeze(0)
        return torch.sparse.mm(self.matrix, x.t()).t().contiguous()
