"""Test setup: the same environment fixes as ``import zoo`` (offline hub, torchvision fix)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from zoo import _compat  # noqa: E402

_compat.apply()

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
