#!/usr/bin/env node
// tools/validate-fhir-r5.mjs [-w|--warnings] [--json] [--only=medplum,walk,bundle] PATH...
//
// Validates FHIR R5 (5.0.0) JSON: single resources or Bundles, one per file. The command line,
// the text and --json reports and the exit codes (0 valid, 1 any error, 2 a usage or setup
// problem, e.g. missing node modules or package: run tools/install-fhir-validators.sh) are those
// of tools/fhir-validate-common.mjs, shared with the R4 driver tools/validate-fhir.mjs. This one
// runs in its own node process because @medplum/core keeps ONE index of type definitions per
// process, which this fills with R5.
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
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as common from './fhir-validate-common.mjs';

const R5_PACKAGE = 'hl7.fhir.r5.core';
const R5_VERSION = '5.0.0';
const HL7_SD = 'http://hl7.org/fhir/StructureDefinition/';
// the passes, in the order they run (--only chooses among them)
const PASSES = {
  medplum: (doc) => common.medplumIssues(doc, medplumValidateR5),
  walk: walkIssuesR5,
  bundle: common.bundleIssues,
};
const opts = common.parseArgs('validate-fhir-r5', Object.keys(PASSES));

// ---------------------------------------------------------------------------------------------
// the R5 package and medplum

const PACKAGE_DIR = join(common.FHIRVAL_DIR, 'node_modules', R5_PACKAGE);
if (!existsSync(join(common.FHIRVAL_DIR, 'node_modules', '@medplum', 'core')) || !existsSync(join(PACKAGE_DIR, 'package.json'))) {
  console.error(`validate-fhir-r5: @medplum/core or ${R5_PACKAGE} not installed in ${common.FHIRVAL_DIR}; run tools/install-fhir-validators.sh (or set FHIRVAL_DIR)`);
  process.exit(2);
}
const packageVersion = JSON.parse(readFileSync(join(PACKAGE_DIR, 'package.json'), 'utf8')).version;
if (packageVersion !== R5_VERSION) {
  console.error(`validate-fhir-r5: ${R5_PACKAGE} ${packageVersion} in ${common.FHIRVAL_DIR}, expected ${R5_VERSION}; run tools/install-fhir-validators.sh`);
  process.exit(2);
}
const core = common.requireFromFhirval('@medplum/core');

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

// A resourceType R5 does not define is an error (medplum's built-in R4 index still knows it).
// medplum only warns about a reference to a type the element does not allow; the R5
// StructureDefinition's targetProfile is normative (e.g. no Reference to Media: R5 has none).
function medplumValidateR5(resource) {
  if (!R5_RESOURCE_TYPES.has(resource.resourceType)) {
    return [{ severity: 'error', by: 'medplum', where: resource.resourceType, msg: `${resource.resourceType} is not a FHIR R5 resource type` }];
  }
  return common.medplumValidate(core, resource).map((i) =>
    i.severity === 'warning' && i.msg.startsWith('Invalid reference: got') ? { ...i, severity: 'error' } : i);
}

// ---------------------------------------------------------------------------------------------
// [walk]

// R5 primitive regexes (https://hl7.org/fhir/R5/datatypes.html#primitive): unlike medplum's, a
// time part must carry seconds and a zone.
const R5_DATETIME = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?)?)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)?)?)?$/;
const R5_INSTANT = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$/;
// "If hours and minutes are specified, a timezone offset SHALL be populated" (datatypes.html#dateTime)
const HAS_TIME_WITHOUT_ZONE = /T[0-9:.]+$/;
// [base/]Type/id[/_history/vid] (https://hl7.org/fhir/R5/references.html#literal)
const LITERAL_REFERENCE = /(?:^|\/)([A-Z][A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

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

// The R5 checks of the [walk] pass (the crawl, the invariants and the Attachment, Binary and
// Extension rules are shared with R4).
function walkIssuesR5(doc) {
  if (!R5_RESOURCE_TYPES.has(doc.resourceType)) return []; // reported by [medplum]
  return common.walkIssues(core, doc, { checkObject, checkValue, checkConstraint });
}

// per-1 by our own code (see periodInOrder)
function checkConstraint(c, tv, add) {
  if (c.key !== 'per-1' || tv.type !== 'Period') return false;
  if (!periodInOrder(tv.value)) add('error', tv.path, `Constraint per-1 not met: ${c.description}`);
  return true;
}

function checkObject(tv, add) {
  // integer64 (Attachment.size) is a JSON string in R5
  const size = (v) => (typeof v.size === 'string' ? Number(v.size) : v.size);
  if (common.checkSharedObject(tv, add, { fhirRelease: 'R5', size })) return;
  const v = tv.value;
  if (tv.type === 'Coding') {
    checkCoding(tv.path, v, add);
  } else if (tv.type === 'Reference') {
    // a literal reference names its target's type (references.html#literal): it must be one R5
    // has, whatever the element allows (Provenance.target allows any Resource, not Media)
    const type = typeof v.reference === 'string' ? LITERAL_REFERENCE.exec(v.reference)?.[1] : undefined;
    if (type && !R5_RESOURCE_TYPES.has(type)) add('error', `${tv.path}.reference`, `${type} is not a FHIR R5 resource type: ${JSON.stringify(v.reference)}`);
    if (typeof v.type === 'string' && !v.type.includes(':') && !R5_RESOURCE_TYPES.has(v.type)) {
      add('error', `${tv.path}.type`, `${v.type} is not a FHIR R5 resource type`);
    }
  }
}

// any Coding in a code system the package holds completely
function checkCoding(path, coding, add) {
  if (typeof coding?.system !== 'string' || typeof coding.code !== 'string') return;
  const codes = codeSystemCodes(coding.system);
  if (codes) common.checkCode(path, coding, codes, add, 'R5');
}

function checkValue(tv, element, add) {
  checkPrimitive(tv, add);
  checkBinding(element, tv, add);
}

function checkPrimitive(tv, add) {
  if (typeof tv.value !== 'string') return;
  if (tv.type === 'dateTime' && (!R5_DATETIME.test(tv.value) || HAS_TIME_WITHOUT_ZONE.test(tv.value))) {
    add('error', tv.path, `invalid dateTime ${JSON.stringify(tv.value)} (a time needs seconds and a timezone)`);
  } else if (tv.type === 'instant' && !R5_INSTANT.test(tv.value)) {
    add('error', tv.path, `invalid instant ${JSON.stringify(tv.value)}`);
  }
}

// https://hl7.org/fhir/R5/terminologies.html#required: the value SHALL be from the value set
function checkBinding(element, tv, add) {
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
}

// ---------------------------------------------------------------------------------------------
// main

common.validateAndReport(opts, R5_VERSION, PASSES);
