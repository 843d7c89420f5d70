"""Reference datasets: MNIST-1D and scikit-learn's digits offline, any Hugging Face dataset online.

``load_dataset(name)`` returns a frozen :class:`Dataset` of numpy arrays: float32 inputs shaped
``(n, *input_shape)`` with ``input_shape`` channel-first, and int64 labels in
``[0, num_classes)``. Names: ``"mnist1d"``, ``"digits"`` and ``"hf:<name or local path>"``.

Heavy dependencies (mnist1d, scikit-learn, datasets) are imported inside the loaders, so a device
that only runs inference never needs them. Loading leaves numpy's and Python's global random
state as found. The Hugging Face loader lives in :mod:`fedprune.data.hf`; partitioning and
loaders in :mod:`fedprune.data.partitioning`; both are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from fedprune.data.base import Dataset  # noqa: F401  (re-exported: the loaders' type)
from fedprune.data.partitioning import global_random_state_kept, make_loader, partition  # noqa: F401  (re-exported)
from fedprune.validation import ConfigError, pick

MNIST1D_NUM_SAMPLES = 10_000  # the package default is 5000; 10000 gives 8000 train / 2000 test
CACHE_FORMAT = 1  # bump when the cached .npz layout changes


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder fedprune caches generated data in: cache_dir, else $FEDPRUNE_CACHE, else ~/.cache/fedprune."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FEDPRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fedprune"


def load_dataset(name: str, *, cache_dir: str | os.PathLike | None = None, seed: int = 0, **options) -> Dataset:
    """Load a dataset by name.

    - ``"mnist1d"``: generated locally, bit for bit as the mnist1d package generates it, with its
      published settings (seed 42, the package's own 80/20 split) and 10000 samples, cached as .npz under
      :func:`cache_root`, keyed by the generator's arguments. ``options`` override generator
      arguments (e.g. ``num_samples=4000``). ``seed`` is not used: MNIST-1D is a fixed benchmark.
    - ``"digits"``: scikit-learn's 8x8 digits scaled to [0, 1], stratified 80/20 split by ``seed``.
    - ``"hf:<name or local path>"``: see :func:`load_hf`; ``options`` and a ``?key=value&...``
      query select splits and columns.
    """
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if name.startswith("hf:"):
        return load_hf(name, cache_dir=cache_dir, seed=int(seed), **options)
    try:
        loader = pick("dataset", name, DATASETS)
    except ConfigError as error:
        raise ConfigError(f"{error}; or hf:<name or local path> for a Hugging Face dataset") from None
    with global_random_state_kept():  # scikit-learn's import draws from Python's random
        return loader(cache_dir=cache_dir, seed=int(seed), **options)


def sized(name: str, train_examples: int) -> dict:
    """``load_dataset`` options that give dataset ``name`` at least ``train_examples`` training examples.

    0: the dataset as published ({}). Only MNIST-1D is generated, so only it can be sized.
    """
    if not train_examples:
        return {}
    if name != "mnist1d":
        raise ConfigError(f"only mnist1d is generated at a chosen size; {name} has a fixed size")
    split = mnist1d_args()["train_split"]
    samples = math.ceil(train_examples / split)
    while int(samples * split) < train_examples:  # mnist1d keeps the first int(num_samples * split) for training
        samples += 1
    return {"num_samples": samples}


# --- MNIST-1D ---------------------------------------------------------------------------------


def mnist1d_args(**overrides) -> dict:
    """The generator arguments fedprune uses: the package's defaults, 10000 samples, no URL."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # never download: fedprune always generates locally
    args["num_samples"] = MNIST1D_NUM_SAMPLES
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise ConfigError(f"unknown mnist1d option(s) {', '.join(unknown)}; valid: {', '.join(sorted(args))}")
    args.update(overrides)
    return args


def generation_notice(name: str, *, cache_dir: str | os.PathLike | None = None, **options) -> str | None:
    """What to show before ``load_dataset(name, **options)`` generates data it has not cached yet, else None."""
    if name != "mnist1d":
        return None
    args = mnist1d_args(**options)
    path = _mnist1d_cache_path(cache_root(cache_dir), args)
    if path.exists():
        return None
    return f"generating {args['num_samples']:,} MNIST-1D samples once (later runs read them from {path})"


def _mnist1d_cache_path(root: Path, args: dict) -> Path:
    from importlib.metadata import version

    key = json.dumps({"args": args, "mnist1d": version("mnist1d"), "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return root / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _generate_mnist1d(args: dict) -> dict:
    """The package's dataset for ``args``, generated in bulk (:mod:`fedprune.data.mnist1d_fast`)."""
    from fedprune.data.mnist1d_fast import make_dataset

    return make_dataset(args)


def _mnist1d_dataset(arrays: dict, args: dict) -> Dataset:
    length = args["final_seq_length"]
    if arrays["x_train"].shape[1:] != (1, length):
        raise ConfigError(f"mnist1d: inputs of shape {arrays['x_train'].shape[1:]}, expected (1, {length})")
    return Dataset("mnist1d", num_classes=10, input_shape=(1, length), **arrays)


def _read_mnist1d_cache(path: Path, args: dict) -> Dataset | None:
    """The cached dataset, or None when the file is missing, unreadable or not what ``args`` make."""
    try:
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in ("x_train", "y_train", "x_test", "y_test")}
        return _mnist1d_dataset(arrays, args)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):  # ConfigError is a ValueError
        return None  # corrupt, truncated or foreign: regenerate and overwrite


def _load_mnist1d(*, cache_dir=None, seed: int = 0, **options) -> Dataset:
    del seed  # the benchmark is fixed by the generator's own seed
    args = mnist1d_args(**options)
    path = _mnist1d_cache_path(cache_root(cache_dir), args)
    dataset = _read_mnist1d_cache(path, args)
    if dataset is None:
        raw = _generate_mnist1d(args)
        arrays = {
            "x_train": np.asarray(raw["x"], np.float32)[:, None, :],  # (n, 40) -> (n, 1, 40)
            "y_train": np.asarray(raw["y"], np.int64),
            "x_test": np.asarray(raw["x_test"], np.float32)[:, None, :],
            "y_test": np.asarray(raw["y_test"], np.int64),
        }
        dataset = _mnist1d_dataset(arrays, args)
        _write_npz(path, arrays, args)
    return dataset


def _write_npz(path: Path, arrays: dict, args: dict) -> None:
    """Write atomically: a reader never sees a half-written cache file.

    The temporary file is opened with mode 0o666 so the umask applies (mkstemp's 0o600 would
    hide a shared cache from other users).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, args=np.array(json.dumps(args, sort_keys=True)), **arrays)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- scikit-learn digits ----------------------------------------------------------------------


def _load_digits(*, cache_dir=None, seed: int = 0, **options) -> Dataset:
    del cache_dir  # ships with scikit-learn
    if options:
        raise ConfigError(f"digits takes no options, got {', '.join(sorted(options))}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return Dataset("digits", x_train, y_train, x_test, y_test, num_classes=10, input_shape=(1, 8, 8))


DATASETS = {"mnist1d": _load_mnist1d, "digits": _load_digits}


def load_hf(spec: str, *, cache_dir=None, seed: int = 0, **options) -> Dataset:
    """Load ``hf:<name or local path>``: see :func:`fedprune.data.hf.load_hf`."""
    from fedprune.data.hf import load_hf as load

    return load(spec, cache_dir=cache_dir, seed=seed, **options)
