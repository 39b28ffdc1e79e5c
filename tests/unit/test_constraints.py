"""constraints.txt (made by `make lock`) pins every runtime dependency the adapter declares, at a
version its range admits, and is what this environment runs: `make venv`, `make venv-test` and the
Dockerfile install with it, so the image runs the versions the suite ran (ops review 9: the image
resolved ranges at build time, a rebuild could change behaviour with no change of code)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions, version

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


def _imported_top_level_modules() -> set[str]:
    """Every top-level module the package imports anywhere (function bodies included), not the
    standard library's nor its own."""
    names: set[str] = set()
    for path in (ROOT / "adapter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("adapter", "__future__")}


def _runtime_closure() -> set[str]:
    """The distributions a plain install of the package brings: its runtime requirements and
    theirs, as installed here (markers evaluated for this platform, extras followed)."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in _runtime_requirements()]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for line in distribution(name).requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((sub, frozenset(sub.extras)))
    return seen


def test_every_module_the_package_imports_comes_with_a_plain_install() -> None:
    """Found by simulating the Dockerfile's install in a new venv: numpy, imported by the rendered
    WADO-RS images (adapter.imaging.rendition), was a test dependency only, so `make run` and the
    image failed at start with ModuleNotFoundError while the suite, which has numpy, passed."""
    providers = packages_distributions()
    closure = _runtime_closure()
    missing = {module: providers.get(module) for module in _imported_top_level_modules()
               if not {canonicalize_name(d) for d in providers.get(module, [])} & closure}
    assert missing == {}, f"imported by adapter/ but not installed by its runtime dependencies: {missing}"


def test_the_image_builds_with_the_pinned_build_backend() -> None:
    """ops review 8: pip's -c constraints.txt does not reach the isolated build environment, so the
    image's setuptools was whatever the index had on build day. build-constraints.txt pins it within
    [build-system] requires, and the Dockerfile installs it and builds without isolation."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = [line for line in (ROOT / "build-constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    for line in pins:
        assert "==" in line, f"not an exact pin: {line}"
    pinned = {canonicalize_name(Requirement(line).name): line.partition("==")[2] for line in pins}
    for requirement in map(Requirement, build):
        name = canonicalize_name(requirement.name)
        assert name in pinned and requirement.specifier.contains(pinned[name]), (requirement, pinned)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -r build-constraints.txt" in dockerfile
    installs = [line for line in dockerfile.splitlines() if "pip install" in line and "'.[postgres]'" in line]
    assert installs and all("--no-build-isolation" in line for line in installs), installs
