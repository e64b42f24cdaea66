"""Let ``import torchvision`` work beside the CPU build of torch, whatever imports it first.

PyPI holds one torchvision wheel per Python version for Linux x86-64, linked against the CUDA
build of torch (``libtorch_cuda.so``, ``libc10_cuda.so``); a CPU-only build is published only on
download.pytorch.org. Beside the CPU wheel of torch, torchvision's C++ extension cannot load, and
``import torchvision`` dies with ``operator torchvision::nms does not exist`` while its Python side
registers fake (meta) kernels. timm, open_clip and transformers' vision models import torchvision,
so that one error breaks them too (``from transformers import LlamaConfig`` included).

The medzoo3d distribution installs ``medzoo3d_torchvision.pth`` into site-packages, which runs
:func:`install` at interpreter start. It adds one finder at the front of ``sys.meta_path`` that
answers only for ``torchvision`` and wraps its loader: when, and only when, executing torchvision
raises that exact error, the two operator schemas its Python side needs are declared with
``torch.library`` and the module is executed again. The operators then exist without kernels:
calling ``torchvision.ops.nms`` raises, while transforms and model definitions work. Where the
extension loads, nothing is declared. This module imports nothing but ``sys`` at start-up (torch
comes with torchvision itself); the finder and loader follow the import protocols by duck typing.
"""

from __future__ import annotations

import sys

MISSING_OP = "operator torchvision::nms does not exist"
# Only these two are registered unconditionally by torchvision's Python side (fake kernels in
# torchvision/_meta_registrations.py); the others are registered only when its extension loaded.
SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_state: dict[str, object] = {"library": None}  # keeps the torch.library.Library alive


def declare_schemas() -> None:
    """Declare torchvision's ``nms`` and ``qnms`` schemas (once per process)."""
    if _state["library"] is None:
        import torch

        library = torch.library.Library("torchvision", "DEF")
        for schema in SCHEMAS:
            library.define(schema)
        _state["library"] = library


def forget_submodules() -> None:
    """Drop the ``torchvision.*`` modules a failed import left behind, so they load again."""
    for name in [m for m in sys.modules if m.startswith("torchvision.")]:
        del sys.modules[name]


class RetryingLoader:
    """torchvision's own loader, executed a second time after declaring the schemas if the first
    execution failed with :data:`MISSING_OP`."""

    def __init__(self, loader: object) -> None:
        self.loader = loader

    def create_module(self, spec: object) -> object:
        return self.loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        try:
            self.loader.exec_module(module)
        except RuntimeError as err:
            if MISSING_OP not in str(err):
                raise
            forget_submodules()
            declare_schemas()
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> object:  # resource readers, get_source, is_package, ...
        return getattr(self.loader, name)


class TorchvisionFinder:
    """Finds ``torchvision`` through the other finders on ``sys.meta_path`` and wraps its loader
    (it stays installed: availability probes call ``find_spec`` without importing)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "torchvision":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, RetryingLoader):
                    spec.loader = RetryingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` unless torchvision is imported or it is there."""
    if "torchvision" in sys.modules or any(isinstance(f, TorchvisionFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, TorchvisionFinder())
