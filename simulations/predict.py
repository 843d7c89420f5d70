"""`fedprune budget --predict RUN_DIR`: how much of the non-private global mask a private server recovers.

RUN_DIR is a run with exact votes (``epsilon-per-decision = inf``), or a sweep folder holding
such runs. Its votes.npz records, per pruning event, how many clients kept each weight and the
server's tie-break; the prediction replays those counts through the real mechanism, built as a
run builds it (``fedprune.federated.rounds.mechanism_for``) at each ``--epsilon-per-decision``, and gives the
expected intersection over union (IoU) of the private server's kept set with the non-private one
(``fedprune.privacy.replay``: an exact count law joined by a mean-field cut; ``--trials`` adds a
Monte Carlo replay through the mechanism's own encode, aggregate and estimate). ``--clients``,
``--length`` and ``--kept`` / ``--kept-fraction`` move the recorded profile to other sizes.

``--measured`` takes private runs (or sweep folders) of the same settings but the mechanism and its
epsilon: the measured IoU is the one between the global masks after their FIRST pruning event.
Up to that event a private run and the exact run of the same seed train identically (the seeds of
training are independent of the privacy noise), so the two masks differ by the mechanism alone;
later events start from masks that already differ and train differently. The table also shows each
measured run's final accuracy drop against the exact run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedprune import run_folder
from fedprune.config import RunConfig, resolve
from fedprune.federated.rounds import RoundPlan, mechanism_for
from fedprune.privacy import replay
from fedprune.privacy.mechanisms import REGISTRY
from fedprune.validation import ConfigError, pick
from simulations.reporting import markdown_table

FREE = ("mechanism", "epsilon-per-decision", "epsilon-per-report", "privacy-seed", "sample-size", "budget-epsilon",
        "dense-baseline", "run-name", "output-dir", "resume")  # what a measured run may change from its reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prediction from recorded votes (--predict)")
    group.add_argument("--predict", nargs="+", metavar="RUN_DIR", default=None,
                       help="runs with exact votes (epsilon-per-decision = inf) or sweep folders holding them")
    group.add_argument("--epsilon-per-decision", default=None, metavar="LIST",
                       help="epsilons to predict, e.g. 8,4,2,1: each mechanism's own setting (per report for "
                            "subset and central; default: those of the --measured runs)")
    group.add_argument("--event", type=int, default=1, help="pruning event to replay, from 1 (default 1)")
    group.add_argument("--kept-fraction", type=float, default=None,
                       help="fraction of the report's weights each client keeps (default: the recorded one)")
    group.add_argument("--trials", type=int, default=0,
                       help="Monte Carlo replays through the mechanism per setting (default 0: the count law alone)")
    group.add_argument("--measured", nargs="+", metavar="RUN_DIR", default=None,
                       help="private runs (or sweep folders) to measure the recovery of and compare with")
    group.add_argument("--replay-seed", type=int, default=0, help="seed of the Monte Carlo replay (default 0)")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    references = [(path, config) for path, config in _runs(args.predict) if not config.private_votes]
    if not references:
        raise ConfigError(f"no run with exact votes in {', '.join(args.predict)}: record one with "
                          "--set epsilon-per-decision=inf (it writes votes.npz)")
    measured = [(path, config) for path, config in _runs(args.measured or []) if config.private_votes]
    if args.measured and not measured:
        raise ConfigError(f"no private votes run in {', '.join(args.measured)} to measure")
    epsilons = _epsilons(args.epsilon_per_decision, measured)
    mechanisms = _names(args.mechanism) or sorted({c.mechanism for _, c in measured}) or None
    rng = np.random.default_rng(args.replay_seed)
    rows = []
    for path, config in references:
        event, profile = _profile(path, args)
        pairs = [(p, c) for p, c in measured if _same_run(config, c)]
        for name in mechanisms or [config.mechanism]:
            for eps in epsilons:
                rows.append(_row(path, config, event, profile, name, eps, args, rng,
                                 [(p, c) for p, c in pairs if c.mechanism == name and _epsilon(c) == eps]))
    result = {"rows": rows, "seconds": time.perf_counter() - started}
    compared = [r["difference"] for r in rows if r["difference"] is not None]
    result["largest_difference"] = max(compared) if compared else None
    print(json.dumps(result, indent=2) if args.json else format_prediction(result))
    return 0


def _runs(paths) -> list[tuple[Path, RunConfig]]:
    """(folder, settings) of every run in ``paths``; a folder without config.json is searched one level down."""
    out = []
    for path in map(Path, paths):
        found = sorted(p.parent for p in path.glob(f"*/{run_folder.CONFIG}"))
        folders = [path] if (path / run_folder.CONFIG).exists() else found
        if not folders:
            raise ConfigError(f"{path} holds no run (no {run_folder.CONFIG} in it or its subfolders)")
        for folder in folders:
            config = resolve(json.loads((folder / run_folder.CONFIG).read_text()))
            if config.method == "votes" and (folder / run_folder.VOTES).exists():
                out.append((folder, config))
    return out


def _epsilons(text, measured) -> list[float]:
    if text is None:
        if not measured:
            raise ConfigError("give --epsilon-per-decision (e.g. 8,4,2,1) or --measured runs to take them from")
        return sorted({_epsilon(c) for _, c in measured}, reverse=True)
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--epsilon-per-decision takes numbers separated by commas, e.g. 8,4,2,1, got {text!r}")
    if not values or any(not v > 0 for v in values):
        raise ConfigError(f"--epsilon-per-decision values must be > 0 (inf: exact votes), got {text!r}")
    return values


def _epsilon_key(name: str) -> str:
    """The setting a mechanism's epsilon is (epsilon-per-report for subset and central)."""
    return pick("mechanism", name, REGISTRY).epsilon_key or "epsilon_per_decision"


