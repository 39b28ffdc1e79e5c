#!/usr/bin/env node
// tools/validate-fhir-r5.mjs [options] PATH...
//
// Validates FHIR R5 (5.0.0) JSON: single resources or Bundles, one per file. A PATH that is a
// directory is searched recursively for *.json. Prints "OK <file>" or "FAIL <file>" and one
// line per error; exit 0 when every file is valid, 1 on any error, 2 on a usage or setup
// problem (missing node modules or package: run tools/install-fhir-validators.sh).
// The R4 twin is tools/validate-fhir.mjs; this one runs in its own node process because
// @medplum/core keeps ONE index of type definitions per process, which this fills with R5.
//
// Options:
//   -w, --warnings   also print warnings
//   --json           print one JSON report {fhirVersion, files: [{file, resourceType, errors, warnings}]}
//                    instead of text (used by tests/support/fhir_validator.py)
//   --only=a,b       run only these passes (medplum, walk, bundle)
//
// The authority is the official HL7 package hl7.fhir.r5.core 5.0.0 (its StructureDefinitions,
// ValueSets and CodeSystems), installed beside the R4 validators. Passes:
//   [medplum] @medplum/core validateResource() against the R5 StructureDefinitions of the package
//             (the base resource and datatype definitions, indexed with
//             indexStructureDefinitionBundle): cardinality, JSON types (integer64 is a JSON
//             string in R5), unknown elements (e.g. R4's DocumentReference.context.encounter),
//             primitive regexes, fixed/pattern values and the invariants of the resource's own
//             element definitions. A resourceType R5 does not define (Media, ...) is an error
//             here: medplum's built-in R4 index still knows it. Reference target types are
//             checked against the R5 targetProfiles (medplum only warns: an error here). Each
//             Bundle entry and contained resource is also validated on its own.
//   [walk]    our own pass over medplum's typed crawl:
//             - datatype invariants of the R5 datatypes (Reference ref-1, ...), evaluated with
//               medplum's FHIRPath engine; Period per-1 by our own code (it needs lowBoundary()
//               and highBoundary(), which that engine lacks);
//             - dateTime/instant against the R5 regexes (a time needs seconds and a zone);
//             - required bindings: a code, Coding or CodeableConcept of an element whose R5
//               binding is `required` must be in the value set, expanded from the package's
//               ValueSets and CodeSystems (enumerated concepts, whole complete code systems,
//               is-a/descendent-of filters, imported value sets, excludes). A value set that
//               cannot be expanded from the package (BCP-47 languages, BCP-13 MIME types, UCUM,
//               external systems) is not checked;
//             - any Coding in a code system the package holds completely (http://hl7.org/fhir/...)
//               must name a code of it; a display that differs warns;
//             - a literal reference (or Reference.type) names a resource type R5 has (not Media);
//             - Attachment: hash is base64 of 20 bytes (R5 still says SHA-1), size equals the
//               decoded data length, contentType looks like a MIME type; Extension.url absolute.
//   [bundle]  our own Bundle rules: unique fullUrl, batch/transaction/history entries have request
//             (and responses have response), urn:uuid references resolve to an entry.
// Nothing here checks external code systems (SNOMED, LOINC, DICOM, terminology.hl7.org), the
// definitions of extensions (e.g. the R4 cross-version extensions), narrative safety or profiles.
//
// Node modules are resolved from $FHIRVAL_DIR (default: <repo>/.peers/fhirval).
import { createRequire } from 'node:module';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const FHIRVAL_DIR = process.env.FHIRVAL_DIR || join(REPO, '.peers', 'fhirval');
const R5_PACKAGE = 'hl7.fhir.r5.core';
const R5_VERSION = '5.0.0';
const PASSES = ['medplum', 'walk', 'bundle'];
const HL7_SD = 'http://hl7.org/fhir/StructureDefinition/';

// ---------------------------------------------------------------------------------------------
// arguments

