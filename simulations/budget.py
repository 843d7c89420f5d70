"""`fedprune budget`: the per-report privacy setting that spends exactly a total (eps, delta), and its error.

Give the run's total budget, the mask (d weights, k kept), the clients per round, the pruning
events and rounds, the mechanism and the weight channel; the planner searches the setting over the
same privacy ledger a run keeps and predicts the error of the server's keep-frequency estimates
and how much of the true top-k it recovers. Where the error drowns the signal it says so and
shows what would help. A table for people; ``--json`` for machines.

``--preset NAME`` (with ``--set KEY=VALUE``) instead forecasts a whole run's end-to-end figures
from its settings, on the ledger the run keeps (``simulations.forecast``).

``--predict RUN_DIR`` instead replays the votes a run with exact votes recorded through the
mechanism at given per-decision epsilons, and predicts how much of the non-private global mask
the server recovers (``simulations.predict``).
"""

from __future__ import annotations

import argparse
import json
import math

from fedprune.privacy.mechanisms import REGISTRY
from fedprune.privacy.planner import BudgetPlan, kept_schedule_for, plan_budget
from fedprune.pruning.masks import kept_count
from fedprune.validation import ConfigError, finite, sparsity
from simulations import forecast, predict
from simulations.reporting import markdown_table

DEFAULT_LENGTH = 28096  # prunable weights of the default CNN1D on MNIST-1D
PLAN_ONLY = {"epsilon": None, "sparsity": None, "sparsities": None, "regrowth": False, "pruning_events": None,
             "rounds": None, "weight_noise": "clear", "frequency": None, "agreement": 0.8, "coarse_length": None,
             "no_suggestions": False, "delta": 1e-5, "unit": "client"}  # option -> its default
PREDICT_ONLY = {"epsilon_per_decision": None, "event": 1, "kept_fraction": None, "trials": 0, "measured": None,
                "replay_seed": 0}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epsilon", type=float, default=None,
                        help="total epsilon of the run (required to plan; with --preset: the noise multiplier that "
                             "spends it is searched)")
    parser.add_argument("--delta", type=float, default=1e-5, help="delta of the guarantee (default 1e-5)")
    parser.add_argument("--unit", default="client", help="client | record (default client)")
    parser.add_argument("--mechanism", default=None,
                        help="default randomized-response (--predict: the recorded run's; a comma list); "
                             + "; ".join(f"{name}: {cls.description}" for name, cls in REGISTRY.items()))
    parser.add_argument("--length", type=int, default=None,
                        help=f"d, weights a mask report covers (default {DEFAULT_LENGTH}, the default CNN1D; "
                             "--predict: the recorded report's)")
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument("--kept", type=int, default=None, help="k, weights each mask keeps")
    kept.add_argument("--sparsity", type=float, default=None, help="fraction pruned instead of --kept (default 0.9)")
    parser.add_argument("--clients", type=int, default=None,
                        help="clients reporting per round (default 10; --predict: the recorded run's)")
    parser.add_argument("--pruning-events", type=int, default=None,
                        help="rounds with mask reports, each on all d weights keeping k (default 1)")
    parser.add_argument("--sparsities", default=None,
                        help="a stepped schedule instead: the target sparsity after each pruning event, "
                             "e.g. 0.5,0.75,0.9 (the last sets k; reports cover the weights still kept)")
    parser.add_argument("--regrowth", action="store_true", help="with --sparsities: every report covers all d")
    parser.add_argument("--rounds", type=int, default=None, help="rounds in all (default: the pruning events)")
    parser.add_argument("--weight-noise", default="clear",
                        help="weight channel: a Gaussian noise multiplier per round (Flower's DP wrappers), "
                             "'clear' (no end-to-end guarantee), 'no-weights' (the masks alone, a what-if) "
                             "or 'mask-only' (the mode: every round reports all d weights) (default clear)")
    parser.add_argument("--sample-size", type=int, default=None, help="coordinates per sampling report (default d)")
    parser.add_argument("--frequency", type=float, default=None,
                        help="keep-frequency at which to state the standard error (default k/d)")
    parser.add_argument("--agreement", type=float, default=0.8,
                        help="keep-frequency of the true top-k in the error model (default 0.8)")
    parser.add_argument("--coarse-length", type=int, default=None,
                        help="units (channels, blocks) for the coarser-mask suggestion (default d/64)")
    parser.add_argument("--no-suggestions", action="store_true", help="skip planning the alternatives")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    predict.add_arguments(parser)
    forecast.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if forecast.wanted(args):
        _refuse(args, PREDICT_ONLY, "forecasting a run (--preset, --set)")
        return forecast.run(args)
    if args.predict:
        _refuse(args, PLAN_ONLY, "--predict replays recorded votes")
        return predict.run(args)
    _refuse(args, PREDICT_ONLY, "planning a budget (without --predict)")
    if args.epsilon is None:
        raise ConfigError("--epsilon (the run's total budget) is required to plan one; or predict the recovery "
                          "of a recorded run with --predict RUN_DIR")
    args.mechanism = args.mechanism or "randomized-response"
    args.length = DEFAULT_LENGTH if args.length is None else args.length
    args.clients = 10 if args.clients is None else args.clients
    schedule = _schedule(args)
    kept = schedule[-1] if schedule else _kept(args)
    plan = plan_budget(args.epsilon, args.delta, length=args.length, kept=kept, clients=args.clients,
                       mechanism=args.mechanism, pruning_events=args.pruning_events, kept_schedule=schedule,
                       regrowth=args.regrowth, rounds=args.rounds,
                       unit=args.unit, weight_noise=_weight_noise(args.weight_noise), sample_size=args.sample_size,
                       frequency=args.frequency, agreement=args.agreement, coarse_length=args.coarse_length,
                       suggest=not args.no_suggestions)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0


