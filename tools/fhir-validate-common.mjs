// tools/fhir-validate-common.mjs: what the two FHIR validator drivers share.
//
// tools/validate-fhir.mjs (R4) and tools/validate-fhir-r5.mjs (R5) import this module for their
// command line, the report and the exit code, the parts of the [medplum], [walk] and [bundle]
// passes whose rules are the same in R4 and R5, and the de-duplication of issues. The checks
// that differ by FHIR version stay in each driver, with the description of its passes.
//
// The command line of both drivers: DRIVER [options] PATH...
//   Each PATH is a JSON file (a resource or a Bundle) or a directory, searched recursively for
//   *.json; a *.xml file is FHIR XML, read into its JSON by the driver's own XML reader (the R4
//   driver's: FHIR.js), then validated as a JSON file is (a driver without one reports it as an
//   error). Prints "OK <file>" or "FAIL <file>" and one line per error; exit 0 when every file
//   is valid, 1 on any error, 2 on a usage or setup problem.
//   -w, --warnings   also print warnings
//   --json           print one JSON report {fhirVersion, files: [{file, resourceType, errors,
//                    warnings}]} instead of text (used by tests/support/fhir_validator.py)
//   --parsed         with --json: each XML file's entry also holds `parsed`, the JSON its XML
//                    was read into (the tests compare it with the JSON answer of the same request)
//   --only=a,b       run only these of the driver's passes
//
// An issue is {severity: 'error'|'warning', by: pass, where: FHIRPath-like location, msg}.
// Nothing here loads a node module at import time: a driver first reports usage errors, then
// checks its validators are installed, then loads @medplum/core with requireFromFhirval() and
// hands it to the functions that need it. Node modules are resolved from $FHIRVAL_DIR
// (default: <repo>/.peers/fhirval).
import { createRequire } from 'node:module';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Where the npm validators are installed: $FHIRVAL_DIR (default: <repo>/.peers/fhirval). */
export const FHIRVAL_DIR = process.env.FHIRVAL_DIR || join(REPO, '.peers', 'fhirval');

/** require() resolving node modules from FHIRVAL_DIR. */
export const requireFromFhirval = createRequire(join(FHIRVAL_DIR, 'package.json'));

// ---------------------------------------------------------------------------------------------
// arguments and input files

/**
 * Parse the command line of the driver `name` (e.g. 'validate-fhir') whose passes are `passes`;
 * on a usage error print it with the usage line and exit 2. Returns {warnings, json, passes
 * (a Set), paths, inputs: [{file, missing?}]}.
 */
export function parseArgs(name, passes, argv = process.argv.slice(2)) {
  const usage = (msg) => {
    if (msg) console.error(`${name}: ${msg}`);
    console.error(`usage: ${name}.mjs [-w|--warnings] [--json [--parsed]] [--only=${passes.join(',')}] PATH...`);
    process.exit(2);
  };
  const opts = { warnings: false, json: false, parsed: false, passes: new Set(passes), paths: [] };
  for (const a of argv) {
    if (a === '-w' || a === '--warnings') opts.warnings = true;
    else if (a === '--json') opts.json = true;
    else if (a === '--parsed') opts.parsed = true;
    else if (a.startsWith('--only=')) {
      opts.passes = new Set(a.slice(7).split(',').filter(Boolean));
      for (const p of opts.passes) if (!passes.includes(p)) usage(`unknown pass ${p}`);
    } else if (a === '-h' || a === '--help') usage();
    else if (a.startsWith('-')) usage(`unknown option ${a}`);
    else opts.paths.push(a);
  }
  if (opts.paths.length === 0) usage('no input');
  opts.inputs = opts.paths.flatMap(jsonFiles);
  return opts;
}

// A file, or every *.json and *.xml below a directory (sorted); a path that does not exist is kept as
// {missing: true} and reported as an error.
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
      return statSync(p).isDirectory() || name.endsWith('.json') || name.endsWith('.xml') ? jsonFiles(p) : [];
    });
}

// ---------------------------------------------------------------------------------------------
// validate, report, exit code

/**
 * Validate every input of `opts` with the passes in `passes` ({name: doc => issues}, run in
 * that order, those not chosen with --only skipped), print the report (text, or one JSON
 * object {fhirVersion, files} with --json) and set the exit code: 0 when every file is valid,
 * else 1. `readXml` (text => resource object; throws when it is not FHIR XML) reads the *.xml
 * inputs; without it they are errors.
 */
