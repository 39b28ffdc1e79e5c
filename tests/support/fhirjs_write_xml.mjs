// FHIR R4 resources (a JSON array on stdin) written as FHIR XML by FHIR.js (Fhir.objToXml), an
// XML writer independent of the adapter's: the tests send what it writes. Prints a JSON array of
// the XML documents. Node modules from $FHIRVAL_DIR (tests/support/fhir_validator.py sets it).
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const require = createRequire(`${process.env.FHIRVAL_DIR}/package.json`);
const { Fhir } = require('fhir');
const fhir = new Fhir();
const resources = JSON.parse(readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(resources.map((r) => fhir.objToXml(r))));