def _refuse(args, options: dict, mode: str) -> None:
    given = [option for option, default in options.items() if getattr(args, option) != default]
    if given:
        names = ", ".join("--" + option.replace("_", "-") for option in given)
        raise ConfigError(f"{names} do(es) not apply when {mode}; drop them")


def format_plan(plan: BudgetPlan) -> str:
    """The plan as a report for people: setting, spend, predicted error, warnings, what would help."""
    r, spent = plan.request, plan.spent
    noise = r["weight_noise"]
    weights = {"clear": "sent in the clear", "no-weights": "not counted (what-if)",
               "mask-only": "never sent (mode mask-only: every round reports all d weights)"}.get(noise) \
        or f"with Gaussian noise, multiplier {noise:g} per round"
    key = next(k for k in plan.setting if k.startswith("epsilon-per-"))  # the searched setting
    rows = [
        [f"{key} (run setting)", str(_down(plan.epsilon_parameter))],
        ["epsilon per decision (one bit)", plan.epsilon_per_decision],
        [f"epsilon per report (Delta = {plan.hamming_bound})", plan.epsilon_per_report],
        ["flip probability", plan.flip_probability],
        *[[name.replace("_", " "), value] for name, value in plan.details.items()],
        ["spent end to end", "none (no guarantee)" if spent["end_to_end"] is None else _figure(spent["end_to_end"])],
        ["spent by the mask channel", _figure(spent["mask_channel"])],
        ["spent by the weight channel", "n/a" if spent["weight_channel"] is None else _figure(spent["weight_channel"])],
        [f"standard error at f = {plan.frequency:.4g}", plan.standard_error],
        ["signal (top-k minus rest)", plan.signal],
        ["error / signal", plan.noise_to_signal],
        [f"top-k recovered ({plan.recovery_model})", f"{plan.recovery:.1%} (chance {plan.chance:.1%})"],
        ["clients for error <= signal / 2", plan.clients_needed],
    ]
    lines = [f"# Budget plan: epsilon {r['epsilon']:g} at delta {r['delta']:g}, {r['unit']} level",
             "",
             f"{plan.mechanism} ({plan.trust_model.split(':')[0]} trust model); d = {r['length']} weights, "
             f"k = {r['kept']} kept, {r['clients']} clients per round, {r['pruning_events']} pruning events in "
             f"{r['rounds']} rounds; weight updates {weights}.",
             "",
             f"Trust models: mask reports {plan.trust['mask']}, weights {plan.trust.get('weights', 'not sent')}; "
             f"end to end {plan.trust['end_to_end']}: the figure holds against {plan.trust['holds_against']}.",
             "",
             markdown_table(["figure", "value"], rows),
             "",
             "Run with: " + " ".join(f"--set {key}={_down(value) if key.startswith('epsilon-per-') else value}"
                                      for key, value in plan.setting.items())]
    for warning in plan.warnings:
        lines += ["", f"WARNING: {warning}"]
    if len({(e["length"], e["kept"]) for e in plan.per_event}) > 1:
        rows = [[i, e["length"], e["kept"], e["hamming_bound"], e["epsilon_per_report"], e["standard_error"],
                 e["signal"], f"{e['recovery']:.1%} (chance {e['chance']:.1%})"]
                for i, e in enumerate(plan.per_event, start=1)]
        lines += ["", f"## Pruning events (the figures above are event {plan.event}'s)", "",
                  markdown_table(["event", "d", "k", "Delta", "eps per report", "std error", "signal", "recovered"],
                                 rows)]
    if plan.suggestions:
        rows = [[s["change"], ", ".join(f"{k}={v}" for k, v in s["setting"].items()),
                 s.get("epsilon_per_report"), s.get("standard_error"),
                 None if "recovery" not in s else f"{s['recovery']:.1%}", s.get("clients_needed"),
                 s.get("infeasible", "")] for s in plan.suggestions]
        lines += ["", "## What would help (each planned on the same budget)", "",
                  markdown_table(["change", "setting", "eps per report", "std error", "recovered",
                                  "clients needed", "note"], rows)]
    return "\n".join(lines)


