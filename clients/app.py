"""The fedprune ClientApp: parse the round's message, call fedprune, pack the reply.

Run by Flower's simulation engine (``fedprune run``, ``flwr run .``) or by a SuperNode on a
device. The node's ``partition-id`` and ``num-partitions`` (node config) say which part of the
run's dataset is this client's. A DP-SGD accountant, when the weight channel is ``dpsgd``,
lives in the context's state so it survives across rounds.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from fedprune.config import RunConfig
from fedprune.federated import keys, modes, wire
from fedprune.federated.local import client_data, new_model
from fedprune.privacy.rng import privacy_rng
from fedprune.pruning.bits import unflatten_masks, unpack
from fedprune.pruning.masks import parameter_shapes, prunable_parameters
from fedprune.training.dpsgd import DPSGD

DPSGD_STATE = "fedprune.training.dpsgd"


def clip_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's fixedclipping_mod, applied only when the server's DP wrapper sends a clipping norm."""
    if keys.CLIPPING_NORM in msg.content.config_records.get(keys.CONFIG, {}):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[clip_when_asked])


@app.train()
def train(msg: Message, context: Context) -> Message:
    # One thread per client: the simulation runs one client per core, so more would oversubscribe.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(msg, context)
    finally:
        torch.set_num_threads(threads)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """This node's client id (its partition id) and nothing else: the server samples clients by it."""
    client = int(context.node_config["partition-id"])
    return Message(content=RecordDict({keys.METRICS: MetricRecord({keys.CLIENT_ID: client})}), reply_to=msg)


def _train(msg: Message, context: Context) -> Message:
    request = wire.TrainRequest.from_config(msg.content.config_records[keys.CONFIG])
    config, plan = request.config, request.plan
    client = int(context.node_config["partition-id"])
    examples = client_data(config, client, int(context.node_config["num-partitions"]))

    model = new_model(config)
    shapes = parameter_shapes(prunable_parameters(model))
    length = sum(int(np.prod(shape)) for shape in shapes.values())
    masks = unflatten_masks(unpack(request.mask_for(length), length), shapes)
    weights = {name: array.numpy() for name, array in msg.content.array_records[keys.ARRAYS].items()}

    stream = (config.seed, plan.round, client)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(stream).generate_state(1)[0]))
    noise = privacy_rng(config.privacy_seed if config.privacy_seeded else None, stream=(plan.round, client))
    dp = _load_dpsgd(config, context)
    steps_before = dp.steps if dp else 0
    reply = modes.get(config).client_round(config, plan, model, weights, masks, examples, client=client,
                                           generator=generator, privacy_rng=noise, dp=dp)
    if dp is not None:
        noise_multiplier, sampling_rate, _ = dp.history[-1]  # Opacus merges equal entries; count steps instead
        reply = replace(reply, dpsgd={"history": [(noise_multiplier, sampling_rate, dp.steps - steps_before)]})
        context.state[DPSGD_STATE] = ConfigRecord({"state": json.dumps(dp.state_dict())})

    arrays, metrics, report = reply.to_records()
    content = RecordDict({keys.ARRAYS: ArrayRecord({name: Array(value) for name, value in arrays.items()}),
                          keys.METRICS: MetricRecord(metrics)})
    if report is not None:
        content[keys.REPORT] = ConfigRecord(report)
    return Message(content=content, reply_to=msg)


def _load_dpsgd(config: RunConfig, context: Context) -> DPSGD | None:
    if config.weight_channel != "dpsgd":
        return None
    if DPSGD_STATE in context.state:
        return DPSGD.from_state_dict(json.loads(context.state.config_records[DPSGD_STATE]["state"]))
    return DPSGD(noise_multiplier=config.noise_multiplier, max_grad_norm=config.clipping_norm)
