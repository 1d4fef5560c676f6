# test_version.py — one version: CMake's project(VERSION) is what libmemfit.so,
# libmemfit_plan.so, the Python package and its wheel metadata (pyproject.toml) report.
from __future__ import annotations

import re

import pytest

from conftest import REPO

import memfit  # noqa: E402
from memfit import _lib, documents  # noqa: E402

pytestmark = pytest.mark.needs_lib


def test_every_part_reports_cmakes_version():
    cmake = re.search(r"project\(memfit VERSION ([0-9.]+)", (REPO / "CMakeLists.txt").read_text()).group(1)
    assert _lib.lib().mf_version().decode() == cmake
    assert documents._load_planner().mfp_version().decode() == cmake
    assert memfit.__version__ == cmake
    text = (REPO / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=", text, re.M), "pyproject.toml holds a second copy of the version"


def test_the_wheels_version_is_read_from_cmake():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cmake_text = (REPO / "CMakeLists.txt").read_text()
    cmake = re.search(r"project\(memfit VERSION ([0-9.]+)", cmake_text).group(1)
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in config["project"]["dynamic"]
    provider = config["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["provider"] == "scikit_build_core.metadata.regex" and provider["input"] == "CMakeLists.txt"
    assert re.search(provider["regex"], cmake_text, re.M).group("value") == cmake