function usage(msg) {
  if (msg) console.error(`validate-fhir-r5: ${msg}`);
  console.error('usage: validate-fhir-r5.mjs [-w|--warnings] [--json] [--only=medplum,walk,bundle] PATH...');
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
// the R5 package and medplum

const PACKAGE_DIR = join(FHIRVAL_DIR, 'node_modules', R5_PACKAGE);
if (!existsSync(join(FHIRVAL_DIR, 'node_modules', '@medplum', 'core')) || !existsSync(join(PACKAGE_DIR, 'package.json'))) {
  console.error(`validate-fhir-r5: @medplum/core or ${R5_PACKAGE} not installed in ${FHIRVAL_DIR}; run tools/install-fhir-validators.sh (or set FHIRVAL_DIR)`);
  process.exit(2);
}
const packageVersion = JSON.parse(readFileSync(join(PACKAGE_DIR, 'package.json'), 'utf8')).version;
if (packageVersion !== R5_VERSION) {
  console.error(`validate-fhir-r5: ${R5_PACKAGE} ${packageVersion} in ${FHIRVAL_DIR}, expected ${R5_VERSION}; run tools/install-fhir-validators.sh`);
  process.exit(2);
}
const requireFromVal = createRequire(join(FHIRVAL_DIR, 'package.json'));
const core = requireFromVal('@medplum/core');

// The package keeps the files of its package/ folder at its root (npm unpacks package/ there).
const packageFiles = readdirSync(PACKAGE_DIR).filter((f) => f.endsWith('.json'));
const readPackage = (f) => JSON.parse(readFileSync(join(PACKAGE_DIR, f), 'utf8'));

// The base definitions: every resource, datatype and primitive R5 defines (specializations with
// the canonical URL of their type), plus SimpleQuantity and MoneyQuantity, which medplum
// indexes as types of their own. Profiles, logical models and extensions are left out.
const structureDefinitions = [];
const R5_RESOURCE_TYPES = new Set();
for (const f of packageFiles.filter((n) => n.startsWith('StructureDefinition-'))) {
  const sd = readPackage(f);
  const base = sd.url === HL7_SD + sd.type && ['resource', 'complex-type', 'primitive-type'].includes(sd.kind);
  const quantity = sd.url === HL7_SD + 'SimpleQuantity' || sd.url === HL7_SD + 'MoneyQuantity';
  if (!base && !quantity) continue;
  structureDefinitions.push(sd);
  if (base && sd.kind === 'resource' && !sd.abstract) R5_RESOURCE_TYPES.add(sd.type);
}
core.indexStructureDefinitionBundle({
  resourceType: 'Bundle',
  type: 'collection',
  entry: structureDefinitions.map((resource) => ({ resource })),
});

// ---------------------------------------------------------------------------------------------
// terminology from the package

const codeSystems = new Map(); // url -> CodeSystem
const valueSets = new Map(); // url -> ValueSet
for (const f of packageFiles) {
  if (f.startsWith('CodeSystem-')) {
    const cs = readPackage(f);
    if (cs.url) codeSystems.set(cs.url, cs);
  } else if (f.startsWith('ValueSet-')) {
    const vs = readPackage(f);
    if (vs.url) valueSets.set(vs.url, vs);
  }
}

// code -> {display, children: [codes]} of a CodeSystem the package holds whole, else null
const csCache = new Map();
function codeSystemCodes(url) {
  if (csCache.has(url)) return csCache.get(url);
  const cs = codeSystems.get(url);
  let codes = null;
  if (cs && cs.content === 'complete' && Array.isArray(cs.concept)) {
    codes = new Map();
    const add = (concepts, parent) => {
      for (const c of concepts || []) {
        codes.set(c.code, { display: c.display, parents: parent ? [parent] : [] });
        add(c.concept, c.code);
      }
    };
    add(cs.concept, null);
    // subsumption also by the `parent` property (some code systems state it that way)
    for (const c of walkConcepts(cs.concept)) {
      for (const p of c.property || []) {
        if ((p.code === 'parent' || p.code === 'subsumedBy') && typeof p.valueCode === 'string') codes.get(c.code).parents.push(p.valueCode);
      }
    }
  }
  csCache.set(url, codes);
  return codes;
}

function* walkConcepts(concepts) {
  for (const c of concepts || []) {
    yield c;
    yield* walkConcepts(c.concept);
  }
}

function descendants(codes, code, includeSelf) {
  const out = new Set(includeSelf ? [code] : []);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [c, info] of codes) {
      if (!out.has(c) && info.parents.some((p) => p === code || out.has(p))) {
        out.add(c);
        grew = true;
      }
    }
  }
  return out;
}

