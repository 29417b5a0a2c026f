"""The test environment is locked: every package scripts/test.sh asks for (the library's
requirements, its test extra, requirements-dev.txt) has one exact version in
requirements-lock.txt, so a fresh machine installs what was tested. Refresh the lock with
`bash scripts/lock.sh` after changing an input."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def _inputs() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    reqs += [line for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {_name(r) for r in reqs}


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            pins[_name(m.group(1))] = m.group(2)
    return pins


def test_every_input_of_the_test_environment_is_pinned_in_the_lock():
    locked = _locked()
    assert sorted(_inputs() - set(locked)) == [], "refresh the lock: bash scripts/lock.sh"


def test_torch_is_locked_to_its_cpu_build():
    assert _locked()["torch"].startswith("2.13.0")
    assert "torch==2.13.0" in (ROOT / "requirements-dev.txt").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(_name(r) == "torch" and "==" in r for r in project["dependencies"])
