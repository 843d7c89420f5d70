"""Hugging Face datasets as fedprune datasets: the path flwr-datasets downloads through.

``load_hf("hf:<name or local path>[?key=value&...]")`` returns a :class:`fedprune.data.datasets.Dataset`.
It loads a Hub dataset (network or a filled cache), a folder written by ``save_to_disk``, a
folder of data files, or one parquet/csv/json/arrow file. ``datasets`` is imported inside the
functions, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from fedprune.data.base import Dataset
from fedprune.data.partitioning import global_random_state_kept
from fedprune.validation import ConfigError, probability

HF_OPTIONS = {
    "train": "split to train on (default 'train')",
    "test": "split to test on (default 'test', else 'validation', else a seeded 80/20 split of train)",
    "image": "input column (default: the first Image column, else image/img/pixel_values/pixels/x)",
    "label": "label column (default: the first ClassLabel column, else label/labels/fine_label/target/y)",
    "config": "the dataset's configuration (subset) name",
    "test_fraction": "fraction of train held out when there is no test split (default 0.2)",
}
IMAGE_COLUMNS = ("image", "img", "pixel_values", "pixels", "x")
LABEL_COLUMNS = ("label", "labels", "fine_label", "target", "y")
DATA_FILE_BUILDERS = {"parquet": "parquet", "csv": "csv", "json": "json", "jsonl": "json", "arrow": "arrow"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}


def load_hf(spec: str, *, cache_dir=None, seed: int = 0, **options) -> Dataset:
    """Load ``hf:<name or local path>[?train=..&test=..&image=..&label=..]`` through ``datasets``.

    A folder written by ``save_to_disk`` loads with ``datasets.load_from_disk``; anything else
    (a Hub name, a folder of parquet/csv/image files) with ``datasets.load_dataset``, the call
    flwr-datasets makes. ``cache_dir`` given: Hugging Face's cache goes to ``cache_dir/huggingface``;
    otherwise Hugging Face's own default. Images (PIL) become float32 channel-first arrays in [0, 1]
    (modes other than L/RGB converted to L or RGB); array columns are moved to channel-first
    (a trailing axis of 1, 3 or 4 is read as channels) and integer or [0, 255] values scaled by
    1/255. Labels become int64; string labels are numbered in sorted order. Numpy's and Python's
    global random state are left as found.
    """
    with global_random_state_kept():
        return _load_hf(spec, cache_dir=cache_dir, seed=seed, **options)


def _load_hf(spec: str, *, cache_dir, seed: int, **options) -> Dataset:
    if not isinstance(spec, str) or not spec.startswith("hf:"):
        raise ConfigError(f"a Hugging Face dataset is named hf:<name or local path>, got {spec!r}")
    name, _, query = spec[len("hf:"):].partition("?")
    if not name:
        raise ConfigError("give a dataset after hf:, e.g. hf:ylecun/mnist or hf:/path/to/folder")
    try:
        settings = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError:
        raise ConfigError(f"cannot read the options in {spec!r}; write hf:NAME?key=value&key=value") from None
    for key, value in options.items():
        if key in settings and settings[key] != str(value):
            raise ConfigError(f"hf option {key!r} given twice: {settings[key]!r} in the name, {value!r} as argument")
        settings[key] = value
    unknown = sorted(set(settings) - set(HF_OPTIONS))
    if unknown:
        valid = "; ".join(f"{key}: {text}" for key, text in HF_OPTIONS.items())
        raise ConfigError(f"unknown hf option(s) {', '.join(unknown)}; valid options: {valid}")
    test_fraction = probability("test_fraction", settings.get("test_fraction", 0.2))

    splits = _hf_splits(name, settings.get("config"), cache_dir)
    train = _hf_split(splits, settings.get("train", "train"))
    image_column = settings.get("image") or _find_column(train, "image")
    label_column = settings.get("label") or _find_column(train, "label")
    for column in (image_column, label_column):
        if column not in train.column_names:
            raise ConfigError(f"column {column!r} not in {name}; columns: {', '.join(train.column_names)}")

    x_train, x_test = _hf_images(train, image_column), None
    labels_train, labels_test = _hf_labels(train, label_column), None
    if "test" in settings:
        test = _hf_split(splits, settings["test"])
    else:
        test = next((splits[s] for s in ("test", "validation") if s in splits and splits[s] is not train), None)
    if test is not None:
        x_test, labels_test = _hf_images(test, image_column), _hf_labels(test, label_column)
    y_train, y_test, num_classes = _number_labels(train.features[label_column], labels_train, labels_test)
    if test is None:
        x_train, x_test, y_train, y_test = _split(x_train, y_train, test_fraction, seed)
    return Dataset(f"hf:{name}", x_train, y_train, x_test, y_test, num_classes=num_classes,
                   input_shape=x_train.shape[1:])


def _hf_splits(name: str, config: str | None, cache_dir) -> dict:
    import datasets

    path = Path(name).expanduser()
    hf_cache = str(Path(cache_dir) / "huggingface") if cache_dir is not None else None
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file() and path.suffix.lstrip(".") in DATA_FILE_BUILDERS:
            builder = DATA_FILE_BUILDERS[path.suffix.lstrip(".")]
            loaded = datasets.load_dataset(builder, data_files=str(path), cache_dir=hf_cache)
        else:
            loaded = datasets.load_dataset(str(path) if path.exists() else name, config, cache_dir=hf_cache)
    except (FileNotFoundError, ConnectionError) as error:
        raise ConfigError(f"cannot load Hugging Face dataset {name!r}: {error}. Check the name or path; "
                          "a Hub dataset needs the network (HF_DATASETS_OFFLINE=1 forbids it) "
                          "or a filled cache") from error
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _hf_split(splits: dict, split: str):
    try:
        return splits[split]
    except KeyError:
        raise ConfigError(f"no split {split!r}; splits: {', '.join(splits)}") from None


def _find_column(table, role: str) -> str:
    import datasets

    kind = datasets.Image if role == "image" else datasets.ClassLabel
    names = IMAGE_COLUMNS if role == "image" else LABEL_COLUMNS
    for column, feature in table.features.items():
        if isinstance(feature, kind):
            return column
    for column in names:
        if column in table.column_names:
            return column
    raise ConfigError(f"cannot tell which column holds the {role}; pass {role}=COLUMN "
                      f"(hf:NAME?{role}=COLUMN); columns: {', '.join(table.column_names)}")


def _hf_images(table, column: str) -> np.ndarray:
    import datasets

    feature = table.features[column]
    if isinstance(feature, datasets.Image) and len(table):
        # Decode every image to the mode of the first, as L or RGB: images of mixed modes (a few
        # grayscale among RGB, as in some Hub datasets) would otherwise not stack into one array.
        mode = feature.mode or table[0][column].mode
        target = mode if mode in ("L", "RGB") else "L" if mode in GRAY_MODES else "RGB"
        if feature.mode != target:
            table = table.cast_column(column, datasets.Image(mode=target))
    values = table.select_columns([column]).with_format("numpy")[:][column]
    if values.dtype == object:
        raise ConfigError(f"examples in column {column!r} differ in shape; resize them to one shape first")
    if values.ndim < 2 or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise ConfigError(f"column {column!r} holds {values.dtype} values of shape {values.shape[1:]}, "
                          "not images or arrays")
    if isinstance(feature, datasets.Image):
        values = values[:, None] if values.ndim == 3 else values.transpose(0, 3, 1, 2)  # HW / HWC -> CHW
    elif values.ndim == 2:
        values = values[:, None]  # (n, L) -> (n, 1, L)
    elif values.ndim == 3 and values.shape[1] > 4:
        values = values[:, None]  # (n, H, W) -> (n, 1, H, W)
    elif values.ndim == 4 and values.shape[-1] in (1, 3, 4) and values.shape[1] not in (1, 3, 4):
        values = values.transpose(0, 3, 1, 2)  # HWC -> CHW
    return _unit_range(values, column)


def _unit_range(values: np.ndarray, column: str) -> np.ndarray:
    if values.dtype == bool:
        return values.astype(np.float32)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if low < 0 or high > 255:
        raise ConfigError(f"column {column!r} has values in [{low}, {high}]; expected [0, 1] or [0, 255]")
    scale = 255.0 if np.issubdtype(values.dtype, np.integer) or high > 1 else 1.0
    return np.ascontiguousarray(values, dtype=np.float32) / np.float32(scale)


def _hf_labels(table, column: str) -> np.ndarray:
    values = table.select_columns([column]).with_format("numpy")[:][column]
    if values.ndim != 1:
        raise ConfigError(f"label column {column!r} must hold one label per example, got shape {values.shape[1:]}")
    return values


def _number_labels(feature, train: np.ndarray, test: np.ndarray | None):
    import datasets

    test = np.asarray([], dtype=train.dtype) if test is None else test
    if isinstance(feature, datasets.ClassLabel):
        num_classes = feature.num_classes
    elif np.issubdtype(train.dtype, np.integer) and np.issubdtype(test.dtype, np.integer):
        num_classes = int(max(train.max(initial=0), test.max(initial=0))) + 1
    else:  # strings or other names: number them in sorted order
        names = np.unique(np.concatenate([train.astype(str), test.astype(str)]))
        train, test = np.searchsorted(names, train.astype(str)), np.searchsorted(names, test.astype(str))
        num_classes = len(names)
    train, test = train.astype(np.int64), test.astype(np.int64)
    if min(train.min(initial=0), test.min(initial=0)) < 0:
        raise ConfigError("labels must be >= 0")
    return train, test, int(num_classes)


def _split(x, y, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    except ValueError:  # a class too small to stratify
        return train_test_split(x, y, test_size=test_fraction, random_state=seed)
