"""What README.md, docs/, the Dockerfile and LICENSE say agrees with the code and with each other: the
table of contents, the image's settings and the README's `docker run`, the forwarding example's Orthanc
steps (docs/forwarding.md, run here with a stand-in Orthanc), and the licence text pyproject.toml names."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from adapter.config import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SETTINGS = {f"ADAPTER_{name.upper()}" for name in Settings.model_fields}


def _section(title: str, text: str = README) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


#: The reference documents the README's DICOM sections moved to, by their ## title.
DICOM_DOCS = {"DICOM": ROOT / "docs" / "dicom.md", "Forwarding to PACS": ROOT / "docs" / "forwarding.md"}


def _doc_section(title: str) -> str:
    return _section(title, DICOM_DOCS[title].read_text())


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_table_of_contents_lists_every_section_by_its_anchor() -> None:
    # new-user review 12: 900 lines and no table of contents
    outside_code = re.sub(r"^```.*?^```$", "", README, flags=re.MULTILINE | re.DOTALL)
    sections = re.findall(r"^## (.+)$", outside_code, re.MULTILINE)
    contents = README[README.index("**Contents:**"):README.index("\n## ")]
    links = re.findall(r"\[([^]]+)\]\(#([^)]+)\)", contents)
    assert [title for title, _ in links] == sections
    assert all(anchor == _slug(title) for title, anchor in links), links


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in DOCKERFILE.splitlines()
                                               if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def _image_environment() -> dict[str, str]:
    env = {}
    for instruction, args in _dockerfile_instructions():
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def test_the_image_keeps_its_example_policy_out_of_production() -> None:
    """new-user review 2: the image named the example policy (/app/mappings/policy.yaml) in
    ADAPTER_POLICY, so the production guard for the installed example never fired, and did not
    run in production. Now it runs in production from a working directory without mappings/ of
    its own: without the organisation's policy mounted there (or ADAPTER_POLICY), the adapter falls
    back to the installed example, and production refuses it."""
    env = _image_environment()
    assert set(env) - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                       "PIP_DISABLE_PIP_VERSION_CHECK"} <= SETTINGS
    assert "ADAPTER_POLICY" not in env and "ADAPTER_MAPPINGS_DIR" not in env
    assert env["ADAPTER_ENVIRONMENT"] == "production"
    instructions = _dockerfile_instructions()
    workdirs = [args for instruction, args in instructions if instruction == "WORKDIR"]
    runtime = workdirs[-1]
    last_workdir = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "WORKDIR")
    # nothing is copied into the working directory the adapter runs in
    assert not [args for instruction, args in instructions[last_workdir:] if instruction == "COPY"]
    assert all(args.split()[-1].startswith("./") or not args.split()[-1].startswith(runtime)
               for instruction, args in instructions if instruction == "COPY")
    assert runtime not in {args for i, (instruction, args) in enumerate(instructions)
                           if instruction == "WORKDIR" and i < last_workdir}
    # and the image's other promises (new-user review 7)
    assert instructions[:2] == [("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm"), ("FROM", "${PYTHON_IMAGE} AS base")]
    assert ("USER", "adapter") in instructions and ("VOLUME", '["/data"]') in instructions
    assert env["ADAPTER_DATA_DIR"] == "/data"
    assert ("CMD", '["python", "-m", "adapter", "serve"]') in instructions
    # ops review 9: liveness, not readiness (a database outage would make Swarm replace every
    # replica); the data folder the owner's alone (a named volume takes its mode; the adapter
    # warns of one others may enter); the dependencies at the versions the suite ran
    healthcheck = next(args for instruction, args in instructions if instruction == "HEALTHCHECK")
    assert "/health'" in healthcheck and "/health/ready" not in healthcheck
    assert ("RUN", "install -d -m 700 -o adapter -g adapter /data") in instructions
    assert any(instruction == "RUN" and "pip install --no-build-isolation -c constraints.txt '.[postgres]'" in args
               for instruction, args in instructions)


def _readme_docker_run() -> list[str]:
    block = next(b for b in _blocks(_section("Deploy with Docker")) if "docker run -d" in b)
    command = block[block.index("docker run -d"):]
    return shlex.split(command[:command.index("\n", command.index("clinical-image-adapter\n"))], comments=True)


def _readme_docker_check() -> list[str]:
    block = next(b for b in _blocks(_section("Deploy with Docker")) if "docker run --rm" in b)
    command = block[block.index("docker run --rm"):]
    return shlex.split(command[:command.index("\n", command.index("python -m adapter check"))], comments=True)


def test_the_readme_checks_before_the_first_start_as_the_container_would_run() -> None:
    """Newcomer review 4: the only check shown was docker exec, into a container that must be running
    (and restarts forever when its configuration is refused). A one-off container checks first, with
    every mount and variable of the serve's run, and the restart loop is said with where to look."""
    run, check = _readme_docker_run(), _readme_docker_check()
    options = lambda args, flag: {args[i + 1] for i, a in enumerate(args) if a == flag}
    assert check[:3] == ["docker", "run", "--rm"] and check[-4:] == ["python", "-m", "adapter", "check"]
    assert options(check, "-v") == options(run, "-v") and options(check, "-e") == options(run, "-e")
    deploy = _section("Deploy with Docker")
    assert "restart forever" in deploy and "`docker logs adapter` shows" in deploy
    # the AE title bound to the PACS's address, as the bullet below the command advises (newcomer review 9)
    assert "ADAPTER_DICOM_ALLOWED_AE_TITLES=PACS@10.0.0.20" in options(run, "-e")
    assert "ADAPTER_DICOM_ALLOWED_AE_TITLES=PACS@10.0.0.20 " in DOCKERFILE


