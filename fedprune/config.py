"""The settings of a federated run, resolved and validated once where they enter.

Flower hands settings over as ``[tool.flwr.app.config]`` keys in kebab-case
(``target-sparsity = 0.9``); :func:`resolve` turns them (or a :class:`RunConfig`) into a frozen
:class:`RunConfig` and fails, before any work starts, on an unknown key, a wrong type or a bad
value, naming the fix. Every entry (``fedprune run`` and its other commands, ``flwr run .``,
sweep cells, the client, the Python API) goes through it, so a mode's defaults and every check
are the same everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from fedprune import config_checks, presets
from fedprune.pruning.schedules import Constant, Geometric, OneShot, Polynomial, Schedule
from fedprune.validation import ConfigError, count_or_zero, finite, pick, positive, positive_int, probability, sparsity

METHODS = {
    "votes": "clients report their masks; the server debiases the votes into the global mask",
    "server-magnitude": "no mask reports: the server prunes the averaged model by magnitude (no privacy cost)",
    "dense": "no pruning: plain FedAvg, the baseline",
}
MODES = {"default": "clients send weights and mask reports",
         "mask-only": "weights frozen at the seed's initialisation; clients send only privatized mask samples"}
AUTO = "auto"  # a mode-dependent setting left to the mode: RunConfig resolves it from MODE_DEFAULTS
# The settings a mode decides unless given. Mask-only trains real-valued scores (Adam, as FedPM) at density 0.5
# (edge-popup's best range); 8 local epochs reach in 30 rounds what 4 reach in 50, for 30 reports' privacy cost
# (docs/MASK_ONLY.md).
MODE_DEFAULTS = {
    "default": {"optimizer": "sgd", "learning_rate": 0.05, "local_epochs": 4, "target_sparsity": 0.9},
    "mask-only": {"optimizer": "adam", "learning_rate": 0.2, "local_epochs": 8, "target_sparsity": 0.5},
}
# Settings only the server reads: a client is never sent them (fedprune.federated.wire.TrainRequest).
SERVER_ONLY = frozenset({"num-server-rounds", "fraction-train", "client-sampling", "schedule", "prune-start",
                         "prune-end", "prune-every", "server-learning-rate", "server-momentum", "budget-epsilon",
                         "dense-baseline", "run-name", "output-dir", "resume"})
CLIENT_SAMPLING = {"fixed": "fraction-train x num-clients clients a round, from the run's seed (no amplification)",
                   "poisson": "each client takes part with probability fraction-train, secretly (amplified)"}
SCHEDULE_NAMES = ("oneshot", "constant", "geometric", "polynomial")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a federated pruning run (kebab-case keys in pyproject.toml), resolved and checked.

    Construction resolves ``AUTO`` settings to the mode's defaults, accepts what TOML and the
    command line give (``"0.8"``, ``"true"``) and runs every check (``fedprune.config_checks``),
    so a RunConfig always holds valid, resolved values.
    """

    # --- federation ---
    num_server_rounds: int = 30  # rounds of the run
    num_clients: int = 10  # clients (data partitions); under `flwr run .` at most the SuperNodes there are
    fraction_train: float = 1.0  # share of clients sampled each round (fixed: at least 2)
    # fixed: the server draws fraction-train x num-clients clients each round from the run's seed (not amplified);
    # poisson: each client takes part independently with probability fraction-train, drawn from the privacy
    # randomness and never sent; DP-FedAvg's figure is then amplified by it (fedprune.privacy.weight_channel)
    client_sampling: str = "fixed"
    min_replies: int = 2  # well-formed replies a round needs, else the run fails naming the rejections
    # --- local training ---
    local_epochs: int = AUTO  # epochs per round on a client; the mode's: 4; mask-only 8
    # 0: local-epochs decide; k > 0: exactly k optimizer steps a round instead (DP-SGD: k Poisson batches, each
    # accounted), which keeps a round's work fixed when a client holds more records (default mode only)
    local_steps: int = 0
    batch_size: int = 32  # local minibatch size
    learning_rate: float = AUTO  # local learning rate; the mode's: 0.05; mask-only 0.2
    optimizer: str = AUTO  # local optimizer (sgd, adam); the mode's: sgd; mask-only adam
    momentum: float = 0.9  # SGD momentum (zeroed at pruned weights)
    weight_decay: float = 0.0  # L2 weight decay (never revives a pruned weight)
    # --- data and model ---
    dataset: str = "mnist1d"  # mnist1d, digits (offline), or hf:<name or local path>
    # 0: the dataset as published (MNIST-1D: 8,000 training examples); k > 0: MNIST-1D generated with
    # num-clients x k training examples (k per client under partitioner iid, k on average otherwise)
    examples_per_client: int = 0
    # held-out examples the server evaluates the global model on after every round: the first k of the test split
    # (0: all of it; a generated MNIST-1D's test split is a quarter the size of its training split)
    test_examples: int = 0
    model: str = "cnn1d"  # cnn1d, cnn1d-small (32 channels), mlp, cnn2d
    partitioner: str = "dirichlet"  # how the training set is split over clients (iid, dirichlet, pathological)
    dirichlet_alpha: float = 0.5  # Dirichlet concentration: smaller is more non-IID
    classes_per_client: int = 2  # classes each client holds under the pathological partitioner
    # --- pruning ---
    method: str = "votes"  # votes (clients report masks), server-magnitude (no reports), dense (no pruning)
    target_sparsity: float = AUTO  # share of prunable weights removed at the end; the mode's: 0.9; mask-only 0.5
    schedule: str = "polynomial"  # how sparsity rises: oneshot, constant, geometric (IMP), polynomial (AGP)
    prune_start: int = 6  # first pruning round
    prune_end: int = 18  # last pruning round (at most num-server-rounds)
    prune_every: int = 3  # rounds between pruning events
    scorer: str = "magnitude"  # importance of a weight on a client: magnitude, random, taylor, obd (l1_units, l2_units)
    distribution: str = "global"  # how the sparsity is split over layers: global, uniform, erk
    structure: str = "unstructured"  # the vote layout: unstructured (weights) or units (rows, channels)
    regrowth: bool = False  # whether a pruned weight may come back (reports then cover every weight)
    # --- mask reports ---
    mechanism: str = "randomized-response"  # how a mask report is privatized (fedprune.privacy.mechanisms)
    epsilon_per_decision: float = 2.0  # per-bit mechanisms: the loss of one bit of a report (inf: exact votes)
    # eps of a whole mask report, for mechanisms whose figure is per report: subset (pure eps), central (at delta)
    epsilon_per_report: float = 2.0
    delta: float = 1e-5  # the delta every (eps, delta) figure is stated at
    unit: str = "client"  # the unit the figures and the budget protect: a whole client, or one record
    sample_size: int = 0  # coordinates per report under the sampling mechanism (0: every coordinate)
    # --- weight updates ---
    weight_channel: str = "clear"  # how weight updates travel: clear, server-clipping, client-clipping, dpsgd
    noise_multiplier: float = 1.0  # Gaussian noise std over the clipping norm, for the DP weight channels
    clipping_norm: float = 1.0  # L2 clip of each update (DP-FedAvg) or of each example's gradient (DP-SGD)
    # the server's step from the channel's average (fedprune.federated.server_optimizer; post-processing, free):
    # new = sent + server-learning-rate x m, m = server-momentum x m + (average - sent); 1 and 0: plain FedAvg
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0  # FedAvgM's momentum, which averages DP-FedAvg's noise over rounds
    budget_epsilon: float = 0.0  # stop before a round takes any client past this eps in `unit` (0: no budget)
    # --- the run ---
    dense_baseline: bool = False  # also run dense FedAvg on the same seed and report its accuracy beside
    mode: str = "default"  # default (weights and mask reports) or mask-only (frozen weights, mask samples only)
    seed: int = 0  # data split, initialisation, training order: public (every client is sent it)
    privacy_seed: int = -1  # privacy noise from this seed (tests, reproducible simulations); -1: OS entropy
    run_name: str = ""  # the run's folder under output-dir (empty: run-<date>-<time>)
    output_dir: str = "runs"  # where run folders go
    resume: bool = False  # continue the run folder from its last checkpoint

    def __post_init__(self):
        mode = _coerce("mode", self.mode, str)
        pick("mode", mode, MODES)
        auto = frozenset(name for name in MODE_DEFAULTS[mode] if getattr(self, name) == AUTO)
        for field in dataclasses.fields(self):  # frozen: resolved values are set once, here
            value = MODE_DEFAULTS[mode][field.name] if field.name in auto else getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(_key(field.name), value, _kind(field)))
        object.__setattr__(self, "_auto", auto)  # kept by replace(): a new mode brings its own defaults
        self._check_values()
        config_checks.check_names(self)
        config_checks.check_federated(self)

    def _check_values(self) -> None:
        for name in ("num_server_rounds", "num_clients", "min_replies", "local_epochs", "batch_size",
                     "prune_start", "prune_end", "prune_every", "classes_per_client"):
            positive_int(_key(name), getattr(self, name))
        probability("fraction-train", self.fraction_train, open_high=False)
        pick("client-sampling", self.client_sampling, CLIENT_SAMPLING)
        positive("learning-rate", self.learning_rate)
        if not 0 <= finite("momentum", self.momentum) < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if finite("weight-decay", self.weight_decay) < 0:
            raise ConfigError(f"weight-decay must be >= 0, got {self.weight_decay}")
        positive("dirichlet-alpha", self.dirichlet_alpha)
        pick("method", self.method, METHODS)
        pick("schedule", self.schedule, dict.fromkeys(SCHEDULE_NAMES))
        sparsity(self.target_sparsity, "target-sparsity")
        if self.mode == "default" and (self.prune_end < self.prune_start or self.prune_end > self.num_server_rounds):
            raise ConfigError(f"prune-end ({self.prune_end}) must lie in [prune-start ({self.prune_start}), "
                              f"num-server-rounds ({self.num_server_rounds})]")
        if math.isnan(self.epsilon_per_decision) or self.epsilon_per_decision <= 0:
            raise ConfigError("epsilon-per-decision must be > 0 (inf for exact, non-private votes), got "
                              f"{self.epsilon_per_decision}")
        if math.isnan(self.epsilon_per_report) or self.epsilon_per_report <= 0:
            raise ConfigError("epsilon-per-report must be > 0 (inf for exact, non-private votes), got "
                              f"{self.epsilon_per_report}")
        probability("delta", self.delta)
        if self.unit not in ("record", "client"):
            raise ConfigError(f"unknown unit {self.unit!r}; valid units: client, record")
        if self.sample_size < 0:
            raise ConfigError(f"sample-size must be >= 0 (0: every coordinate), got {self.sample_size}")
        positive("noise-multiplier", self.noise_multiplier)
        positive("clipping-norm", self.clipping_norm)
        positive("server-learning-rate", self.server_learning_rate)
        if not 0 <= finite("server-momentum", self.server_momentum) < 1:
            raise ConfigError(f"server-momentum must be in [0, 1), got {self.server_momentum}")
        if finite("budget-epsilon", self.budget_epsilon) < 0:
            raise ConfigError(f"budget-epsilon must be >= 0 (0: no budget), got {self.budget_epsilon}")
        count_or_zero("local-steps", self.local_steps, "local-epochs decide")
        if self.examples_per_client < 0:
            raise ConfigError(f"examples-per-client must be >= 0 (0: the dataset as published), got "
                              f"{self.examples_per_client}")
        if self.test_examples < 0:
            raise ConfigError(f"test-examples must be >= 0 (0: the whole test split), got {self.test_examples}")
        if self.examples_per_client and self.dataset != "mnist1d":
            raise ConfigError(f"examples-per-client sizes the generated MNIST-1D; {self.dataset} has a fixed size: set "
                              "examples-per-client 0 or dataset mnist1d")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.privacy_seed < -1:
            raise ConfigError(f"privacy-seed must be -1 (fresh OS randomness) or a seed >= 0, got {self.privacy_seed}")
        if self.run_name in (".", "..") or any(sep in self.run_name for sep in "/\\"):
            raise ConfigError(f"run-name must be a folder name, without / or \\, got {self.run_name!r}; put the "
                              "folder's parent in output-dir")
        if self.min_replies > self.num_clients:
            raise ConfigError(f"min-replies ({self.min_replies}) exceeds num-clients ({self.num_clients}): a round "
                              f"could never complete; set min-replies to at most {self.num_clients} (--set min-replies="
                              f"{self.num_clients}) or raise num-clients")

    @property
    def private_votes(self) -> bool:
        """Whether mask reports go through a privacy mechanism (False: exact votes in the clear)."""
        from fedprune.privacy.mechanisms import mechanism_class
        return self.method == "votes" and mechanism_class(self).threat_model != "none"

    @property
    def privacy_seeded(self) -> bool:
        """Privacy noise from a seeded generator (reproducible simulations and tests only)."""
        return self.privacy_seed >= 0

    def build_weight_channel(self):
        """How this run's weight updates travel and are averaged
        (a ``fedprune.privacy.weight_channel.WeightChannel``)."""
        from fedprune.privacy import weight_channel  # imported here: the channels name the wire's metric keys

        poisson = self.client_sampling == "poisson"
        return weight_channel.build(self.weight_channel, self.noise_multiplier, self.clipping_norm,
                                    sampling_rate=self.fraction_train if poisson else 1.0,
                                    population=self.num_clients if poisson else 0)

    @cached_property
    def pruning_schedule(self) -> Schedule:
        """The pruning schedule these settings describe (rounds from prune-start to prune-end), built once."""
        if self.schedule == "oneshot":
            return OneShot(self.target_sparsity, at_round=self.prune_start)
        if self.schedule == "constant":
            return Constant(self.target_sparsity)
        if self.schedule == "geometric":
            steps = (self.prune_end - self.prune_start) // self.prune_every + 1
            return Geometric.for_target(self.target_sparsity, steps, every=self.prune_every, start=self.prune_start)
        end = self.prune_start + (self.prune_end - self.prune_start) // self.prune_every * self.prune_every
        if end == self.prune_start:
            return OneShot(self.target_sparsity, at_round=self.prune_start)
        return Polynomial(self.target_sparsity, start=self.prune_start, end=end, every=self.prune_every)

    def to_mapping(self) -> dict:
        """The kebab-case mapping :func:`resolve` reads, with resolved values (what the run writes as config.json)."""
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes) -> RunConfig:
        """A copy with ``changes``; settings left to the mode stay so (a new mode brings its own defaults)."""
        return dataclasses.replace(self, **{**dict.fromkeys(self._auto, AUTO), **changes})


