"""Vote layouts: what one bit of a mask report stands for, picked once from the ``structure`` setting.

``layout_for(config)`` gives the run's :class:`Layout`; ``fedprune.federated.rounds`` calls it and never tests
the structure. A new layout is one module (a ``Layout`` subclass) and one ``register`` line here.
"""

from fedprune.federated.layouts.base import LAYOUTS, Layout, layout_for, register
from fedprune.federated.layouts.units import UnitLayout
from fedprune.federated.layouts.weights import WeightLayout

register(WeightLayout())
register(UnitLayout())

__all__ = ["LAYOUTS", "Layout", "layout_for", "register"]
