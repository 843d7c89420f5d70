"""Replay recorded exact votes through a mechanism: how much of the non-private mask a private server recovers.

The record. A votes run writes ``votes.npz`` in its folder (``server.driver``, at every pruning
event): the global mask after the event and the coordinates the reports covered; a run with
exact votes (``epsilon-per-decision = inf``) adds, over those coordinates, how many clients kept
each one (``counts``: the exact keep-frequencies times the reports) and the server's tie-break
(the averaged weight's magnitude). The non-private mask is the top ``kept`` by (count, tie-break),
which :func:`profile_of` checks against the recorded mask.

The prediction. A private server keeps the top ``kept`` estimates, ties broken the same way.
For reports whose coordinate j reads 1 with probability a if kept and b if pruned (randomized
response, SUE, OUE, subset, full sampling) the noisy count of a coordinate kept by m clients is
Binomial(m, a) + Binomial(n - m, b) and the estimate grows with it, so :func:`predict` finds the
mean-field cut in (count, tie-break) order where k coordinates are expected above, and sums the
probability of each true top-k coordinate to lie above it; the central mechanism adds Gaussian
noise to exact counts (a normal law, no ties). Each is the exact law of every coordinate, joined
by the mean-field cut (both are ``fedprune.privacy.recovery``'s); :func:`replay` checks it by Monte
Carlo through the real mechanism (encode, aggregate, estimate, select), on client masks rebuilt
from the counts (exact for per-coordinate mechanisms, whose tally depends on the counts alone; for
subset and sampling the joint law within one report differs, not the marginals).

Other sizes. :func:`rescale` moves a recorded profile to other clients (keep-frequencies f kept,
counts f n'), another mask size (the sorted profile stretched to d' coordinates) or kept fraction
(a probit shift f' = Phi(Phi^-1(f) + s) with s such that clients keep k' on average), then draws
one set of integer counts from it: that draw's own top-k is the non-private mask the prediction is
measured against. These are models, not measurements; the recorded sizes are what was validated.

Channel votes (structure ``units``) record their global mask only: their counts are per unit and
the server selects per layer, which the replay does not model yet.
"""

from __future__ import annotations

import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from fedprune.federated.aggregation import select_mask
from fedprune.privacy.recovery import predicted_recovery, predicted_recovery_counts
from fedprune.pruning.bits import pack, unpack
from fedprune.run_folder import VOTES
from fedprune.validation import ConfigError

FORMAT = 1


# --- the record ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VoteEvent:
    """One pruning event of a recorded run; ``counts`` and ``tie_break`` only with exact votes."""

    round: int
    sparsity: float
    clients: int              # reports the server aggregated
    kept: int                 # weights each client's mask keeps among the report's coordinates
    positions: np.ndarray     # bool over every prunable weight: the coordinates the reports covered
    mask: np.ndarray          # bool over every prunable weight: the global mask after the event
    counts: np.ndarray | None = None     # per report coordinate: clients that kept it
    tie_break: np.ndarray | None = None  # per report coordinate: |averaged weight|

    @property
    def exact(self) -> bool:
        return self.counts is not None

    @property
    def report_mask(self) -> np.ndarray:
        """The global mask after the event over the report's coordinates."""
        return self.mask[self.positions]


