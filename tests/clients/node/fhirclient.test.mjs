// npm `fhirclient` (the SMART on FHIR JavaScript client, smart-on-fhir/client-js) in plain Node,
// through its Node adapter: a node:http app whose /launch calls `smart(req, res).authorize()` and
// whose /redirect calls `.ready()`, with the user's part played by a real headless Chromium.
//   - standalone launch of a public app (PKCE S256) by a patient: login, consent, then
//     client.request, client.patient.read, client.patient.request, refresh
//   - EHR launch of an asymmetric app (private_key_jwt ES384, fhirclient's clientPrivateJwk) from
//     a launch URL made by the RPC aidbox.smart/get-launch-uri: patient and encounter context
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { startFhirgate, withServerLog, ROOT_SECRET } from './fhirgate.mjs';
import { startFhirclientApp } from './fhirclient-app.mjs';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-quic'];
const STANDALONE_SCOPE = 'launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs';
const EHR_SCOPE = 'launch openid fhirUser patient/Patient.rs patient/Encounter.rs patient/Observation.rs';

let fg, app, browser, privateJwk;

function seed(origin, publicJwk) {
  return [
    // the root project seeds the patient and provider policies; backend services need one
    { resourceType: 'AccessPolicy', id: 'test-backend-services', engine: 'matcho',
      matcho: { jwt: { scope: '#system/' } } },
    { resourceType: 'Patient', id: 'pt-1', name: [{ family: 'Shaw', given: ['Amy'] }], birthDate: '1987-02-20' },
    { resourceType: 'Patient', id: 'pt-2', name: [{ family: 'Other', given: ['Bob'] }] },
    { resourceType: 'Practitioner', id: 'pr-1', name: [{ family: 'Who', prefix: ['Dr.'] }] },
    { resourceType: 'Encounter', id: 'enc-1', status: 'in-progress',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: 'Patient/pt-1' } },
    { resourceType: 'Observation', id: 'obs-1', status: 'final', code: { text: 'glucose' },
      subject: { reference: 'Patient/pt-1' } },
    { resourceType: 'Observation', id: 'obs-2', status: 'final', code: { text: 'glucose' },
      subject: { reference: 'Patient/pt-2' } },
    { resourceType: 'User', id: 'amy', password: 'amy-pass', fhirUser: { reference: 'Patient/pt-1' } },
    { resourceType: 'User', id: 'drwho', password: 'doc-pass', fhirUser: { reference: 'Practitioner/pr-1' } },
    // provider access (user/ across patients, the picker, EHR launches) comes from a provider Role
    { resourceType: 'Role', id: 'drwho-practitioner', name: 'practitioner', user: { id: 'drwho', resourceType: 'User' } },
    // a public app: PKCE, no secret, refresh tokens
    { resourceType: 'Client', id: 'fhirclient-js', grant_types: ['authorization_code', 'refresh_token'],
      smart: { name: 'fhirclient.js public app', launch_uri: `${origin}/launch` },
      auth: { authorization_code: { redirect_uri: `${origin}/redirect`, secret_required: false } } },
    // an asymmetric app: the public half of its ES384 key registered inline
    { resourceType: 'Client', id: 'fhirclient-jwt', grant_types: ['authorization_code'], jwks: { keys: [publicJwk] },
      smart: { name: 'fhirclient.js asymmetric app', launch_uri: `${origin}/launch` },
      auth: { authorization_code: { redirect_uri: `${origin}/redirect` } } },
  ];
}

before(async () => {
  fg = await startFhirgate();
  app = await startFhirclientApp();
  const pair = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']);
  const pub = { ...(await crypto.subtle.exportKey('jwk', pair.publicKey)), kid: 'fhirclient-k1', alg: 'ES384', use: 'sig' };
  delete pub.key_ops; delete pub.ext;
  privateJwk = { ...(await crypto.subtle.exportKey('jwk', pair.privateKey)), kid: 'fhirclient-k1', alg: 'ES384' };
  delete privateJwk.key_ops; delete privateJwk.ext;
  await fg.seed(seed(app.origin, pub));
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await app?.stop();
  await fg?.stop();
});