// One include/exclude clause -> Set of "system|code", or null when the package cannot say.
function expandClause(clause, depth) {
  let result = null;
  if (clause.system) {
    const codes = codeSystemCodes(clause.system);
    if (Array.isArray(clause.concept) && clause.concept.length) {
      result = new Set(clause.concept.map((c) => `${clause.system}|${c.code}`));
    } else {
      if (!codes) return null;
      let selected = new Set(codes.keys());
      for (const f of clause.filter || []) {
        if (f.property !== 'concept' || !codes.has(f.value)) return null;
        if (f.op === 'is-a') selected = new Set([...selected].filter((c) => descendants(codes, f.value, true).has(c)));
        else if (f.op === 'descendent-of') selected = new Set([...selected].filter((c) => descendants(codes, f.value, false).has(c)));
        else if (f.op === '=') selected = new Set([...selected].filter((c) => c === f.value));
        else return null;
      }
      result = new Set([...selected].map((c) => `${clause.system}|${c}`));
    }
  }
  for (const imported of clause.valueSet || []) {
    const other = expandValueSet(imported, depth + 1);
    if (!other) return null;
    result = result === null ? new Set(other) : new Set([...result].filter((k) => other.has(k)));
  }
  return result;
}

const vsCache = new Map();
// ValueSet url (optionally |version) -> Set of "system|code", or null when it cannot be expanded
function expandValueSet(url, depth = 0) {
  const key = String(url).split('|')[0];
  if (vsCache.has(key)) return vsCache.get(key);
  const vs = valueSets.get(key);
  let result = null;
  if (vs && depth < 10) {
    if (vs.expansion && Array.isArray(vs.expansion.contains) && !vs.compose) {
      result = new Set([...walkConcepts(vs.expansion.contains)].filter((c) => c.code).map((c) => `${c.system}|${c.code}`));
    } else if (vs.compose && Array.isArray(vs.compose.include)) {
      result = new Set();
      for (const inc of vs.compose.include) {
        const part = expandClause(inc, depth);
        if (!part) {
          result = null;
          break;
        }
        for (const k of part) result.add(k);
      }
      for (const exc of result ? vs.compose.exclude || [] : []) {
        const part = expandClause(exc, depth);
        if (!part) {
          result = null;
          break;
        }
        for (const k of part) result.delete(k);
      }
    }
  }
  vsCache.set(key, result);
  return result;
}

// ---------------------------------------------------------------------------------------------
// [medplum]

function outcomeIssues(outcome, by) {
  return (outcome?.issue || []).map((i) => {
    const msg = i.details?.text || i.diagnostics || i.code || '';
    let severity = i.severity === 'fatal' ? 'error' : i.severity;
    // medplum only warns about a reference to a type the element does not allow; the R5
    // StructureDefinition's targetProfile is normative (e.g. no Reference to Media: R5 has none)
    if (severity === 'warning' && msg.startsWith('Invalid reference: got')) severity = 'error';
    return { severity, by, where: (i.expression || []).join(', '), msg };
  });
}

