"""`fedprune analyze`: group gaps and the Lipschitz bound of a run folder's final model, written beside it."""

import json

import numpy as np
import pytest
import torch
from run_folders import write_run_folder

from fedprune.pruning.analysis import lipschitz_bound
from fedprune.pruning.masks import density
from fedprune.run_folder import ANALYSIS
from fedprune.validation import ConfigError


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "run-a"
    config, model, masks, _ = write_run_folder(folder, clients=3, sparsity=0.8, accuracy=0.1)
    return folder, config, model, masks


def test_analyze_writes_gaps_lipschitz_and_density_of_the_final_model(run_folder, capsys):
    from fedprune.pruning.analysis import predictions
    from fedprune.federated.local import client_data, run_dataset
    from simulations.cli import main

    folder, config, model, masks = run_folder
    assert main(["analyze", str(folder)]) == 0
    assert str(folder) in capsys.readouterr().out
    result = json.loads((folder / ANALYSIS).read_text())
    data = run_dataset(config)
    predicted = predictions(model, data.x_test)
    expected = [float(np.mean(predicted[data.y_test == c] == c)) for c in range(10)]
    assert result["per_class"] == pytest.approx(expected)
    assert result["class_gap"] == pytest.approx(max(expected) - min(expected))
    assert result["accuracy"] == pytest.approx(float(np.mean(predicted == data.y_test)))
    assert set(result["per_client"]) == {"0", "1", "2"}
    for name, accuracy in result["per_client"].items():  # each client's own share, rebuilt from the config
        x, y = client_data(config, int(name), 3)
        assert result["client_examples"][name] == len(y)
        assert accuracy == pytest.approx(float(np.mean(predictions(model, x) == y)))
    values = list(result["per_client"].values())
    assert result["client_gap"] == pytest.approx(max(values) - min(values))
    for name in result["per_client"]:  # the client's label mix applied to the per-class test accuracy
        counts = np.bincount(client_data(config, int(name), 3)[1], minlength=10)
        present = counts > 0
        mix = float(np.dot(counts[present], np.array(expected)[present]) / counts[present].sum())
        assert result["per_client_label_mix"][name] == pytest.approx(mix)
    assert result["density"] == pytest.approx(density(masks)) and result["density"] == pytest.approx(0.2, abs=0.01)
    assert result["lipschitz_bound"] == pytest.approx(lipschitz_bound(model, (1, 8, 8)))
    assert result["round"] == 2 and result["method"] == "votes"


def test_a_folder_that_is_not_a_finished_run_is_refused(tmp_path):
    from simulations.analyze import analyze_run

    with pytest.raises(ConfigError, match="not a folder"):
        analyze_run(tmp_path / "absent")
    with pytest.raises(ConfigError, match="no config.json"):
        analyze_run(tmp_path)
    assert not (tmp_path / ANALYSIS).exists()


def test_model_weights_come_from_the_checkpoint(run_folder):
    from simulations.run_files import load_run

    folder, _, model, masks = run_folder
    loaded = load_run(folder)
    assert loaded.round == 2 and set(loaded.masks) == set(masks)
    assert all(torch.equal(loaded.model.state_dict()[n], v) for n, v in model.state_dict().items())