const withLog = (fn) => withServerLog(fg, fn, () =>
  app.errors.length ? '--- app errors ---\n' + app.errors.map((x) => x.stack).join('\n') : '');

// Chromium opens `url`, signs in, allows on the consent page; resolves with the fhirclient Client
// that the app's /redirect built, and the authorization requests the browser sent.
async function launchInBrowser(url, username, password) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const authorizeRequests = [];
  page.on('request', (r) => {
    if (r.url().startsWith(`${fg.base}/auth/authorize?`)) authorizeRequests.push(new URL(r.url()));
  });
  const ready = app.nextClient();
  await page.goto(url);
  assert.match(page.url(), /\/auth\/login\?/, `expected the login page, at ${page.url()}`);
  await page.fill('input[name="username"]', username);
  await page.fill('input[name="password"]', password);
  await page.click('button[type="submit"]');
  await page.waitForSelector('button[name="decision"][value="allow"]');
  await Promise.all([
    page.waitForURL(`${app.origin}/redirect?**`),
    page.click('button[name="decision"][value="allow"]'),
  ]);
  const client = await ready;
  assert.equal(await page.textContent('#done'), 'authorized');
  await context.close();
  return { client, authorizeRequests };
}

test('fhirclient (Node adapter) + Chromium: standalone launch, public app with PKCE, reads, refresh', () => withLog(async () => {
  app.authorizeOptions = { iss: fg.fhir, clientId: 'fhirclient-js', scope: STANDALONE_SCOPE };
  const { client, authorizeRequests } = await launchInBrowser(`${app.origin}/launch`, 'amy', 'amy-pass');

  // the authorization request fhirclient built: from SMART discovery, PKCE S256, aud = FHIR base
  const first = authorizeRequests[0];
  assert.ok(first, 'Chromium was sent to the authorize endpoint');
  assert.equal(first.searchParams.get('client_id'), 'fhirclient-js');
  assert.equal(first.searchParams.get('code_challenge_method'), 'S256');
  assert.match(first.searchParams.get('code_challenge'), /^[A-Za-z0-9_-]{43}$/);
  assert.equal(first.searchParams.get('aud'), fg.fhir);
  assert.equal(first.searchParams.get('launch'), null, 'standalone: no launch parameter');
  assert.equal(client.state.tokenUri, `${fg.base}/auth/token`);
  assert.ok(client.state.codeVerifier, 'fhirclient kept a PKCE verifier');
  assert.equal(client.state.clientSecret, undefined, 'a public client');

  // the token response as fhirclient stored it
  assert.equal(client.getState('tokenResponse.scope'), STANDALONE_SCOPE);
  assert.equal(client.getState('tokenResponse.need_patient_banner'), true);
  assert.ok(client.getState('tokenResponse.refresh_token'));
  assert.equal(client.patient.id, 'pt-1');
  assert.equal(client.encounter.id, null);
  assert.equal(client.getFhirUser(), 'Patient/pt-1', 'fhirUser from the id_token');
  assert.equal(client.getUserType(), 'Patient');

  // FHIR reads through fhirclient, with its bearer token
  const patient = await client.request('Patient/pt-1');
  assert.equal(patient.resourceType, 'Patient');
  assert.equal(patient.name[0].family, 'Shaw');
  const read = await client.patient.read();
  assert.equal(read.id, 'pt-1');
  assert.equal(read.birthDate, '1987-02-20');
  const observations = await client.patient.request('Observation', { flat: true });
  assert.deepEqual(observations.map((o) => o.id), ['obs-1'], 'only the patient\'s own observations');
  await assert.rejects(client.request('Patient/pt-2'), (e) => e.status === 404, 'another patient is not found');

  // refresh: a new access token, the refresh token rotated, reads still work
  const before = client.getState('tokenResponse');
  await client.refresh();
  const after = client.getState('tokenResponse');
  assert.notEqual(after.access_token, before.access_token);
  assert.ok(after.refresh_token && after.refresh_token !== before.refresh_token, 'the refresh token rotated');
  assert.equal(after.scope, STANDALONE_SCOPE);
  assert.equal(after.patient, 'pt-1');
  assert.equal((await client.patient.read()).id, 'pt-1');
  // the old refresh token is spent
  const stale = await fetch(`${fg.base}/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: before.refresh_token, client_id: 'fhirclient-js' }),
  });
  assert.equal(stale.status, 400);
  assert.equal((await stale.json()).error, 'invalid_grant');
}));

test('fhirclient (Node adapter) + Chromium: EHR launch via aidbox.smart/get-launch-uri, private_key_jwt ES384, patient and encounter context', () => withLog(async () => {
  const rpc = await fetch(`${fg.base}/rpc`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: 'Basic ' + Buffer.from(`root:${ROOT_SECRET}`).toString('base64'),
    },
    body: JSON.stringify({ method: 'aidbox.smart/get-launch-uri', params: {
      user: 'drwho', client: 'fhirclient-jwt', iss: fg.fhir, ctx: { patient: 'pt-1', encounter: 'enc-1' } } }),
  });
  const body = await rpc.json();
  assert.equal(rpc.status, 200, JSON.stringify(body));
  const { uri, launch, iss } = body.result;
  assert.equal(iss, fg.fhir);
  assert.ok(uri.startsWith(`${app.origin}/launch?iss=`), uri);
  assert.equal(new URL(uri).searchParams.get('launch'), launch);

  // the app's /launch reads iss and launch from the URL (fhirclient does that itself)
  app.authorizeOptions = { clientId: 'fhirclient-jwt', scope: EHR_SCOPE, clientPrivateJwk: privateJwk };
  const { client, authorizeRequests } = await launchInBrowser(uri, 'drwho', 'doc-pass');
  const first = authorizeRequests[0];
  assert.equal(first.searchParams.get('launch'), launch, 'fhirclient passed the launch value on');
  assert.equal(first.searchParams.get('aud'), fg.fhir);
  assert.equal(first.searchParams.get('code_challenge_method'), 'S256');
  assert.equal(client.state.serverUrl, fg.fhir);

  // the launch context, as fhirclient exposes it
  assert.equal(client.getState('tokenResponse.scope'), EHR_SCOPE);
  assert.equal(client.patient.id, 'pt-1');
  assert.equal(client.encounter.id, 'enc-1');
  assert.equal(client.getState('tokenResponse.need_patient_banner'), false);
  assert.deepEqual(client.getState('tokenResponse.fhirContext') ?? [], []);
  assert.equal(client.getFhirUser(), 'Practitioner/pr-1');
  assert.equal(client.getState('tokenResponse.refresh_token'), undefined, 'no offline_access asked');

  const patient = await client.patient.read();
  assert.equal(patient.name[0].given[0], 'Amy');
  const encounter = await client.encounter.read();
  assert.equal(encounter.id, 'enc-1');
  assert.equal(encounter.subject.reference, 'Patient/pt-1');
  const observations = await client.patient.request('Observation', { flat: true });
  assert.deepEqual(observations.map((o) => o.id), ['obs-1']);
  await assert.rejects(client.request('Patient/pt-2'), (e) => e.status === 404);

  // the launch value is single use: opening the same launch URL again ends in an error at the app
  const context = await browser.newContext();
  const page = await context.newPage();
  const again = app.nextClient();
  again.catch(() => {});
  const sent = [];
  page.on('request', (r) => { if (r.url().startsWith(`${fg.base}/auth/authorize?`)) sent.push(new URL(r.url())); });
  await page.goto(uri);
  await page.waitForURL(`${app.origin}/redirect?**`);
  const landed = new URL(page.url());
  assert.equal(landed.searchParams.get('error'), 'invalid_request', landed.href);
  assert.equal(landed.searchParams.get('state'), sent[0]?.searchParams.get('state'), 'the state comes back');
  await assert.rejects(again, /^Error: invalid_request: launch is unknown, used or expired$/, 'ready() reports the refusal');
  await context.close();
}));
