"""Wall time per round and peak memory: fedprune against plain Flower FedAvg, at each population size.

Both run on Flower's simulation engine in this process, one after the other: plain FedAvg with
a ClientApp that trains the same model on the same partition for the same epochs, and
`fedprune run` with mask votes through randomized response (one pruning event, round 2). Rounds
are timed between Flower's end-of-round evaluation calls (the same central evaluation in both),
medians over rounds; "per client update" is a round's wall time over the clients sampled in it
(the engine runs one client per core). Peak memory is the largest resident set of this process
and everything it started (Ray's processes and workers), sampled every 0.2 s.

    python benchmarks/bench_flower_overhead.py [--rounds 5] [--clients 10 100 1000] [--per-round 100]
                                               [--examples-per-client 32] [--local-epochs 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager

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
    data = run_dataset(config)
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
        FedAvg(fraction_train=config.fraction_train, min_train_nodes=2, fraction_evaluate=0.0,
               min_available_nodes=config.num_clients).start(
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


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (Linux /proc)."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                parents[int(entry)] = int(file.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as file:
                rss[int(entry)] = int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):  # a process that ended while being read
            continue
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(rss.get(pid, 0) for pid in tree)


@contextmanager
def peak_memory():
    """Yield a dict whose "bytes" is, afterwards, the peak resident set of this process tree."""
    result, done = {"bytes": 0}, threading.Event()

    def sample():
        while not done.is_set():
            result["bytes"] = max(result["bytes"], tree_rss(os.getpid()))
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()


def measure(config: RunConfig) -> dict:
    """Plain FedAvg and fedprune on ``config``: median round seconds, per client update, peak memory."""
    sampled = max(2, round(config.fraction_train * config.num_clients))
    out = {"clients": config.num_clients, "per_round": sampled,
           "train_examples": len(run_dataset(config).y_train)}
    for name, run in (("plain_fedavg", plain_fedavg), ("fedprune", fedprune_rounds)):
        with peak_memory() as memory:
            rounds = run(config)
        median = statistics.median(rounds)
        out[name] = {"round_seconds": median, "per_update_seconds": median / sampled, "total_seconds": sum(rounds),
                     "peak_memory_gb": memory["bytes"] / 2**30}
    out["overhead"] = out["fedprune"]["round_seconds"] / out["plain_fedavg"]["round_seconds"] - 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[10], help="population sizes to measure")
    parser.add_argument("--per-round", type=int, default=0, help="clients sampled per round (0: all)")
    parser.add_argument("--examples-per-client", type=int, default=0,
                        help="MNIST-1D generated at clients x this many training examples, split iid (0: 8,000, "
                             "Dirichlet 0.5)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    results = []
    for clients in args.clients:
        with tempfile.TemporaryDirectory() as folder:
            fraction = min(1.0, args.per_round / clients) if args.per_round else 1.0
            config = RunConfig(num_server_rounds=args.rounds, num_clients=clients, fraction_train=fraction,
                               local_epochs=args.local_epochs, examples_per_client=args.examples_per_client,
                               partitioner="iid" if args.examples_per_client else "dirichlet", schedule="oneshot",
                               prune_start=2, prune_end=2, output_dir=folder, run_name=f"bench-{clients}")
            results.append(measure(config))
    if args.json:
        print(json.dumps({"rounds": args.rounds, "local_epochs": args.local_epochs, "results": results}, indent=2))
        return
    print(f"{args.rounds} rounds, {args.local_epochs} local epoch(s), model cnn1d; medians over rounds")
    print(f"{'clients':>8}{'per round':>10}{'examples':>10} | {'s/round':>9}{'s/update':>9}{'peak GB':>8} | "
          f"{'s/round':>9}{'s/update':>9}{'peak GB':>8} | {'overhead':>8}")
    print(f"{'':28} | {'plain Flower FedAvg':^26} | {'fedprune':^26} |")
    for r in results:
        plain, ours = r["plain_fedavg"], r["fedprune"]
        print(f"{r['clients']:>8}{r['per_round']:>10}{r['train_examples']:>10} | {plain['round_seconds']:9.3f}"
              f"{plain['per_update_seconds']:9.4f}{plain['peak_memory_gb']:8.2f} | {ours['round_seconds']:9.3f}"
              f"{ours['per_update_seconds']:9.4f}{ours['peak_memory_gb']:8.2f} | {100 * r['overhead']:+7.1f}%")


if __name__ == "__main__":
    main()