def resolve(settings: RunConfig | Mapping[str, object]) -> RunConfig:
    """The one entry for a run's settings: a checked, resolved :class:`RunConfig`.

    ``settings``: a RunConfig (already resolved) or kebab-case keys as in pyproject.toml, where
    ``"auto"`` or a missing key takes the mode's default, and ``preset`` names a set of settings
    (``fedprune.presets``) that the other keys override. Unknown keys, wrong types and bad values
    fail with a ConfigError naming the key, the allowed values and the fix.
    """
    if isinstance(settings, RunConfig):
        return settings
    if not isinstance(settings, Mapping):
        raise ConfigError("settings must be a RunConfig or a mapping of kebab-case keys, "
                          f"got {type(settings).__name__}")
    settings = presets.apply(settings)
    fields = {_key(f.name): f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(map(str, unknown))}; valid settings: {', '.join(fields)}")
    return RunConfig(**{fields[key]: value for key, value in settings.items()})


def _key(name: str) -> str:
    return name.replace("_", "-")


def _kind(field: dataclasses.Field) -> type:
    """The type a field's values have (a mode-dependent one's default is AUTO, a string)."""
    return type(MODE_DEFAULTS["default"].get(field.name, field.default))


def _coerce(key: str, value, kind: type):
    """Accept what TOML and the command line give for a field of type ``kind``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind in (int, float):
        what = "an integer" if kind is int else "a number"
        try:
            if isinstance(value, bool):
                raise TypeError
            number = kind(value) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {what}, got {value!r}") from None
        if kind is int and not float(number).is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(number) if kind is int else float(number)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value
