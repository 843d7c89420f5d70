"""What a budget plan is asked: every value checked, with the report sizes each pruning event implies.

ConfigError names the problem and the fix before the planner searches anything.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from fedprune.privacy.mechanisms import REGISTRY
from fedprune.validation import ConfigError, finite, pick, positive, probability

UNITS = ("record", "client")
WEIGHT_CHANNELS = {
    "clear": "weight updates sent without DP: no end-to-end guarantee; the mask channel alone is planned",
    "no-weights": "no weight updates in the plan: the mask channel alone, as if it were the only release "
                  "(for planning; a default-mode run also sends weights)",
    "mask-only": "the mask-only mode: randomized response on every weight in every round (Delta = d), nothing "
                 "else released, so the mask channel is the end-to-end guarantee",
}

def report_sizes(length: int, kept_schedule: Sequence[int], regrowth: bool = False) -> list[tuple[int, int]]:
    """(weights a report covers, weights it keeps) per pruning event, as ``rounds.plan_round`` sizes them.

    Without regrowth a report covers the weights the previous event kept (all d at the first).
    """
    sizes, covered = [], length
    for kept in kept_schedule:
        sizes.append((length if regrowth else covered, kept))
        covered = kept
    return sizes



def check_request(r: dict) -> dict:
    """The planner's request with every value checked and the derived sizes filled in (ConfigError otherwise)."""
    r["epsilon"] = _fixed(positive, "epsilon (the total budget)", r["epsilon"], "pass the run's total, e.g. 8")
    r["delta"] = _fixed(probability, "delta", r["delta"], "pass the delta of the guarantee, e.g. 1e-5")
    if r["unit"] not in UNITS:
        raise ConfigError(f"unknown unit {r['unit']!r}; valid units: {', '.join(UNITS)}")
    if pick("mechanism", r["mechanism"], REGISTRY).epsilon_key is None:
        raise ConfigError(f"mechanism {r['mechanism']!r} has no epsilon setting to plan (no privacy); plan one of: "
                          f"{', '.join(n for n, c in REGISTRY.items() if c.epsilon_key)}")
    d = r["length"] = _integer("length (d, the weights a mask covers)", r["length"], 2)
    k = r["kept"]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= d - 1:
        raise ConfigError(f"kept (k) must be an integer in [1, {d - 1}] for a mask of {d} weights, got {k!r}: "
                          "a mask that keeps none or all of them needs no report")
    k = r["kept"] = int(k)
    r["clients"] = _integer("clients (reports per pruning event)", r["clients"], 1)
    r["regrowth"] = bool(r["regrowth"])
    if r["weight_noise"] is None or r["weight_noise"] in WEIGHT_CHANNELS:
        r["weight_noise"] = r["weight_noise"] or "clear"
    else:
        r["weight_noise"] = _fixed(positive, "weight noise multiplier", r["weight_noise"],
                                   f"pass a Gaussian noise multiplier or one of {', '.join(WEIGHT_CHANNELS)}")
    r["schedule_given"] = r["kept_schedule"] is not None
    if r["kept_schedule"] is None:
        events_ = 1 if r["pruning_events"] is None else _integer("pruning events", r["pruning_events"], 1)
        r["kept_schedule"] = [k] * events_
    else:
        schedule = [_integer("kept_schedule entries", value, 1) for value in r["kept_schedule"]]
        if not schedule or schedule[-1] != k or schedule[0] >= d or any(a <= b for a, b in zip(schedule, schedule[1:])):
            raise ConfigError(f"kept_schedule must be the kept count after each pruning event: strictly decreasing, "
                              f"below d = {d}, ending at kept = {k}; got {r['kept_schedule']!r}")
        if r["pruning_events"] not in (None, len(schedule)):
            raise ConfigError(f"pruning_events ({r['pruning_events']}) differs from the schedule's {len(schedule)} "
                              "events; leave pruning_events unset")
        r["kept_schedule"] = schedule
    r["pruning_events"] = len(r["kept_schedule"])
    r["hamming_bound"] = None  # exactly-k reports: min(2k, 2(d - k)) per report
    if r["weight_noise"] == "mask-only":
        _mask_only(r)
    given = r["schedule_given"]
    r["sizes"] = report_sizes(d, r["kept_schedule"], r["regrowth"]) if given else [(d, k)] * r["pruning_events"]
    r["rounds"] = r["pruning_events"] if r["rounds"] is None else _integer("rounds", r["rounds"], 1)
    if r["rounds"] < r["pruning_events"]:
        raise ConfigError(f"rounds ({r['rounds']}) must be at least the pruning events ({r['pruning_events']}): "
                          "each pruning event takes a round")
    if r["sample_size"] is not None:
        if r["mechanism"] != "sampling":
            raise ConfigError(f"sample_size applies only to the sampling mechanism, not {r['mechanism']!r}; "
                              "leave it unset")
        r["sample_size"] = _integer("sample_size", r["sample_size"], 1)
        if r["sample_size"] > d:
            raise ConfigError(f"sample_size must be at most d = {d}, got {r['sample_size']}")
    if r["frequency"] is not None:
        r["frequency"] = probability("frequency", r["frequency"], open_low=False, open_high=False)
    r["agreement"] = finite("agreement", r["agreement"])
    if not k / d < r["agreement"] <= 1:
        raise ConfigError(f"agreement (the keep-frequency of the true top-k) must lie in ({k / d:.4g}, 1], above "
                          f"k/d, got {r['agreement']!r}")
    if r["frequencies"] is not None:
        values = np.asarray(r["frequencies"], dtype=np.float64)
        if values.shape != (d,) or not np.all((values >= 0) & (values <= 1)):
            raise ConfigError(f"frequencies must be {d} keep-frequencies in [0, 1], one per weight")
        if len(set(r["sizes"])) > 1:
            raise ConfigError("frequencies describe one report size; with a kept_schedule use the two-level model "
                              "(agreement)")
        r["frequencies"] = values
    if r["coarse_length"] is not None:
        r["coarse_length"] = _integer("coarse_length", r["coarse_length"], 2)
    return r


def _mask_only(r: dict) -> None:
    """The mask-only mode reports a clipped Bernoulli sample of every weight in every round
    (fedprune.federated.mask_only)."""
    if r["mechanism"] != "randomized-response":
        raise ConfigError(f"mode mask-only reports by randomized response only, not {r['mechanism']!r}; plan "
                          "mechanism randomized-response, or weight noise 'no-weights' to plan the masks alone")
    if r["schedule_given"] or r["regrowth"]:
        raise ConfigError("mode mask-only has no pruning schedule or regrowth: every round reports all d weights; "
                          "leave kept_schedule and regrowth unset and give rounds")
    rounds = r["rounds"] if r["rounds"] is not None else r["pruning_events"]
    r["rounds"] = _integer("rounds", rounds, 1)
    r["pruning_events"] = r["rounds"]  # a report every round
    r["kept_schedule"] = [r["kept"]] * r["rounds"]
    r["hamming_bound"] = r["length"]  # a sample can differ in every weight


def _fixed(check, name: str, value, fix: str):
    try:
        return check(name, value)
    except ConfigError as error:
        raise ConfigError(f"{error}; {fix}") from None


def _integer(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)
