"""Recovery prediction from recorded votes: the record, the count law against Monte Carlo replays, the CLI."""

import argparse
import json

import numpy as np
import pytest

from fedprune import run_folder
from fedprune.federated.aggregation import select_mask
from fedprune.pruning.bits import pack
from fedprune.config import RunConfig
from fedprune.privacy import replay
from fedprune.privacy.mechanisms import REGISTRY, ReportSpec
from fedprune.privacy.recovery import predicted_recovery_counts
from fedprune.federated.rounds import RoundPlan
from fedprune.validation import ConfigError
from simulations import budget

D, K, N = 3000, 900, 10


def synthetic_profile(seed=0, d=D, k=K, n=N) -> replay.Profile:
    """Clients keep the top k of a shared score plus their own noise; the tie-break is a noisy score magnitude."""
    rng = np.random.default_rng(seed)
    score = rng.normal(size=d)
    masks = np.zeros((n, d), dtype=bool)
    for row in masks:
        row[np.argsort(-(score + rng.normal(scale=0.7, size=d)))[:k]] = True
    return replay.Profile(masks.sum(axis=0), n, np.abs(score + rng.normal(scale=0.3, size=d)), k)


def mechanism(name, epsilon, d=D, k=K):
    threat = "central" if name == "central" else "local"
    spec = ReportSpec.for_exactly_k(k, d, threat_model=threat)
    extra = {"kept": k} if name == "subset" else {"delta": 1e-5} if name == "central" else {}
    if name == "sampling":
        extra = {"sample_size": d}
    return REGISTRY[name](length=d, spec=spec, epsilon=epsilon, **extra)


@pytest.mark.parametrize("name, epsilon", [("randomized-response", 0.5), ("randomized-response", 1.0),
                                           ("randomized-response", 2.0), ("randomized-response", 4.0),
                                           ("oue", 2.0), ("sue", 2.0), ("subset", 20.0), ("sampling", 1.0),
                                           ("central", 16.0)])
def test_the_prediction_matches_monte_carlo_replays_through_the_mechanism(name, epsilon):
    profile = synthetic_profile()
    predicted = replay.predict(profile, mechanism(name, epsilon))
    draws = replay.replay(profile, mechanism(name, epsilon), 20, np.random.default_rng(1))
    # a replay's IoU has sd <= 0.013 here, so the mean of 20 has sd <= 0.003: 0.015 is 5 sd (plus mean-field error)
    assert abs(predicted["iou"] - draws.mean()) < 0.015
    assert predicted["iou"] == pytest.approx(predicted["recovered"] / (2 - predicted["recovered"]))


def test_recovery_grows_with_epsilon_to_the_exact_mask():
    profile = synthetic_profile()
    ious = [replay.predict(profile, mechanism("randomized-response", eps))["iou"] for eps in (0.25, 1, 4, 16)]
    assert ious == sorted(ious) and ious[-1] > 0.999
    chance = K / D / (2 - K / D)
    assert ious[0] > chance  # the magnitude tie-break still carries signal


def test_partial_sampling_has_no_closed_law_and_is_replayed():
    profile = synthetic_profile()
    sampling = REGISTRY["sampling"](length=D, spec=ReportSpec.for_exactly_k(K, D), epsilon=2.0, sample_size=300)
    assert replay.predict(profile, sampling) is None
    assert 0 < replay.replay(profile, sampling, 3, np.random.default_rng(0)).mean() < 1


def test_client_masks_reproduce_the_counts_with_k_kept_each():
    profile = synthetic_profile()
    masks = replay.client_masks(profile.counts, N, K)
    assert masks.shape == (N, D) and (masks.sum(axis=1) == K).all()
    assert np.array_equal(masks.sum(axis=0), profile.counts)
    with pytest.raises(ConfigError, match="sum to clients x kept"):
        replay.client_masks(profile.counts + 1, N, K)


