"""The fedprune ServerApp: read the run's settings and run the federation.

``flwr run .`` hands it ``[tool.flwr.app.config]`` with any ``--run-config`` overrides;
``fedprune run`` builds it with ``make_app`` from settings it has already checked.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedprune.config import RunConfig
from server.driver import run_federation


def make_app(config: RunConfig | None = None, progress=print, runner=run_federation) -> ServerApp:
    """A ServerApp running ``config`` (None: the settings Flower passes in the context).

    ``runner(grid, config, progress)`` does the work; ``fedprune run`` passes one that keeps
    the summary it returns.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        runner(grid, config or RunConfig.from_mapping(context.run_config), progress)

    return server_app


app = make_app()
