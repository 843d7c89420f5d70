"""The budget planner: the per-report setting that spends exactly a total (eps, delta), and its error.

The ledger. ``plan_budget`` searches the run's setting that fixes the mechanism's epsilon (its
``epsilon_key``: ``epsilon-per-decision`` for per-bit mechanisms, ``epsilon-per-report`` for subset and,
at delta, central) until the real
:class:`~fedprune.privacy.accountant.Accountant` reports the target for the ledger a run keeps
(``fedprune.federated.coordinator``) for its worst client, who takes part in every round: in each pruning
event the mechanism's ``event()`` (built by ``fedprune.privacy.mechanisms.build``, as a run builds it), and per
round a weight-channel release: the events of ``weight_channel.NoisedMean`` at the given noise
multiplier (a run's server-clipping or client-clipping DP-FedAvg: a Gaussian of sensitivity 2 on the
sum, whatever the reply count; trust model central), nothing (``no-weights``, a what-if; ``mask-only``, the
mode of that name, where every round instead reports all d weights at Delta = d), or updates in the clear
(``clear``: no end-to-end guarantee, so the mask channel alone is planned, and the plan says so).
The search brackets the answer, then runs Brent's method on log(setting) and stops at the first
setting that spends between (1 - tolerance) x target and target: never more than asked.

Report sizes. A pruning event reports on d_e weights keeping k_e, at Hamming bound
Delta_e = min(2 k_e, 2 (d_e - k_e)) (the global distribution; per-layer ones give at most that).
Without ``kept_schedule`` every event is a report on d keeping k (a fixed-size mask: one-shot,
or regrowth at a constant sparsity). A schedule that prunes in steps reports, without regrowth,
on the weights the previous event kept: pass the kept count after each event, or the plan is
optimistic for it (its early reports have larger Delta), which the plan warns about.

The error. An estimate's standard error is ``sqrt(mechanism.variance(n, f))`` at ``frequency``
(default k_e/d_e, the mean). The true keep-frequencies are a parameter (default two levels: the
true top-k at ``agreement`` = f_hi, the rest at f_lo = k (1 - f_hi) / (d - k), so each client keeps
exactly k). The signal is the mean frequency inside the top-k minus outside; an error above half
of it is flagged, with what would help (more clients, fewer pruning events, the subset mechanism,
the central trust model, coarser masks), each planned the same way. The server keeps the k largest
estimates; the predicted recovered fraction of the true top-k is a mean-field closed form (a
threshold above which k estimates are expected). For binary reports (randomized response, SUE,
OUE, subset, full sampling) it uses the exact law of each coordinate's count, Binomial(f n, a) +
Binomial((1 - f) n, b), ties broken at random; for central and partial sampling a normal law with
the mechanism's variance. Against the real mechanisms at d = 1000, k = 100 it came within 0.006 of
simulation, partial sampling (normal, approximate) within 0.015. The headline figures are those
of the event with the largest error relative to its signal; ``per_event`` lists every event.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq

from fedprune.privacy import plan_advice, weight_channel
from fedprune.privacy.accountant import Accountant
from fedprune.privacy.closed_form import analytic_gaussian_sigma
from fedprune.privacy.mechanisms import REGISTRY, Mechanism, MechanismSettings, build
from fedprune.privacy.plan_request import UNITS, WEIGHT_CHANNELS, check_request
from fedprune.privacy.recovery import recovery
from fedprune.privacy.spec import ReportSpec
from fedprune.privacy.trust import holds_against, weakest
from fedprune.pruning.masks import kept_count
from fedprune.validation import ConfigError, probability, sparsity

SETTING_RANGE = (1e-8, 20.0)  # searched epsilon setting: below, reports are noise; above, no privacy


@dataclass(frozen=True)
class BudgetPlan:
    """The setting that spends the budget, its privacy figures and the predicted error of the server's mask."""

    request: dict                   # the inputs, normalised
    mechanism: str
    trust_model: str                # the mask channel's, as the mechanism states it
    trust: dict                     # trust model per channel and end to end (weakest), and whom it holds against
    setting: dict                   # the run-config keys that carry the plan out (mechanism, epsilon-per-..., ...)
    epsilon_parameter: float        # the searched value of the mechanism's epsilon setting (setting names its key)
    spent: dict                     # epsilon at delta: end_to_end (None: no guarantee), mask_channel, weight_channel
    event: int                      # the pruning event (from 1) the figures below describe: the worst one
    hamming_bound: int
    epsilon_per_decision: float     # one bit of the mask (at delta for central)
    epsilon_per_report: float       # one report, Delta applied (at delta for central)
    flip_probability: float | None  # P(report bit != true bit) for a pruned weight; None without bit flips
    details: dict                   # mechanism parameters (report probabilities, subset size, noise, ...)
    frequency: float
    standard_error: float           # of each keep-frequency estimate at ``frequency``
    signal: float                   # mean true keep-frequency inside the top-k minus outside
    noise_to_signal: float
    recovery: float                 # expected fraction of the true top-k in the server's mask
    recovery_model: str             # "exact counts" or "normal"
    chance: float                   # k / d: what a random mask recovers
    clients_needed: int             # clients per round that bring every event's error to half its signal
    error_above_signal: bool        # in any event
    per_event: tuple[dict, ...] = ()
    warnings: tuple[str, ...] = ()
    suggestions: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("per_event", "warnings", "suggestions"):
            out[name] = list(out[name])
        return out


