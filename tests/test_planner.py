"""The budget planner against an independently rebuilt ledger, closed forms and simulations of the real mechanisms.

The recovery check runs the real mechanisms (encode, aggregate, estimate) with a seeded generator
and allows 5 standard errors of the simulated mean plus 0.01 for the mean-field approximation
(measured within 0.006 at these sizes): under fresh randomness a correct prediction fails it
with probability below 1e-6.
"""

import argparse
import json
import math

import numpy as np
import pytest

from fedprune.pruning.bits import pack
from fedprune.config import RunConfig
from fedprune.privacy import events
from fedprune.privacy.accountant import Accountant
from fedprune.privacy.closed_form import rr_composition_epsilon
from fedprune.privacy.mechanisms import REGISTRY
from fedprune.privacy.plan_request import report_sizes
from fedprune.privacy.planner import kept_schedule_for, plan_budget
from fedprune.privacy.recovery import predicted_recovery
from fedprune.privacy.rng import privacy_rng
from fedprune.privacy.spec import ReportSpec
from fedprune.federated.rounds import plan_round
from fedprune.validation import ConfigError
from simulations import budget

D, K, DELTA = 1000, 100, 1e-5
REALISTIC = dict(length=28096, kept=2810, clients=10, pruning_events=4)  # the default CNN1D, 10% kept


def per_bit_parameter(name, per_decision):
    """The mechanism's own epsilon whose per-bit figure is ``per_decision`` (SUE: eps / 2; OUE: ln((e^eps+1)/2))."""
    return {"sue": 2 * per_decision, "oue": math.log(2 * math.exp(per_decision) - 1)}.get(name, per_decision)


def rebuilt_epsilon(name, setting, *, events_, rounds=None, noise=None, sizes=None):
    """The worst client's epsilon for a run at ``setting``, rebuilt here as the coordinator records it.

    ``sizes``: (report length, kept) per pruning event; default ``events_`` reports on D keeping K.
    """
    threat = "central" if name == "central" else "local"
    mechanisms = []
    for length, kept in sizes or [(D, K)] * events_:
        spec = ReportSpec.for_exactly_k(kept, length, threat_model=threat)
        if name == "central":
            mechanisms.append(REGISTRY[name](length=length, spec=spec, epsilon=setting, delta=DELTA))
        else:
            extra = {"subset": {"kept": kept}, "sampling": {"sample_size": length}}.get(name, {})
            epsilon = per_bit_parameter(name, setting)
            mechanisms.append(REGISTRY[name](length=length, spec=spec, epsilon=epsilon, **extra))
    ledger = Accountant()
    for round in range(rounds or len(mechanisms)):
        if round < len(mechanisms):
            ledger.record(mechanisms[round].event(), units=["record", "client"], clients=["3"])
        if noise is not None:
            ledger.record(events.Gaussian(noise), units=["record", "client"], clients=["3"])
    return ledger.epsilon(DELTA, "client")


@pytest.mark.parametrize("name", ["randomized-response", "sue", "oue", "subset", "sampling", "central"])
def test_the_setting_spends_exactly_the_budget(name):
    plan = plan_budget(4.0, DELTA, length=D, kept=K, clients=50, mechanism=name, pruning_events=3, suggest=False)
    spent = rebuilt_epsilon(name, plan.epsilon_parameter, events_=3)
    assert 4.0 * (1 - 1e-4) <= spent <= 4.0
    assert plan.spent["mask_channel"] == pytest.approx(spent, rel=1e-12)
    assert plan.spent["end_to_end"] is None  # weights in the clear: no end-to-end guarantee
    assert rebuilt_epsilon(name, plan.epsilon_parameter * 1.001, events_=3) > 4.0


def test_randomized_response_setting_against_the_optimal_composition_theorem():
    plan = plan_budget(4.0, DELTA, length=D, kept=K, clients=50, pruning_events=3, suggest=False)
    bit_eps = math.log(plan.details["keep_report"] / plan.details["prune_report"])  # the implemented channel
    exact = rr_composition_epsilon(bit_eps, 3 * plan.hamming_bound, DELTA)
    assert plan.hamming_bound == 2 * K
    assert 4.0 * (1 - 2e-3) <= exact <= 4.0  # the ledger is at most a grid step above the exact figure
    assert plan.flip_probability == pytest.approx(1 / (1 + math.exp(plan.epsilon_parameter)), rel=1e-6)


