"""Environment fixes that must run before torch-ecosystem libraries are imported.

Two things, both idempotent and both no-ops where they are not needed:

1. Offline by default. ``HF_HUB_OFFLINE=1`` is set unless the user set it, because every hub miss
   otherwise retries for about 50 s, and the zoo never fetches weights or tokenizers at run time.
2. torchvision beside a CPU-only torch. PyPI's torchvision wheel is built against the CUDA build of
   torch; next to the CPU wheel its C++ extension fails to register its operators, and
   ``import torchvision`` dies with ``operator torchvision::nms does not exist`` while registering
   fake (meta) kernels. timm, open_clip and transformers' vision models all import torchvision, so
   that one error breaks them. When, and only when, that exact error occurs, we declare the
   operator schemas that torchvision's Python side expects with ``torch.library`` and import again.
   The operators then exist but have no kernels: calling ``torchvision.ops.nms`` (or any op of
   the missing extension) raises, while everything the zoo uses from torchvision (transforms,
   model definitions) works. Where
   torchvision's own extension loads, the first import succeeds and nothing is declared.
"""

from __future__ import annotations

import os
import sys

# Only these two are registered unconditionally by torchvision's Python side (fake kernels in
# torchvision/_meta_registrations.py); the others are registered only when its extension loaded.
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

_MISSING_OP = "operator torchvision::nms does not exist"
_library = None  # keeps the torch.library.Library alive for the process lifetime


def set_offline_defaults() -> None:
    """Never reach a model hub at run time unless the user explicitly asked for it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _forget_partial_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision_importable() -> None:
    """Import torchvision; declare its operator schemas only if the CPU-torch mismatch breaks it."""
    global _library
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        return  # not installed: nothing to fix, consumers report it themselves
    except RuntimeError as err:
        if _MISSING_OP not in str(err):
            raise
    import torch

    _forget_partial_torchvision()
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _TORCHVISION_SCHEMAS:
            _library.define(schema)
    import torchvision  # noqa: F401,F811


def apply() -> None:
    set_offline_defaults()
    ensure_torchvision_importable()