def test_the_readmes_docker_run_matches_the_image() -> None:
    # new-user review 7: the README had no deployment section; the key went in with -e
    args = _readme_docker_run()
    env = dict(a.split("=", 1) for a in args[args.index("-e") - 1:] if "=" in a and a.startswith("ADAPTER_"))
    assert set(env) <= SETTINGS and "ADAPTER_PSEUDONYM_KEY" not in env
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "-v"]
    targets = {m.split(":")[1]: m for m in mounts}
    # the key is a file mounted read-only, the policy folder is the working directory's mappings/
    assert targets[env["ADAPTER_PSEUDONYM_KEY_FILE"]].endswith(":ro")
    workdir = [a for instruction, a in _dockerfile_instructions() if instruction == "WORKDIR"][-1]
    assert targets[f"{workdir}/mappings"].endswith(":ro")
    image = _image_environment()
    assert targets["/data"] == "adapter-data:/data"
    published = [args[i + 1] for i, a in enumerate(args) if a == "-p"]
    assert f"127.0.0.1:{image['ADAPTER_HTTP_PORT']}:{image['ADAPTER_HTTP_PORT']}" in published
    assert any(p.endswith(f":{image['ADAPTER_DICOM_PORT']}:{image['ADAPTER_DICOM_PORT']}") and p.count(":") == 2
               for p in published), "the DICOM port published on one address"
    assert image["ADAPTER_HTTP_HOST"] == image["ADAPTER_DICOM_HOST"] == "0.0.0.0"
    # the Dockerfile's own summary runs it the same way
    header = " ".join(line.lstrip("# ").rstrip("\\ ") for line in DOCKERFILE.splitlines()
                      if line.startswith("#"))
    for option in [f"-e {name}=" for name in env] + [f"-v {m}" for m in mounts]:
        if option.startswith("-e ADAPTER_BASE_URL"):
            continue  # the README's example sets the public URL too
        assert option in header, option


