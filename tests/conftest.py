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


@pytest.fixture(scope="session")
def byo_run(tmp_path_factory):
    """One tiny LaMed trained on a prepared folder of NIfTI files (tests/byo.py), shared by the
    predict, chat and export tests (about 20 s on a loaded 2-core machine: MONAI preparation of
    ten volumes, a fresh MLflow store, two steps per stage)."""
    from tests.byo import train_run

    home = tmp_path_factory.mktemp("byo")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return train_run(home)
