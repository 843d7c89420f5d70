"""The privacy statement every report repeats: per channel and end to end, per unit, against whom.

A client releases through three channels: its weights (the run's weight channel), its mask
reports (the mechanism) and its metrics. For each unit of protection (record, client) each
channel has a trust model (``fedprune.privacy.trust``); the end-to-end figure is the ledger's
composition of everything, and it holds only against the parties the weakest channel holds
against. A figure of None comes with the releases that made it none.
"""

from __future__ import annotations

from fedprune.config import RunConfig
from fedprune.federated import keys
from fedprune.federated.rounds import mask_post_processing_units
from fedprune.privacy.accountant import Accountant
from fedprune.privacy.mechanisms import mechanism_class
from fedprune.privacy.trust import TRUST_MODELS, holds_against, weakest
from fedprune.privacy.weight_channel import WeightChannel

UNITS = ("record", "client")


def channel_trust(config: RunConfig, channel: WeightChannel | None) -> dict[str, dict[str, str]]:
    """{channel: {unit: trust model}} for what a client of this run sends (``channel`` None: no weights sent)."""
    out = {}
    if channel is not None:
        out["weights"] = {unit: channel.trust(unit) for unit in UNITS}
    if config.method == "votes":
        free = mask_post_processing_units(config) if channel is not None else ()
        reported = mechanism_class(config).threat_model
        out["mask"] = {unit: channel.trust(unit) if unit in free else reported for unit in UNITS}
    out["metrics"] = {unit: _metrics_trust(channel, unit) for unit in UNITS}
    return out


def metrics_sent(channel: WeightChannel | None) -> list[str]:
    """The metric keys a client sends (mask-only: ``channel`` None, the client id alone)."""
    return [keys.CLIENT_ID] if channel is None else list(channel.metrics)


def _metrics_trust(channel: WeightChannel | None, unit: str) -> str:
    # the client id and DP-SGD's parameters are public; the example count is unchanged by replacing one record
    sent = set(metrics_sent(channel))
    if sent & set(keys.PLAIN_METRICS) or (keys.NUM_EXAMPLES in sent and unit == "client"):
        return "none"
    return "local"


def statement(config: RunConfig, channel: WeightChannel | None, accountant: Accountant,
              mask_accountant: Accountant) -> dict:
    """summary.json's ``privacy``: the channels, then per unit the end-to-end figure and whom it holds against."""
    trust = channel_trust(config, channel)
    end_to_end, against_server = {}, {}
    for unit in UNITS:
        epsilon = accountant.epsilon(config.delta, unit)
        # nothing released yet holds against everyone
        model = "none" if epsilon is None else weakest(t[unit] for t in trust.values()) if epsilon > 0 else "local"
        end_to_end[unit] = {
            "epsilon": epsilon, "trust_model": model, "holds_against": holds_against(model),
            "why_none": accountant.unprotected(unit) if epsilon is None else [],
            "post_processing": accountant.post_processed(unit),
        }
        against_server[unit] = epsilon if model == "local" else None
    channels = {name: {unit: {"trust_model": t[unit], "holds_against": holds_against(t[unit])} for unit in UNITS}
                for name, t in trust.items()}
    channels["metrics"]["sent"] = metrics_sent(channel)
    if "mask" in channels:
        channels["mask"]["epsilon"] = {unit: mask_accountant.epsilon(config.delta, unit) for unit in UNITS}
    return {"delta": config.delta, "unit": config.unit, "channels": channels, "end_to_end": end_to_end,
            "against_the_server": against_server, "client_sampling": sampling(config, channel),
            "trust_models": TRUST_MODELS}


def sampling(config: RunConfig, channel: WeightChannel | None) -> dict:
    """How clients came to take part, and whether the figures count it (amplification) and against whom."""
    if channel is None or not channel.sampled:
        return {"scheme": config.client_sampling, "rate": config.fraction_train, "amplified": False,
                "meaning": "the figures charge each client the rounds it took part in; no amplification is counted"}
    return {"scheme": "poisson", "rate": channel.sampling_rate, "amplified": True,
            "meaning": f"each client took part in a round with probability {channel.sampling_rate:g}, drawn secretly "
                       "by the server; every round is charged to every client as one Poisson-sampled Gaussian (a "
                       "pruning round's weight and central vote sums together), which "
                       "holds against recipients of the released model and mask (they do not learn who took part; "
                       "the run folder's logs of replies and rejections are the trusted server's own records)"}


def short(config: RunConfig, statement: dict) -> str:
    """The progress line's privacy part: the declared unit's figure, its trust model, or why none."""
    figure = statement["end_to_end"][config.unit]
    if figure["epsilon"] is None:
        return f"eps({config.unit}) none ({'; '.join(figure['why_none'])})"
    if figure["epsilon"] == 0:
        return f"eps({config.unit}) 0 (nothing released yet)"
    return f"eps({config.unit}, {figure['trust_model']}) {figure['epsilon']:.3g}"
