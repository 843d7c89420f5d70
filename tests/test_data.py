"""Tests for fedprune.data.datasets and fedprune.data.hf: the offline datasets, the cache, the Hugging Face path."""

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fedprune.data.datasets as data
from fedprune.data.datasets import load_dataset
from fedprune.validation import ConfigError


def global_states():
    return np.random.get_state(), random.getstate(), torch.random.get_rng_state()


def assert_same_states(before, after):
    (np_before, py_before, torch_before), (np_after, py_after, torch_after) = before, after
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:]
    assert py_before == py_after
    assert torch.equal(torch_before, torch_after)


@pytest.fixture(scope="session")
def mnist1d(cache_dir):
    return load_dataset("mnist1d", cache_dir=cache_dir)


# --- MNIST-1D -----------------------------------------------------------------------------------


def test_mnist1d_generates_once_then_reads_the_cache(tmp_path, monkeypatch):
    notice = data.generation_notice("mnist1d", cache_dir=tmp_path)  # shown before a run generates its data
    assert notice.startswith("generating 10,000 MNIST-1D samples once") and str(tmp_path) in notice
    before = global_states()
    first = load_dataset("mnist1d", cache_dir=tmp_path)  # generates, leaving the global generators alone
    assert_same_states(before, global_states())
    assert data.generation_notice("mnist1d", cache_dir=tmp_path) is None  # cached: nothing to announce
    assert data.generation_notice("digits", cache_dir=tmp_path) is None  # ships with scikit-learn

    assert first.x_train.shape == (8000, 1, 40) and first.x_test.shape == (2000, 1, 40)
    assert first.y_train.shape == (8000,) and first.y_test.shape == (2000,)
    assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int64
    assert first.num_classes == 10 and first.input_shape == (1, 40)
    # The generator makes 1000 examples per class, then standardises all 10000 to mean 0, std 1.
    labels = np.concatenate([first.y_train, first.y_test])
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))
    inputs = np.concatenate([first.x_train, first.x_test]).astype(np.float64)
    assert abs(inputs.mean()) < 1e-5 and abs(inputs.std() - 1) < 1e-5

    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("mnist1d-") and files[0].endswith(".npz")

    def no_generation(args):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(data, "_generate_mnist1d", no_generation)
    before = global_states()
    second = load_dataset("mnist1d", cache_dir=tmp_path, seed=5)  # seed is ignored: a fixed benchmark
    assert_same_states(before, global_states())
    for split in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(first, split), getattr(second, split))


@pytest.mark.parametrize(
    "options",
    [{"num_samples": 2000}, {"num_samples": 1007, "seed": 7, "shuffle_seq": True, "padding": [10, 20]}],
    ids=["published-settings", "odd-size-shuffled-other-padding"],
)
def test_bulk_mnist1d_is_bit_for_bit_the_packages(options):
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    args = data.mnist1d_args(**options)
    with data.global_random_state_kept():  # the package reseeds numpy's and Python's global generators
        reference = make_dataset(ObjectView(dict(args)))
    bulk = data._generate_mnist1d(args)
    for key in ("x", "y", "x_test", "y_test"):
        assert bulk[key].dtype == reference[key].dtype and np.array_equal(bulk[key], reference[key]), key


def test_mnist1d_cache_location_follows_the_environment(tmp_path, monkeypatch, mnist1d):
    monkeypatch.setenv("FEDPRUNE_CACHE", str(tmp_path / "from-env"))
    monkeypatch.setattr(data, "_generate_mnist1d", lambda args: _raw(mnist1d))
    load_dataset("mnist1d")
    assert len(list((tmp_path / "from-env").glob("mnist1d-*.npz"))) == 1
    assert data.cache_root(tmp_path) == tmp_path  # an explicit folder wins over the environment


def _raw(dataset):
    """What mnist1d's make_dataset returns, rebuilt from a loaded dataset."""
    return {"x": dataset.x_train[:, 0].astype(np.float64), "y": dataset.y_train,
            "x_test": dataset.x_test[:, 0].astype(np.float64), "y_test": dataset.y_test}