def plan_budget(epsilon: float, delta: float, *, length: int, kept: int, clients: int,
                mechanism: str = "randomized-response", pruning_events: int | None = None,
                kept_schedule: Sequence[int] | None = None, regrowth: bool = False, rounds: int | None = None,
                unit: str = "client", weight_noise: float | str | None = "clear", sample_size: int | None = None,
                frequency: float | None = None, agreement: float = 0.8, frequencies=None,
                coarse_length: int | None = None, suggest: bool = True, tolerance: float = 1e-4) -> BudgetPlan:
    """The per-report setting that spends exactly (``epsilon``, ``delta``) over a run, and its predicted error.

    ``length`` (d) and ``kept`` (k): the mask and the weights it keeps in the end; ``clients`` (n):
    reports per pruning event; ``pruning_events`` (default 1, or the schedule's length) or
    ``kept_schedule``: the kept count after each pruning event, ending at k (see the module notes;
    ``regrowth``: every report covers all d weights); ``rounds``: rounds the weight channel releases
    in (default the pruning events); ``weight_noise``: a Gaussian noise multiplier per round,
    ``"clear"`` (or None), ``"no-weights"`` or ``"mask-only"`` (the mode: a report of all d weights every one
    of ``rounds`` rounds); ``sample_size``: coordinates per sampling report
    (default all). ``frequencies``: the true keep-frequencies (d values) in place of the two-level
    model at ``agreement`` (one-size events only); ``coarse_length``: units for the coarser-mask
    suggestion (default d / 64). ConfigError on bad input, and on an infeasible request, naming the
    nearest feasible one.

    Example, the default CNN1D (d = 28096), 10% kept, 10 clients, 4 pruning events, eps 8 at 1e-5:
    ``plan_budget(8, 1e-5, length=28096, kept=2810, clients=10, pruning_events=4)`` sets per-bit
    randomized response at eps 0.0111 (62.5 per report); each estimate's standard error is 28
    against a signal of 0.78, the server recovers 10.4% of the true top-k (chance: 10.0%), and
    the plan says so, with what would help (none of it enough at 10 clients).
    """
    request = check_request(dict(epsilon=epsilon, delta=delta, length=length, kept=kept, clients=clients,
                          mechanism=mechanism, pruning_events=pruning_events, kept_schedule=kept_schedule,
                          regrowth=regrowth, rounds=rounds, unit=unit, weight_noise=weight_noise,
                          sample_size=sample_size, frequency=frequency, agreement=agreement,
                          frequencies=frequencies, coarse_length=coarse_length))
    tolerance = probability("tolerance", tolerance)
    sizes = request["sizes"]

    def build(setting: float) -> list[Mechanism]:
        made = {size: build_mechanism(request["mechanism"], setting, length=size[0], kept=size[1],
                                      delta=request["delta"], unit=request["unit"], sample_size=request["sample_size"],
                                      hamming_bound=request["hamming_bound"])
                for size in set(sizes)}
        return [made[size] for size in sizes]

    parameter = _search(lambda x: _spent(build(x), request), request, tolerance)
    chosen = build(parameter)
    whole, masks = run_ledger(chosen, rounds=request["rounds"], weight_noise=request["weight_noise"])
    spent = {"end_to_end": whole.epsilon(request["delta"], request["unit"]),
             "mask_channel": masks.epsilon(request["delta"], request["unit"]),
             "weight_channel": _weight_epsilon(request)}
    figures = {size: _event_figures(mech, size, request) for size, mech in zip(sizes, chosen)}
    per_event = tuple(figures[size] for size in sizes)
    worst = max(range(len(sizes)), key=lambda e: (per_event[e]["noise_to_signal"], e))
    head, mech = per_event[worst], chosen[worst]
    plan = BudgetPlan(
        request={**{key: value for key, value in request.items() if key != "schedule_given"},
                 "frequencies": None if frequencies is None else f"{request['length']} given values"},
        mechanism=mech.name, trust_model=mech.trust_model, trust=_trust(mech, request["weight_noise"]),
        setting=_run_setting(mech, parameter, request, spent["end_to_end"] is not None),
        epsilon_parameter=parameter, spent=spent, event=worst + 1, hamming_bound=head["hamming_bound"],
        epsilon_per_decision=_figure(mech, "epsilon_per_decision", request),
        epsilon_per_report=head["epsilon_per_report"], flip_probability=getattr(mech, "flip_probability", None),
        details=_details(mech), frequency=head["frequency"], standard_error=head["standard_error"],
        signal=head["signal"], noise_to_signal=head["noise_to_signal"], recovery=head["recovery"],
        recovery_model=head["recovery_model"], chance=head["chance"],
        clients_needed=max(e["clients_needed"] for e in per_event),
        error_above_signal=any(e["standard_error"] > e["signal"] / 2 for e in per_event), per_event=per_event)
    plan = dataclasses.replace(plan, warnings=tuple(plan_advice.warnings(request, plan, tolerance)))
    if plan.error_above_signal and suggest:
        plan = dataclasses.replace(plan, suggestions=tuple(plan_advice.suggestions(request, plan, plan_budget)))
    return plan


