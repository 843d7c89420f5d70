"""The settings of a federated run, validated once where they enter.

Flower hands settings over as ``[tool.flwr.app.config]`` keys in kebab-case
(``target-sparsity = 0.9``); :meth:`RunConfig.from_mapping` turns them into a frozen
:class:`RunConfig` and fails, before any work starts, on an unknown key, a wrong type or a bad
value, naming the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedprune.privacy import weight_channel
from fedprune.schedules import Constant, Geometric, OneShot, Polynomial, Schedule
from fedprune.validation import ConfigError, finite, pick, positive, positive_int, probability, sparsity

METHODS = {
    "votes": "clients report their masks; the server debiases the votes into the global mask",
    "server-magnitude": "no mask reports: the server prunes the averaged model by magnitude (no privacy cost)",
    "dense": "no pruning: plain FedAvg, the baseline",
}
WEIGHT_CHANNELS = weight_channel.CHANNELS
MODES = {"default": "clients send weights and mask reports",
         "mask-only": "weights frozen at the seed's initialisation; clients send only privatized mask samples"}
# Settings a mode changes when they are not given (from_mapping: `fedprune run`, not pyproject's full table).
# Mask-only trains real-valued scores (Adam, as FedPM) at density 0.5 (edge-popup's best range); 8 local epochs
# reach in 30 rounds what 4 reach in 50, for 30 reports' privacy cost (docs/MASK_ONLY.md).
MODE_DEFAULTS = {"mask-only": {"optimizer": "adam", "learning-rate": 0.2, "local-epochs": 8, "target-sparsity": 0.5}}
SCHEDULE_NAMES = ("oneshot", "constant", "geometric", "polynomial")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a federated pruning run (kebab-case keys in pyproject.toml)."""

    num_server_rounds: int = 30
    num_clients: int = 10
    fraction_train: float = 1.0
    min_replies: int = 2
    local_epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    dataset: str = "mnist1d"
    model: str = "cnn1d"
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    method: str = "votes"
    target_sparsity: float = 0.9
    schedule: str = "polynomial"
    prune_start: int = 6
    prune_end: int = 18
    prune_every: int = 3
    scorer: str = "magnitude"
    distribution: str = "global"
    structure: str = "unstructured"
    regrowth: bool = False
    mechanism: str = "randomized-response"
    epsilon_per_decision: float = 2.0
    # eps of a whole mask report, for mechanisms whose figure is per report: subset (pure eps), central (at delta)
    epsilon_per_report: float = 2.0
    delta: float = 1e-5
    unit: str = "client"
    sample_size: int = 0
    weight_channel: str = "clear"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    budget_epsilon: float = 0.0
    dense_baseline: bool = False
    mode: str = "default"
    seed: int = 0
    privacy_seed: int = -1
    run_name: str = ""
    output_dir: str = "runs"
    resume: bool = False

    def __post_init__(self):
        for name in ("num_server_rounds", "num_clients", "min_replies", "local_epochs", "batch_size",
                     "prune_start", "prune_end", "prune_every", "classes_per_client"):
            positive_int(_key(name), getattr(self, name))
        probability("fraction-train", self.fraction_train, open_high=False)
        positive("learning-rate", self.learning_rate)
        if not 0 <= finite("momentum", self.momentum) < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if finite("weight-decay", self.weight_decay) < 0:
            raise ConfigError(f"weight-decay must be >= 0, got {self.weight_decay}")
        positive("dirichlet-alpha", self.dirichlet_alpha)
        pick("method", self.method, METHODS)
        _check_names(self)
        pick("schedule", self.schedule, dict.fromkeys(SCHEDULE_NAMES))
        pick("weight channel", self.weight_channel, WEIGHT_CHANNELS)
        pick("mode", self.mode, MODES)
        sparsity(self.target_sparsity, "target-sparsity")
        if self.mode == "default" and (self.prune_end < self.prune_start or self.prune_end > self.num_server_rounds):
            raise ConfigError(f"prune-end ({self.prune_end}) must lie in [prune-start ({self.prune_start}), "
                              f"num-server-rounds ({self.num_server_rounds})]")
        eps = float(self.epsilon_per_decision)
        if math.isnan(eps) or eps <= 0:
            raise ConfigError(f"epsilon-per-decision must be > 0 (inf for exact, non-private votes), got {eps}")
        eps = float(self.epsilon_per_report)
        if math.isnan(eps) or eps <= 0:
            raise ConfigError(f"epsilon-per-report must be > 0 (inf for exact, non-private votes), got {eps}")
        probability("delta", self.delta)
        if self.unit not in ("record", "client"):
            raise ConfigError(f"unknown unit {self.unit!r}; valid units: client, record")
        if self.sample_size < 0:
            raise ConfigError(f"sample-size must be >= 0 (0: every coordinate), got {self.sample_size}")
        positive("noise-multiplier", self.noise_multiplier)
        positive("clipping-norm", self.clipping_norm)
        if finite("budget-epsilon", self.budget_epsilon) < 0:
            raise ConfigError(f"budget-epsilon must be >= 0 (0: no budget), got {self.budget_epsilon}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.min_replies > self.num_clients:
            raise ConfigError(f"min-replies ({self.min_replies}) exceeds num-clients ({self.num_clients}): a round could "
                              f"never complete; set min-replies to at most {self.num_clients} (--set min-replies="
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

    def build_weight_channel(self) -> weight_channel.WeightChannel:
        """How this run's weight updates travel and are averaged (``fedprune.privacy.weight_channel``)."""
        return weight_channel.build(self.weight_channel, self.noise_multiplier, self.clipping_norm)

    def build_schedule(self) -> Schedule:
        """The pruning schedule these settings describe (rounds from prune-start to prune-end)."""
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
        """The kebab-case mapping ``from_mapping`` reads (what the run writes as config.json)."""
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_mapping(cls, settings: Mapping[str, object]) -> RunConfig:
        """Build from kebab-case keys; unknown keys and wrong types fail naming the valid ones.

        Keys not given take the mode's defaults (``MODE_DEFAULTS``), then the general ones.
        """
        fields = {_key(f.name): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(fields)}")
        mode = _coerce("mode", settings.get("mode", cls.mode), str)
        settings = {**MODE_DEFAULTS.get(mode, {}), **settings}
        values = {}
        for key, value in settings.items():
            field = fields[key]
            values[field.name] = _coerce(key, value, type(field.default))
        return cls(**values)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _check_names(config: RunConfig) -> None:
    """Every named choice against its registry, so a misspelt one fails here and not rounds later."""
    from fedprune.data import DATASETS  # imported here: the registries pull in torch and the models
    from fedprune.distributions import DISTRIBUTIONS
    from fedprune.models import MODELS
    from fedprune.partitioning import PARTITION_METHODS
    from fedprune.privacy.mechanisms import REGISTRY
    from fedprune.scorers import SCORERS
    from fedprune.training import OPTIMIZERS

    pick("mechanism", config.mechanism, REGISTRY)
    pick("scorer", config.scorer, SCORERS)
    pick("distribution", config.distribution, DISTRIBUTIONS)
    pick("optimizer", config.optimizer, OPTIMIZERS)
    pick("model", config.model, MODELS)
    pick("partitioner", config.partitioner, dict.fromkeys(PARTITION_METHODS))
    if not str(config.dataset).startswith("hf:"):
        pick("dataset", config.dataset, {**DATASETS, "hf:<name or local path>": None})


def _key(name: str) -> str:
    return name.replace("_", "-")


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
