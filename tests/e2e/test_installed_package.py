"""The package as ``pip install .`` (not editable) installs it: built into a wheel, installed in a
virtual environment of its own, its command runs from a directory that is not the checkout, with
the mapping tables and the default policy the wheel carries (ops review 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tests.conftest import ROOT, require_or_skip


def test_the_installed_command_finds_its_policy_and_tables_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".peers", ".git", "build", "*.egg-info", "__pycache__", "node_modules", "data", "tests", "benchmarks",
        "fuzz", "samples"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"),
                            str(source)], capture_output=True, text=True, timeout=300, check=False)
    require_or_skip(built.returncode == 0, f"the wheel could not be built here (its build backend from the "
                                           f"package index?): {built.stderr[-300:]}")
    wheel = next((tmp_path / "wheel").glob("clinical_image_adapter-*.whl"))
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)  # its own pip: the command's script names its own interpreter
    python = target / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300, check=False)
    assert installed.returncode == 0, installed.stderr
    # the dependencies from this environment, after the installed package (a .pth's path is appended)
    Path(purelib, "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_") and k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import adapter; print(adapter.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target)), where
    checked = subprocess.run([str(target / "bin" / "clinical-image-adapter"), "check"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0, checked.stderr
    assert "valid" in checked.stdout
    carried = target / "share" / "clinical-image-adapter" / "mappings"
    assert sorted(p.name for p in carried.iterdir()) == sorted(p.name for p in (ROOT / "mappings").glob("*.yaml"))

    # As the Docker image runs it (Dockerfile: ADAPTER_ENVIRONMENT=production, a working directory
    # without mappings/ of its own, the key from a file): the installed example is refused
    # (new-user review 2: the image named it in ADAPTER_POLICY, which the guard let through) ...
    key = tmp_path / "pseudonym.key"
    key.write_text("k" * 64 + "\n")
    production = {**env, "ADAPTER_ENVIRONMENT": "production", "ADAPTER_PSEUDONYM_KEY_FILE": str(key)}
    refused = subprocess.run([str(target / "bin" / "clinical-image-adapter"), "check"], cwd=elsewhere,
                             env=production, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2 and "ADAPTER_POLICY must name the organisation's policy" in refused.stderr, \
        refused.stderr
    # ... and the organisation's folder, mounted as the working directory's mappings/, is taken
    # once it is the organisation's (an unedited copy of the example is refused: ops review 4)
    shutil.copytree(carried, elsewhere / "mappings")
    policy = elsewhere / "mappings" / "policy.yaml"
    policy.write_text(policy.read_text().replace("urn:oid:2.999.1", "urn:oid:1.2.826.0.1.3680043.10.1")
                      .replace("Example Hospital", "St Elsewhere"))
    dicom = elsewhere / "mappings" / "dicom.yaml"  # its issuers of patient IDs too (newcomer review 8)
    dicom.write_text(dicom.read_text().replace("urn:oid:2.999.1.1", "urn:oid:1.2.826.0.1.3680043.10.1.1"))
    taken = subprocess.run([str(target / "bin" / "clinical-image-adapter"), "check"], cwd=elsewhere,
                           env=production, capture_output=True, text=True, timeout=120, check=False)
    assert taken.returncode == 0 and "valid" in taken.stdout, taken.stderr