def test_rescaling_moves_the_profile_and_keeps_exact_vote_counts():
    profile = synthetic_profile()
    assert replay.rescale(profile) is profile
    more = replay.rescale(profile, clients=40)
    assert more.clients == 40 and more.kept == K and more.counts.sum() == 40 * K and more.counts.max() <= 40
    assert np.corrcoef(more.frequencies, profile.frequencies)[0, 1] > 0.95
    fewer_kept = replay.rescale(profile, kept_fraction=0.1)
    assert fewer_kept.kept == D // 10 and fewer_kept.counts.sum() == N * fewer_kept.kept
    longer = replay.rescale(profile, length=2 * D)
    assert longer.length == 2 * D and longer.kept == 2 * K and longer.counts.sum() == N * 2 * K
    # the prediction at the rescaled sizes still matches its replay
    rr = mechanism("randomized-response", 1.0, d=2 * D, k=2 * K)
    draws = replay.replay(longer, rr, 10, np.random.default_rng(2))
    assert abs(replay.predict(longer, rr)["iou"] - draws.mean()) < 0.015


def plan_for(d, k, round=6):
    return RoundPlan(round=round, sparsity=1 - k / d, prune=True, report=True, report_length=d, kept=k,
                     hamming_bound=2 * k, public_seed=0)


