"""Trust models: whom a privacy figure holds against.

Every channel a client releases through (weights, mask reports, metrics) has one per unit of
protection, and every report names it beside the figure. A figure composed over several channels
holds only against the parties all of them hold against: the weakest trust model governs.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedprune.validation import ConfigError

# strongest first
TRUST_MODELS = {
    "local": "privatized on the client: holds against the server, other clients and anyone who sees the "
             "released model and mask",
    "central": "noised by the server as a trusted aggregator: holds against other clients and anyone who sees the "
               "released model and mask, not against the server, which sees each client's reply before the noise",
    "none": "sent without a guarantee: holds against no one who sees it",
}


def weakest(models: Iterable[str]) -> str:
    """The weakest of ``models`` ("local" when there are none: nothing was released)."""
    order = list(TRUST_MODELS)
    found = list(models)
    for model in found:
        if model not in TRUST_MODELS:
            raise ConfigError(f"unknown trust model {model!r}; known: {', '.join(order)}")
    return max(found, key=order.index, default="local")


def holds_against(model: str) -> str:
    """The parties a figure under ``model`` holds against, in a few words."""
    return {"local": "everyone, the server included", "central": "everyone but the server",
            "none": "no one"}[weakest([model])]
