"""fedprune: federated private pruning. The core (this package) never imports Flower."""

__version__ = "0.1.0"
