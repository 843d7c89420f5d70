"""The compiled kernels (_native.c, built by setup.py at install) and the CSR path on top of them.

Loaded through ctypes, which releases the GIL during a call. Where the compiled module is
missing (an install without a C compiler), every compiled path falls back to torch's int32 CSR
with one warning: slower, never wrong. Set FEDPRUNE_NATIVE_KERNELS=0 to force the fallback.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from fedprune.deploy.kernels.base import Kernel, TorchCsrKernel, csr_arrays

ABI = 1
_HERE = Path(__file__).resolve().parent
_P, _I64, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "fp_csr_mv": (None, [_I64, _P, _P, _P, _P, _P, _I]),
    "fp_csr_mm": (None, [_I64, _P, _P, _P, _P, _I64, _P, _I64, _I]),
    "fp_bsr": (_I, [_I, _I, _I64, _P, _P, _P, _P, _I64, _P, _I64, _I]),
    "fp_nm": (_I, [_I, _I, _I64, _I64, _P, _P, _P, _I64, _P, _I64, _I]),
    "fp_transpose": (None, [_P, _I64, _I64, _P, _I64]),
    "fp_abi": (_I, []),
    "fp_isa": (ctypes.c_char_p, []),
    "fp_openmp": (_I, []),
}


def _open() -> tuple[ctypes.CDLL | None, str]:
    """The compiled library, or None and why not."""
    if os.environ.get("FEDPRUNE_NATIVE_KERNELS", "1") == "0":
        return None, "FEDPRUNE_NATIVE_KERNELS=0"
    found = [_HERE / f"_native{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    found = [path for path in found if path.exists()]
    if not found:
        return None, f"no compiled _native module in {_HERE}"
    try:
        lib = ctypes.CDLL(str(found[0]))
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except (OSError, AttributeError) as err:
        return None, f"cannot load {found[0].name}: {err}"
    if lib.fp_abi() != ABI:
        return None, f"{found[0].name} is from another version (abi {lib.fp_abi()}, want {ABI})"
    return lib, ""


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled library, loaded once; None (with one warning) where it cannot be."""
    lib, why = _open()
    if lib is None and why != "FEDPRUNE_NATIVE_KERNELS=0":
        warnings.warn(f"fedprune.deploy.kernels: compiled kernels unavailable ({why}); csr, block and nm use torch's "
                      "int32 CSR, slower. Fix: install a C compiler and rerun `pip install -e .`",
                      RuntimeWarning, stacklevel=2)
    return lib


def describe() -> str:
    """One line saying which kernels run here, for reports."""
    lib = library()
    if lib is None:
        return "torch fallback (no compiled kernels)"
    return f"compiled, {lib.fp_isa().decode()}, {'OpenMP' if lib.fp_openmp() else 'one thread only'}"


# multiply-adds (stored entries x batch) below which another thread costs more than it saves
MIN_WORK_PER_THREAD = 16384


def threads(work: int) -> int:
    """Threads a call of ``work`` multiply-adds uses: torch's setting (one knob for dense and
    sparse alike), fewer where the work is too small to split."""
    return max(1, min(torch.get_num_threads(), work // MIN_WORK_PER_THREAD))


def transposed(x: torch.Tensor, lib: ctypes.CDLL) -> tuple[torch.Tensor, int]:
    """x (batch, in) as (in, b8), b8 the batch rounded up to 8 (zero padding), and b8."""
    batch, width = x.shape
    b8 = -(-batch // 8) * 8
    xt = torch.empty(width, b8, dtype=torch.float32)
    lib.fp_transpose(x.data_ptr(), batch, width, xt.data_ptr(), b8)
    return xt, b8


def pointer(array: np.ndarray) -> int:
    """Address of a C-contiguous array the kernel keeps alive."""
    assert array.flags.c_contiguous
    return array.ctypes.data


class NativeKernel(Kernel):
    """A compiled path; holds the torch int32 CSR fallback where the library is missing."""

    def __init__(self, weight: np.ndarray):
        self.shape = tuple(weight.shape)
        self.lib = library()
        self.fallback = TorchCsrKernel(weight, self.path) if self.lib is None else None
        if self.fallback is not None:
            self.bytes_read, self.layout = self.fallback.bytes_read, self.fallback.layout + " (fallback)"

    def _run(self, x):
        if self.fallback is not None:
            return self.fallback._run(x)
        y = torch.empty(x.shape[0], self.shape[0], dtype=torch.float32)
        if x.shape[0] == 0:
            return y
        if x.shape[0] == 1:
            self._native(x, 1, y)
        else:
            xt, b8 = transposed(x, self.lib)
            self._native(xt, b8, y)
        return y

    def _native(self, x: torch.Tensor, b8: int, y: torch.Tensor) -> None:
        raise NotImplementedError


class CsrKernel(NativeKernel):
    """CSR, float32 values and int32 indices: reads 8 bytes per nonzero plus the row pointers."""

    path = "csr"

    def __init__(self, weight: np.ndarray):
        super().__init__(weight)
        if self.fallback is not None:
            return
        self.arrays = csr_arrays(weight)
        self.pointers = tuple(pointer(array) for array in self.arrays)
        nnz = len(self.arrays[2])
        self.bytes_read = 8 * nnz + 4 * (self.shape[0] + 1)
        self.layout = f"csr int32, {nnz} nonzeros"

    def _native(self, x, b8, y):
        rows, work = self.shape[0], len(self.arrays[2]) * b8
        if b8 == 1:
            self.lib.fp_csr_mv(rows, *self.pointers, x.data_ptr(), y.data_ptr(), threads(work))
        else:
            self.lib.fp_csr_mm(rows, *self.pointers, x.data_ptr(), b8, y.data_ptr(), y.shape[0], threads(work))
