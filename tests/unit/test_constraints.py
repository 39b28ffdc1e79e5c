"""constraints.txt (made by `make lock`) pins every runtime dependency the adapter declares, at a
version its range admits, and is what this environment runs: `make venv`, `make venv-test` and the
Dockerfile install with it, so the image runs the versions the suite ran (ops review 9: the image
resolved ranges at build time, a rebuild could change behaviour with no change of code)."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, pinned = line.partition("==")
            assert sep and pinned, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = pinned
    return pins


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["postgres"]]]


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for requirement in _runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{requirement.name}=={pins[name]} is outside {requirement.specifier}: run make lock"


def test_this_environment_runs_the_pinned_versions() -> None:
    for name, pinned in _pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform's own (uvloop on Linux only, say), not installed here
        assert installed == pinned, f"{name} {installed} is installed, constraints.txt pins {pinned}"
