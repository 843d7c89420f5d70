"""Who takes part in a round: drawn over client ids, so a seeded run with sampled clients repeats itself."""

import json

import numpy as np
import pytest

from fedprune.config import RunConfig, resolve
from fedprune.federated.coordinator import Coordinator
from fedprune.federated.keys import CLIENT_ID
from fedprune.federated.sampling import fixed_sample_size, roster
from simulations.run import simulate


def coordinator(**settings) -> Coordinator:
    config = resolve({"preset": "none", "num-clients": 40, **settings})
    return Coordinator(config, {"w": (4,)}, ["w"])


def test_the_roster_maps_client_ids_to_nodes_and_leaves_out_what_is_not_one_client_id():
    answers = [(11, {CLIENT_ID: 2}), (12, {CLIENT_ID: 0}), (13, {CLIENT_ID: 2}), (14, {CLIENT_ID: 5}),
               (15, {CLIENT_ID: 1, "train-loss": 0.3}), (16, "no answer (timeout)"), (17, {CLIENT_ID: True}), (18, {})]
    clients, refused = roster(answers, population=5)
    assert clients == {0: 12, 2: 11} and list(clients) == [0, 2]
    why = dict(refused)
    assert set(why) == {13, 14, 15, 16, 17, 18}
    assert "client 2 is node 11 already" in why[13] and "[0, 5)" in why[14]
    assert "['train-loss'] beside client-id" in why[15] and why[16] == "no answer (timeout)"


def test_a_draw_depends_on_the_client_ids_and_the_seeds_alone():
    plan = coordinator().plan(3)
    poisson = {"client-sampling": "poisson", "fraction-train": 0.3, "weight-channel": "server-clipping",
               "method": "server-magnitude", "privacy-seed": 4}
    for settings in (poisson, {"fraction-train": 0.3}):
        first = coordinator(**settings).sample(plan, list(range(40)))
        assert first == coordinator(**settings).sample(plan, list(reversed(range(40))))  # any order of the roster
        assert first == sorted(first) and set(first) <= set(range(40))
        assert first != coordinator(**settings).sample(coordinator().plan(4), list(range(40)))  # another round
    fixed = coordinator(**{"fraction-train": 0.3})
    assert len(fixed.sample(plan, list(range(40)))) == fixed_sample_size(fixed.config) == 12
    assert fixed.sample(plan, list(range(40))) != coordinator(**{"fraction-train": 0.3, "seed": 1}).sample(
        plan, list(range(40)))
    assert fixed_sample_size(RunConfig(num_clients=10, fraction_train=0.05)) == 2  # FedAvg's least
    assert fixed_sample_size(RunConfig(num_clients=3, fraction_train=1.0)) == 3


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_a_seeded_run_with_sampled_clients_repeats_itself_resumed_or_not(tmp_path, sampling):
    # Flower's simulation gives its nodes new random ids at every start: a draw over node ids would differ
    settings = {"preset": "cross-device", "num-clients": 12, "examples-per-client": 16, "fraction-train": 0.4,
                "client-sampling": sampling, "num-server-rounds": 3, "local-epochs": 1, "prune-start": 2,
                "prune-end": 3, "prune-every": 1, "privacy-seed": 3, "output-dir": str(tmp_path)}
    if sampling == "fixed":
        settings.update({"weight-channel": "clear", "server-learning-rate": 1.0, "server-momentum": 0.0})

    class Killed(Exception):
        pass

    def kill_after_round_1(line):
        if line.startswith("round   1/"):
            raise Killed(line)

    simulate(resolve({**settings, "run-name": "first"}), progress=lambda line: None)
    with pytest.raises(Killed):  # the second is killed after round 1 and resumed: a new start, new node ids
        simulate(resolve({**settings, "run-name": "second"}), progress=kill_after_round_1)
    simulate(resolve({**settings, "run-name": "second", "resume": True}), progress=lambda line: None)
    runs = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("first", "second")]
    assert [(r["accuracy"], r["loss"], r["density"]) for r in runs[0]] == \
        [(r["accuracy"], r["loss"], r["density"]) for r in runs[1]]
    weights = [np.load(tmp_path / name / "checkpoint.npz") for name in ("first", "second")]
    assert all(np.array_equal(weights[0][key], weights[1][key]) for key in weights[0].files if key != "meta")
    replies = {len(r["upload_bytes"]) for r in runs[0][1:]}
    assert replies != {12}  # clients were sampled