def _forwarding_orthanc_steps() -> str:
    block = next(b for b in _blocks(_doc_section("Forwarding to PACS")) if "Orthanc" in b)
    terminal_1 = block[:block.index("\n\n")]
    steps = [line for line in re.sub(r"\\\n\s*", " ", terminal_1).splitlines()
             if line and not line.startswith("#") and "make run" not in line]
    done = [line for line in block[block.index("# Done"):].splitlines() if line and not line.startswith("#")]
    return "\n".join(steps), "\n".join(done)


def test_the_forwarding_example_starts_orthanc_only_with_the_shim(tmp_path: Path) -> None:
    """new-user review 1: the example preloaded a shim only `make test` builds; without it the
    loader only warns, and Orthanc listened on every network of the host. The example's steps
    (docs/forwarding.md, once the README's), run with a stand-in Orthanc: without the shim nothing
    starts; with it, Orthanc gets its own folder and ports, the shim preloaded, and the step that
    ends the example stops it."""
    start, done = _forwarding_orthanc_steps()
    assert start.splitlines()[0] == "ORTHANC_DIR=/tmp/orthanc ORTHANC_DICOM_PORT=4242 ORTHANC_HTTP_PORT=8042   " \
                                    "# others if these are taken"
    fake = tmp_path / "bin" / "Orthanc"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$LD_PRELOAD" > "$(dirname "$1")/preloaded"\nexec sleep 60\n')
    fake.chmod(0o755)
    ours = start.replace("ORTHANC_DIR=/tmp/orthanc ORTHANC_DICOM_PORT=4242 ORTHANC_HTTP_PORT=8042",
                         f"ORTHANC_DIR={tmp_path}/orthanc ORTHANC_DICOM_PORT=14242 ORTHANC_HTTP_PORT=18042")
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    ran = subprocess.run(["bash", "-c", ours], cwd=checkout, env=env, capture_output=True, text=True, timeout=30,
                         check=False)
    assert ran.returncode == 0 and "run `make peers` first" in ran.stdout, ran.stdout + ran.stderr
    assert not (tmp_path / "orthanc" / "orthanc.pid").exists() and not (tmp_path / "orthanc" / "preloaded").exists()
    config = json.loads((tmp_path / "orthanc" / "orthanc.json").read_text())
    assert config == {"StorageDirectory": f"{tmp_path}/orthanc/db", "IndexDirectory": f"{tmp_path}/orthanc/db",
                      "DicomPort": 14242, "HttpPort": 18042}

    (checkout / ".peers" / "lib").mkdir(parents=True)
    (checkout / ".peers" / "lib" / "bind-localhost.so").write_bytes(b"")  # the loader warns: not a real one
    ran = subprocess.run(["bash", "-c", ours], cwd=checkout, env=env, capture_output=True, text=True, timeout=30,
                         check=False)
    assert ran.returncode == 0 and "make peers" not in ran.stdout, ran.stdout + ran.stderr
    pid = int((tmp_path / "orthanc" / "orthanc.pid").read_text())
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "orthanc" / "preloaded").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "orthanc" / "preloaded").read_text().strip() == \
            f"{checkout}/.peers/lib/bind-localhost.so"
        stopped = subprocess.run(["bash", "-c", f"ORTHANC_DIR={tmp_path}/orthanc\n{done}"], env=env,
                                 capture_output=True, text=True, timeout=30, check=False)
        assert stopped.returncode == 0, stopped.stderr
        assert not (tmp_path / "orthanc").exists()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


#: SHA-256 of the Apache License 2.0 text, whole and unmodified (LICENSE-2.0.txt: its http:// URLs and the
#: appendix's boilerplate unfilled), byte for byte what other packages ship (python-multipart's LICENSE.txt).
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_the_licence_is_the_whole_apache_2_0_text_pyproject_names() -> None:
    # new-user review 13: pyproject.toml said Apache-2.0, and the repository had no LICENSE
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert all(f"\n   {n}. " in text for n in range(1, 10)) and "END OF TERMS AND CONDITIONS" in text
    assert hashlib.sha256(text.encode()).hexdigest() == APACHE_2_0_SHA256


