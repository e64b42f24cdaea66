"""Environment fixes that must run before torch-ecosystem libraries are imported.

Two things, both idempotent and both no-ops where they are not needed:

1. Offline by default. ``HF_HUB_OFFLINE=1`` is set unless the user set it, because every hub miss
   otherwise retries for about 50 s, and the zoo never fetches weights or tokenizers at run time.
2. torchvision beside a CPU-only torch (:mod:`medzoo3d_torchvision`). An installed medzoo3d runs
   that fix at interpreter start through ``medzoo3d_torchvision.pth``, so scripts that never import
   ``zoo`` get it too; installing it here as well covers a source tree used without installing.
"""

from __future__ import annotations

import os


def set_offline_defaults() -> None:
    """Never reach a model hub at run time unless the user explicitly asked for it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def apply() -> None:
    import medzoo3d_torchvision

    set_offline_defaults()
    medzoo3d_torchvision.install()