def test_with_gaussian_weight_noise_the_whole_ledger_spends_the_budget():
    plan = plan_budget(4.0, DELTA, length=D, kept=K, clients=50, pruning_events=2, rounds=10, weight_noise=20.0,
                       suggest=False)
    spent = rebuilt_epsilon("randomized-response", plan.epsilon_parameter, events_=2, rounds=10, noise=20.0)
    assert 4.0 * (1 - 1e-4) <= spent <= 4.0 and plan.spent["end_to_end"] == pytest.approx(spent, rel=1e-12)
    assert plan.spent["weight_channel"] < 4.0 and plan.spent["mask_channel"] < 4.0
    assert plan.setting["noise-multiplier"] == 20.0 and plan.setting["budget-epsilon"] == 4.0
    assert rebuilt_epsilon("randomized-response", plan.epsilon_parameter * 1.001, events_=2, rounds=10,
                           noise=20.0) > 4.0


def test_the_planned_weight_channel_is_what_a_run_records_and_names_its_trust_model():
    from fedprune.config import RunConfig
    from fedprune.federated.coordinator import Coordinator

    plan = plan_budget(4.0, DELTA, length=D, kept=K, clients=50, pruning_events=2, rounds=10, weight_noise=20.0,
                       suggest=False)
    config = RunConfig(dataset="digits", model="mlp", method="server-magnitude", weight_channel="server-clipping",
                       noise_multiplier=20.0, num_server_rounds=10, prune_start=1, prune_end=1)
    run = Coordinator(config, {"w": (4, 4)}, ["w"])
    for round in range(1, 11):
        run.record(run.plan(round), ["0"])
    assert plan.spent["weight_channel"] == run.epsilon()["client"]
    assert plan.trust == {"mask": "local", "weights": "central", "end_to_end": "central",
                          "holds_against": "everyone but the server"}
    assert plan_budget(4.0, DELTA, length=D, kept=K, clients=50, suggest=False).trust["end_to_end"] == "none"


def test_more_pruning_events_or_rounds_leave_less_per_report():
    per_report = [plan_budget(4.0, DELTA, length=D, kept=K, clients=50, pruning_events=e, suggest=False)
                  .epsilon_per_report for e in (1, 2, 4)]
    assert per_report[0] > per_report[1] > per_report[2]
    rounds = [plan_budget(4.0, DELTA, length=D, kept=K, clients=50, pruning_events=2, rounds=r, weight_noise=20.0,
                          suggest=False).epsilon_per_report for r in (5, 40)]
    assert rounds[0] > rounds[1]


def test_more_clients_give_a_smaller_error_at_the_same_setting():
    plans = [plan_budget(4.0, DELTA, length=D, kept=K, clients=n, mechanism="subset", pruning_events=2,
                         suggest=False) for n in (10, 100, 1000)]
    assert plans[0].epsilon_parameter == plans[1].epsilon_parameter == plans[2].epsilon_parameter
    errors = [plan.standard_error for plan in plans]
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] / errors[1] == pytest.approx(math.sqrt(10), rel=1e-9)  # variance ~ 1/n
    assert plans[0].recovery < plans[1].recovery < plans[2].recovery


def test_report_sizes_follow_the_rounds_plan():
    config = RunConfig(num_server_rounds=10, prune_start=2, prune_end=8, prune_every=2, target_sparsity=0.9)
    schedule, eligible, current, planned, targets = config.pruning_schedule, np.ones(D, dtype=bool), 0.0, [], []
    for round in range(1, 11):
        plan = plan_round(config, schedule, round, current, eligible, {"w": (D,)})
        if plan.report:
            planned.append((plan.report_length, plan.kept, plan.hamming_bound))
            targets.append(plan.sparsity)
            eligible, current = np.arange(D) < plan.kept, plan.sparsity
    sizes = report_sizes(D, kept_schedule_for(D, targets))
    assert len(sizes) == 3 and sizes[0][0] == D
    assert planned == [(d, k, ReportSpec.for_exactly_k(k, d).hamming_bound) for d, k in sizes]
    assert report_sizes(D, [500, 100], regrowth=True) == [(D, 500), (D, 100)]


