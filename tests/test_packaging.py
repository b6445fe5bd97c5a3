"""What `make up` and `make test` install on a fresh machine, and how quietly."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def planned_commands(target: str, tmp_path: Path) -> list[str]:
    """The commands `make TARGET` would run on a machine without a virtualenv."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout.splitlines()


def test_make_up_installs_only_what_running_needs(tmp_path: Path) -> None:
    installs = [c for c in planned_commands("up", tmp_path) if "pip install" in c]
    assert installs, "make up installs shardwise"
    assert all("[" not in c for c in installs), f"make up installs extras: {installs}"


def test_make_test_installs_the_test_tools(tmp_path: Path) -> None:
    installs = [c for c in planned_commands("test", tmp_path) if "pip install" in c]
    assert any("dev" in c for c in installs), installs


def test_the_build_backend_has_nothing_to_warn_about() -> None:
    """setuptools prints a 12-line deprecation box per build for a license given as a
    table; an SPDX string (PEP 639, setuptools 77) is what it wants."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    requires = project["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in requires), requires
