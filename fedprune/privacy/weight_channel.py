"""How weight updates travel and are averaged, what that costs, and whom the figure holds against.

- ``clear``: example-weighted FedAvg with no noise. No guarantee in any unit; clients may send plain
  metrics (loss, time, example count), since nothing they send is protected anyway.
- ``server-clipping`` / ``client-clipping``: DP-FedAvg (McMahan et al. 2018) run by the server.
  Each reply's update (reply minus the model the server sent) is clipped to L2 norm C (under
  ``client-clipping`` the client clips first with Flower's ``fixedclipping_mod``, so the server never
  sees an unclipped update; the server clips again, a no-op for an honest client). The clipped
  updates are summed with equal weights, Gaussian noise of std z*C per coordinate is added to the
  sum, and the sum is divided by the number of accepted replies (public: the server sees who
  replied). Replacing one client's data moves the sum by at most 2C, whatever the reply count, so
  each round a client takes part in is one Gaussian(z, sensitivity 2). Under Poisson client sampling
  (``client-sampling poisson``: each client takes part with probability q, drawn secretly) every
  round charges every client one replace-one Poisson-sampled Gaussian(z, q, sensitivity 2), and the
  sum is divided by the expected count q N, not the realised one, so the released model does not
  tell how many took part. The amplification holds against recipients of the released model and
  mask; the server, which sees who replied, is trusted under central DP anyway. The example count is not
  used, so it is not sent. Everything the server publishes (model, mask, tie-breaks) is computed
  from the noised average. The server sees each update before the noise: trust model central.
- ``dpsgd``: every client trains with Opacus DP-SGD (record level, noise added on the client: trust
  model local); the server takes the example-weighted average of DP-SGD outputs. The example count
  is the same in any two datasets that differ in one record (replace-one), so weighting by it costs
  nothing at record level. No client-level guarantee. A mask scored from the DP-SGD-trained weights
  alone is post-processing at record level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedprune.federated import keys
from fedprune.federated.aggregation import weighted_average
from fedprune.privacy import events
from fedprune.privacy.rng import check_generator
from fedprune.validation import ConfigError, positive, probability

UNITS = ("record", "client")
CHANNELS = {
    "clear": "weight updates sent without DP, averaged by example count (no end-to-end guarantee)",
    "server-clipping": "DP-FedAvg: the server clips each update to clipping-norm, averages with equal weights and "
                       "adds Gaussian noise (noise-multiplier x clipping-norm on the sum) before anything is published",
    "client-clipping": "as server-clipping, with clients clipping their own update first (Flower's "
                       "fixedclipping_mod), so the server never sees an unclipped update",
    "dpsgd": "Opacus DP-SGD on every client (record level); example-weighted average of the DP-SGD outputs",
}

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Clear:
    """Example-weighted FedAvg, no privacy."""

    name: str = "clear"
    # the metrics a client sends: loss and time too, since nothing it sends is protected anyway
    metrics: tuple = (keys.CLIENT_ID, keys.NUM_EXAMPLES, *keys.PLAIN_METRICS)
    protects_weights: tuple = ()   # units in which a client's trained weights are a DP output
    sampled = False  # clients take part by a fixed-size draw the server sees: charged when they take part

    def trust(self, unit: str) -> str:
        return "none"

    def combine(self, sent: Arrays, replies: Sequence[Arrays], examples: Sequence[int], rng) -> dict[str, np.ndarray]:
        return weighted_average(replies, examples)

    def events(self, dpsgd=None) -> list[tuple[events.Event, tuple[str, ...]]]:
        return [(events.Unprotected("weight updates sent in the clear"), UNITS)]


@dataclass(frozen=True)
class NoisedMean:
    """DP-FedAvg on the server: clip, sum with equal weights, add N(0, (zC)^2), divide by the reply count.

    With ``sampling_rate`` q < 1 (Poisson client sampling over ``population`` N clients) the sum is divided
    by q N and every round is charged to every client as a Poisson-sampled Gaussian (with the round's central
    mask votes, if any, as one: ``fedprune.privacy.events.joint``).
    """

    name: str
    noise_multiplier: float
    clipping_norm: float
    sampling_rate: float = 1.0
    population: int = 0
    metrics: tuple = (keys.CLIENT_ID,)  # the client id is public; nothing else is counted, so nothing else sent
    protects_weights: tuple = ()   # each client's own weights are not noised: a mask scored from them is charged

    def __post_init__(self):
        positive("noise-multiplier", self.noise_multiplier)
        positive("clipping-norm", self.clipping_norm)
        probability("sampling rate", self.sampling_rate, open_high=False)
        if self.sampled and self.population < 1:
            raise ConfigError("a Poisson-sampled DP-FedAvg needs the population it samples from (population >= 1)")

    @property
    def sampled(self) -> bool:
        """Whether clients take part by secret Poisson sampling (every round then charges every client)."""
        return self.sampling_rate < 1.0

    def trust(self, unit: str) -> str:
        return "central"

    def combine(self, sent: Arrays, replies: Sequence[Arrays], examples, rng) -> dict[str, np.ndarray]:
        if not replies and not self.sampled:
            raise ConfigError("nothing to average: no replies")
        rng = check_generator(rng)
        total = {name: np.zeros(np.shape(value), dtype=np.float64) for name, value in sent.items()}
        for reply in replies:
            update = {name: np.asarray(reply[name], np.float64) - np.asarray(sent[name], np.float64) for name in sent}
            for name, value in clip(update, self.clipping_norm).items():
                total[name] += value
        std = self.noise_multiplier * self.clipping_norm
        # Poisson: the expected count, so the model does not tell how many took part
        count = self.sampling_rate * self.population if self.sampled else len(replies)
        return {name: (np.asarray(sent[name], np.float64) + (value + rng.normal(0.0, std, value.shape)) / count
                       ).astype(np.float32) for name, value in total.items()}

    def events(self, dpsgd=None) -> list[tuple[events.Event, tuple[str, ...]]]:
        # a client-level guarantee covers every record of the client too
        return [(events.Gaussian(self.noise_multiplier, self.sampling_rate, sensitivity=2.0), UNITS)]


@dataclass(frozen=True)
class DpSgd:
    """Clients train with DP-SGD (their own accountants report the releases); example-weighted average."""

    name: str = "dpsgd"
    # the example count is invariant under replace-one of a record; the DP-SGD accounting is public parameters
    metrics: tuple = (keys.CLIENT_ID, keys.NUM_EXAMPLES, *keys.DPSGD_KEYS)
    protects_weights: tuple = ("record",)
    sampled = False

    def trust(self, unit: str) -> str:
        return "local" if unit == "record" else "none"

    def combine(self, sent: Arrays, replies: Sequence[Arrays], examples: Sequence[int], rng) -> dict[str, np.ndarray]:
        return weighted_average(replies, examples)

    def events(self, dpsgd=None) -> list[tuple[events.Event, tuple[str, ...]]]:
        out = [(events.Unprotected("DP-SGD protects records, not whole clients"), ("client",))]
        for noise, rate, steps in (dpsgd or {}).get("history", []):
            out.append((events.Gaussian(noise, rate, int(steps)), ("record",)))
        return out


WeightChannel = Clear | NoisedMean | DpSgd


def uses_examples(channel: WeightChannel) -> bool:
    """Whether the channel averages by example count (and so its clients send it)."""
    return keys.NUM_EXAMPLES in channel.metrics


def build(name: str, noise_multiplier: float, clipping_norm: float, *, sampling_rate: float = 1.0,
          population: int = 0) -> WeightChannel:
    """The weight channel ``name`` with the run's noise settings (and Poisson client sampling, for DP-FedAvg)."""
    if name == "clear":
        return Clear()
    if name in ("server-clipping", "client-clipping"):
        return NoisedMean(name, noise_multiplier, clipping_norm, sampling_rate, population)
    if name == "dpsgd":
        return DpSgd()
    raise ConfigError(f"unknown weight channel {name!r}; use one of: {', '.join(CHANNELS)}")


def clip(update: Arrays, norm: float) -> dict[str, np.ndarray]:
    """``update`` scaled to L2 norm at most ``norm`` over all its tensors together (Flower's FlatClip)."""
    size = float(np.sqrt(sum(float(np.sum(np.square(value, dtype=np.float64))) for value in update.values())))
    scale = min(1.0, norm / size) if size > 0 else 1.0
    return {name: np.asarray(value, np.float64) * scale for name, value in update.items()}