def test_a_stepped_schedule_spends_exactly_and_costs_more_than_one_size():
    schedule = [500, 250, K]
    plan = plan_budget(4.0, DELTA, length=D, kept=K, clients=50, kept_schedule=schedule, suggest=False)
    sizes = [(D, 500), (500, 250), (250, K)]
    assert [(e["length"], e["kept"], e["hamming_bound"]) for e in plan.per_event] == \
        [(D, 500, 1000), (500, 250, 500), (250, K, 200)]
    spent = rebuilt_epsilon("randomized-response", plan.epsilon_parameter, events_=3, sizes=sizes)
    assert 4.0 * (1 - 1e-4) <= spent <= 4.0
    assert rebuilt_epsilon("randomized-response", plan.epsilon_parameter * 1.001, events_=3, sizes=sizes) > 4.0
    flat = plan_budget(4.0, DELTA, length=D, kept=K, clients=50, pruning_events=3, suggest=False)
    # planning the stepped run as three reports on (D, K) would overspend it, and the flat plan says so
    assert flat.epsilon_parameter > plan.epsilon_parameter
    assert rebuilt_epsilon("randomized-response", flat.epsilon_parameter, events_=3, sizes=sizes) > 4.0
    assert any("optimistic" in warning for warning in flat.warnings)
    assert not any("optimistic" in warning for warning in plan.warnings)
    headline = plan.per_event[plan.event - 1]  # the event with the largest error relative to its signal
    assert headline["noise_to_signal"] == max(e["noise_to_signal"] for e in plan.per_event)
    assert (plan.standard_error, plan.hamming_bound) == (headline["standard_error"], headline["hamming_bound"])


def test_the_weight_channel_alone_over_budget_names_feasible_requests():
    request = dict(length=D, kept=K, clients=50, pruning_events=2, rounds=100, weight_noise=20.0, suggest=False)
    with pytest.raises(ConfigError) as caught:
        plan_budget(2.0, DELTA, **request)
    message = str(caught.value)
    assert "least reachable is 4.377" in message and "ask for epsilon >= 4.4" in message
    sigma = float(message.split("noise multiplier to ")[1].split(" ")[0])
    rounds = int(message.split("at most ")[1].split(" ")[0])
    assert plan_budget(2.0, DELTA, **{**request, "weight_noise": sigma}).spent["end_to_end"] <= 2.0
    assert plan_budget(2.0, DELTA, **{**request, "rounds": rounds}).spent["end_to_end"] <= 2.0
    assert plan_budget(4.43, DELTA, **request).spent["end_to_end"] <= 4.43


def test_budgets_out_of_reach_name_the_nearest_feasible_one():
    with pytest.raises(ConfigError, match=r"the budget cannot be spent.*ask for epsilon <= 20\b"):
        plan_budget(100.0, DELTA, length=D, kept=K, clients=10, mechanism="subset", suggest=False)
    with pytest.raises(ConfigError, match=r"least reachable is .*ask for epsilon >= .*fewer than 2 pruning events"):
        plan_budget(1e-9, DELTA, length=D, kept=K, clients=10, mechanism="central", pruning_events=2, suggest=False)


def test_the_realistic_example_says_the_error_drowns_the_signal():
    plan = plan_budget(8.0, DELTA, **REALISTIC)
    assert plan.error_above_signal and plan.standard_error > 10 * plan.signal
    assert plan.recovery < plan.chance + 0.02  # close to a random mask
    assert any("larger than the signal" in warning for warning in plan.warnings)
    assert any("NO end-to-end guarantee" in warning for warning in plan.warnings)
    changes = {s["change"].split(" (")[0]: s for s in plan.suggestions}
    assert set(changes) == {"more clients", "fewer pruning events", "subset mechanism", "central trust model",
                            "coarser masks"}
    for name in ("fewer pruning events", "subset mechanism", "central trust model", "coarser masks"):
        assert changes[name]["standard_error"] < plan.standard_error
    # the more-clients figure is the least that brings the error to half the signal
    need = plan.clients_needed
    chosen = REGISTRY["randomized-response"](length=28096, spec=ReportSpec.for_exactly_k(2810, 28096),
                            epsilon=plan.epsilon_parameter)
    assert math.sqrt(chosen.variance(need, plan.frequency)) <= plan.signal / 2
    assert math.sqrt(chosen.variance(need - 1, plan.frequency)) > plan.signal / 2


