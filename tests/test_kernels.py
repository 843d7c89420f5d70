"""fedprune.deploy.kernels: every path computes the masked layer, on one and two threads; bad input is refused."""

from __future__ import annotations

import os
import shutil
import sysconfig
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedprune.deploy import kernels
from fedprune.deploy.kernels import PATHS, Calibration, build, calibrate, candidates, native
from fedprune.deploy.kernels.calibrate import torch_threads
from fedprune.pruning.masks import block_masks, nm_masks
from fedprune.validation import ConfigError


def _native_expected() -> str:
    """Why the compiled kernels may be absent here, or "" where the install must have built them."""
    if os.environ.get("FEDPRUNE_NATIVE_KERNELS") == "0":
        return "FEDPRUNE_NATIVE_KERNELS=0 forces the torch fallback"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) here: the install falls back to torch's CSR"
    return ""


# a machine with a compiler must have built the kernels, so these fail there rather than skip
needs_native = pytest.mark.skipif(bool(_native_expected()), reason=_native_expected() or "compiled kernels expected")


@pytest.fixture(autouse=True)
def split_small_work(monkeypatch):
    """Let tiny test layers still split over two threads, so the split itself is tested."""
    monkeypatch.setattr(native, "MIN_WORK_PER_THREAD", 1)

FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def unstructured(rows: int, cols: int, sparsity: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, cols)).astype(np.float32)
    weight[rng.random((rows, cols)) < sparsity] = 0.0
    return weight


