"""zoo: registries, contracts and plumbing for 3D medical multimodal components.

Importing ``zoo`` first applies the environment fixes in :mod:`zoo._compat` (offline hub, the
torchvision-beside-CPU-torch operator fix) so that every later torch-ecosystem import works.
"""

from zoo import _compat

_compat.apply()

from zoo.registry import (  # noqa: E402
    BRIDGES, CONNECTORS, DATASETS, ENCODERS, HEADS, LMS, RECIPES, REGISTRIES, TASKS, Registry,
)

__all__ = ["BRIDGES", "CONNECTORS", "DATASETS", "ENCODERS", "HEADS", "LMS", "RECIPES", "REGISTRIES",
           "TASKS", "Registry"]
