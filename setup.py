"""Build hook only (the metadata is in pyproject.toml): ship ``medzoo3d_torchvision.pth``.

The ``.pth`` file goes to the root of site-packages, where Python runs its import line at start-up
(see ``medzoo3d_torchvision.py``). A wheel gets it from ``build_lib``; an editable install from the
folder that becomes the editable wheel (the ``install`` command's ``install_lib`` there).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "medzoo3d_torchvision.pth"


class BuildPyWithStartupHook(build_py):
    def run(self) -> None:
        super().run()
        folder = (self.get_finalized_command("install").install_lib if self.editable_mode
                  else self.build_lib)
        self.copy_file(PTH, str(Path(folder, PTH)), preserve_mode=False)


setup(cmdclass={"build_py": BuildPyWithStartupHook})
