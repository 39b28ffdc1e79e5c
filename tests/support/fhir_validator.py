"""Drive tools/validate-fhir.mjs (the npm FHIR R4 validators) and tools/validate-fhir-r5.mjs
(the R5 one: @medplum/core with the StructureDefinitions, ValueSets and CodeSystems of the HL7
package hl7.fhir.r5.core 5.0.0) from the tests.

``validate_r4(resources)`` / ``validate_r5(resources)`` write the resources to a temporary folder
and validate them all in ONE node process (loading the definitions takes a second or two); they
return one line per error. A missing node, missing validator modules or a missing R5 package
raise RuntimeError: CI must fail, not skip. Install them with ``tools/install-fhir-validators.sh``
(into ``.peers/fhirval``, or ``$FHIRVAL_DIR``).

``validate_r4`` also takes FHIR XML documents (bytes): the driver reads them with FHIR.js, an
XML reader independent of the adapter's, and validates the JSON it reads as any other;
``read_r4_xml`` returns that JSON too, for a test to compare with the JSON answer of the same
request.

``FhirValidationCollector`` gathers every resource emitted during a test session and validates
them together at the end (a conftest fixture calls ``check()``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tools" / "validate-fhir.mjs"
DRIVER_R5 = ROOT / "tools" / "validate-fhir-r5.mjs"
INSTALLER = ROOT / "tools" / "install-fhir-validators.sh"


def fhirval_dir() -> Path:
    """Where the npm validators are installed ($FHIRVAL_DIR, default .peers/fhirval)."""
    return Path(os.environ.get("FHIRVAL_DIR") or ROOT / ".peers" / "fhirval")


def _label(resource: dict[str, Any] | bytes, index: int) -> str:
    if isinstance(resource, bytes):
        return f"#{index} XML"
    rtype = str(resource.get("resourceType", "?"))
    rid = resource.get("id")
    return f"#{index} {rtype}/{rid}" if rid else f"#{index} {rtype}"


def validate_r4(resources: Sequence[dict[str, Any] | bytes], *, timeout: float = 600.0) -> list[str]:
    """Validate FHIR R4 resources (or Bundles; JSON objects, or FHIR XML documents as bytes) with
    the npm validators; return the error lines (empty when all are valid), each prefixed with
    the resource's position and type/id.

    Raises:
        RuntimeError: node, the driver or the validator modules are missing, or the driver
            failed without a report.
    """
    return _validate(resources, DRIVER, ("@medplum/core", "fhir"), timeout=timeout)[0]


def read_r4_xml(documents: Sequence[bytes], *, timeout: float = 600.0) -> tuple[list[dict[str, Any] | None], list[str]]:
    """FHIR R4 XML ``documents`` read by FHIR.js into JSON (None for one it could not read), and
    the error lines of validating them as :func:`validate_r4` does."""
    errors, parsed = _validate(documents, DRIVER, ("@medplum/core", "fhir"), timeout=timeout, parsed=True)
    return [parsed.get(i) for i in range(len(documents))], errors


def validate_r5(resources: Sequence[dict[str, Any]], *, timeout: float = 600.0) -> list[str]:
    """Validate FHIR R5 (5.0.0) resources (or Bundles) with tools/validate-fhir-r5.mjs; return
    the error lines as :func:`validate_r4` does.

    Raises:
        RuntimeError: node, the driver, @medplum/core or the hl7.fhir.r5.core package are
            missing, or the driver failed without a report.
    """
    return _validate(resources, DRIVER_R5, ("@medplum/core", "hl7.fhir.r5.core"), timeout=timeout)[0]


def _validate(resources: Sequence[dict[str, Any] | bytes], driver: Path, packages: Sequence[str], *,
              timeout: float, parsed: bool = False) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """The error lines of validating ``resources`` (JSON objects, or FHIR XML as bytes) with
    ``driver``, and (``parsed``) the JSON each XML document was read into, by position."""
    if not resources:
        return [], {}
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH: install Node.js >= 18, then run "
                           "tools/install-fhir-validators.sh")
    modules = fhirval_dir() / "node_modules"
    missing = [p for p in packages if not (modules / p / "package.json").is_file()]
    if missing:
        raise RuntimeError(f"FHIR validators are not installed in {fhirval_dir()} ({', '.join(missing)} "
                           f"missing): run {INSTALLER}")
    if not driver.is_file():
        raise RuntimeError(f"missing {driver}")

    with tempfile.TemporaryDirectory(prefix="fhirval-") as tmp:
        labels: dict[str, str] = {}
        positions: dict[str, int] = {}
        for i, resource in enumerate(resources):
            if isinstance(resource, bytes):
                name = f"{i:05d}.xml"
                (Path(tmp) / name).write_bytes(resource)
            else:
                name = f"{i:05d}-{resource.get('resourceType', 'unknown')}.json"
                (Path(tmp) / name).write_text(json.dumps(resource), encoding="utf-8")
            labels[str(Path(tmp) / name)] = _label(resource, i)
            positions[str(Path(tmp) / name)] = i
        env = {**os.environ, "FHIRVAL_DIR": str(fhirval_dir())}
        proc = subprocess.run([node, str(driver), "--json", *(["--parsed"] if parsed else []), tmp],
                              capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{driver.name} failed (exit {proc.returncode}): {proc.stderr.strip()[:2000]}")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"{driver.name} gave no JSON report: {proc.stdout[:500]!r} "
                           f"{proc.stderr[:500]!r}") from exc
    errors: list[str] = []
    read: dict[int, dict[str, Any]] = {}
    for file_report in report["files"]:
        if "parsed" in file_report and file_report["file"] in positions:
            read[positions[file_report["file"]]] = file_report["parsed"]
        label = labels.get(file_report["file"], file_report["file"])
        for err in file_report["errors"]:
            errors.append(f"{label}: [{err['by']}] {err['where']}: {err['msg']}")
    if proc.returncode == 1 and not errors:
        raise RuntimeError(f"{driver.name} reported failure without errors: {proc.stdout[:500]}")
    return errors, read


def errors_by_case(validate: Callable[[Sequence[dict[str, Any]]], list[str]],
                   cases: Mapping[str, tuple[dict[str, Any], str]]) -> dict[str, list[str]]:
    """Validate the resources of ``cases`` (name -> (resource, expected text)) in one node
    process with ``validate`` (:func:`validate_r4` or :func:`validate_r5`); return each case's
    error lines, found by their ``#index`` label."""
    errors = validate([resource for resource, _ in cases.values()])
    return {case: [e for e in errors if e.startswith(f"#{i} ")] for i, case in enumerate(cases)}


