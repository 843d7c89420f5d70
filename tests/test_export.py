"""The .fpm file: size against dense, encodings, refusal of damaged files, export of a run folder and of a model."""

import json
import struct

import pytest
import torch
from run_folders import write_run_folder
from torch import nn

from fedprune.deploy import fpm
from fedprune.deploy.export import export_model
from fedprune.deploy.footprint import dense_bytes
from fedprune.pruning.masks import apply_masks, density, prunable_parameters
from fedprune.training.models import build_model
from fedprune.pruning.compute import compute_masks
from fedprune.run_folder import ANALYSIS
from fedprune.deploy.runtime import load
from fedprune.validation import ConfigError


def pruned(*args, sparsity=0.9, **options):
    model = build_model(*args, **options)
    masks = compute_masks({n: p.detach() for n, p in prunable_parameters(model).items()}, sparsity=sparsity)
    apply_masks(model, masks)
    return model.eval(), masks


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    model, masks = pruned("cnn1d", (1, 40), 10, channels=8)
    path = tmp_path_factory.mktemp("fpm") / "m.fpm"
    export_model(model, masks, path, metadata={"accuracy": 0.5}, calibrate=False)
    return path


# --- size --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, options", [(("cnn1d", (1, 40), 10), {}),
                                           (("mlp", (1024,), 10), {"hidden": (1024, 1024, 1024)})])
def test_file_at_90_percent_sparsity_is_at_most_015_of_dense(tmp_path, args, options):
    model, masks = pruned(*args, **options)
    privacy = {"epsilon": {"record": None, "client": None}, "delta": 1e-5,
               "mask_channel_epsilon": {"record": 6833.5, "client": 6833.5},
               "mechanism": {"name": "randomized-response", "epsilon_per_decision": 2.0}}
    result = export_model(model, masks, tmp_path / "m.fpm", metadata={"accuracy": 0.9, "privacy": privacy},
                          calibrate=False)
    assert result["bytes"] == (tmp_path / "m.fpm").stat().st_size
    assert result["bytes"] <= 0.15 * dense_bytes(model)


def test_masks_choose_the_smaller_encoding_and_come_back_exactly(tmp_path):
    model = build_model("mlp", (64,), 10, hidden=(256,))
    masks = {"features.0.weight": torch.rand(256, 64, generator=torch.Generator().manual_seed(0)) < 0.005,
             "head.weight": torch.rand(10, 256, generator=torch.Generator().manual_seed(1)) < 0.5}
    with torch.no_grad():
        model.head.weight[0, masks["head.weight"][0]] = 0.0  # kept weights that happen to be zero stay kept
    export_model(model, masks, tmp_path / "m.fpm", calibrate=False)
    header, _ = fpm.read(tmp_path / "m.fpm")
    encodings = {name: entry["encoding"] for name, entry in header["tensors"].items()}
    assert encodings == {"features.0.weight": "indices", "features.0.bias": "dense", "head.weight": "bitmap",
                         "head.bias": "dense"}
    runtime = load(tmp_path / "m.fpm")
    assert set(runtime.masks) == set(masks) and all(torch.equal(runtime.masks[n], m) for n, m in masks.items())
    apply_masks(model, masks)
    assert all(torch.equal(runtime.state[n], v) for n, v in model.state_dict().items())


def test_header_holds_architecture_metadata_and_no_pickle(small_file):
    header, arrays = fpm.read(small_file)
    assert header["spec"] == {"name": "cnn1d", "input_shape": [1, 40], "num_classes": 10, "channels": 8,
                              "kernel_sizes": [5, 3, 3]}
    assert header["metadata"]["accuracy"] == 0.5 and header["metadata"]["density"] == pytest.approx(0.1, abs=1e-3)
    assert all(a.dtype.name in fpm.DTYPES for a in arrays)
    assert b"pickle" not in small_file.read_bytes() and small_file.read_bytes()[:4] == b"FPM1"


# --- damaged files -----------------------------------------------------------------------------