@pytest.mark.parametrize("title", ["DICOM", "Forwarding to PACS"])
def test_a_restart_names_the_settings_it_keeps(title: str) -> None:
    """new-user review 9: the DICOM and forwarding restarts dropped the ports the user had moved,
    and the forwarding one the DICOM one's AE title: ports are exported once (Quick start), and a
    restart adds to what the one before it set."""
    assert "export ADAPTER_HTTP_PORT=8081 ADAPTER_DICOM_PORT=11113" in _section("Quick start")
    runs = [line for block in _blocks(_doc_section(title)) for line in block.splitlines()
            if line.endswith("make run")]
    assert runs and all("ADAPTER_DICOM_ALLOWED_AE_TITLES=PACS" in line for line in runs)
    assert all("ADAPTER_HTTP_PORT" not in line for line in runs)  # exported, not retyped


@pytest.mark.parametrize("title, doc", [("DICOM", "docs/dicom.md"), ("Forwarding to PACS", "docs/forwarding.md"),
                                        ("DICOMweb", "docs/dicomweb.md")])
def test_the_readme_summarises_a_moved_section_and_links_its_reference(title: str, doc: str) -> None:
    """The README kept a short summary of each DICOM section under its ## title, linking the document
    it moved to, which holds the section under the same title (so its anchor is unchanged)."""
    assert f"Reference: [{doc}]({doc})" in _section(title)
    assert f"\n## {title}\n" in (ROOT / doc).read_text()


def test_the_quick_start_is_exactly_make_run_and_make_test() -> None:
    """DEVELOPERS.md: the README's quick start has exactly two commands for a fresh machine,
    `make run` and `make test` (a third, `make peers`, had crept in: what it installs, `make test`
    installs too)."""
    [block] = _blocks(_section("Quick start"))[:1]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    assert commands == ["make run", "make test"], commands


def test_the_docker_run_bounds_its_log_and_the_upgrade_has_its_own_section() -> None:
    """Ops review 7: Docker's json-file driver kept the log without limit; ops review 4: the upgrade
    procedure sat in the middle of ## Tests, with no backup and no way back."""
    args = _readme_docker_run()
    options = [args[i + 1] for i, a in enumerate(args) if a == "--log-opt"]
    assert any(o.startswith("max-size=") for o in options) and any(o.startswith("max-file=") for o in options)
    operations = (ROOT / "docs" / "operations.md").read_text()
    upgrading = operations[operations.index("\n## Upgrading\n"):]
    upgrading = upgrading[:upgrading.index("\n## ", 1)]
    assert "back up the database, the data folder's keys (`pseudonym.key`, `audit.key`, `store.id`) first" \
        in upgrading.lower().replace("**", "")
    assert "no downgrade" in upgrading and "Upgrading to schema 21" in upgrading
    assert "- [Upgrading](#upgrading)" in operations and "- [Logs](#logs)" in operations
    assert "Upgrading to schema" not in _section("Tests")
    assert "(docs/operations.md#upgrading)" in _section("Backup, restore, verify")


def test_the_readme_states_the_schema_version_the_code_has() -> None:
    """Newcomer review 7: the README said "now 21" when the store's schema was 24 (its list stopped at
    the audit chain's seal); the number it states, and the last of its upgrades in docs/operations.md,
    are the code's."""
    from adapter.store.schema import SCHEMA_VERSION

    stated = re.findall(r"The store's schema is versioned \(now (\d+):", _section("Tests"))
    assert stated == [str(SCHEMA_VERSION)], stated
    operations = (ROOT / "docs" / "operations.md").read_text()
    upgrades = [int(n) for n in re.findall(r"^### Upgrading to schemas? (?:\d+ and )?(\d+)$", operations, re.MULTILINE)]
    assert upgrades and max(upgrades) == SCHEMA_VERSION, upgrades
