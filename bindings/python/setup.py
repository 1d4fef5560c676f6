"""Builds memfit's C libraries with CMake from the checkout this directory sits
in, and puts them (and the autoload .pth) into the wheel. Offline:
pip install --no-build-isolation ./bindings/python"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LIBRARIES = {
    "allocator/libmemfit.so": True,  # required
    "planner/libmemfit_plan.so": True,
    "bindings/torch/libmemfit_torch.so": False,  # built when CMake finds torch
}


class BuildWithLibraries(build_py):
    def run(self) -> None:
        super().run()
        if not (REPO / "CMakeLists.txt").is_file():
            raise RuntimeError(f"memfit: {REPO} is not a memfit checkout; build the wheel from the repository")
        build = Path(os.environ.get("MEMFIT_WHEEL_BUILD_DIR", REPO / "build-wheel"))
        jobs = str(os.cpu_count() or 2)
        subprocess.check_call(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                               "-DMEMFIT_BUILD_TESTS=OFF", "-DMEMFIT_BUILD_BENCHMARKS=OFF"])
        subprocess.check_call(["cmake", "--build", str(build), "-j", jobs])
        target = Path(self.build_lib) / "memfit" / "_libs"
        target.mkdir(parents=True, exist_ok=True)
        for rel, required in LIBRARIES.items():
            src = build / rel
            if src.is_file():
                shutil.copy2(src, target / src.name)
            elif required:
                raise RuntimeError(f"memfit: the build did not produce {src}")
        shutil.copy2(HERE / "memfit-autoload.pth", Path(self.build_lib) / "memfit-autoload.pth")


class BinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:  # the wheel carries shared libraries: not pure Python
        return True


def cmake_version() -> str:
    """The one version: the top-level CMakeLists.txt's project(memfit VERSION x.y.z)."""
    import re

    match = re.search(r"project\(memfit VERSION ([0-9.]+)", (REPO / "CMakeLists.txt").read_text())
    if not match:
        raise RuntimeError(f"memfit: no project(memfit VERSION ...) in {REPO / 'CMakeLists.txt'}")
    return match.group(1)


setup(version=cmake_version(), cmdclass={"build_py": BuildWithLibraries}, distclass=BinaryDistribution)