def rewrite(path, target, change):
    data = bytearray(path.read_bytes())
    change(data)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("change, message", [
    (lambda d: d.__setitem__(len(d) - 100, d[len(d) - 100] ^ 0xFF), "checksum"),
    (lambda d: d.__delitem__(slice(len(d) - 500, None)), "truncated"),
    (lambda d: d.__delitem__(slice(10, None)), "truncated"),
    (lambda d: d.__setitem__(slice(0, 4), b"PK\x03\x04"), "not a fedprune model file"),
    (lambda d: d.extend(b"\0" * 8), "after the end"),
])
def test_damaged_files_are_refused_naming_problem_and_fix(small_file, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as error:
        load(rewrite(small_file, tmp_path / "bad.fpm", change))
    assert "`fedprune export`" in str(error.value)  # the fix


def test_newer_format_version_is_refused_even_with_a_valid_checksum(small_file, tmp_path):
    import hashlib

    def newer(data):
        data[4:8] = struct.pack("<I", fpm.VERSION + 1)
        data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    with pytest.raises(ConfigError, match=r"version 2, newer.*upgrade fedprune"):
        load(rewrite(small_file, tmp_path / "new.fpm", newer))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read model file"):
        load(tmp_path / "absent.fpm")


# --- the export API ----------------------------------------------------------------------------

def test_export_refuses_bad_masks_and_foreign_models_before_writing(tmp_path):
    model, masks = pruned("mlp", (16,), 3, hidden=(8,))
    bad = [({"nope.weight": torch.ones(3, 8, dtype=torch.bool)}, "names no tensor"),
           ({"head.weight": torch.ones(3, 8)}, "must be bool"),
           ({"head.weight": torch.ones(8, 3, dtype=torch.bool)}, "has shape")]
    for wrong, message in bad:
        with pytest.raises(ConfigError, match=message):
            export_model(model, wrong, tmp_path / "m.fpm", calibrate=False)
    with pytest.raises(ConfigError, match="reference models"):
        export_model(nn.Sequential(nn.Linear(4, 2)), None, tmp_path / "m.fpm", calibrate=False)
    with pytest.raises(ConfigError, match="batch sizes"):
        export_model(model, masks, tmp_path / "m.fpm", batch_sizes=(0,))
    assert not (tmp_path / "m.fpm").exists()


def test_unmasked_weights_at_pruned_positions_are_zeroed_on_export(tmp_path):
    model, masks = pruned("mlp", (16,), 3, hidden=(8,))
    with torch.no_grad():
        model.head.weight.fill_(1.0)  # the module no longer respects its mask
    export_model(model, masks, tmp_path / "m.fpm", calibrate=False)
    apply_masks(model, masks)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "m.fpm")(x), model(x), rtol=1e-4, atol=1e-5)


# --- a run folder ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "run-a"
    _, model, _, summary = write_run_folder(folder, clients=2, sparsity=0.9, accuracy=0.42)
    return folder, model, summary


def test_export_of_a_run_carries_accuracy_density_and_privacy_report(run_folder, tmp_path, capsys):
    from simulations.cli import main

    folder, model, summary = run_folder
    assert main(["export", str(folder), "-o", str(tmp_path / "run.fpm"), "--no-calibrate"]) == 0
    printed = capsys.readouterr().out
    assert "of the dense float32 state_dict" in printed and "mask channel: record 6834" in printed
    runtime = load(tmp_path / "run.fpm")
    meta = runtime.metadata
    assert meta["accuracy"] == 0.42 and meta["density"] == pytest.approx(summary["density"])
    assert meta["privacy"]["epsilon"] == summary["epsilon"] == {"record": None, "client": None}
    assert meta["privacy"]["mask_channel_epsilon"] == summary["mask_channel_epsilon"]
    assert meta["privacy"]["mechanism"] == summary["mechanism"] and meta["privacy"]["delta"] == 1e-5
    assert meta["source"] == {"kind": "fedprune run", "run": "run-a", "round": 2}
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_mask_only_run_folder_exports_and_analyzes(tmp_path, capsys):
    # Its checkpoint holds keep-probabilities: both tools must rebuild the mask-only coordinator, not the default one.
    from simulations.cli import main

    folder = tmp_path / "mo"
    _, model, masks, _ = write_run_folder(folder, clients=2, sparsity=0.5, accuracy=0.3, mode="mask-only")
    assert main(["export", str(folder), "-o", str(tmp_path / "mo.fpm"), "--no-calibrate"]) == 0
    runtime = load(tmp_path / "mo.fpm")
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), model(x), rtol=1e-4, atol=1e-5)  # frozen weights under the mask
    assert main(["analyze", str(folder)]) == 0
    analysis = json.loads((folder / ANALYSIS).read_text())
    assert analysis["density"] == pytest.approx(density(masks)) and density(masks) == pytest.approx(0.5, abs=1e-3)
    capsys.readouterr()


def test_export_refuses_a_folder_that_is_not_a_finished_run(tmp_path, run_folder):
    from simulations.export import export_run

    with pytest.raises(ConfigError, match="no config.json"):
        export_run(tmp_path, tmp_path / "m.fpm")
    with pytest.raises(ConfigError, match="not a folder"):
        export_run(tmp_path / "absent", tmp_path / "m.fpm")


def test_export_to_a_folder_that_cannot_be_written_exits_2_before_any_work(run_folder, tmp_path, capsys):
    from simulations.cli import main

    folder, _, _ = run_folder
    (tmp_path / "file").write_text("not a folder")
    assert main(["export", str(folder), "-o", str(tmp_path / "file" / "m.fpm"), "--no-calibrate"]) == 2
    assert "is not a folder you can write; pass -o a path in one" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cannot write .*pass a path in a folder you can write"):
        fpm.write(tmp_path / "absent" / "m.fpm", {}, [])