function medplumValidate(resource, by = 'medplum') {
  if (!R5_RESOURCE_TYPES.has(resource.resourceType)) {
    return [{ severity: 'error', by, where: resource.resourceType, msg: `${resource.resourceType} is not a FHIR R5 resource type` }];
  }
  let issues;
  try {
    issues = core.validateResource(resource);
  } catch (e) {
    if (e && e.outcome) return outcomeIssues(e.outcome, by);
    return [{ severity: 'error', by, where: '', msg: `validator exception: ${e?.message || e}` }];
  }
  return outcomeIssues({ issue: issues }, by);
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

// R5 primitive regexes (https://hl7.org/fhir/R5/datatypes.html#primitive): unlike medplum's, a
// time part must carry seconds and a zone.
const R5_DATETIME = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?)?)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)?)?)?$/;
const R5_INSTANT = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$/;
// "If hours and minutes are specified, a timezone offset SHALL be populated" (datatypes.html#dateTime)
const HAS_TIME_WITHOUT_ZONE = /T[0-9:.]+$/;
const MIME = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=("[^"]*"|[A-Za-z0-9!#$&^_.+-]+))*$/;
// [base/]Type/id[/_history/vid] (https://hl7.org/fhir/R5/references.html#literal)
const LITERAL_REFERENCE = /(?:^|\/)([A-Z][A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;
const ABSOLUTE_URI = /^(https?:\/\/[^\s]+|urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:[^\s]+)$/;
// Invariants medplum itself skips: ele-1 and dom-3 need the whole element/narrative context,
// org-1 and sdf-19 are known to misfire in its FHIRPath engine.
const SKIPPED_INVARIANTS = new Set(['ele-1', 'dom-3', 'org-1', 'sdf-19']);

// R5 per-1 is `start.lowBoundary() <= end.highBoundary()` (datatypes.html#Period); medplum's
// FHIRPath has no lowBoundary/highBoundary, so it is evaluated here: a partial date or dateTime
// stands for its whole span; two dates (no time) compare as calendar dates, else a value without
// a zone stands for every zone (-12:00 to +14:00).
function boundary(value, high, spread = true) {
  const m = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?)?(Z|[+-]\d{2}:\d{2})?$/.exec(value);
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const year = Number(y);
  const month = mo ? Number(mo) : high ? 12 : 1;
  const day = d ? Number(d) : high ? new Date(Date.UTC(year, month, 0)).getUTCDate() : 1;
  const ms = (h !== undefined ? Date.UTC(year, month - 1, day, Number(h), Number(mi), s ? Number(s) : high ? 59 : 0,
    frac ? Number(`0.${frac}`) * 1000 : s ? 0 : high ? 999 : 0) : Date.UTC(year, month - 1, day, high ? 23 : 0, high ? 59 : 0, high ? 59 : 0, high ? 999 : 0));
  let offset = !spread ? 0 : high ? -12 * 60 : 14 * 60; // minutes east of UTC
  if (zone === 'Z') offset = 0;
  else if (zone && h !== undefined) offset = (zone[0] === '-' ? -1 : 1) * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(4, 6)));
  return ms - offset * 60000;
}

function periodInOrder(period) {
  if (typeof period?.start !== 'string' || typeof period?.end !== 'string') return true;
  const spread = period.start.includes('T') || period.end.includes('T');
  const low = boundary(period.start, false, spread);
  const high = boundary(period.end, true, spread);
  return low === null || high === null || low <= high;
}

function base64Length(b64) {
  const clean = b64.replace(/\s+/g, '');
  const pad = clean.endsWith('==') ? 2 : clean.endsWith('=') ? 1 : 0;
  return (clean.length / 4) * 3 - pad;
}

