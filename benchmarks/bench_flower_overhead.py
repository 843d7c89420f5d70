"""Wall time per round: fedprune against plain Flower FedAvg on the same model, data and clients.

Both run on Flower's simulation engine in this process, one after the other: plain FedAvg with
a ClientApp that trains the same model on the same partition for the same epochs, and
`fedprune run` with mask votes through randomized response. Rounds are timed between Flower's
end-of-round evaluation calls (the same central evaluation in both), medians over rounds.

    python benchmarks/bench_flower_overhead.py [--rounds 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fedprune.config import RunConfig, resolve
from fedprune.data.datasets import make_loader
from fedprune.federated.local import client_data, new_model, run_dataset, train_config
from fedprune.training.train import evaluate, train
from simulations.run import simulate

plain_client = ClientApp()


@plain_client.train()
def plain_train(msg: Message, context: Context) -> Message:
    config = resolve({k: v for k, v in msg.content["config"].items() if k != "server-round"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = new_model(config)
        state = {name: torch.from_numpy(a.numpy()) for name, a in msg.content["arrays"].items()}
        model.load_state_dict(state)
        partition = int(context.node_config["partition-id"])
        x, y = client_data(config, partition, int(context.node_config["num-partitions"]))
        generator = torch.Generator().manual_seed(partition)
        train(model, make_loader(x, y, config.batch_size, shuffle=True, generator=generator), train_config(config),
              generator=generator)
    finally:
        torch.set_num_threads(threads)
    arrays = ArrayRecord({name: Array(v.detach().numpy()) for name, v in model.state_dict().items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": len(y)})}), reply_to=msg)


def plain_fedavg(config: RunConfig) -> list[float]:
    """Seconds between consecutive end-of-round evaluations of plain FedAvg."""
    stamps: list[float] = []
    data = run_dataset(config.dataset, config.seed)
    test = make_loader(data.x_test, data.y_test, 512, shuffle=False)
    model = new_model(config)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        def evaluate_fn(round, arrays):
            model.load_state_dict({n: torch.from_numpy(a.numpy()) for n, a in arrays.items()})
            evaluate(model, test)
            stamps.append(time.perf_counter())

        initial = ArrayRecord({n: Array(v.detach().numpy()) for n, v in new_model(config).state_dict().items()})
        FedAvg(fraction_evaluate=0.0, min_available_nodes=config.num_clients).start(
            grid, initial, num_rounds=config.num_server_rounds, train_config=_config_record(config),
            evaluate_fn=evaluate_fn)

    run_simulation(server_app=server, client_app=plain_client, num_supernodes=config.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False}})
    return list(np.diff(stamps))


def _config_record(config: RunConfig):
    from flwr.app import ConfigRecord

    return ConfigRecord(config.to_mapping())


def fedprune_rounds(config: RunConfig) -> list[float]:
    stamps: list[float] = []

    def progress(line: str) -> None:
        if line.startswith("round"):
            stamps.append(time.perf_counter())

    simulate(config, progress=progress)
    return list(np.diff(stamps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(num_server_rounds=args.rounds, prune_start=2, prune_end=args.rounds - 2, prune_every=2,
                           output_dir=folder, run_name="bench")
        plain = plain_fedavg(config)
        ours = fedprune_rounds(config)
    result = {"rounds": args.rounds, "clients": config.num_clients, "model": config.model,
              "plain_fedavg_round_seconds": statistics.median(plain), "fedprune_round_seconds": statistics.median(ours),
              "plain_fedavg_total_seconds": sum(plain), "fedprune_total_seconds": sum(ours)}
    result["overhead"] = result["fedprune_round_seconds"] / result["plain_fedavg_round_seconds"] - 1
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'':28}{'plain FedAvg':>14}{'fedprune':>12}")
    print(f"{'median seconds per round':28}{result['plain_fedavg_round_seconds']:14.3f}"
          f"{result['fedprune_round_seconds']:12.3f}")
    print(f"{'total seconds':28}{result['plain_fedavg_total_seconds']:14.2f}{result['fedprune_total_seconds']:12.2f}")
    print(f"overhead of pruning and privacy: {100 * result['overhead']:+.1f}% per round (median)")


if __name__ == "__main__":
    main()