def record_event(folder: Path, votes: dict, mask_after: np.ndarray, *, exact: bool) -> None:
    """Add (or rewrite) one pruning event in ``folder``/votes.npz, atomically.

    ``votes``: ``Coordinator.last_votes`` (plan, clients, frequencies over the report's
    coordinates, tie_break and eligible over every prunable weight, before the event).
    """
    path = Path(folder) / VOTES
    frequencies, eligible = np.asarray(votes["frequencies"]), np.asarray(votes["eligible"], dtype=bool)
    positions = np.ones_like(eligible) if frequencies.size == eligible.size else eligible  # regrowth: all
    weight_votes = frequencies.size == int(positions.sum())  # channel votes (structure units) are not replayed
    plan, n, key = votes["plan"], int(votes["clients"]), f"r{votes['plan'].round}."
    arrays = {key + "sparsity": np.float64(plan.sparsity), key + "clients": np.int64(n),
              key + "kept": np.int64(plan.kept), key + "length": np.int64(eligible.size),
              key + "positions": pack(positions), key + "mask": pack(np.asarray(mask_after, dtype=bool))}
    if exact and weight_votes:
        counts = np.rint(frequencies * n)
        if np.abs(counts - frequencies * n).max(initial=0) > 1e-6:
            raise ConfigError("exact votes should average to multiples of 1/clients; not recording them")
        arrays[key + "counts"] = counts.astype(np.int32)
        arrays[key + "tie_break"] = np.asarray(votes["tie_break"], dtype=np.float64)[positions]
    if path.exists():
        with np.load(path) as stored:
            arrays = {**{name: stored[name] for name in stored.files if not name.startswith(key)}, **arrays}
    arrays["format"] = np.int64(FORMAT)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".votes", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez_compressed(file, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_events(folder: Path) -> list[VoteEvent]:
    """The pruning events recorded in ``folder``/votes.npz, by round."""
    path = Path(folder) / VOTES
    try:
        with np.load(path) as stored:
            data = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(f"cannot read {path} ({error}): record it with a votes run of this fedprune "
                          "(it writes votes.npz at every pruning event)") from None
    if int(data.get("format", -1)) != FORMAT:
        raise ConfigError(f"{path} has format {data.get('format')!r}; this fedprune reads {FORMAT}")
    events = []
    for round in sorted({int(name[1:].split(".")[0]) for name in data if name.startswith("r")}):
        get = lambda name: data.get(f"r{round}.{name}")  # noqa: E731
        length = int(get("length"))
        events.append(VoteEvent(round=round, sparsity=float(get("sparsity")), clients=int(get("clients")),
                                kept=int(get("kept")), positions=unpack(get("positions"), length),
                                mask=unpack(get("mask"), length), counts=get("counts"), tie_break=get("tie_break")))
    return events


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two kept sets (bool masks)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


# --- the profile a prediction replays --------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """Exact votes on d coordinates: ``counts`` of ``clients`` (each keeping ``kept``), and the server's tie-break."""

    counts: np.ndarray
    clients: int
    tie_break: np.ndarray
    kept: int

    @property
    def length(self) -> int:
        return self.counts.size

    @property
    def frequencies(self) -> np.ndarray:
        return self.counts / self.clients

    @property
    def truth(self) -> np.ndarray:
        """The non-private mask: top k by (count, tie-break), as the server selects."""
        return select_mask(self.frequencies, self.kept, tie_break=self.tie_break)


def profile_of(event: VoteEvent) -> Profile:
    """The profile of an exact-votes event, checked against the mask the run kept."""
    if not event.exact:
        raise ConfigError(f"round {event.round} holds no exact weight votes: predict from a run with "
                          "epsilon-per-decision = inf and structure unstructured (they record their counts)")
    profile = Profile(np.asarray(event.counts, dtype=np.int64), event.clients, event.tie_break, event.kept)
    if not np.array_equal(profile.truth, event.report_mask):
        raise ConfigError(f"round {event.round}: the recorded counts do not select the recorded mask (a per-layer "
                          "distribution? the prediction replays the global one: distribution = global)")
    return profile


def rescale(profile: Profile, *, clients: int | None = None, length: int | None = None,
            kept_fraction: float | None = None, rng: np.random.Generator | None = None) -> Profile:
    """The profile moved to other ``clients``, ``length`` and/or ``kept_fraction`` (module notes).

    The result is one draw of exact votes (integer counts with mean f n', systematic rounding by
    ``rng``, default seeded 0): its own truth is the non-private mask of those clients.
    """
    n = profile.clients if clients is None else clients
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"clients must be an integer >= 1, got {n!r}")
    f, tie, kept = profile.frequencies, profile.tie_break, profile.kept
    if length is not None and length != f.size:
        if length < 2:
            raise ConfigError(f"length must be >= 2, got {length}")
        order = np.lexsort((-np.abs(tie), -f))  # the truth order, best first
        picked = order[np.minimum((np.arange(length) + 0.5) * f.size / length, f.size - 1).astype(np.int64)]
        f, tie = f[picked], np.linspace(1.0, 0.5, length)  # rank-valued tie-break keeps the order
        kept = max(1, min(length - 1, round(kept * length / profile.length)))
    if kept_fraction is not None:
        if not 0 < kept_fraction < 1:
            raise ConfigError(f"kept fraction must lie in (0, 1), got {kept_fraction}")
        kept = max(1, min(f.size - 1, round(kept_fraction * f.size)))
    if (n, f.size, kept) == (profile.clients, profile.length, profile.kept):
        return profile
    f = _probit_shift(f, kept)  # clients keep exactly k on average
    counts = integer_counts(f, n, np.random.default_rng(0) if rng is None else rng, total=n * kept)
    return Profile(counts, int(n), tie, int(kept))