def _epsilon(config: RunConfig) -> float:
    return getattr(config, _epsilon_key(config.mechanism))


def _names(text) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()] if text else []


def _profile(path: Path, args) -> tuple[replay.VoteEvent, replay.Profile]:
    events = replay.read_events(path)
    if not 1 <= args.event <= len(events):
        raise ConfigError(f"{path} recorded {len(events)} pruning events; --event must lie in [1, {len(events)}]")
    event = events[args.event - 1]
    profile = replay.profile_of(event)
    length = args.length if args.length is not None else profile.length
    fraction = args.kept_fraction
    if args.kept is not None:
        if fraction is not None:
            raise ConfigError("give --kept or --kept-fraction, not both")
        fraction = args.kept / length
    return event, replay.rescale(profile, clients=args.clients, length=length, kept_fraction=fraction)


def _same_run(reference: RunConfig, other: RunConfig) -> bool:
    mine, theirs = reference.to_mapping(), other.to_mapping()
    return all(mine[k] == theirs[k] for k in mine if k not in FREE)


def _row(path, config, event, profile, name, eps, args, rng, measured) -> dict:
    setting = config.replace(mechanism=name, **{_epsilon_key(name): eps},
                             sample_size=args.sample_size if args.sample_size is not None else config.sample_size)
    d, k = profile.length, profile.kept
    plan = RoundPlan(round=event.round, sparsity=event.sparsity, prune=True, report=True, report_length=d, kept=k,
                     hamming_bound=max(1, min(2 * k, 2 * (d - k), d)), public_seed=0)
    mechanism = mechanism_for(setting, plan)
    private = mechanism.threat_model != "none"
    row = {"run": str(path), "mechanism": name, "epsilon_per_decision": eps, "epsilon_per_report": None,
           "clients": profile.clients, "length": d, "kept": k, "event_round": event.round, "model": "exact votes",
           "recovered": 1.0, "iou": 1.0, "replay_iou": None, "replay_sd": None}
    if private:
        per_report = mechanism.epsilon_per_report
        row["epsilon_per_report"] = float(per_report(config.delta) if callable(per_report) else per_report)
        predicted = replay.predict(profile, mechanism)
        if predicted is not None:
            row.update(recovered=predicted["recovered"], iou=predicted["iou"], model=predicted["model"])
        if predicted is None or args.trials:
            draws = replay.replay(profile, mechanism, max(args.trials, 10), rng)
            row.update(replay_iou=float(draws.mean()), replay_sd=float(draws.std()))
            if predicted is None:
                row.update(recovered=None, iou=row["replay_iou"], model=f"Monte Carlo ({draws.size} replays)")
    recorded = (profile.clients, d, k) == (event.clients, event.counts.size, event.kept)
    row.update(_measured(path, event, measured, args.event == 1 and recorded))
    if row["measured_iou"] is not None:
        row["difference"] = abs(row["iou"] - row["measured_iou"])
    return row