function walkIssues(doc) {
  const issues = [];
  const add = (severity, where, msg) => issues.push({ severity, by: 'walk', where, msg });
  if (!R5_RESOURCE_TYPES.has(doc.resourceType)) return issues; // reported by [medplum]
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
      if (c.key === 'per-1' && tv.type === 'Period') {
        if (!periodInOrder(tv.value)) add('error', tv.path, `Constraint per-1 not met: ${c.description}`);
        continue;
      }
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

  const checkCoding = (path, coding) => {
    if (typeof coding?.system !== 'string' || typeof coding.code !== 'string') return;
    const codes = codeSystemCodes(coding.system);
    if (!codes) return;
    if (!codes.has(coding.code)) {
      add('error', `${path}.code`, `code ${JSON.stringify(coding.code)} is not in the R5 code system ${coding.system}`);
    } else {
      const display = codes.get(coding.code).display;
      if (coding.display && display && coding.display.toLowerCase() !== display.toLowerCase()) {
        add('warning', `${path}.display`, `display ${JSON.stringify(coding.display)} differs from ${JSON.stringify(display)} for ${coding.system}#${coding.code}`);
      }
    }
  };

  const checkObject = (tv) => {
    const v = tv.value;
    if (tv.type === 'Attachment') {
      if (typeof v.hash === 'string' && base64Length(v.hash) !== 20) {
        add('error', `${tv.path}.hash`, 'Attachment.hash must be the base64 SHA-1 of the data (20 bytes) in R5');
      }
      const size = typeof v.size === 'string' ? Number(v.size) : v.size;
      if (typeof v.data === 'string' && typeof size === 'number' && base64Length(v.data) !== size) {
        add('error', `${tv.path}.size`, `Attachment.size ${v.size} differs from the decoded data length ${base64Length(v.data)}`);
      }
      if (typeof v.contentType === 'string' && !MIME.test(v.contentType)) {
        add('error', `${tv.path}.contentType`, `not a MIME type: ${JSON.stringify(v.contentType)}`);
      }
    } else if (tv.type === 'Binary' && typeof v.contentType === 'string' && !MIME.test(v.contentType)) {
      add('error', `${tv.path}.contentType`, `not a MIME type: ${JSON.stringify(v.contentType)}`);
    } else if (tv.type === 'Extension' && typeof v.url === 'string' && !ABSOLUTE_URI.test(v.url)) {
      add('error', `${tv.path}.url`, `Extension.url must be an absolute URI: ${JSON.stringify(v.url)}`);
    } else if (tv.type === 'Coding') {
      checkCoding(tv.path, v);
    } else if (tv.type === 'Reference') {
      // a literal reference names its target's type (references.html#literal): it must be one R5
      // has, whatever the element allows (Provenance.target allows any Resource, not Media)
      const type = typeof v.reference === 'string' ? LITERAL_REFERENCE.exec(v.reference)?.[1] : undefined;
      if (type && !R5_RESOURCE_TYPES.has(type)) add('error', `${tv.path}.reference`, `${type} is not a FHIR R5 resource type: ${JSON.stringify(v.reference)}`);
      if (typeof v.type === 'string' && !v.type.includes(':') && !R5_RESOURCE_TYPES.has(v.type)) {
        add('error', `${tv.path}.type`, `${v.type} is not a FHIR R5 resource type`);
      }
    }
  };

  // https://hl7.org/fhir/R5/terminologies.html#required: the value SHALL be from the value set
  const checkBinding = (element, tv) => {
    const binding = element?.binding;
    if (!binding || binding.strength !== 'required' || !binding.valueSet || tv.value === undefined || tv.value === null) return;
    const allowed = expandValueSet(binding.valueSet);
    if (!allowed) return; // not expandable from the package (see the header)
    const vsName = binding.valueSet.split('|')[0];
    if (tv.type === 'code') {
      if (typeof tv.value !== 'string') return;
      if (![...allowed].some((k) => k.slice(k.lastIndexOf('|') + 1) === tv.value)) {
        add('error', tv.path, `code ${JSON.stringify(tv.value)} is not in the required value set ${vsName}`);
      }
    } else if (tv.type === 'Coding') {
      const c = tv.value;
      if (!allowed.has(`${c.system}|${c.code}`)) {
        add('error', tv.path, `${c.system}#${c.code} is not in the required value set ${vsName}`);
      }
    } else if (tv.type === 'CodeableConcept') {
      const codings = Array.isArray(tv.value.coding) ? tv.value.coding : [];
      if (!codings.some((c) => allowed.has(`${c?.system}|${c?.code}`))) {
        const named = codings.map((c) => `${c?.system}#${c?.code}`).join(', ') || 'no coding';
        add('error', tv.path, `${named}: none is in the required value set ${vsName}`);
      }
    }
  };

  const checkPrimitive = (tv) => {
    if (typeof tv.value !== 'string') return;
    if (tv.type === 'dateTime' && (!R5_DATETIME.test(tv.value) || HAS_TIME_WITHOUT_ZONE.test(tv.value))) {
      add('error', tv.path, `invalid dateTime ${JSON.stringify(tv.value)} (a time needs seconds and a timezone)`);
    } else if (tv.type === 'instant' && !R5_INSTANT.test(tv.value)) {
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
        visitProperty: (_parent, key, _path, values, schema) => {
          const element = schema?.elements?.[key];
          for (const tv of values.flat()) {
            if (!tv || tv.value === undefined || tv.value === null) continue;
            checkPrimitive(tv);
            checkBinding(element, tv);
          }
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

// https://hl7.org/fhir/R5/bundle.html#bundle-unique and #references; http.html#transaction
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
    }
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
// main

function validateDocument(doc) {
  const issues = [];
  if (opts.passes.has('medplum')) issues.push(...medplumIssues(doc));
  if (opts.passes.has('walk')) issues.push(...walkIssues(doc));
  if (opts.passes.has('bundle')) issues.push(...bundleIssues(doc));
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
  process.stdout.write(JSON.stringify({ fhirVersion: R5_VERSION, files: report }) + '\n');
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