def kept_schedule_for(length: int, sparsities: Sequence[float]) -> list[int]:
    """The kept count after each pruning event of a schedule with these target sparsities."""
    return [kept_count(length, sparsity(value, "schedule sparsity")) for value in sparsities]


def build_mechanism(name: str, setting: float, *, length: int, kept: int, delta: float, unit: str = "client",
                    sample_size: int | None = None, hamming_bound: int | None = None) -> Mechanism:
    """The mechanism a run builds with its epsilon setting (``epsilon_key``) = ``setting``.

    ``hamming_bound``: Delta where reports are not exactly-k masks (mask-only: d).
    """
    key = REGISTRY[name].epsilon_key
    settings = MechanismSettings(mechanism=name, delta=delta, unit=unit, sample_size=sample_size or 0,
                                 **({} if key is None else {key: setting}))
    return build(settings, length=length, kept=kept, hamming_bound=hamming_bound)


def run_ledger(mechanisms: Sequence[Mechanism], *, rounds: int, weight_noise) -> tuple[Accountant, Accountant]:
    """(whole ledger, mask-channel ledger) of the worst client, recorded round by round as a run records them.

    ``mechanisms``: one per pruning event, in order; ``rounds`` >= their number.
    """
    whole, masks = Accountant(), Accountant()
    for round in range(rounds):
        if round < len(mechanisms):
            for ledger in (whole, masks):
                ledger.record(mechanisms[round].event(), units=UNITS, clients=["worst"])
        for event, units in _weight_events(weight_noise):
            whole.record(event, units=units, clients=["worst"])
    return whole, masks


def _weight_events(weight_noise) -> list:
    """One round's weight-channel events, as the run's channel records them."""
    if weight_noise == "clear":
        return weight_channel.Clear().events()
    if weight_noise in WEIGHT_CHANNELS:  # no weights sent
        return []
    return weight_channel.NoisedMean("server-clipping", weight_noise, 1.0).events()


def _trust(mechanism: Mechanism, weight_noise) -> dict:
    """Trust model per channel and end to end (the weakest), as a run states it."""
    channels = {"mask": mechanism.trust_model.split(":")[0]}
    if weight_noise == "clear" or weight_noise not in WEIGHT_CHANNELS:
        channels["weights"] = "none" if weight_noise == "clear" else "central"
    end_to_end = weakest(channels.values())
    return {**channels, "end_to_end": end_to_end, "holds_against": holds_against(end_to_end)}