def _measured(path, event, runs, comparable: bool) -> dict:
    """Measured IoU at the first pruning event and final accuracy drop of matching private runs.

    Only the first event at the recorded sizes is the measured situation (``comparable``).
    """
    out = {"measured_runs": [str(p) for p, _ in runs], "measured_iou": None, "difference": None,
           "accuracy_drop": None, "same_training": None}
    if not runs or not comparable:
        return out
    reference = _summary(path)
    ious, drops, same = [], [], []
    for folder, _ in runs:
        first = replay.read_events(folder)[0]
        if first.round != event.round:
            continue
        ious.append(replay.iou(first.mask, event.mask))
        drops.append(reference["final_accuracy"] - _summary(folder)["final_accuracy"])
        same.append(_before(path, event.round) == _before(folder, event.round))
    if ious:
        out.update(measured_iou=float(np.mean(ious)), accuracy_drop=float(np.mean(drops)), same_training=all(same))
    return out


def _summary(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / run_folder.SUMMARY).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{folder} has no readable {run_folder.SUMMARY} ({error}): let the run finish") from None


def _before(folder: Path, round: int) -> list:
    """(accuracy, loss) of every round before ``round``: equal when two runs trained identically up to it."""
    lines = [json.loads(line) for line in (Path(folder) / run_folder.METRICS).read_text().splitlines() if line.strip()]
    return [(line["accuracy"], line["loss"]) for line in lines if line["round"] < round]


def format_prediction(result: dict) -> str:
    rows = result["rows"]
    table = [[Path(r["run"]).name, r["mechanism"], r["epsilon_per_decision"], r["epsilon_per_report"],
              f"{r['clients']} x {r['kept']}/{r['length']}", r["iou"],
              None if r["replay_iou"] is None else f"{r['replay_iou']:.4f} ± {r['replay_sd']:.4f}",
              r["measured_iou"], r["difference"], r["accuracy_drop"],
              {None: "", True: "yes", False: "NO"}[r["same_training"]]] for r in rows]
    rounds = ", ".join(str(r) for r in sorted({r["event_round"] for r in rows}))
    lines = ["# Predicted recovery of the non-private mask", "",
             f"Recorded exact votes (pruning event at round {rounds}) replayed through each mechanism; model: "
             f"{', '.join(sorted({r['model'] for r in rows}))}.", "",
             markdown_table(["exact run", "mechanism", "eps/decision", "eps/report", "clients x kept/d",
                             "predicted IoU", "replayed IoU", "measured IoU", "|pred - meas|",
                             "accuracy drop (measured)", "same training"], table)]
    if result["largest_difference"] is not None:
        lines += ["", f"Largest |predicted - measured| IoU: {result['largest_difference']:.4f} over "
                      f"{sum(r['difference'] is not None for r in rows)} settings."]
    if any(r["same_training"] is False for r in rows):
        lines += ["", "WARNING: some measured runs trained differently from their exact run before the first "
                      "pruning event: their IoU mixes training noise with the mechanism's."]
    lines += ["", f"Predicted in {result['seconds']:.2f} s. IoU: intersection over union of the kept sets; "
                  "measured at the first pruning event against the exact run of the same seed."]
    return "\n".join(lines)
