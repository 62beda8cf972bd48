// What fhirgate's FHIR API answers, validated by FHIR.js (npm `fhir`, Lantana Consulting Group)
// against the FHIR R4 (4.0) structure definitions and value sets it ships: the
// CapabilityStatement, search Bundles (with _include), reads, and the OperationOutcomes of a
// 401, a 403, a 404 and bad search parameters. errorOnUnexpected is on, so an element R4 does
// not define is an error, not a warning. Zero errors allowed; warnings and infos are printed.
// FHIR.js checks types, cardinality, primitive formats and required bindings; it does not
// evaluate FHIRPath invariants.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fhirjs from 'fhir';
import { startFhirgate } from './fhirgate.mjs';

const { Fhir } = fhirjs;
const validator = new Fhir(); // R4 (4.0.0) definitions by default
const FHIR_JSON = 'application/fhir+json';

let fg, token;

before(async () => {
  fg = await startFhirgate();
  const lab = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] };
  await fg.seed([
    // the root project seeds the patient and provider policies; backend services need one
    { resourceType: 'AccessPolicy', id: 'test-backend-services', engine: 'matcho',
      matcho: { jwt: { scope: '#system/' } } },
    { resourceType: 'Patient', id: 'pt-1', active: true, gender: 'female', birthDate: '1987-02-20',
      name: [{ use: 'official', family: 'Shaw', given: ['Amy'] }],
      identifier: [{ system: 'http://hospital.example/mrn', value: 'MRN-1' }],
      address: [{ city: 'Boston', state: 'MA', postalCode: '02115' }] },
    { resourceType: 'Patient', id: 'pt-2', gender: 'male', name: [{ family: 'Other', given: ['Bob'] }] },
    { resourceType: 'Observation', id: 'obs-1', status: 'final', category: [lab],
      code: { coding: [{ system: 'http://loinc.org', code: '2339-0', display: 'Glucose' }] },
      subject: { reference: 'Patient/pt-1' }, effectiveDateTime: '2024-01-02T10:00:00Z',
      valueQuantity: { value: 95, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } },
    { resourceType: 'Client', id: 'validator', secret: 'validator-secret', grant_types: ['client_credentials'], scope: 'system/*.rs' },
  ]);
  const r = await fetch(`${fg.base}/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded',
      authorization: 'Basic ' + Buffer.from('validator:validator-secret').toString('base64') },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/Patient.rs system/Observation.rs' }),
  });
  assert.equal(r.status, 200);
  token = (await r.json()).access_token;
});

after(async () => { await fg?.stop(); });

async function get(path, { auth = true, bearer = token } = {}) {
  const headers = { accept: FHIR_JSON };
  if (auth) headers.authorization = `Bearer ${bearer}`;
  const r = await fetch(`${fg.fhir}${path}`, { headers });
  assert.match(r.headers.get('content-type') ?? '', /^application\/fhir\+json/, `${path}: content-type`);
  return { status: r.status, body: await r.json() };
}

// Validate with FHIR.js; print warnings and infos; fail on any error.
function assertValid(what, resource) {
  const result = validator.validate(resource, { errorOnUnexpected: true });
  for (const m of result.messages.filter((m) => m.severity !== 'error')) {
    console.log(`# ${what}: ${m.severity} at ${m.location}: ${m.message}`);
  }
  const errors = result.messages.filter((m) => m.severity === 'error');
  assert.deepEqual(errors, [], `${what}: FHIR.js reports errors`);
  assert.equal(result.valid, true, what);
}

test('FHIR.js validates against R4 and finds errors in broken copies of fhirgate\'s answers', async () => {
  const { body: cs } = await get('/metadata', { auth: false });
  const broken = structuredClone(cs);
  delete broken.status;                  // 1..1 in R4
  broken.acceptUnknown = 'no';           // STU3 only, removed in R4
  broken.rest[0].mode = 'sideways';      // required binding
  const errors = validator.validate(broken, { errorOnUnexpected: true }).messages
    .filter((m) => m.severity === 'error').map((m) => m.location).sort();
  assert.deepEqual(errors, ['CapabilityStatement.acceptUnknown', 'CapabilityStatement.rest[0].mode', 'CapabilityStatement.status']);
  const { body: oo } = await get('/Patient/nope');
  oo.issue[0].code = 'no-such-code';
  assert.equal(validator.validate(oo).valid, false);
});

test('FHIR.js (R4): the CapabilityStatement', async () => {
  const { status, body } = await get('/metadata', { auth: false });
  assert.equal(status, 200);
  assert.equal(body.resourceType, 'CapabilityStatement');
  assert.equal(body.fhirVersion, '4.0.1');
  assertValid('GET /metadata', body);
});

test('FHIR.js (R4): search Bundles and reads', async () => {
  let r = await get('/Patient');
  assert.equal(r.status, 200);
  assert.equal(r.body.type, 'searchset');
  assert.equal(r.body.entry.length, 2);
  assertValid('GET /Patient', r.body);

  r = await get('/Observation?patient=pt-1&_include=Observation:patient');
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.entry.map((e) => [e.resource.resourceType, e.search?.mode]).sort(),
    [['Observation', 'match'], ['Patient', 'include']]);
  assertValid('GET /Observation?patient=pt-1&_include=Observation:patient', r.body);

  r = await get('/Patient?_count=1');
  assert.equal(r.status, 200);
  assert.ok(r.body.link.some((l) => l.relation === 'next'), 'a next link');
  assertValid('GET /Patient?_count=1', r.body);

  r = await get('/Patient/pt-1');
  assert.equal(r.status, 200);
  assert.equal(r.body.id, 'pt-1');
  assertValid('GET /Patient/pt-1', r.body);

  r = await get('/Observation/obs-1');
  assert.equal(r.status, 200);
  assertValid('GET /Observation/obs-1', r.body);
});

test('FHIR.js (R4): OperationOutcomes of 401, 403, 404 and bad search parameters', async () => {
  const cases = [
    ['/Patient', { auth: false }, 401, 'login'],
    ['/Patient', { bearer: 'not-a-token' }, 401, null],
    ['/Encounter', {}, 403, 'forbidden'],           // no scope for Encounter
    ['/Patient/nope', {}, 404, 'not-found'],
    ['/Patient?foo=bar', {}, 400, null],           // unknown parameter
    ['/Patient?birthdate=notadate', {}, 400, null], // bad value
    ['/Patient?_count=abc', {}, 400, null],
  ];
  for (const [path, opts, status, code] of cases) {
    const what = `GET ${path} (${status})`;
    const r = await get(path, opts);
    assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.resourceType, 'OperationOutcome', what);
    assert.ok(r.body.issue.length > 0, what);
    if (code) assert.equal(r.body.issue[0].code, code, what);
    assertValid(what, r.body);
  }
});