def _event_figures(mechanism, size: tuple[int, int], request) -> dict:
    """One pruning event's report size, privacy and predicted error."""
    (d, k), n = size, request["clients"]
    truth = _truth(request, d, k)
    inside = np.zeros(d, dtype=bool)
    inside[np.argsort(-truth, kind="stable")[:k]] = True
    signal = float(truth[inside].mean() - truth[~inside].mean())
    if signal <= 0:
        raise ConfigError("the frequencies do not set the top-k apart: pass frequencies whose k largest exceed "
                          "the rest")
    at = request["frequency"] if request["frequency"] is not None else k / d
    error = float(math.sqrt(mechanism.variance(n, at)))
    recovered, model = recovery(mechanism, truth, n, k)
    return {"length": d, "kept": k, "chance": k / d, "hamming_bound": mechanism.spec.hamming_bound,
            "epsilon_per_report": _figure(mechanism, "epsilon_per_report", request), "frequency": at,
            "standard_error": error, "signal": signal, "noise_to_signal": error / signal, "recovery": recovered,
            "recovery_model": model, "clients_needed": _clients_needed(mechanism, n, at, signal / 2)}


# --- the search --------------------------------------------------------------------------------------

def _spent(mechanisms, request) -> float:
    """The figure the budget binds: end to end, or the mask channel alone when weights go in the clear."""
    whole, masks = run_ledger(mechanisms, rounds=request["rounds"], weight_noise=request["weight_noise"])
    total = whole.epsilon(request["delta"], request["unit"])
    return masks.epsilon(request["delta"], request["unit"]) if total is None else total


def _weight_epsilon(request, rounds: int | None = None) -> float | None:
    noise = request["weight_noise"]
    if noise in WEIGHT_CHANNELS:
        return None if noise == "clear" else 0.0
    ledger = Accountant()
    for event, units in _weight_events(noise):
        ledger.record(event, units=units, clients=["worst"], count=rounds or request["rounds"])
    return ledger.epsilon(request["delta"], request["unit"])


def _search(measure, request: dict, tolerance: float) -> float:
    """The setting whose ledger spends between (1 - tolerance) x target and target."""
    target, (least, most) = request["epsilon"], SETTING_RANGE
    seen: dict[float, float] = {}

    def spent(x: float) -> float:
        if x not in seen:
            seen[x] = measure(x)
        return seen[x]

    weights = _weight_epsilon(request)
    if weights is not None and weights >= target:
        raise ConfigError(_infeasible(request, weights, weights))
    lo = hi = min(max(_first_guess(request), least), most)
    while spent(lo) > target:  # walk down, then up, by factors of 4 to a bracket lo <= root < hi
        if lo <= least:
            raise ConfigError(_infeasible(request, spent(lo), weights))
        hi, lo = lo, max(lo / 4, least)
    while hi == lo or spent(hi) <= target:
        if spent(hi) >= target * (1 - tolerance):
            return hi
        if hi >= most:
            key = _key(REGISTRY[request["mechanism"]])
            raise ConfigError(f"the budget cannot be spent: the least private setting ({request['mechanism']} at "
                              f"{key} {most:g}) spends only {spent(hi):.4g}; ask for epsilon <= "
                              f"{spent(hi):.4g} (every setting up to it stays within the budget)")
        lo, hi = hi, min(hi * 4, most)
    best = [lo, spent(lo)]

    def gap(u: float) -> float:  # Brent on log(setting), stopped once a setting spends the budget
        x = math.exp(u)
        if spent(x) <= target and spent(x) >= best[1]:
            best[:] = [x, spent(x)]
            if spent(x) >= target * (1 - tolerance):
                raise _Found
        return spent(x) / target - 1

    if best[1] < target * (1 - tolerance):
        try:
            brentq(gap, math.log(lo), math.log(hi), xtol=1e-13, rtol=1e-13, maxiter=200)
        except _Found:
            pass
    return best[0]


class _Found(Exception):
    """Ends the root search once a setting spends the budget to within the tolerance."""


