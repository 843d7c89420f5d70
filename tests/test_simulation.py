"""Real Flower simulations (Ray backend) through `fedprune run`'s public entry point."""

import json
import math

import numpy as np
import pytest
from implemented_rr import rr_exact

from fedprune import run_folder
from fedprune.config import RunConfig
from fedprune.privacy.closed_form import analytic_gaussian_epsilon
from simulations.run import simulate

pytestmark = pytest.mark.slow


def tiny(tmp_path, name, **changes) -> RunConfig:
    settings = dict(dataset="digits", model="mlp", num_clients=3, num_server_rounds=2, local_epochs=2,
                    schedule="oneshot", prune_start=1, prune_end=1, target_sparsity=0.5, batch_size=64,
                    epsilon_per_decision=2.0, privacy_seed=5, output_dir=str(tmp_path), run_name=name)
    settings.update(changes)
    return RunConfig(**settings)


def test_three_clients_two_rounds_write_every_result(tmp_path):
    lines = []
    summary = simulate(tiny(tmp_path, "run"), progress=lines.append)
    folder = tmp_path / "run"
    assert {run_folder.CONFIG, run_folder.METRICS, run_folder.SUMMARY, run_folder.REPORT, run_folder.ACCURACY_PLOT,
            run_folder.DENSITY_PLOT, run_folder.EPSILON_PLOT,
            run_folder.CHECKPOINT} <= {p.name for p in folder.iterdir()}
    assert [json.loads(line)["round"] for line in (folder / run_folder.METRICS).read_text().splitlines()] == [0, 1, 2]
    assert any(line.startswith("round   2/2  accuracy") for line in lines)

    assert summary["rounds"] == 2 and summary["clients"] == 3 and summary["density"] == pytest.approx(0.5, abs=1e-3)
    # trained, not chance: 0.1 + 6 sd of Binomial(360, 0.1) / 360 is 0.2 (false failure below 1e-9)
    assert summary["final_accuracy"] > 0.2
    # weights went in the clear: no end-to-end guarantee in either unit, said as null
    assert summary["epsilon"] == {"record": None, "client": None}
    # the mask channel: one randomized-response report per client, Delta coordinates at eps 2 each
    delta_bits = summary["mechanism"]["hamming_bound"]
    exact = rr_exact(2.0, delta_bits, summary["delta"])
    assert exact - 1e-9 <= summary["mask_channel_epsilon"]["client"] <= exact * (1 + 1e-5) + 2e-4
    assert summary["upload_bytes_per_client_round"] < summary["dense_upload_bytes_per_client_round"]
    assert summary["privacy_randomness"] == {"source": "seeded", "seed": 5}
    report = (folder / run_folder.REPORT).read_text()
    assert "| client | none | none | no one | none | weight updates sent in the clear |" in report
    assert summary["privacy"]["channels"]["metrics"]["sent"] == ["client-id", "num-examples", "train-loss",
                                                                 "train-seconds"]


@pytest.mark.parametrize("channel", ["server-clipping", "client-clipping", "dpsgd"])
def test_every_weight_channel_runs_and_reports_its_figure_and_trust_model(tmp_path, channel):
    config = tiny(tmp_path, channel, weight_channel=channel, noise_multiplier=1.0, clipping_norm=1.0,
                  method="server-magnitude", local_epochs=1)
    summary = simulate(config, progress=lambda line: None)
    privacy = summary["privacy"]
    assert summary["rounds"] == 2 and summary["density"] == pytest.approx(0.5, abs=1e-3)
    if channel == "dpsgd":  # record level, noise on the client; no client-level guarantee
        assert privacy["end_to_end"]["record"]["trust_model"] == "local"
        assert 0 < summary["epsilon"]["record"] < math.inf and summary["epsilon"]["client"] is None
        assert privacy["against_the_server"]["record"] == summary["epsilon"]["record"]
        assert privacy["channels"]["metrics"]["sent"] == ["client-id", "num-examples", "dpsgd-noise", "dpsgd-rate",
                                                          "dpsgd-steps"]
    else:  # DP-FedAvg: 2 rounds of a Gaussian of sensitivity 2 at multiplier 1; the server is trusted
        exact = analytic_gaussian_epsilon(1.0, summary["delta"], sensitivity=2 * math.sqrt(2))
        for unit in ("record", "client"):
            assert exact <= summary["epsilon"][unit] <= exact + 1e-3
            assert privacy["end_to_end"][unit]["trust_model"] == "central"
            assert privacy["against_the_server"][unit] is None
        assert privacy["channels"]["metrics"]["sent"] == ["client-id"]
    assert summary["final_accuracy"] is not None


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = dict(num_server_rounds=4, schedule="polynomial", prune_start=1, prune_end=3, prune_every=2)
    whole = simulate(tiny(tmp_path, "whole", **config), progress=lambda line: None)

    class Killed(Exception):
        pass

    def kill_after_round_2(line):
        if line.startswith("round   2/"):
            raise Killed(line)

    with pytest.raises(Killed):
        simulate(tiny(tmp_path, "killed", **config), progress=kill_after_round_2)
    assert run_folder.load_checkpoint(tmp_path / "killed")[0] == 2
    metrics = tmp_path / "killed" / run_folder.METRICS
    with open(metrics, "a") as file:
        file.write('{"round": 3, "accur')  # a crash in the middle of writing round 3's line
    resumed = simulate(tiny(tmp_path, "killed", resume=True, **config), progress=lambda line: None)
    clock = [json.loads(line)["seconds"] for line in metrics.read_text().splitlines()]
    assert clock == sorted(clock) and resumed["wall_seconds"] >= clock[-1]  # the run's clock goes on across the resume

    assert resumed["final_accuracy"] == whole["final_accuracy"]
    assert resumed["mask_channel_epsilon"] == whole["mask_channel_epsilon"]
    round_w, weights_w, state_w = run_folder.load_checkpoint(tmp_path / "whole")
    round_r, weights_r, state_r = run_folder.load_checkpoint(tmp_path / "killed")
    assert round_w == round_r == 4
    assert all(np.array_equal(weights_w[name], weights_r[name]) for name in weights_w)
    assert state_r["mask_accountant"] == state_w["mask_accountant"]  # neither lost nor counted twice
    assert state_r["accountant"] == state_w["accountant"]
    rounds = [json.loads(line)["round"] for line in (tmp_path / "killed" / run_folder.METRICS).read_text().splitlines()]
    assert rounds == [0, 1, 2, 3, 4]

    # resuming a finished run changes nothing and says so
    files = {p.name: p.read_bytes() for p in (tmp_path / "killed").iterdir() if p.is_file()}
    lines = []
    again = simulate(tiny(tmp_path, "killed", resume=True, **config), progress=lines.append)
    assert again == resumed and lines == [f"{tmp_path / 'killed'} is finished (4 of 4 rounds): nothing to do; its "
                                          f"results are in {tmp_path / 'killed' / 'summary.json'} and "
                                          f"{tmp_path / 'killed' / 'report.md'}"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "killed").iterdir() if p.is_file()} == files
