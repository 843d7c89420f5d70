"""Record-level DP-SGD through Opacus, with one accountant for the whole life of a client.

A :class:`DPSGD` holds the settings (noise multiplier, clipping norm) and ONE Opacus accountant.
Every ``fedprune.training.train.train`` call with ``dp=`` wraps the model, optimizer and loader for
that call only (per-sample gradients, clipping, Gaussian noise, Poisson sampling) and adds its
steps to that same accountant, so ``epsilon(delta)`` is the guarantee for everything trained so
far. (Flower's Opacus example builds a new PrivacyEngine every round and never adds the rounds
up: the figure it prints is one round's, not the run's.)

The unit is one record of the client's dataset, neighbours replace one record. Each step is a
Poisson-subsampled Gaussian mechanism at rate ``1 / len(loader)``; ``events()`` hands that
history to the fedprune ledger as :class:`fedprune.privacy.events.Gaussian` events.

Randomness: with a seeded ``torch.Generator`` (tests, reproducible simulations) the sampling and
noise generators are seeded from it; without one, from the operating system's entropy.
``noise_sources`` counts which. ``secure=True`` also turns on Opacus's noise generation that
resists floating-point attacks (``secure_mode`` of its DPOptimizer) and refuses seeded
generators. torch's generators are not cryptographic even when seeded from the OS; Opacus's
fully secure mode needs torchcsprng, which has no build for current torch.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedprune.privacy.events import Gaussian
from fedprune.validation import ConfigError, pick, positive, probability

STATE_KIND = "fedprune.training.dpsgd"
STATE_VERSION = 1
ACCOUNTANTS = {
    "prv": "privacy-loss random variables (Gopi et al. 2021): a tight upper bound",
    "rdp": "Renyi DP (Mironov 2017): looser, a cross-check",
}


@dataclass
class PrivateTraining:
    """The Opacus-wrapped model, optimizer and Poisson loader for one training call.

    ``close()`` removes every hook and attribute Opacus put on the model, so the caller's model
    can be trained again, deep-copied and pickled.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: torch.utils.data.DataLoader
    model: nn.Module

    def close(self) -> None:
        self.module.cleanup()  # Opacus: removes its hooks and grad_sample & co. from parameters
        for param in self.model.parameters():
            for attr in ("summed_grad", "grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample"):
                if hasattr(param, attr):
                    delattr(param, attr)
        for module in self.model.modules():
            for attr in ("activations", "max_batch_len"):
                if attr in module.__dict__:
                    delattr(module, attr)
            if not module._backward_hooks:  # Opacus used full backward hooks; allow either kind again
                module._is_full_backward_hook = None

    def __enter__(self) -> "PrivateTraining":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DPSGD:
    """DP-SGD settings plus one Opacus accountant that every training call adds to."""

    def __init__(self, noise_multiplier: float, max_grad_norm: float, accountant: str = "prv",
                 secure: bool = False):
        self.noise_multiplier = positive("noise multiplier", noise_multiplier)
        self.max_grad_norm = positive("max grad norm (the per-example clipping bound)", max_grad_norm)
        pick("accountant", accountant, ACCOUNTANTS)
        if not isinstance(secure, bool):
            raise ConfigError(f"secure must be True or False, got {secure!r}")
        self.accountant = accountant
        self.secure = secure
        self.noise_sources = {"seeded": 0, "os_entropy": 0}
        from opacus.accountants import create_accountant

        self._accountant = create_accountant(mechanism=accountant)

    def __repr__(self) -> str:
        return (f"DPSGD(noise_multiplier={self.noise_multiplier}, max_grad_norm={self.max_grad_norm}, "
                f"accountant={self.accountant!r}, secure={self.secure}, steps={self.steps})")

    # --- training -----------------------------------------------------------------------------

    def make_private(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader,
                     generator: torch.Generator | None = None) -> PrivateTraining:
        """Wrap ``model``, ``optimizer`` and ``loader`` for one DP training call.

        What Opacus's ``PrivacyEngine.make_private`` does (per-sample gradients, flat clipping,
        Poisson sampling at ``1 / len(loader)``, noise std ``noise_multiplier * max_grad_norm``,
        mean loss over the expected batch size), built from its parts so that the accountant
        is this object's and every random draw has an explicit generator. Call ``close()`` on
        the result (or use it as a context manager) when the call ends.
        """
        from opacus.data_loader import DPDataLoader
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(loader, torch.utils.data.DataLoader) or isinstance(
                loader.dataset, torch.utils.data.IterableDataset):
            raise ConfigError("DP-SGD needs a torch DataLoader over a map-style dataset (Poisson sampling "
                              "draws each record independently); build one with fedprune.data.datasets.make_loader")
        if len(loader.dataset) == 0:
            raise ConfigError("DP-SGD needs a non-empty dataset")
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(f"Opacus cannot compute per-example gradients for this model: {errors[0]}. "
                              "Replace BatchNorm with GroupNorm (opacus ModuleValidator.fix does this)")
        parameters = set(model.parameters())
        if any(p not in parameters for group in optimizer.param_groups for p in group["params"]):
            raise ConfigError("the optimizer holds parameters that are not the model's")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        sampling, noise = self._generators(generator, noise_device=device)

        module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        wrapped = PrivateTraining(module=module, optimizer=optimizer, loader=loader, model=model)
        try:
            module.forbid_grad_accumulation()  # Poisson sampling: one step per sampled batch
            wrapped.loader = DPDataLoader.from_data_loader(loader, generator=sampling)
            sample_rate = 1 / len(wrapped.loader)
            wrapped.optimizer = DPOptimizer(
                optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                expected_batch_size=int(len(loader.dataset) * sample_rate), loss_reduction="mean",
                generator=noise, secure_mode=self.secure,
            )
            wrapped.optimizer.attach_step_hook(self._accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        except BaseException:
            wrapped.close()
            raise
        return wrapped

    def _generators(self, generator: torch.Generator | None, noise_device: torch.device
                    ) -> tuple[torch.Generator, torch.Generator]:
        """Generators for Poisson sampling (CPU) and for noise (on the parameters' device).

        Seeded from ``generator`` when one is given, else from the operating system's entropy.
        """
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ConfigError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator is not None and self.secure:
            raise ConfigError("secure DP-SGD draws its randomness from the operating system: pass "
                              "generator=None, or use secure=False for a reproducible simulation")
        if generator is None:
            seeds = [secrets.randbits(63) for _ in range(2)]
            self.noise_sources["os_entropy"] += 1
        else:
            seeds = [int(s) for s in torch.randint(0, 2**62, (2,), generator=generator, device=generator.device)]
            self.noise_sources["seeded"] += 1
        return torch.Generator().manual_seed(seeds[0]), torch.Generator(device=noise_device).manual_seed(seeds[1])

    # --- accounting ---------------------------------------------------------------------------

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """(noise multiplier, sampling rate, steps) runs, as the Opacus accountant keeps them."""
        return [(float(s), float(q), int(n)) for s, q, n in self._accountant.history]

    @property
    def steps(self) -> int:
        """Noisy steps taken so far, over every training call."""
        return sum(n for _, _, n in self.history)

    def epsilon(self, delta: float) -> float:
        """Record-level epsilon at ``delta`` for every step so far (0.0 before the first).

        PRV returns its upper bound (eps error 0.01, delta error delta/1000); RDP its bound
        over Opacus's default orders. Both are conservative.
        """
        delta = probability("delta", delta)
        if not self._accountant.history:
            return 0.0
        with np.errstate(divide="ignore"), warnings.catch_warnings():
            # PRV at sampling rate 1 takes log(1 - q) = -inf on purpose; the result is exact.
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(self._accountant.get_epsilon(delta=delta))

    def events(self) -> list[Gaussian]:
        """The history as ledger events: one Poisson-sampled Gaussian per run (record level)."""
        return [Gaussian(noise_multiplier=s, sampling_rate=q, count=n) for s, q, n in self.history]

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """A JSON-able snapshot: tag, settings, accountant history and where the noise came from."""
        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "secure": self.secure,
            "history": [[s, q, n] for s, q, n in self.history],
            "noise_sources": dict(self.noise_sources),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the history of ``state``; ConfigError (nothing changed) if it is not this DPSGD's."""
        if not isinstance(state, Mapping):
            raise ConfigError(f"a DPSGD state must be a dict from DPSGD.state_dict(), got {type(state).__name__}")
        if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
            raise ConfigError(f"not a DPSGD state (kind {state.get('kind')!r}, version {state.get('version')!r}); "
                              f"expected kind {STATE_KIND!r}, version {STATE_VERSION}")
        for key, mine in (("accountant", self.accountant), ("noise_multiplier", self.noise_multiplier),
                          ("max_grad_norm", self.max_grad_norm), ("secure", self.secure)):
            if key not in state:
                raise ConfigError(f"DPSGD state has no {key!r}: it is malformed")
            if state[key] != mine:
                raise ConfigError(f"DPSGD state has {key}={state[key]!r} but this DPSGD has {mine!r}: build it "
                                  "with DPSGD.from_state_dict(state), or load the state of the same settings")
        history = _check_history(state.get("history"), self.noise_multiplier)
        sources = state.get("noise_sources", {"seeded": 0, "os_entropy": 0})
        if (not isinstance(sources, Mapping) or set(sources) != {"seeded", "os_entropy"}
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in sources.values())):
            raise ConfigError(f"DPSGD state has malformed noise_sources {sources!r}")
        self._accountant.history = history
        self.noise_sources = dict(sources)

    @classmethod
    def from_state_dict(cls, state: Mapping) -> "DPSGD":
        """A DPSGD with the settings and history of ``state``."""
        if not isinstance(state, Mapping) or any(k not in state for k in ("noise_multiplier", "max_grad_norm")):
            raise ConfigError("a DPSGD state must be a dict from DPSGD.state_dict() with its settings")
        dp = cls(state["noise_multiplier"], state["max_grad_norm"], accountant=state.get("accountant", "prv"),
                 secure=state.get("secure", False))
        dp.load_state_dict(state)
        return dp


def _check_history(history, noise_multiplier: float) -> list[tuple[float, float, int]]:
    """The accountant history as Opacus keeps it: (noise multiplier, rate in (0, 1], steps >= 1)."""
    if not isinstance(history, (list, tuple)):
        raise ConfigError(f"DPSGD state history must be a list of [noise, rate, steps], got {history!r}")
    checked = []
    for entry in history:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ConfigError(f"DPSGD history entry {entry!r} must be [noise multiplier, sampling rate, steps]")
        sigma, rate, steps = entry
        if (isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma)
                or sigma != noise_multiplier):
            raise ConfigError(f"DPSGD history entry {entry!r} has noise multiplier {sigma!r}, "
                              f"not this DPSGD's {noise_multiplier}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ConfigError(f"DPSGD history entry {entry!r} has a non-numeric sampling rate")
        probability("history sampling rate", rate, open_high=False)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"DPSGD history entry {entry!r} must count at least one step")
        checked.append((float(sigma), float(rate), int(steps)))
    return checked