@pytest.mark.parametrize("corruption", ["empty", "garbage", "truncated", "zeroed-middle", "wrong-arrays"])
def test_mnist1d_regenerates_a_corrupt_cache_file(tmp_path, monkeypatch, mnist1d, corruption):
    calls = []
    monkeypatch.setattr(data, "_generate_mnist1d", lambda args: calls.append(args) or _raw(mnist1d))
    load_dataset("mnist1d", cache_dir=tmp_path)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    good = path.read_bytes()
    if corruption == "wrong-arrays":  # readable, but not what this generator makes
        np.savez(path, x_train=np.zeros((3, 2)), y_train=np.zeros(3), x_test=np.zeros((1, 2)), y_test=np.zeros(1))
    else:
        path.write_bytes({"empty": b"", "garbage": b"not an npz file" * 10, "truncated": good[: len(good) // 2],
                          "zeroed-middle": good[:1000] + bytes(4000) + good[5000:]}[corruption])
    calls.clear()
    reloaded = load_dataset("mnist1d", cache_dir=tmp_path)
    assert len(calls) == 1
    assert np.array_equal(reloaded.x_train, mnist1d.x_train) and np.array_equal(reloaded.y_test, mnist1d.y_test)
    assert path.read_bytes() == good  # rewritten whole
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_mnist1d_options_change_the_cache_key(tmp_path):
    small = load_dataset("mnist1d", cache_dir=tmp_path, num_samples=500)
    assert small.x_train.shape == (400, 1, 40) and small.x_test.shape == (100, 1, 40)
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    with pytest.raises(ConfigError, match="unknown mnist1d option.*num_samples"):
        load_dataset("mnist1d", cache_dir=tmp_path, samples=500)


def test_loading_leaves_global_random_state_alone_in_a_fresh_process(cache_dir):
    # In this process scikit-learn and datasets are imported already; their imports draw from
    # Python's random (datasets through rich), so check the first import in a fresh interpreter.
    code = textwrap.dedent(f"""
        import random, numpy as np
        before = np.random.get_state(), random.getstate()
        from fedprune.data.datasets import load_dataset, partition
        load_dataset("digits")
        load_dataset("mnist1d", cache_dir={str(cache_dir)!r})
        partition(np.arange(60) % 3, 4, "dirichlet", seed=0)
        after = np.random.get_state(), random.getstate()
        assert np.array_equal(before[0][1], after[0][1]) and before[0][2:] == after[0][2:], "numpy"
        assert before[1] == after[1], "python random"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]


# --- digits -------------------------------------------------------------------------------------


def test_digits_shapes_range_and_stratified_split():
    from sklearn.datasets import load_digits

    digits = load_dataset("digits")
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    both = np.concatenate([digits.x_train, digits.x_test])
    assert both.min() == 0.0 and both.max() == 1.0

    reference = load_digits()
    total = np.bincount(reference.target, minlength=10)
    # Stratified: every class holds 20% of its examples out, up to rounding.
    assert np.all(np.abs(np.bincount(digits.y_test, minlength=10) - 0.2 * total) <= 1)
    # Nothing lost or duplicated: the splits together are the original images, divided by 16.
    rows = np.concatenate([both.reshape(-1, 64) * 16, np.concatenate([digits.y_train, digits.y_test])[:, None]], 1)
    expected = np.concatenate([reference.data, reference.target[:, None]], 1)
    assert np.array_equal(np.unique(rows, axis=0), np.unique(expected, axis=0))
    assert len(np.unique(rows, axis=0)) == len(np.unique(expected, axis=0))


def test_digits_split_follows_the_seed():
    first, again, other = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert np.array_equal(first.y_train, again.y_train) and np.array_equal(first.x_test, again.x_test)
    assert not np.array_equal(first.y_train, other.y_train)
    with pytest.raises(ConfigError, match="digits takes no options"):
        load_dataset("digits", num_samples=10)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        load_dataset("digits", seed=-1)


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        load_dataset("mnist")
    assert "mnist1d" in str(error.value) and "digits" in str(error.value) and "hf:" in str(error.value)
    with pytest.raises(ConfigError, match="must be a string"):
        load_dataset(None)


# --- Hugging Face, driven offline with small local datasets ---------------------------------------


def test_hf_save_to_disk_grayscale_images_with_classlabel(tmp_path):
    import datasets
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, size=(10, 6, 5), dtype=np.uint8)
    labels = [i % 3 for i in range(10)]
    features = datasets.Features({"picture": datasets.Image(), "digit": datasets.ClassLabel(names=list("abcd"))})
    table = datasets.Dataset.from_dict({"picture": [Image.fromarray(a) for a in images], "digit": labels},
                                       features=features)
    datasets.DatasetDict({"train": table.select(range(7)), "test": table.select(range(7, 10))}).save_to_disk(
        tmp_path / "gray")

    loaded = load_dataset(f"hf:{tmp_path / 'gray'}", cache_dir=tmp_path / "cache")
    assert loaded.name == f"hf:{tmp_path / 'gray'}"
    assert loaded.x_train.shape == (7, 1, 6, 5) and loaded.x_test.shape == (3, 1, 6, 5)
    assert loaded.input_shape == (1, 6, 5) and loaded.x_train.dtype == np.float32
    assert np.array_equal(loaded.x_train[:, 0], images[:7].astype(np.float32) / 255)
    assert np.array_equal(loaded.x_test[:, 0], images[7:].astype(np.float32) / 255)
    assert loaded.y_train.tolist() == labels[:7] and loaded.y_test.tolist() == labels[7:]
    assert loaded.num_classes == 4  # from the ClassLabel, even though class "d" has no example


def test_hf_mixed_image_modes_and_a_seeded_split(tmp_path):
    import datasets
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, size=(12, 4, 4, 3), dtype=np.uint8)
    rgb[5] = rgb[5, :, :, :1]  # one grayscale image among RGB ones, as in some Hub datasets
    pictures = [Image.fromarray(a[:, :, 0] if i == 5 else a) for i, a in enumerate(rgb)]
    assert pictures[5].mode == "L" and pictures[0].mode == "RGB"
    ids = list(range(12))
    datasets.Dataset.from_dict({"img": pictures, "y": [i % 3 for i in ids]}).save_to_disk(tmp_path / "rgb")

    loaded = load_dataset(f"hf:{tmp_path / 'rgb'}", cache_dir=tmp_path / "cache", seed=0)
    assert loaded.x_train.shape == (9, 3, 4, 4) and loaded.x_test.shape == (3, 3, 4, 4)
    assert loaded.num_classes == 3  # integer labels without a ClassLabel: max + 1
    assert sorted(loaded.y_test.tolist()) == [0, 1, 2]  # stratified
    expected = rgb.transpose(0, 3, 1, 2).astype(np.float32) / 255
    found = np.concatenate([loaded.x_train, loaded.x_test])
    assert np.array_equal(np.unique(found, axis=0), np.unique(expected, axis=0))
    again = load_dataset(f"hf:{tmp_path / 'rgb'}", cache_dir=tmp_path / "cache", seed=0)
    assert np.array_equal(again.x_test, loaded.x_test)


def test_hf_parquet_arrays_string_labels_and_column_options(tmp_path):
    import datasets

    n = 20
    names = ["dog", "cat", "bird"]
    pixels = np.random.default_rng(2).integers(0, 256, size=(n, 7)).astype(np.int64)
    pixels[:, 0] = np.arange(n)  # the first pixel identifies the example
    features = np.random.default_rng(3).random((n, 2, 5)).astype(np.float32)
    datasets.Dataset.from_dict({
        "pixels": pixels.tolist(), "features": features.tolist(),
        "target": [names[i % 3] for i in range(n)], "kind": [i % 4 for i in range(n)],
    }).to_parquet(tmp_path / "table.parquet")

    loaded = load_dataset(f"hf:{tmp_path / 'table.parquet'}?test_fraction=0.25", cache_dir=tmp_path / "cache")
    assert loaded.x_train.shape == (15, 1, 7) and loaded.x_test.shape == (5, 1, 7)
    assert loaded.num_classes == 3
    for x, y in ((loaded.x_train, loaded.y_train), (loaded.x_test, loaded.y_test)):
        example = np.rint(x[:, 0, 0] * 255).astype(int)
        assert np.array_equal(x[:, 0], pixels[example].astype(np.float32) / 255)
        # Names are numbered in sorted order: bird 0, cat 1, dog 2.
        assert y.tolist() == [sorted(names).index(names[i % 3]) for i in example]

    chosen = load_dataset(f"hf:{tmp_path / 'table.parquet'}?image=features", label="kind",
                          cache_dir=tmp_path / "cache")
    assert chosen.x_train.shape == (16, 2, 5) and chosen.num_classes == 4
    rows = np.concatenate([chosen.x_train, chosen.x_test])
    assert np.array_equal(np.unique(rows, axis=0), np.unique(features, axis=0))  # [0, 1] floats: not rescaled


def test_hf_errors_name_the_fix(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"x": [[1, 2]] * 4, "label": [0, 1] * 2}).save_to_disk(tmp_path / "tiny")
    spec = f"hf:{tmp_path / 'tiny'}"
    with pytest.raises(ConfigError, match="unknown hf option.*colour.*valid options: train"):
        load_dataset(f"{spec}?colour=red", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="column 'pixels' not in .*columns: x, label"):
        load_dataset(spec, image="pixels", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="no split 'validation'; splits: train"):
        load_dataset(spec, test="validation", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\)"):
        load_dataset(spec, test_fraction=1.5, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="given twice"):
        load_dataset(f"{spec}?label=label", label="x", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="cannot load Hugging Face dataset"):
        load_dataset(f"hf:{tmp_path / 'missing'}", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="give a dataset after hf:"):
        load_dataset("hf:")
    with pytest.raises(ConfigError, match="named hf:"):
        data.load_hf("digits")


def test_dataset_checks_its_arrays():
    x, y = np.zeros((4, 1, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ConfigError, match="float32"):
        data.Dataset("d", x.astype(np.float64), y, x, y, num_classes=2, input_shape=(1, 3))
    with pytest.raises(ConfigError, match="do not match input shape"):
        data.Dataset("d", x, y, x, y[:3], num_classes=2, input_shape=(1, 3))
    with pytest.raises(ConfigError, match=r"lie in \[0, 2\)"):
        data.Dataset("d", x, y + 2, x, y, num_classes=2, input_shape=(1, 3))
    assert json.dumps(data.Dataset("d", x, y, x, y, num_classes=2, input_shape=[1, 3]).input_shape) == "[1, 3]"


# --- populations: MNIST-1D generated at the size the clients need ---------------------------------

def test_sized_asks_mnist1d_for_at_least_the_training_examples_wanted():
    assert data.sized("mnist1d", 0) == {}
    for wanted in (1, 7, 8000, 16_001, 160_000):
        samples = data.sized("mnist1d", wanted)["num_samples"]
        split = data.mnist1d_args()["train_split"]
        assert int(samples * split) >= wanted > int((samples - 1) * split)  # the least that is enough
    with pytest.raises(ConfigError, match="only mnist1d is generated at a chosen size; digits has a fixed size"):
        data.sized("digits", 100)


def test_test_examples_evaluates_the_first_of_the_test_split_and_refuses_more_than_it_holds():
    from fedprune.config import RunConfig
    from fedprune.federated.local import check_data, held_out, run_dataset

    whole = run_dataset(RunConfig())
    x, y = held_out(RunConfig(test_examples=300))
    assert np.array_equal(x, whole.x_test[:300]) and np.array_equal(y, whole.y_test[:300])
    assert len(held_out(RunConfig())[1]) == len(whole.y_test) == 2000
    with pytest.raises(ConfigError, match="test-examples 2001 exceeds the 2000 examples of mnist1d's test split"):
        check_data(RunConfig(test_examples=2001))


def test_examples_per_client_gives_every_client_its_share_at_a_thousand_clients():
    from fedprune.config import RunConfig
    from fedprune.federated.local import check_data, client_data, run_dataset

    config = RunConfig(num_clients=1000, examples_per_client=12, partitioner="iid")
    check_data(config)
    assert len(run_dataset(config).y_train) == 12_000
    assert {len(client_data(config, i, 1000)[1]) for i in (0, 499, 999)} == {12}
    with pytest.raises(ConfigError, match="examples-per-client sizes the generated MNIST-1D; digits has a fixed size"):
        RunConfig(dataset="digits", model="mlp", examples_per_client=5)
    with pytest.raises(ConfigError, match="cannot split mnist1d's 8000 training examples among 1000 clients"):
        check_data(RunConfig(num_clients=1000))  # the published size under Dirichlet(0.5): refused before work