@pytest.mark.parametrize("name, clients", [("central", 5000), ("subset", 100000)])
def test_easy_cases_carry_no_warning(name, clients):
    plan = plan_budget(8.0, DELTA, length=D, kept=K, clients=clients, mechanism=name, pruning_events=2,
                       weight_noise="no-weights")
    assert not plan.error_above_signal and not plan.suggestions
    assert not any("larger than the signal" in warning for warning in plan.warnings)
    assert plan.recovery > 0.99 and plan.spent["end_to_end"] == plan.spent["mask_channel"]


def designed_masks(clients, keep_top):
    """Masks of exactly K of D: each client keeps ``keep_top`` of the first K and K - keep_top others, cyclically."""
    masks = np.zeros((clients, D), dtype=bool)
    rest = K - keep_top
    for i in range(clients):
        masks[i, (i * keep_top + np.arange(keep_top)) % K] = True
        masks[i, K + (i * rest + np.arange(rest)) % (D - K)] = True
    return masks


@pytest.mark.parametrize("name, epsilon", [("randomized-response", 60.0), ("oue", 60.0), ("subset", 8.0),
                                           ("central", 8.0)])
def test_predicted_recovery_matches_the_real_mechanism(name, epsilon):
    n, trials = 50, 150
    masks = designed_masks(n, 80)
    truth = masks.mean(axis=0)
    plan = plan_budget(epsilon, DELTA, length=D, kept=K, clients=n, mechanism=name, pruning_events=2,
                       frequencies=truth, suggest=False)
    assert 0.2 < plan.recovery < 0.95  # a regime where the prediction is informative
    threat = "central" if name == "central" else "local"
    spec = ReportSpec.for_exactly_k(K, D, threat_model=threat)
    extra = {"subset": {"kept": K}, "central": {"delta": DELTA}}.get(name, {})
    setting = plan.epsilon_parameter if name == "central" else per_bit_parameter(name, plan.epsilon_parameter)
    mechanism = REGISTRY[name](length=D, spec=spec, epsilon=setting, **extra)
    rng = privacy_rng(1234)
    packed = [pack(mask) for mask in masks]
    overlaps = []
    for _ in range(trials):
        estimate = mechanism.estimate(mechanism.aggregate([mechanism.encode(p, rng) for p in packed], rng))
        order = rng.permutation(D)  # ties broken at random, as the prediction assumes
        kept = order[np.argsort(-estimate[order], kind="stable")[:K]]
        overlaps.append(np.mean(kept < K))
    error = np.std(overlaps) / math.sqrt(trials)
    assert abs(np.mean(overlaps) - plan.recovery) <= 5 * error + 0.01


def test_normal_recovery_against_monte_carlo():
    rng = np.random.default_rng(7)
    truth = np.r_[np.full(K, 0.8), np.full(D - K, 0.02)]
    for std in (0.2, 0.5):
        draws = truth + std * rng.standard_normal((400, D))
        simulated = np.mean([(np.argpartition(-row, K)[:K] < K).mean() for row in draws])
        assert predicted_recovery(truth, std, K) == pytest.approx(simulated, abs=0.01)  # SE ~ 0.002


@pytest.mark.parametrize("change, match", [
    ({"epsilon": 0.0}, "epsilon .* must be > 0"), ({"epsilon": -1.0}, "must be > 0"),
    ({"epsilon": math.nan}, "must be finite.*total"), ({"epsilon": math.inf}, "must be finite"),
    ({"delta": 0.0}, r"delta must be in \(0, 1\).*e\.g\. 1e-5"), ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
    ({"kept": 0}, r"kept \(k\) must be an integer in \[1, 999\]"), ({"kept": D}, r"in \[1, 999\]"),
    ({"mechanism": "laplace"},
     "unknown mechanism 'laplace'; valid mechanisms: central, clipped-bernoulli, exact, oue, randomized-response"),
    ({"unit": "user"}, "valid units: record, client"),
    ({"weight_noise": "loud"}, "one of clear, no-weights, mask-only"),
    ({"weight_noise": -1.0}, "must be > 0"), ({"rounds": 1, "pruning_events": 2}, "at least the pruning events"),
    ({"sample_size": 10}, "only to the sampling mechanism"), ({"agreement": 0.05}, r"must lie in \(0.1, 1\]"),
    ({"clients": 0}, "clients .* integer >= 1"),
    ({"kept_schedule": [500, 600, K]}, "strictly decreasing"), ({"kept_schedule": [500, 200]}, "ending at kept"),
    ({"kept_schedule": [500, K], "pruning_events": 3}, "leave pruning_events unset"),
    ({"kept_schedule": [500, K], "frequencies": np.full(D, 0.1)}, "one report size"),
])
def test_bad_requests_name_the_fix(change, match):
    request = dict(epsilon=4.0, delta=DELTA, length=D, kept=K, clients=10, suggest=False) | change
    with pytest.raises(ConfigError, match=match):
        plan_budget(request.pop("epsilon"), request.pop("delta"), **request)


