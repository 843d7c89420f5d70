"""The fedprune ServerApp: read the run's settings and run the federation.

``flwr run .`` hands it ``[tool.flwr.app.config]`` with any ``--run-config`` overrides, which
``config_of`` resolves (mode defaults, every check) before anything else; ``fedprune run``
builds it with ``make_app`` from settings it has already resolved.

Under ``flwr run .`` the federation decides how many SuperNodes there are (Flower 1.41's local
simulation starts 2 unless its connection sets ``options.num-supernodes``). Each node's
``partition-id`` and ``num-partitions`` pick its data, so the server runs with the nodes it has:
once their number has stopped changing for ``SETTLE_SECONDS`` (and covers ``min-replies``), a
smaller federation lowers ``num-clients`` to it and says so, instead of waiting forever.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedprune.config import RunConfig, resolve
from server.driver import run_federation

SETTLE_SECONDS = 10.0


def make_app(config: RunConfig | None = None, progress=print, runner=run_federation) -> ServerApp:
    """A ServerApp running ``config`` (None: the settings Flower passes in the context).

    ``runner(grid, config, progress)`` does the work; ``fedprune run`` passes one that keeps
    the summary it returns.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        runner(grid, config or with_population(grid, config_of(context.run_config), progress), progress)

    return server_app


def config_of(run_config: Mapping[str, object]) -> RunConfig:
    """The run's settings from Flower's ``context.run_config`` (pyproject's table, ``"auto"`` for the
    mode-dependent keys, with ``--run-config`` overrides), resolved and checked before any work."""
    return resolve(dict(run_config))


def with_population(grid: Grid, config: RunConfig, progress, poll: float = 0.5) -> RunConfig:
    """``config`` for the SuperNodes ``grid`` has: all ``num-clients``, or as many as settled below it."""
    last, since = -1, time.monotonic()
    while True:
        count = len(list(grid.get_node_ids()))
        if count >= config.num_clients:
            return config
        if count != last:
            last, since = count, time.monotonic()
        elif count >= config.min_replies and time.monotonic() - since >= SETTLE_SECONDS:
            break
        time.sleep(poll)
    progress(f"the federation has {count} SuperNodes, fewer than num-clients = {config.num_clients}: running with "
             f"num-clients = {count}. For {config.num_clients}, start more SuperNodes or, in a local simulation, set "
             f"options.num-supernodes = {config.num_clients} under [superlink.local] in $FLWR_HOME/config.toml")
    return config.replace(num_clients=count)


app = make_app()
