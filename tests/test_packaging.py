"""What an install and a test run show a newcomer: no deprecation warning from the licence
field, every test extra's dependency named (scipy runs the Fréchet-distance tests), and
skipped tests counted rather than listed line by line."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_string():
    # a table ({text = "MIT"}) makes setuptools >= 77 warn on every install
    assert PYPROJECT["project"]["license"] == "MIT"
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in PYPROJECT["build-system"]["requires"])


def test_test_extra_brings_scipy():
    assert any(r.split(">")[0].split("=")[0].strip() == "scipy"
               for r in PYPROJECT["project"]["optional-dependencies"]["test"])


def test_skips_are_counted_not_listed():
    flags = [a for a in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"].split() if a.startswith("-r")]
    assert flags and all("s" not in f[2:] and "a" not in f[2:] and "A" not in f[2:] for f in flags)
