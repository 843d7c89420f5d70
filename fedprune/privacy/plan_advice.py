"""What a budget plan says beyond its figures: warnings, and the alternatives that would help.

``suggestions`` plans each alternative (more clients, fewer pruning events or rounds, the subset
mechanism, the central trust model, coarser masks) on the same budget with the planner itself.
"""

from __future__ import annotations

import math

from fedprune.validation import ConfigError

COARSE_BLOCK = 64  # weights per unit in the coarser-mask suggestion (a channel, a block)


def warnings(request, plan, tolerance) -> list[str]:
    """What a person must know before using the plan, each as one sentence."""
    out = []
    bound = plan.spent["mask_channel"] if plan.spent["end_to_end"] is None else plan.spent["end_to_end"]
    if bound < request["epsilon"] * (1 - tolerance):  # the ledger's resolution, at tiny budgets
        out.append(f"the plan spends {bound:.4g} of the {request['epsilon']:g} asked: the ledger resolves no finer "
                   "setting; it stays within the budget")
    if request["weight_noise"] == "no-weights":
        out.append("the plan counts no weight updates, but a default-mode run sends them: its end-to-end figure "
                   "is then none (clear) or larger (noised); plan the weight channel the run will use")
    if request["weight_noise"] == "clear":
        out.append("weight updates go in the clear: there is NO end-to-end guarantee; every figure here is the "
                   "mask channel's alone")
    if plan.mechanism == "central":
        out.append(plan.trust_model)
    if request["pruning_events"] > 1 and request["schedule_given"] is False and request["weight_noise"] != "mask-only":
        out.append(f"each of the {request['pruning_events']} pruning events is planned as a report on all "
                   f"{request['length']} weights keeping {request['kept']}: a schedule that prunes in steps reports "
                   "on more changing weights early (larger Delta); give its kept counts (kept_schedule, "
                   "--sparsities) or this plan is optimistic for it")
    if plan.error_above_signal:
        where = f" at pruning event {plan.event}" if len(set(request["sizes"])) > 1 else ""
        out.append(f"the predicted error{where} ({plan.standard_error:.3g}) is larger than the signal "
                   f"({plan.signal:.3g} between kept and pruned weights; flagged above half of it): the server's "
                   f"mask recovers {plan.recovery:.1%} of the true top-k, where a random mask recovers "
                   f"{plan.chance:.1%}")
    return out


def suggestions(request, plan, replan) -> list[dict]:
    """Each alternative that could bring the error under the signal, planned on the same budget.

    ``replan(**settings, suggest=False)`` plans one alternative (the planner passes its ``plan_budget``).
    """
    d, schedule = request["length"], request["kept_schedule"]
    out = [{"change": "more clients", "setting": {"clients": plan.clients_needed},
            "standard_error": plan.signal / 2, "clients_needed": plan.clients_needed}]
    alternatives = []
    if request["weight_noise"] == "mask-only":  # one mechanism, every weight, every round: only fewer rounds
        if request["rounds"] > 1:
            alternatives.append(("fewer rounds", {"rounds": request["rounds"] // 2}))
    elif request["pruning_events"] > 1:
        alternatives.append(("fewer pruning events", {"pruning_events": 1, "kept_schedule": None}))
    if request["mechanism"] not in ("subset", "central") and request["weight_noise"] != "mask-only":
        alternatives.append(("subset mechanism", {"mechanism": "subset", "sample_size": None}))
    if request["mechanism"] != "central" and request["weight_noise"] != "mask-only":
        alternatives.append(("central trust model (trusted aggregator or secure aggregation)",
                             {"mechanism": "central", "sample_size": None}))
    coarse = request["coarse_length"] or max(2, math.ceil(d / COARSE_BLOCK))
    scaled = [max(1, round(x * coarse / d)) for x in schedule]
    for e in range(len(scaled) - 2, -1, -1):  # keep the schedule strictly decreasing
        scaled[e] = max(scaled[e], scaled[e + 1] + 1)
    if scaled[0] < coarse and request["weight_noise"] != "mask-only":
        size = request["sample_size"] and max(1, round(request["sample_size"] * coarse / d))
        alternatives.append((f"coarser masks ({coarse} units: channels or blocks of ~{d // coarse} weights)",
                             {"length": coarse, "kept": scaled[-1], "frequencies": None, "sample_size": size,
                              "kept_schedule": scaled if request["schedule_given"] else None}))
    for change, overrides in alternatives:
        entry = {"change": change, "setting": {key: value for key, value in overrides.items() if value is not None}}
        settings = {**request, "kept_schedule": schedule if request["schedule_given"] else None, **overrides,
                    "coarse_length": None}
        for name in ("schedule_given", "sizes", "hamming_bound",
                     *(("pruning_events",) if settings["kept_schedule"] else ())):
            settings.pop(name)
        try:
            other = replan(**settings, suggest=False)
        except ConfigError as error:
            out.append({**entry, "infeasible": str(error)})
            continue
        out.append({**entry, "epsilon_per_report": other.epsilon_per_report, "standard_error": other.standard_error,
                    "recovery": other.recovery, "clients_needed": other.clients_needed,
                    "error_above_signal": other.error_above_signal})
    return out
