"""The loader bench (zoo/bench/loader.py) on tiny volumes, and the collate's shared-memory batch
inside a DataLoader worker."""

import torch
from torch.utils.data import DataLoader

from zoo.types import stack_batch


def test_loader_section_measures_each_storage_and_worker_count(tmp_path):
    from zoo.bench.loader import loader_section

    body, metrics = loader_section(size=(16, 32, 32), cases=6, batch_size=2, workers=(0,),
                                   cache_dir=str(tmp_path), target_volumes_per_s=100.0)
    assert "| float32 | 0 |" in body and "| float16 | 0 |" in body
    assert metrics["loader/float32/w0/volumes_per_s"] > 0
    assert metrics["loader/float16/w0/volumes_per_s"] > 0
    assert metrics["loader/augmentation_s"] > 0 and metrics["loader/workers_needed"] > 0
    assert len(list((tmp_path / "loader-float16" / "16x32x32").glob("*.npy"))) == 6


def test_a_worker_stacks_the_batch_straight_into_shared_memory():
    volumes = [torch.full((1, 2, 2, 2), float(i)) for i in range(4)]
    loader = DataLoader(volumes, batch_size=4, num_workers=1,
                        collate_fn=lambda xs: (stack_batch(xs), stack_batch(xs).is_shared()))
    batch, shared_in_worker = next(iter(loader))
    assert shared_in_worker and torch.equal(batch, torch.stack(volumes))
    assert not stack_batch(volumes).is_shared()  # in the main process: an ordinary tensor