def _schedule(args) -> list[int] | None:
    if args.sparsities is None:
        if args.regrowth:
            raise ConfigError("--regrowth describes a stepped schedule: give --sparsities too")
        return None
    if args.kept is not None or args.sparsity is not None:
        raise ConfigError("--sparsities sets k (its last entry): drop --kept / --sparsity")
    try:
        targets = [float(value) for value in args.sparsities.split(",") if value.strip()]
    except ValueError:
        raise ConfigError(f"--sparsities must be comma-separated numbers, e.g. 0.5,0.75,0.9, got "
                          f"{args.sparsities!r}") from None
    if not isinstance(args.length, int) or args.length < 2:
        raise ConfigError(f"--length must be an integer >= 2, got {args.length!r}")
    return kept_schedule_for(args.length, targets)


def _kept(args) -> int:
    if args.kept is not None:
        return args.kept
    target = sparsity(0.9 if args.sparsity is None else args.sparsity, "--sparsity")
    if not isinstance(args.length, int) or args.length < 2:
        raise ConfigError(f"--length must be an integer >= 2, got {args.length!r}")
    return kept_count(args.length, target)


def _weight_noise(value: str):
    if value in ("clear", "no-weights", "mask-only", "none"):
        return "clear" if value == "none" else value
    try:
        return finite("--weight-noise", value)
    except ConfigError:
        raise ConfigError(f"--weight-noise must be a noise multiplier (e.g. 1.1), "
                          f"'clear', 'no-weights' or 'mask-only', got {value!r}") from None


def _figure(value: float) -> str:
    return f"{value:.8g}"  # enough digits to show the spend is not above the budget


def _down(value: float, digits: int = 6) -> float:
    """``value`` rounded down to ``digits`` significant digits: a printed setting never spends more."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.floor(value * scale) / scale
