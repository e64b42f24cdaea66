"""The data layer: synthetic phantom benchmark, M3D / NIfTI / DICOM / brain-CT readers, splits.

Importing ``zoo.data`` is light (no MONAI, nibabel or pydicom); the registered datasets live in
:mod:`zoo.data.synth`, :mod:`zoo.data.m3d` and :mod:`zoo.data.medical` (loaded through the
component manifest). See docs/data.md.
"""

from __future__ import annotations

from zoo.errors import DataError


def benchmark_corpus() -> list[str]:
    """Every piece of text the built-in benchmark can produce (for the offline tokenizer)."""
    from zoo.data.templates import benchmark_corpus as corpus

    return corpus()


__all__ = ["DataError", "benchmark_corpus"]