def write_run(folder, config: RunConfig, profile, mask, *, exact: bool, accuracy: float, round=6):
    """A run folder as server.driver leaves it, with one pruning event recorded through record_event."""
    folder.mkdir(parents=True)
    (folder / run_folder.CONFIG).write_text(json.dumps(config.to_mapping()))
    (folder / run_folder.SUMMARY).write_text(json.dumps({"final_accuracy": accuracy}))
    lines = [{"round": r, "accuracy": 0.1 * r, "loss": 1.0 / (r + 1)} for r in range(round + 1)]
    (folder / run_folder.METRICS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    votes = dict(plan=plan_for(profile.length, profile.kept, round), clients=profile.clients,
                 frequencies=profile.frequencies, tie_break=profile.tie_break, eligible=np.ones(profile.length, bool))
    replay.record_event(folder, votes, mask, exact=exact)


def test_the_record_round_trips_and_a_rewritten_event_replaces_the_old_one(tmp_path):
    profile = synthetic_profile()
    write_run(tmp_path / "run", RunConfig(), profile, profile.truth, exact=True, accuracy=0.9)
    votes = dict(plan=plan_for(D, K, 6), clients=N, frequencies=profile.frequencies, tie_break=profile.tie_break,
                 eligible=np.ones(D, bool))
    replay.record_event(tmp_path / "run", votes, profile.truth, exact=True)  # a resumed run redoes round 6
    replay.record_event(tmp_path / "run", {**votes, "plan": plan_for(D, K, 9)}, profile.truth, exact=False)
    events = replay.read_events(tmp_path / "run")
    assert [e.round for e in events] == [6, 9] and events[0].exact and not events[1].exact
    again = replay.profile_of(events[0])
    assert np.array_equal(again.counts, profile.counts) and np.array_equal(again.truth, profile.truth)
    with pytest.raises(ConfigError, match="holds no exact weight votes"):
        replay.profile_of(events[1])
    wrong = tmp_path / "wrong"
    write_run(wrong, RunConfig(), profile, ~profile.truth, exact=True, accuracy=0.9)
    with pytest.raises(ConfigError, match="do not select the recorded mask"):
        replay.profile_of(replay.read_events(wrong)[0])


def test_channel_votes_record_their_mask_but_no_counts(tmp_path):
    weights, units = 120, 12  # structure units: a report bit per output unit, the mask over weights
    votes = dict(plan=plan_for(units, 6, 1), clients=3, frequencies=np.full(units, 0.5), tie_break=np.ones(weights),
                 eligible=np.ones(weights, bool))
    replay.record_event(tmp_path, votes, np.arange(weights) % 2 == 0, exact=True)
    (event,) = replay.read_events(tmp_path)
    assert not event.exact and event.mask.sum() == 60
    with pytest.raises(ConfigError, match="structure unstructured"):
        replay.profile_of(event)


def parser():
    parser = argparse.ArgumentParser()
    budget.add_parser(parser)
    return parser


def test_cli_predicts_and_compares_with_a_measured_run(tmp_path, capsys):
    profile = synthetic_profile()
    exact = RunConfig(epsilon_per_decision=float("inf"), run_name="exact", output_dir=str(tmp_path))
    write_run(tmp_path / "exact", exact, profile, profile.truth, exact=True, accuracy=0.9)
    rr = mechanism("randomized-response", 1.0)
    private_mask = select_mask(rr.estimate(rr.aggregate(
        [rr.encode(pack(row), np.random.default_rng(i)) for i, row in
         enumerate(replay.client_masks(profile.counts, N, K))], None)), K, tie_break=profile.tie_break)
    write_run(tmp_path / "private", exact.replace(epsilon_per_decision=1.0, run_name="private"), profile,
              private_mask, exact=False, accuracy=0.8)
    args = ["--predict", str(tmp_path), "--measured", str(tmp_path), "--json"]
    assert budget.run(parser().parse_args(args)) == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = result["rows"]
    assert row["epsilon_per_decision"] == 1.0 and row["mechanism"] == "randomized-response"
    assert row["measured_iou"] == pytest.approx(replay.iou(private_mask, profile.truth))
    assert row["difference"] < 0.05 and row["accuracy_drop"] == pytest.approx(0.1) and row["same_training"]
    assert budget.run(parser().parse_args(["--predict", str(tmp_path / "exact"), "--epsilon-per-decision", "inf,4",
                                           "--clients", "20", "--trials", "3"])) == 0
    table = capsys.readouterr().out
    assert "| exact | randomized-response | inf |" in table and "20 x 900/3000" in table


def test_cli_refuses_options_of_the_other_mode(tmp_path):
    with pytest.raises(ConfigError, match="--epsilon \\(the run's total budget\\) is required"):
        budget.run(parser().parse_args(["--length", "1000"]))
    with pytest.raises(ConfigError, match="--trials do\\(es\\) not apply when planning"):
        budget.run(parser().parse_args(["--epsilon", "8", "--trials", "5"]))
    with pytest.raises(ConfigError, match="--sparsity do\\(es\\) not apply when --predict"):
        budget.run(parser().parse_args(["--predict", str(tmp_path), "--sparsity", "0.8"]))
    with pytest.raises(ConfigError, match="holds no run"):
        budget.run(parser().parse_args(["--predict", str(tmp_path), "--epsilon-per-decision", "1"]))


@pytest.mark.slow
def test_a_real_exact_run_records_votes_that_select_its_mask(tmp_path):
    from simulations.run import simulate

    config = RunConfig(dataset="digits", model="mlp", num_clients=3, num_server_rounds=2, local_epochs=1,
                       schedule="oneshot", prune_start=1, prune_end=1, target_sparsity=0.5, batch_size=64,
                       epsilon_per_decision=float("inf"), output_dir=str(tmp_path), run_name="exact")
    simulate(config, progress=lambda line: None)
    (event,) = replay.read_events(tmp_path / "exact")
    profile = replay.profile_of(event)  # checks that the counts and tie-break select the run's own mask
    assert event.round == 1 and event.clients == 3 and profile.counts.sum() == 3 * event.kept
    assert event.mask.mean() == pytest.approx(0.5, abs=1e-3)
    rr = REGISTRY["randomized-response"](length=profile.length,
                        spec=ReportSpec.for_exactly_k(profile.kept, profile.length), epsilon=2.0)
    draws = replay.replay(profile, rr, 10, np.random.default_rng(0))
    assert abs(replay.predict(profile, rr)["iou"] - draws.mean()) < 0.015


def test_the_count_law_breaks_ties_at_the_cut_at_random_or_as_the_server_does():
    # Noiseless reports (a = 1, b = 0): three coordinates tie at count 1 for two places.
    f = np.array([1.0, 1.0, 1.0, 0.0])
    assert predicted_recovery_counts(f, 1, 1.0, 0.0, 2) == pytest.approx(2 / 3)  # random: each kept w.p. 2/3
    for tie in ([3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 0.0]):  # the server's order: its own truth, always
        assert predicted_recovery_counts(f, 1, 1.0, 0.0, 2, tie_break=np.array(tie)) == pytest.approx(1.0)