export function validateAndReport(opts, fhirVersion, passes, readXml = null) {
  const report = opts.inputs.map(({ file, missing }) => validateFile(file, missing, opts, passes, readXml));
  if (opts.json) {
    process.stdout.write(JSON.stringify({ fhirVersion, files: report }) + '\n');
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
}

function validateFile(file, missing, opts, passes, readXml) {
  const entry = { file, resourceType: null, errors: [], warnings: [] };
  if (missing) {
    entry.errors.push({ by: 'input', where: '', msg: 'no such file' });
    return entry;
  }
  const xml = file.endsWith('.xml');
  let doc;
  try {
    if (xml && !readXml) throw new Error('this driver reads no FHIR XML');
    doc = xml ? readXml(readFileSync(file, 'utf8')) : JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    entry.errors.push({ by: xml ? 'xml' : 'json', where: '', msg: e.message });
    return entry;
  }
  if (xml && opts.parsed) entry.parsed = doc;
  if (!doc || typeof doc !== 'object' || Array.isArray(doc) || typeof doc.resourceType !== 'string') {
    entry.errors.push({ by: 'json', where: '', msg: 'not a FHIR resource (no resourceType)' });
    return entry;
  }
  entry.resourceType = doc.resourceType;
  entry.entries = doc.resourceType === 'Bundle' ? (doc.entry || []).length : undefined;
  for (const i of validateDocument(doc, opts, passes)) {
    const { severity, ...rest } = i;
    if (severity === 'error') entry.errors.push(rest);
    else if (severity === 'warning') entry.warnings.push(rest);
  }
  return entry;
}

// The issues of every chosen pass, each reported once.
function validateDocument(doc, opts, passes) {
  const issues = [];
  for (const [name, pass] of Object.entries(passes)) if (opts.passes.has(name)) issues.push(...pass(doc));
  const seen = new Set();
  return issues.filter((i) => {
    const key = `${i.severity}|${i.by}|${i.where}|${i.msg}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// [medplum]

/** The issues of an OperationOutcome (fatal counts as error). */
function outcomeIssues(outcome, by) {
  return (outcome?.issue || []).map((i) => ({
    severity: i.severity === 'fatal' ? 'error' : i.severity,
    by,
    where: (i.expression || []).join(', '),
    msg: i.details?.text || i.diagnostics || i.code || '',
  }));
}

/** @medplum/core validateResource() of one resource, as issues (an exception is one too). */
export function medplumValidate(core, resource, by = 'medplum') {
  try {
    return outcomeIssues({ issue: core.validateResource(resource) }, by);
  } catch (e) {
    if (e && e.outcome) return outcomeIssues(e.outcome, by);
    return [{ severity: 'error', by, where: '', msg: `validator exception: ${e?.message || e}` }];
  }
}

/**
 * Every nested resource (Bundle.entry.resource, Bundle.entry.response.outcome, contained[]),
 * with its path in the document.
 */
export function nestedResources(resource, path, out = []) {
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

/**
 * The document validated with `validate` (resource => issues), then each nested resource on its
 * own, so that its invariants are evaluated too; the nested issues are located in the document.
 */
export function medplumIssues(doc, validate) {
  const issues = validate(doc);
  for (const { path, resource } of nestedResources(doc, doc.resourceType)) {
    if (!resource.resourceType) continue; // reported by the root validation
    for (const i of validate(resource)) {
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

// RFC 6838 type/subtype, optional parameters
const MIME = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=("[^"]*"|[A-Za-z0-9!#$&^_.+-]+))*$/;
const ABSOLUTE_URI = /^(https?:\/\/[^\s]+|urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:[^\s]+)$/;
// Invariants medplum itself skips: ele-1 and dom-3 need the whole element/narrative context,
// org-1 and sdf-19 are known to misfire in its FHIRPath engine.
const SKIPPED_INVARIANTS = new Set(['ele-1', 'dom-3', 'org-1', 'sdf-19']);

function base64Length(b64) {
  const clean = b64.replace(/\s+/g, '');
  const pad = clean.endsWith('==') ? 2 : clean.endsWith('=') ? 1 : 0;
  return (clean.length / 4) * 3 - pad;
}

/**
 * The [walk] pass: crawl the document with medplum's typed crawl (`core` is @medplum/core) and
 * evaluate the error invariants of every complex datatype with its FHIRPath engine. The
 * version's own checks are hooks, each given `add(severity, where, msg)`:
 *   checkObject(tv, add)             every complex value (after its invariants);
 *   checkValue(tv, element, add)     every value of a property (element: its definition);
 *   checkConstraint(c, tv, add)      an invariant the engine cannot evaluate: return true
 *                                    when the hook has checked it.
 */
export function walkIssues(core, doc, { checkObject, checkValue, checkConstraint = () => false }) {
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
      if (checkConstraint(c, tv, add)) continue;
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
          checkObject(tv, add);
        },
        visitProperty: (_parent, key, _path, values, schema) => {
          const element = schema?.elements?.[key];
          for (const tv of values.flat()) if (tv && tv.value !== undefined && tv.value !== null) checkValue(tv, element, add);
        },
      },
      { initialPath: doc.resourceType },
    );
  } catch (e) {
    add('error', '', `walk aborted: ${e.message}`);
  }
  return issues;
}

/**
 * The [walk] checks R4 and R5 share, for a complex value `tv`; true when its type is one of
 * theirs (Attachment, Binary, Extension). Attachment: hash must be base64 of 20 bytes (SHA-1 in
 * both versions), its size (`size(attachment)`, a number) the decoded data length, contentType
 * a MIME type; Binary.contentType a MIME type; Extension.url absolute.
 */
export function checkSharedObject(tv, add, { fhirRelease, size = (v) => v.size }) {
  const v = tv.value;
  if (tv.type === 'Attachment') {
    if (typeof v.hash === 'string' && base64Length(v.hash) !== 20) {
      add('error', `${tv.path}.hash`, `Attachment.hash must be the base64 SHA-1 of the data (20 bytes) in ${fhirRelease}`);
    }
    const bytes = size(v);
    if (typeof v.data === 'string' && typeof bytes === 'number' && base64Length(v.data) !== bytes) {
      add('error', `${tv.path}.size`, `Attachment.size ${v.size} differs from the decoded data length ${base64Length(v.data)}`);
    }
    if (typeof v.contentType === 'string' && !MIME.test(v.contentType)) {
      add('error', `${tv.path}.contentType`, `not a MIME type: ${JSON.stringify(v.contentType)}`);
    }
  } else if (tv.type === 'Binary') {
    if (typeof v.contentType === 'string' && !MIME.test(v.contentType)) {
      add('error', `${tv.path}.contentType`, `not a MIME type: ${JSON.stringify(v.contentType)}`);
    }
  } else if (tv.type === 'Extension') {
    if (typeof v.url === 'string' && !ABSOLUTE_URI.test(v.url)) {
      add('error', `${tv.path}.url`, `Extension.url must be an absolute URI: ${JSON.stringify(v.url)}`);
    }
  } else {
    return false;
  }
  return true;
}

/**
 * A Coding of a code system whose codes are all known (`codes`: code -> {display}): a code not
 * in it is an error, a display that differs from the system's (case aside) a warning.
 */
export function checkCode(path, coding, codes, add, fhirRelease) {
  if (!codes.has(coding.code)) {
    add('error', `${path}.code`, `code ${JSON.stringify(coding.code)} is not in the ${fhirRelease} code system ${coding.system}`);
  } else {
    const display = codes.get(coding.code).display;
    if (coding.display && display && coding.display.toLowerCase() !== display.toLowerCase()) {
      add('warning', `${path}.display`, `display ${JSON.stringify(coding.display)} differs from ${JSON.stringify(display)} for ${coding.system}#${coding.code}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// [bundle]

// Links a transaction must resolve: Reference.reference and url-typed elements such as
// Attachment.url (http.html#trules, in R4 and R5, rewrites urn:uuid in both).
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

const UUID_URN = /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The [bundle] pass, the same in R4 and R5 (bundle.html#bundle-unique and #references,
 * http.html#transaction): fullUrl unique, urn:uuid references must resolve inside the Bundle,
 * request/response present exactly where the Bundle type wants them. With checkUuidFullUrl a
 * urn:uuid fullUrl must also be a well-formed UUID (the R4 driver checks it).
 */
export function bundleIssues(doc, { checkUuidFullUrl = false } = {}) {
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
      if (checkUuidFullUrl && e.fullUrl.startsWith('urn:uuid:') && !UUID_URN.test(e.fullUrl)) {
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
