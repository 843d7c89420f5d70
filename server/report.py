"""What a run leaves for people and machines: summary.json's content, report.md, PNG plots."""

from __future__ import annotations

import math
import os
from pathlib import Path

from fedprune import run_folder
from fedprune.config import METHODS, RunConfig
from fedprune.federated import modes
from fedprune.federated.coordinator import Coordinator
from fedprune.privacy.mechanisms import mechanism_class
from fedprune.privacy.rng import RandomnessSource
from fedprune.privacy.weight_channel import CHANNELS


def summary(config: RunConfig, coordinator: Coordinator, lines: list[dict], seconds: float, stopped,
            dense_accuracy, randomness: RandomnessSource) -> dict:
    """summary.json: final figures, privacy per unit (null = no guarantee), costs, how it ended."""
    final = lines[-1] if lines else {}
    uploads = [size for line in lines for size in line.get("upload_bytes", [])]
    dense_values = sum(math.prod(shape) for shape in coordinator.shapes.values())
    own = modes.get(config).summary(coordinator)  # what the mode states itself (mask-only: its sampler, no weights)
    out = {
        "final_accuracy": final.get("accuracy"),
        "density": coordinator.density(),
        "rounds": final.get("round", 0),
        "clients": config.num_clients,
        "method": config.method,
        "mode": config.mode,
        "epsilon": coordinator.epsilon(),
        "mask_channel_epsilon": coordinator.epsilon(mask_channel=True),
        "delta": config.delta,
        "privacy": coordinator.privacy(),
        "mechanism": own["mechanism"] if "mechanism" in own else _mechanism(config, coordinator),
        "weight_channel": own.get("weight_channel",
                                  {"name": config.weight_channel, "meaning": CHANNELS[config.weight_channel]}),
        "privacy_randomness": randomness.to_dict(),
        "upload_bytes_per_client_round": sum(uploads) / len(uploads) if uploads else None,
        "dense_upload_bytes_per_client_round": 4 * dense_values,
        "wall_seconds": seconds,
        "dense_fedavg_accuracy": dense_accuracy,
        "rejected_replies": len(coordinator.rejected),
        "rejections": coordinator.rejected[-20:],
        "dropouts": coordinator.dropouts,
        "stopped": stopped,
    }
    out.update(own)
    return out


def _mechanism(config: RunConfig, coordinator: Coordinator) -> dict:
    """The mask channel as the last reporting round used it (figures per decision and per report)."""
    if config.method != "votes":
        return {"name": None, "meaning": METHODS[config.method]}
    plan = coordinator.last_report_plan
    if plan is None:
        cls = mechanism_class(config)
        setting = {} if cls.epsilon_key is None else {cls.epsilon_key: getattr(config, cls.epsilon_key)}
        return {"name": cls.name, **setting, "note": "no reporting round ran"}
    return coordinator.mechanism(plan).describe()


def write(folder: Path, summary: dict, lines: list[dict]) -> None:
    """report.md and the plots beside it."""
    plots = _plots(folder, summary, lines)
    run_folder.write_atomic(folder / run_folder.REPORT, _markdown(summary, lines, plots))


def number(value, none: str = "none") -> str:
    """A figure for people: thousands grouped, four significant digits below 1,000, ``none`` for None."""
    if value is None:
        return none
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _privacy_markdown(privacy: dict) -> list[str]:
    """Per unit: the end-to-end figure, its trust model and whom it holds against; then each channel's trust."""
    fmt = number
    out = ["## Privacy", "", f"Delta {privacy['delta']:g}; replace-one neighbours; the run declared unit "
                             f"**{privacy['unit']}**.", "",
           "| unit | end-to-end epsilon | trust model | holds against | against the server | why none |",
           "|---|---|---|---|---|---|"]
    for unit, figure in privacy["end_to_end"].items():
        out.append(f"| {unit} | {fmt(figure['epsilon'])} | {figure['trust_model']} | {figure['holds_against']} | "
                   f"{fmt(privacy['against_the_server'][unit])} | {'; '.join(figure['why_none']) or '-'} |")
    out += ["", "| channel | record level | client level |", "|---|---|---|"]
    for name, channel in privacy["channels"].items():
        cells = [f"{channel[unit]['trust_model']}" + (f", eps {fmt(channel['epsilon'][unit])}" if "epsilon" in channel
                                                      else "") for unit in ("record", "client")]
        out.append(f"| {name}{' (' + ', '.join(channel['sent']) + ')' if 'sent' in channel else ''} | "
                   f"{cells[0]} | {cells[1]} |")
    free = sorted({what for figure in privacy["end_to_end"].values() for what in figure["post_processing"]})
    if free:
        out += ["", "Free as post-processing of protected values: " + "; ".join(free) + "."]
    sampling = privacy["client_sampling"]
    out += ["", f"Client sampling: {sampling['scheme']} at rate {sampling['rate']:g}; {sampling['meaning']}."]
    out += ["", "Trust models: " + " ".join(f"**{name}**: {meaning}." for name, meaning in
                                            privacy["trust_models"].items())]
    return out


