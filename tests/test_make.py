"""The two set-up commands: `make demo` installs the core package only (no Ray), `make test` the
dev and ray extras; the demo never needs Ray."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dry_run(target: str) -> str:
    if shutil.which("make") is None:
        pytest.fail("make is not installed: the README's two commands need it")
    out = subprocess.run(["make", "-n", "-B", "-C", str(REPO), target], capture_output=True, text=True, check=True)
    return out.stdout


def test_make_demo_installs_the_core_package_only():
    plan = _dry_run("demo")
    installs = [line for line in plan.splitlines() if "pip install" in line and "-e" in line]
    assert installs and all("ray" not in line and "dev" not in line for line in installs), plan
    assert "scalerec.demo" in plan


def test_make_test_installs_the_ray_and_dev_extras():
    plan = _dry_run("test")
    assert 'pip install --quiet -e ".[dev,ray]"' in plan and "tests/run_suite.py" in plan


def test_core_dependencies_hold_no_ray():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(dep.lower().startswith("ray") for dep in project["dependencies"])
    assert any(dep.startswith("ray") for dep in project["optional-dependencies"]["ray"])


def test_the_demo_imports_no_ray():
    import sys

    code = "import sys, scalerec.demo, scalerec.cli, scalerec.serving.http.app; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"