def parser():
    parser = argparse.ArgumentParser()
    budget.add_parser(parser)
    return parser


def test_cli_prints_a_table_and_json(capsys):
    assert budget.run(parser().parse_args(["--epsilon", "8", "--pruning-events", "4", "--no-suggestions"])) == 0
    table = capsys.readouterr().out
    assert "| figure | value |" in table and "WARNING: the predicted error" in table
    assert "--set mechanism=randomized-response --set epsilon-per-decision=0.0111" in table
    assert budget.run(parser().parse_args(["--epsilon", "8", "--length", "1000", "--kept", "100", "--clients", "5000",
                                           "--mechanism", "central", "--weight-noise", "no-weights", "--json"])) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["mechanism"] == "central" and plan["error_above_signal"] is False and plan["suggestions"] == []
    assert 8 * (1 - 1e-4) <= plan["spent"]["end_to_end"] <= 8
    assert plan["setting"]["budget-epsilon"] == 8 and plan["setting"]["weight-channel"] == "clear"
    assert any("counts no weight updates" in warning for warning in plan["warnings"])


def test_cli_plans_a_stepped_schedule(capsys):
    args = ["--epsilon", "4", "--length", "1000", "--sparsities", "0.5,0.75,0.9", "--clients", "50", "--json"]
    assert budget.run(parser().parse_args(args)) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["request"]["kept_schedule"] == [500, 250, 100] and plan["request"]["pruning_events"] == 3
    assert budget.run(parser().parse_args(args[:-1] + ["--no-suggestions"])) == 0
    assert "## Pruning events" in capsys.readouterr().out


def test_cli_bad_input_raises_config_error():
    with pytest.raises(ConfigError, match="--weight-noise must be"):
        budget.run(parser().parse_args(["--epsilon", "8", "--weight-noise", "loud"]))
    with pytest.raises(ConfigError, match="--sparsity must be in"):
        budget.run(parser().parse_args(["--epsilon", "8", "--sparsity", "1.5"]))
    with pytest.raises(ConfigError, match="drop --kept"):
        budget.run(parser().parse_args(["--epsilon", "8", "--sparsities", "0.5,0.9", "--kept", "10"]))


def test_mask_only_mode_is_planned_as_every_weight_every_round():
    """The mode reports all d weights by randomized response each round: Delta = d, rounds x d decisions."""
    plan = plan_budget(1000.0, DELTA, length=200, kept=100, clients=10, rounds=3, weight_noise="mask-only")
    assert plan.hamming_bound == 200 and plan.request["pruning_events"] == 3
    assert plan.spent["end_to_end"] == plan.spent["mask_channel"] <= 1000.0
    exact = rr_composition_epsilon(plan.epsilon_parameter, 3 * 200, DELTA)
    assert exact == pytest.approx(plan.spent["end_to_end"], rel=1e-3) and exact <= 1000.0 * (1 + 1e-3)
    assert plan.setting["mode"] == "mask-only" and plan.setting["num-server-rounds"] == 3
    assert plan.setting["target-sparsity"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="randomized response only"):
        plan_budget(8.0, DELTA, length=200, kept=100, clients=10, rounds=3, mechanism="subset",
                    weight_noise="mask-only")
    assert all("infeasible" not in s for s in plan.suggestions)


@pytest.mark.parametrize("name, key", [("subset", "epsilon-per-report"), ("central", "epsilon-per-report"),
                                       ("sue", "epsilon-per-decision")])
def test_the_plan_names_the_setting_it_searched(name, key):
    plan = plan_budget(8.0, DELTA, length=D, kept=K, clients=100, mechanism=name, weight_noise="no-weights",
                       suggest=False)
    assert plan.setting[key] == plan.epsilon_parameter
    assert [k for k in plan.setting if k.startswith("epsilon-per-")] == [key]
    with pytest.raises(ConfigError, match="no epsilon setting to plan"):
        plan_budget(8.0, DELTA, length=D, kept=K, clients=100, mechanism="exact")