def _plots(folder: Path, summary: dict, lines: list[dict]) -> list[str]:
    """accuracy.png (with the dense baseline when trained), density.png, epsilon.png; a series that ends
    null (no guarantee) is named on the plot as none rather than drawn."""
    if not lines:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [line["round"] for line in lines]
    series = {
        run_folder.ACCURACY_PLOT: ("test accuracy", {"federated": [line["accuracy"] for line in lines]}),
        run_folder.DENSITY_PLOT: ("density (fraction of weights kept)",
                                  {"global mask": [line["density"] for line in lines]}),
        run_folder.EPSILON_PLOT: ("epsilon spent (worst client)", {
            **{f"end to end, {unit} level": [line["epsilon"].get(unit) for line in lines]
               for unit in ("record", "client")},
            "mask channel alone, client level": [line["mask_channel_epsilon"].get("client") for line in lines]}),
    }
    names = []
    for name, (label, values) in series.items():
        figure, axis = plt.subplots(figsize=(5.5, 3.4))
        missing = []
        for legend, ys in values.items():
            if ys[-1] is None:  # a guarantee, once lost, never comes back
                first = next(r for r, y in zip(rounds, ys) if y is None)
                missing.append(f"{legend}: none (no guarantee from round {first})")
                continue
            axis.plot(rounds, [_nan(y) for y in ys], marker="o", markersize=3, label=legend)
        if name == run_folder.ACCURACY_PLOT and summary.get("dense_fedavg_accuracy") is not None:
            axis.axhline(summary["dense_fedavg_accuracy"], color="grey", linestyle="--",
                         label=f"dense FedAvg, final ({summary['dense_fedavg_accuracy']:.3f})")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("round")
        axis.set_ylabel(label)
        axis.set_title("\n".join([Path(summary.get("run_dir") or folder).name, *missing]), fontsize=8)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="lower right" if name == run_folder.ACCURACY_PLOT else "best")
        figure.tight_layout()
        temporary = folder / f".{name}.tmp"
        figure.savefig(temporary, dpi=100, format="png")
        os.replace(temporary, folder / name)  # a reader never sees half a plot
        plt.close(figure)
        names.append(name)
    return names


def _nan(value):
    return float("nan") if value is None else value


def _markdown(summary: dict, lines: list[dict], plots: list[str]) -> str:
    eps = summary["epsilon"]
    mask = summary["mask_channel_epsilon"]
    fmt = number
    out = [
        "# fedprune run",
        "",
        f"Mode **{summary['mode']}**, method **{summary['method']}**, mechanism "
        f"**{summary['mechanism'].get('name') or summary['mechanism'].get('mechanism')}**, weight channel "
        f"**{summary['weight_channel']['name']}** ({summary['weight_channel']['meaning']}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| final accuracy | {fmt(summary['final_accuracy'], 'none (no round ran)')} |",
        f"| dense FedAvg accuracy (same seed, rounds) | {fmt(summary['dense_fedavg_accuracy'], 'not trained')} |",
        f"| density | {summary['density']:.4f} |",
        f"| rounds, clients | {summary['rounds']}, {summary['clients']} |",
        f"| epsilon, record level (end to end, worst client) | {fmt(eps['record'], 'none (no guarantee)')} |",
        f"| epsilon, client level (end to end, worst client) | {fmt(eps['client'], 'none (no guarantee)')} |",
        f"| epsilon of the mask channel alone, client level | {fmt(mask['client'], 'none (no guarantee)')} |",
        f"| delta | {summary['delta']:g} |",
        f"| upload bytes per client-round (dense FedAvg) | {fmt(summary['upload_bytes_per_client_round'], 'none')} "
        f"({fmt(summary['dense_upload_bytes_per_client_round'])}) |",
        f"| rejected replies, dropouts | {summary['rejected_replies']}, {summary['dropouts']} |",
        f"| wall seconds | {summary['wall_seconds']:.1f} |",
        f"| privacy randomness | {summary['privacy_randomness']['source']} |",
    ]
    if summary["stopped"]:
        out += ["", f"**Stopped early:** {summary['stopped']}"]
    mechanism = summary["mechanism"]
    if "trust_model" in mechanism:
        out += ["", f"Mask reports: {mechanism['trust_model']}. Unit {mechanism.get('unit')}, Hamming bound "
                    f"{fmt(mechanism.get('hamming_bound'))}, epsilon per decision "
                    f"{fmt(mechanism.get('epsilon_per_decision'))}, per report "
                    f"{fmt(mechanism.get('epsilon_per_report'))}."]
    out += modes.named(summary["mode"]).notes(summary)
    out += ["", *_privacy_markdown(summary["privacy"])]
    out += ["", *[f"![{name}]({name})" for name in plots]]
    return "\n".join(out) + "\n"
