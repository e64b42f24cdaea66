"""The torchvision fix runs at interpreter start (medzoo3d_torchvision.pth), so a user's own script
can import transformers, timm or torchvision without importing ``zoo`` first."""

import site
import subprocess
import sys
from pathlib import Path

import pytest


def test_the_pth_file_is_installed_in_site_packages():
    found = [Path(d) / "medzoo3d_torchvision.pth" for d in site.getsitepackages()
             if (Path(d) / "medzoo3d_torchvision.pth").is_file()]
    assert found, ("medzoo3d_torchvision.pth is not in site-packages: reinstall medzoo3d "
                   "(pip install -e .)")
    assert found[0].read_text().startswith("import medzoo3d_torchvision;")


def test_a_fresh_interpreter_imports_transformers_and_timm_without_zoo(tmp_path):
    """A new interpreter importing torch, transformers and timm (the test's few seconds)."""
    code = ("import sys\n"
            "from transformers import LlamaConfig\n"
            "import timm, torchvision\n"
            "assert 'zoo' not in sys.modules\n"
            "print(LlamaConfig.__name__, torchvision.__version__)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("LlamaConfig ")


def test_the_hook_declares_nothing_for_other_errors_and_modules():
    import medzoo3d_torchvision as hook

    finder = hook.TorchvisionFinder()
    assert finder.find_spec("json") is None  # answers for torchvision only

    class Failing:
        def exec_module(self, module):
            raise RuntimeError("some other failure")

    with pytest.raises(RuntimeError, match="some other failure"):
        hook.RetryingLoader(Failing()).exec_module(object())