def run_driver(driver: Path, *args: str, fhirval: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a driver from the command line as a user would: only node's folder on PATH and
    FHIRVAL_DIR (``fhirval``, default :func:`fhirval_dir`) in the environment."""
    node = shutil.which("node")
    assert node, "node is required"
    env = {"FHIRVAL_DIR": str(fhirval or fhirval_dir()), "PATH": str(Path(node).parent)}
    return subprocess.run([node, str(driver), *args], capture_output=True, text=True, env=env, check=False)


class FhirValidationCollector:
    """Collects FHIR resources of one version ("4" or "5") during a test session; ``check()``
    validates them at once.

    Identical resources are validated once. Resources are deep-copied when added, so later
    mutation by a test does not change what is validated.
    """

    def __init__(self, fhir_version: str = "4") -> None:
        if fhir_version not in ("4", "5"):
            raise ValueError(f"fhir_version is '4' or '5', not {fhir_version!r}")
        self.fhir_version = fhir_version
        self._resources: dict[str, dict[str, Any]] = {}

    def add(self, resource: dict[str, Any] | Iterable[dict[str, Any]]) -> None:
        """Add one resource (or several); anything without a resourceType is ignored."""
        items = [resource] if isinstance(resource, dict) else list(resource)
        for item in items:
            if isinstance(item, dict) and "resourceType" in item:
                key = json.dumps(item, sort_keys=True)
                self._resources.setdefault(key, copy.deepcopy(item))

    def __len__(self) -> int:
        return len(self._resources)

    @property
    def resources(self) -> list[dict[str, Any]]:
        return list(self._resources.values())

    def check(self) -> list[str]:
        """Validate everything collected; return the error lines (see :func:`validate_r4`)."""
        return (validate_r5 if self.fhir_version == "5" else validate_r4)(self.resources)

    def assert_valid(self) -> None:
        """Raise AssertionError listing the errors (up to 50) if any resource is invalid."""
        errors = self.check()
        if errors:
            shown = "\n".join(errors[:50])
            raise AssertionError(f"{len(errors)} FHIR R{self.fhir_version} validation error(s) in {len(self)} "
                                 f"resources:\n{shown}")


WRITER = Path(__file__).resolve().parent / "fhirjs_write_xml.mjs"


def write_r4_xml(resources: Sequence[dict[str, Any]], *, timeout: float = 120.0) -> list[bytes]:
    """FHIR R4 ``resources`` written as FHIR XML by FHIR.js (not by the adapter's writer), for a
    test to send. Raises RuntimeError when node or FHIR.js is missing (CI must fail, not skip)."""
    node = shutil.which("node")
    if node is None or not (fhirval_dir() / "node_modules" / "fhir" / "package.json").is_file():
        raise RuntimeError(f"node and FHIR.js are needed: run {INSTALLER}")
    env = {**os.environ, "FHIRVAL_DIR": str(fhirval_dir())}
    proc = subprocess.run([node, str(WRITER)], input=json.dumps(list(resources)), capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{WRITER.name} failed (exit {proc.returncode}): {proc.stderr.strip()[:2000]}")
    return [document.encode("utf-8") for document in json.loads(proc.stdout)]