def blocky(rows: int, cols: int, block: tuple[int, int], keep: float, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    flags = torch.rand(rows // block[0], cols // block[1], generator=generator) < keep
    mask = block_masks({"w": flags}, {"w": (rows, cols)}, block)["w"].numpy()
    return unstructured(rows, cols, 0.0, seed) * mask


def n_of_m(rows: int, cols: int, n: int, m: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    mask = nm_masks({"w": torch.rand(rows, cols, generator=generator)}, n, m)["w"].numpy()
    return unstructured(rows, cols, 0.0, seed) * mask


def check_all_paths(weight: np.ndarray, batches=(1, 3, 8, 17), threads=(1, 2), seed: int = 0) -> list[str]:
    """Every path that takes the weight (the candidates at least) matches float64 x @ W.T within
    1e-4 of |row| * |x|, in shape too; returns the candidates."""
    paths = candidates(weight)
    generator = torch.Generator().manual_seed(seed)
    for path in PATHS:
        try:
            kernel = build(path, weight)
        except ConfigError:
            assert path not in paths
            continue
        assert kernel.path == path and kernel.shape == weight.shape and kernel.bytes_read >= 0
        for thread_count in threads:
            with torch_threads(thread_count):
                for batch in batches:
                    x = torch.randn(batch, weight.shape[1], generator=generator)
                    want = x.double() @ torch.from_numpy(weight).double().T
                    got = kernel(x)
                    assert got.dtype == torch.float32 and tuple(got.shape) == (batch, weight.shape[0])
                    scale = np.linalg.norm(weight, axis=1)[None, :] * x.norm(dim=1, keepdim=True).numpy()
                    error = (got.double() - want).abs().numpy()
                    assert (error <= 1e-4 * scale + 1e-6).all(), (path, kernel.layout, thread_count, batch)
    return paths


@FAST
@given(rows=st.integers(1, 40), cols=st.integers(1, 70), sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
       seed=st.integers(0, 2**16))
def test_unstructured_paths_match_dense(rows, cols, sparsity, seed):
    paths = check_all_paths(unstructured(rows, cols, sparsity, seed), batches=(1, 5), seed=seed)
    assert paths[0] == "dense" and "csr" in paths


@FAST
@given(block=st.sampled_from([(1, 4), (2, 4), (4, 4), (1, 8), (2, 8), (4, 8), (8, 8), (16, 8)]),
       block_rows=st.integers(1, 4), block_cols=st.integers(1, 4), keep=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       seed=st.integers(0, 2**16))
def test_block_weights_take_the_block_path(block, block_rows, block_cols, keep, seed):
    weight = blocky(block[0] * block_rows, block[1] * block_cols, block, keep, seed)
    assert "block" in check_all_paths(weight, batches=(1, 9), seed=seed)


@FAST
@given(pattern=st.sampled_from([(1, 2), (2, 4), (1, 4), (2, 8), (4, 8), (1, 8)]), rows=st.integers(1, 20),
       groups=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_nm_weights_take_the_nm_path(pattern, rows, groups, seed):
    n, m = pattern
    weight = n_of_m(rows, m * groups, n, m, seed)
    assert "nm" in check_all_paths(weight, batches=(1, 9), seed=seed)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (37, 53), (64, 200)])
def test_edge_shapes_all_zero_and_fully_dense(shape):
    for weight in (unstructured(*shape, 0.8, 1), np.zeros(shape, np.float32), unstructured(*shape, 0.0, 2)):
        check_all_paths(weight, batches=(1, 2, 64, 70))


def test_empty_rows_and_columns_take_the_rows_path():
    weight = unstructured(48, 40, 0.3, 3)
    weight[::3] = 0.0
    weight[:, 5:20] = 0.0
    assert "rows" in check_all_paths(weight)


def test_large_layer_uses_every_vector_tile():
    # 96 entries per row and batches 64 + 16 + 8 + padding exercise the wide tiles and the tails
    for weight in (unstructured(64, 960, 0.9, 4), blocky(64, 512, (8, 8), 0.3, 5), blocky(16, 256, (1, 4), 0.3, 5),
                   n_of_m(32, 512, 2, 4, 6), n_of_m(16, 256, 1, 2, 6), n_of_m(16, 256, 4, 8, 6)):
        check_all_paths(weight, batches=(1, 70, 90), threads=(1, 2))


def test_structures_are_detected():
    assert kernels.block_shape(blocky(32, 64, (16, 16), 0.5, 0)) == (8, 8)
    assert kernels.block_shape(blocky(6, 12, (2, 4), 0.5, 0)) in {(2, 4), (1, 4)}
    assert kernels.block_shape(unstructured(32, 64, 0.5, 0)) is None
    assert kernels.nm_pattern(n_of_m(8, 64, 2, 4, 0)) == (2, 4)
    assert kernels.nm_pattern(n_of_m(8, 64, 1, 8, 0)) == (1, 8)
    assert kernels.nm_pattern(unstructured(8, 64, 0.2, 0)) is None
    weight = unstructured(16, 32, 0.9, 0)
    assert build("dense", weight).bytes_read == 4 * 16 * 32
    assert build("csr", weight).bytes_read == 8 * np.count_nonzero(weight) + 4 * 17


@needs_native
def test_nm_kernel_reads_values_and_one_byte_of_index_per_kept_weight():
    assert build("nm", n_of_m(8, 64, 2, 4, 0)).bytes_read == 5 * 8 * 16 * 2


def test_torch_tensor_and_float64_weights_are_taken():
    weight = unstructured(10, 12, 0.5, 7)
    x = torch.randn(3, 12)
    expected = build("csr", weight)(x)
    assert torch.equal(build("csr", torch.from_numpy(weight))(x), expected)
    assert torch.equal(build("csr", weight.astype(np.float64))(x), expected)


@pytest.mark.parametrize("path, weight, message", [
    ("sparse", np.ones((2, 2), np.float32), "unknown kernel path"),
    ("csr", np.ones(4, np.float32), "2-D"),
    ("csr", np.ones((2, 2, 2), np.float32), "2-D"),
    ("dense", np.zeros((0, 3), np.float32), "at least one row"),
    ("csr", np.array([[1.0, np.nan]], np.float32), "NaN or infinite"),
    ("dense", np.array([[np.inf, 0.0]], np.float32), "NaN or infinite"),
    ("csr", np.ones((2, 2), np.int64), "float"),
    ("csr", [[1.0, 0.0]], "numpy array or torch tensor"),
    ("block", unstructured(8, 16, 0.5, 0), "whole blocks"),
    ("nm", unstructured(8, 16, 0.5, 0), "N:M"),
    ("rows", unstructured(8, 16, 0.0, 0), "all-zero rows"),
])
def test_build_refuses(path, weight, message):
    with pytest.raises(ConfigError, match=message):
        build(path, weight)


@pytest.mark.parametrize("path", ["dense", "csr", "torch-csr"])
def test_wrong_input_is_refused_clearly(path):
    kernel = build(path, unstructured(4, 6, 0.5, 0))
    with pytest.raises(ConfigError, match=r"shape \(batch, 6\)"):
        kernel(torch.randn(2, 5))
    with pytest.raises(ConfigError, match=r"shape \(batch, 6\)"):
        kernel(torch.randn(6))
    with pytest.raises(ConfigError, match="float32"):
        kernel(torch.randn(2, 6, dtype=torch.float64))
    assert tuple(kernel(torch.randn(6, 2).T).shape) == (2, 4)  # non-contiguous x is fine


def test_calibrate_picks_a_candidate_per_batch_size_and_restores_threads():
    weight = unstructured(48, 64, 0.9, 8)
    before = torch.get_num_threads()
    result = calibrate(weight, batch_sizes=(1, 4, 16), threads=2, budget_s=0.02)
    assert torch.get_num_threads() == before
    assert isinstance(result, Calibration)
    assert set(result.choice) == {1, 4, 16}
    assert set(result.choice.values()) <= set(candidates(weight))
    assert set(result.timings) == set(candidates(weight)) and set(result.timings["dense"]) == {1, 4, 16}
    for batch, path in result.choice.items():
        assert result.timings[path][batch] <= result.timings["dense"][batch]
    with pytest.raises(ConfigError, match="batch_sizes"):
        calibrate(weight, batch_sizes=(0,))
    with pytest.raises(ConfigError, match="threads"):
        calibrate(weight, threads=0)


def test_paths_list():
    assert PATHS[:4] == ("dense", "csr", "block", "nm")


@needs_native
def test_install_with_a_compiler_built_the_compiled_module():
    assert native.library() is not None, "compiled kernels missing: run `pip install -e .` (needs a C compiler)"
    assert not build("csr", unstructured(20, 24, 0.8, 9)).layout.endswith("(fallback)")


def test_forced_fallback_is_silent_and_computes_the_layer(monkeypatch):
    monkeypatch.setenv("FEDPRUNE_NATIVE_KERNELS", "0")
    native.library.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert native.library() is None
        assert native.describe() == "torch fallback (no compiled kernels)"
        kernel = build("csr", unstructured(20, 24, 0.8, 9))
        assert kernel.layout.endswith("(fallback)")
        check_all_paths(unstructured(20, 24, 0.8, 9), batches=(1, 3), threads=(1,))
    finally:
        native.library.cache_clear()


def test_missing_compiled_module_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDPRUNE_NATIVE_KERNELS", raising=False)
    monkeypatch.setattr(native, "_HERE", tmp_path)
    assert native._open()[0] is None
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="compiled kernels unavailable"):
            assert native.library() is None
        for weight, path in ((unstructured(20, 24, 0.8, 9), "csr"), (blocky(8, 16, (4, 8), 0.5, 9), "block"),
                             (n_of_m(8, 16, 2, 4, 9), "nm")):
            kernel = build(path, weight)
            assert kernel.path == path and "fallback" in kernel.layout
        check_all_paths(n_of_m(8, 16, 2, 4, 9), batches=(1, 3), threads=(1,))
    finally:
        native.library.cache_clear()