def _probit_shift(f: np.ndarray, kept: int) -> np.ndarray:
    if math.isclose(f.sum(), kept, rel_tol=1e-12):
        return f
    floor = 1e-4  # 0 and 1 taken as 1e-4 and 1 - 1e-4 on the probit scale
    z = norm.ppf(np.clip(f, floor, 1 - floor))
    shift = brentq(lambda s: norm.cdf(z + s).sum() - kept, -40, 40, xtol=1e-12)
    return norm.cdf(z + shift)


def integer_counts(frequencies: np.ndarray, clients: int, rng: np.random.Generator, *, total: int) -> np.ndarray:
    """Counts in [0, clients], each the floor or ceiling of f n, summing to ``total``: systematic rounding."""
    expected = np.clip(np.asarray(frequencies, dtype=np.float64), 0.0, 1.0) * clients
    edges = np.concatenate([[0.0], np.cumsum(expected)])
    edges *= total / edges[-1]
    edges[-1] = total
    counts = np.minimum(np.diff(np.floor(edges + rng.random())).astype(np.int64), clients)
    for j in np.argsort(counts - expected)[: total - int(counts.sum())]:  # a float edge case: refill below n
        counts[j] += 1
    return counts


# --- prediction ------------------------------------------------------------------------------------

def predict(profile: Profile, mechanism) -> dict | None:
    """Predicted recovery of the non-private mask: ``recovered`` (share of its k kept), ``iou``, ``model``.

    None where no closed law applies (partial coordinate sampling): use :func:`replay`.
    """
    if mechanism.name == "central":
        sigma = mechanism.noise_std / profile.clients
        recovered = predicted_recovery(profile.frequencies, sigma, profile.kept, tie_break=profile.tie_break)
        model = "normal (Gaussian sums)"
    else:
        pair = mechanism.count_channel
        recovered = None if pair is None else predicted_recovery_counts(
            profile.frequencies, profile.clients, *pair, profile.kept, tie_break=profile.tie_break)
        if recovered is None:
            return None
        model = "count law, (count, tie-break) cut"
    return {"recovered": recovered, "iou": recovered / (2 - recovered), "model": model}


# --- Monte Carlo through the real mechanism ---------------------------------------------------------

def client_masks(counts: np.ndarray, clients: int, kept: int) -> np.ndarray:
    """(clients, d) bool masks, each keeping ``kept``, coordinate j kept by counts[j] of them (round robin)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.min(initial=0) < 0 or counts.max(initial=0) > clients or counts.sum() != clients * kept:
        raise ConfigError(f"counts must lie in [0, {clients}] and sum to clients x kept = {clients * kept}, "
                          f"got a sum of {counts.sum()}")
    slots = np.repeat(np.arange(counts.size), counts)  # coordinate j's c_j slots are consecutive: distinct clients
    masks = np.zeros((clients, counts.size), dtype=bool)
    masks[np.arange(slots.size) % clients, slots] = True
    return masks


def replay(profile: Profile, mechanism, trials: int, rng: np.random.Generator) -> np.ndarray:
    """IoU with the non-private mask of ``trials`` private masks: clients' masks encoded, tallied, selected."""
    truth, masks = profile.truth, client_masks(profile.counts, profile.clients, profile.kept)
    out = []
    for trial in range(trials):
        reports = [mechanism.encode(pack(row), rng, public_seed=(trial, i)) for i, row in enumerate(masks)]
        estimate = mechanism.estimate(mechanism.aggregate(reports, rng))
        out.append(iou(select_mask(estimate, profile.kept, tie_break=profile.tie_break), truth))
    return np.asarray(out)
