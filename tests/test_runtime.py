"""The runtime against the masked torch model: shrunk channels, folded biases, recorded kernel paths, infer CLI."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprune.deploy import fpm, kernels
from fedprune.deploy.export import export_model
from fedprune.pruning.masks import apply_masks, prunable_parameters
from fedprune.training.models import build_model
from fedprune.pruning.compute import compute_masks
from fedprune.deploy.runtime import RuntimeModel, load
from fedprune.validation import ConfigError

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = {
    "mlp": (("mlp", (1, 8, 8), 10), {"hidden": (32, 16)}),
    "cnn1d": (("cnn1d", (1, 40), 10), {"channels": 16}),
    "cnn2d": (("cnn2d", (1, 8, 8), 10), {"channels": (8, 16)}),
}


def masked_model(name: str, structure: str, bias: float | None = None, sparsity: float = 0.9):
    """A reference model pruned by magnitude; ``bias`` overwrites every bias (pruned units included)."""
    args, options = ARCHITECTURES[name]
    model = build_model(*args, seed=1, **options)
    if bias is not None:
        with torch.no_grad():
            for prefix, module in model.named_modules():
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(bias + 0.1 * torch.arange(module.bias.numel()) / module.bias.numel())
    params = {n: p.detach() for n, p in prunable_parameters(model).items()}
    masks = compute_masks(params, sparsity=sparsity, distribution="uniform", structure=structure,
                          scorer="l1_units" if structure == "units" else "magnitude")
    apply_masks(model, masks)
    return model.eval(), masks


def inputs_for(model, count=33, seed=0):
    return torch.randn((count, *model.spec["input_shape"]), generator=torch.Generator().manual_seed(seed))


def check_same(runtime, model, x):
    with torch.no_grad():
        expected = model(x)
    got = runtime(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("structure, bias", [("unstructured", None), ("units", None), ("units", 0.5),
                                             ("units", -0.5)])
def test_runtime_equals_masked_torch_model(tmp_path, name, structure, bias):
    model, masks = masked_model(name, structure, bias)
    export_model(model, masks, tmp_path / "m.fpm", calibrate=False)
    runtime = load(tmp_path / "m.fpm")
    check_same(runtime, model, inputs_for(model))
    check_same(runtime, model, inputs_for(model, count=1, seed=1))
    computing = [s for s in runtime.steps if s.kind in ("linear", "conv")]
    if structure == "units":  # whole units pruned: every hidden layer runs physically smaller
        assert all(s.units[0] < s.units[1] for s in computing[:-1])
        assert computing[-1].units[0] == computing[-1].units[1]  # the output layer keeps all rows
    for name_, mask in masks.items():
        assert torch.equal(runtime.masks[name_], mask)


def test_constant_channels_with_padding_fold_into_a_bias_map(tmp_path):
    # Pruned conv channels with positive bias output relu(bias) > 0; the next conv pads with zeros,
    # so their contribution differs at the borders: it must become a bias map, not be dropped.
    model, masks = masked_model("cnn1d", "units", bias=0.5)
    export_model(model, masks, tmp_path / "m.fpm", calibrate=False)
    runtime = load(tmp_path / "m.fpm")
    convs = [s for s in runtime.steps if s.kind == "conv"]
    assert any(s.bias_map is not None for s in convs[1:])
    check_same(runtime, model, inputs_for(model))
    # Dropping the constants instead would change the logits: the fold is not a no-op.
    dropped = RuntimeModel(*fpm.read(tmp_path / "m.fpm"))
    for step in dropped.steps:
        if step.kind == "conv" and step.bias_map is not None:
            step.bias_map.zero_()
    assert not torch.allclose(dropped(inputs_for(model)), runtime(inputs_for(model)), atol=1e-4)


def test_model_whose_inputs_reach_nothing_outputs_its_constant_logits(tmp_path):
    model, masks = masked_model("cnn2d", "unstructured")
    masks = {name: torch.zeros_like(mask) if name == "features.0.weight" else mask for name, mask in masks.items()}
    apply_masks(model, masks)
    export_model(model, masks, tmp_path / "m.fpm", calibrate=False)
    runtime = load(tmp_path / "m.fpm")
    assert [s.kind for s in runtime.steps] == ["constant"]
    check_same(runtime, model, inputs_for(model))


def test_linear_layers_run_the_recorded_kernel_path(tmp_path):
    model, masks = masked_model("mlp", "unstructured")
    export_model(model, masks, tmp_path / "m.fpm", batch_sizes=(1, 64), budget_s=0.02)
    header, arrays = fpm.read(tmp_path / "m.fpm")
    linear = [layer for layer in header["layers"] if layer["kind"] == "linear"]
    assert len(linear) == 3 and all(set(layer["paths"]) == {"1", "64"} for layer in linear)
    assert all(path in kernels.PATHS for layer in linear for path in layer["paths"].values())
    # Force a non-dense path per batch size: the runtime must build and use exactly it.
    shrunk = [step.weight for step in load(tmp_path / "m.fpm").steps if step.kind == "linear"]
    usable = set.intersection(*(set(kernels.candidates(weight)) for weight in shrunk)) - {"dense"}
    forced = "csr" if "csr" in usable else sorted(usable)[0]
    for layer in linear:
        layer["paths"] = {"1": forced, "64": "dense"}
    fpm.write(tmp_path / "forced.fpm", header, arrays)
    runtime = load(tmp_path / "forced.fpm")
    for layer in linear:
        assert {k.path for k in runtime.kernels[layer["name"]].values()} == {forced, "dense"}
        assert runtime.path_for(layer, 1) == forced and runtime.path_for(layer, 64) == "dense"
    check_same(runtime, model, inputs_for(model, count=1))
    check_same(runtime, model, inputs_for(model, count=64))


def test_uncalibrated_batch_sizes_use_the_nearest_calibrated_one():
    layer = {"paths": {"1": "csr", "64": "dense"}}
    path_for = RuntimeModel.path_for
    assert [path_for(None, layer, b) for b in (1, 2, 7, 8, 9, 64, 1000)] == \
        ["csr", "csr", "csr", "csr", "dense", "dense", "dense"]  # 8 is as near to 1 as to 64: the smaller wins


def test_infer_cli_predicts_without_flower_ray_or_matplotlib(tmp_path):
    model, masks = masked_model("cnn1d", "units", bias=0.5)
    export_model(model, masks, tmp_path / "m.fpm", budget_s=0.02)
    x = inputs_for(model, count=20).numpy()
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from simulations.cli import main
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            assert main(["infer", {str(tmp_path / 'm.fpm')!r}, {str(tmp_path / 'x.npy')!r}, "--batch-size", "8",
                         "--repeats", "3"]) == 0
            assert main(["infer", {str(tmp_path / 'm.fpm')!r}, {str(tmp_path / 'x.npy')!r}, "--json",
                         "--repeats", "3", "-o", {str(tmp_path / 'p.npy')!r}]) == 0
        loaded = sorted(m for m in ("flwr", "ray", "matplotlib") if m in sys.modules)
        print(json.dumps({{"text": text.getvalue(), "loaded": loaded}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).argmax(1).numpy()
    text_lines = result["text"].splitlines()
    assert text_lines[0] == "predictions: " + " ".join(map(str, expected.tolist()))
    assert text_lines[1].startswith("latency ") and "per batch of 8" in text_lines[1]
    report = json.loads(text_lines[2])
    assert report["latency_ms"] > 0 and report["batch_size"] == 64 and report["predictions"] is None
    assert np.array_equal(np.load(tmp_path / "p.npy"), expected)


def test_infer_refuses_inputs_of_the_wrong_shape(tmp_path, capsys):
    from simulations.cli import main

    model, masks = masked_model("cnn1d", "unstructured")
    export_model(model, masks, tmp_path / "m.fpm", calibrate=False)
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 39), dtype=np.float32))
    assert main(["infer", str(tmp_path / "m.fpm"), str(tmp_path / "x.npy")]) == 2
    assert "(n, 1, 40)" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_infer_refuses_non_finite_inputs(tmp_path, capsys, bad):
    from simulations.cli import main

    model, masks = masked_model("cnn1d", "unstructured")
    export_model(model, masks, tmp_path / "m.fpm", calibrate=False)
    x = np.zeros((5, 1, 40), dtype=np.float32)
    x[3, 0, 7] = bad
    np.save(tmp_path / "x.npy", x)
    assert main(["infer", str(tmp_path / "m.fpm"), str(tmp_path / "x.npy")]) == 2
    assert "1 input row(s) hold NaN or infinite values (first: row 3)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="NaN or infinite"):
        load(tmp_path / "m.fpm").predict(x)