def _first_guess(request) -> float:
    """Basic composition's share of the budget per pure coordinate: near the answer for local mechanisms."""
    cls, size = REGISTRY[request["mechanism"]], request["sample_size"]
    coordinates = 0
    for d, k in request["sizes"]:
        bound = request["hamming_bound"] or ReportSpec.for_exactly_k(k, d).hamming_bound
        coordinates += cls.report_coordinates(d, bound, size)
    return request["epsilon"] / coordinates


def _infeasible(request, least: float, weights: float | None) -> str:
    target, delta, rounds, events_ = request["epsilon"], request["delta"], request["rounds"], request["pruning_events"]
    message = f"epsilon {target:g} at delta {delta:g} cannot be met: the least reachable is {least:.4g}"
    if not weights:
        return message + f"; ask for epsilon >= {least * 1.01:.4g}, or plan fewer than {events_} pruning events"
    sigma = request["weight_noise"]
    half = analytic_gaussian_sigma(target / 2, delta, sensitivity=2 * math.sqrt(rounds))
    fewer = math.floor((sigma / (2 * analytic_gaussian_sigma(0.99 * target, delta))) ** 2)
    while fewer > 0 and _weight_epsilon(request, fewer) >= 0.99 * target:  # the ledger, not the closed form
        fewer -= 1
    advice = f", or run at most {fewer} rounds" if fewer >= events_ else \
        f" (at most {fewer} rounds would fit, too few for {events_} pruning events)"
    return (message + f" (the weight channel alone, {rounds} rounds at noise multiplier {sigma:g}, spends "
            f"{weights:.4g}); ask for epsilon >= {least * 1.01:.4g}, or raise the weight noise multiplier to "
            f"{half:.3g} (the weights then spend about half the budget){advice}")


# --- figures and advice ------------------------------------------------------------------------------

def _figure(mechanism, name, request) -> float:
    value = getattr(mechanism, name)
    return float(value(request["delta"]) if callable(value) else value)  # central's figures need a delta


def _details(mechanism) -> dict:
    names = ("keep_report", "prune_report", "subset_size", "hit_probability", "sample_size", "noise_multiplier",
             "noise_std")
    return {name: getattr(mechanism, name) for name in names if hasattr(mechanism, name)}


def _clients_needed(mechanism, n: int, frequency: float, goal: float) -> int:
    """The fewest clients per round whose error at ``frequency`` is at most ``goal`` (variance ~ 1/n; central 1/n^2)."""
    power = 2 if mechanism.name == "central" else 1
    need = max(1, math.ceil((float(mechanism.variance(n, frequency)) * n**power / goal**2) ** (1 / power)))
    while float(mechanism.variance(need, frequency)) > goal**2:
        need += 1
    while need > 1 and float(mechanism.variance(need - 1, frequency)) <= goal**2:  # float rounding either way
        need -= 1
    return need


def _run_setting(mechanism, parameter: float, request, guaranteed: bool) -> dict:
    """The run-config keys (kebab-case) that carry the plan out."""
    setting = {"mechanism": mechanism.name, _key(type(mechanism)): parameter, "delta": request["delta"],
               "unit": request["unit"]}
    if mechanism.name == "sampling":
        setting["sample-size"] = mechanism.sample_size
    noise = request["weight_noise"]
    if noise in WEIGHT_CHANNELS:
        setting.update({"mode": "mask-only"} if noise == "mask-only" else {"weight-channel": "clear"})
        if noise == "mask-only":
            setting.update({"num-server-rounds": request["rounds"],
                            "target-sparsity": 1 - request["kept"] / request["length"]})
    else:  # client-clipping records the same Gaussian
        setting.update({"weight-channel": "server-clipping", "noise-multiplier": noise})
    if guaranteed:  # the run then stops before a round would overspend (with no guarantee it could not start)
        setting["budget-epsilon"] = request["epsilon"]
    return setting


def _key(cls) -> str:
    """The run-config key (kebab-case) of the setting the planner searches for mechanism class ``cls``."""
    return cls.epsilon_key.replace("_", "-")


def _truth(request, d: int, k: int) -> np.ndarray:
    if request["frequencies"] is not None:
        return request["frequencies"]
    high = request["agreement"]
    if not k / d < high:
        raise ConfigError(f"agreement {high:g} is not above k/d = {k / d:.4g} at a report on {d} weights keeping {k}; "
                          "raise agreement")
    return np.r_[np.full(k, high), np.full(d - k, k * (1 - high) / (d - k))]
