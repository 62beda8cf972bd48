// openid-client (a certified OpenID Connect relying party library) and a real headless Chromium
// complete SMART standalone launches against a real `fhirgate serve` process: discovery from the
// issuer, PKCE S256, login and consent pages clicked in the browser, the redirect caught by the
// app's own HTTP server, the code exchanged by openid-client with id_token signature checks,
// userinfo, the FHIR API, refresh, introspection and revocation.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as client from 'openid-client';
import { chromium } from 'playwright-core';
import { startFhirgate, startApp, withServerLog } from './fhirgate.mjs';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-quic'];
const SCOPE = 'openid fhirUser launch/patient offline_access patient/Patient.rs patient/Observation.rs';
const FHIR_JSON = new Headers({ accept: 'application/fhir+json' });

let fg, app, browser, context, jwtKey;
let signedInAt; // the id_token's auth_time after Amy signed in, in the first test

function seed(redirect, jwk) {
  return [
    // the policy the root project seeds (decisions §11): any valid SMART token may reach the
    // SMART API; upserted here too so that these tests do not depend on that seeding
    // the root project seeds the patient and provider policies; backend services need one
    { resourceType: 'AccessPolicy', id: 'test-backend-services', engine: 'matcho',
      matcho: { jwt: { scope: '#system/' } } },
    { resourceType: 'Patient', id: 'pt-1', name: [{ family: 'Shaw', given: ['Amy'] }] },
    { resourceType: 'Patient', id: 'pt-2', name: [{ family: 'Other', given: ['Bob'] }] },
    { resourceType: 'Observation', id: 'obs-1', status: 'final', code: { text: 'glucose' },
      subject: { reference: 'Patient/pt-1' } },
    { resourceType: 'User', id: 'amy', password: 'amy-pass', name: { formatted: 'Amy Shaw' },
      fhirUser: { reference: 'Patient/pt-1' } },
    { resourceType: 'Client', id: 'node-app', secret: 'node-secret',
      grant_types: ['authorization_code', 'refresh_token'],
      auth: { authorization_code: { redirect_uri: redirect, secret_required: true } } },
    { resourceType: 'Client', id: 'node-jwt-app', jwks: { keys: [jwk] },
      grant_types: ['authorization_code'],
      auth: { authorization_code: { redirect_uri: redirect } } },
  ];
}

before(async () => {
  fg = await startFhirgate();
  app = await startApp();
  // an asymmetric client: its ES384 key pair, the public half registered inline
  const pair = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, false, ['sign', 'verify']);
  jwtKey = pair.privateKey;
  const jwk = { ...(await crypto.subtle.exportKey('jwk', pair.publicKey)), kid: 'node-k1', alg: 'ES384', use: 'sig' };
  await fg.seed(seed(`${app.origin}/callback`, jwk));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
  context = await browser.newContext(); // one browser profile for every test: cookies persist
});

after(async () => {
  await browser?.close();
  await app?.stop();
  await fg?.stop();
});

// Every HTML page fhirgate serves refuses to be framed.
function watchPages(page) {
  const pages = [];
  page.on('response', (r) => {
    if (r.url().startsWith(fg.base + '/') && r.request().resourceType() === 'document') {
      pages.push({ url: r.url(), status: r.status(), headers: r.headers() });
    }
  });
  return pages;
}

async function authorizationRequest(config, extra = {}) {
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: `${app.origin}/callback`,
    scope: SCOPE,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    aud: fg.fhir, // SMART: the FHIR base the token is for
    ...extra,
  });
  return { url, checks: { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true } };
}

test('openid-client + Chromium: confidential app (client_secret_post), partial consent, refresh, revocation', () => withServerLog(fg, async () => {
  const config = await client.discovery(new URL(fg.base), 'node-app', undefined,
    client.ClientSecretPost('node-secret'),
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks] });
  const meta = config.serverMetadata();
  assert.equal(meta.issuer, fg.base);
  const fetched = []; // every URL openid-client fetches from here on
  config[client.customFetch] = (url, options) => { fetched.push(String(url)); return fetch(url, options); };
  // SMART discovery on the FHIR base names the same endpoints
  const smart = await (await fetch(`${fg.fhir}/.well-known/smart-configuration`)).json();
  for (const k of ['issuer', 'authorization_endpoint', 'token_endpoint', 'jwks_uri']) {
    assert.equal(smart[k], meta[k], k);
  }

  const { url, checks } = await authorizationRequest(config);
  const page = await context.newPage();
  const pages = watchPages(page);

  // authorize → 302 to the login page
  await page.goto(url.href);
  assert.match(page.url(), /\/auth\/login\?/);
  await page.fill('input[name="username"]', 'amy');
  await page.fill('input[name="password"]', 'amy-pass');
  await page.click('button[type="submit"]');

  // back at authorize: the consent page, every requested scope ticked
  await page.waitForSelector('button[name="decision"][value="allow"]');
  const ticked = await page.locator('input[name="scope"]:checked').evaluateAll((els) => els.map((e) => e.value));
  assert.deepEqual([...ticked].sort(), SCOPE.split(' ').sort());
  assert.equal(await page.locator('input[name="remember"]').isChecked(), false, 'remember is unticked by default');

  // the consent page cannot be framed: Chromium refuses to render it in another origin's iframe
  const framer = await context.newPage();
  const console_ = [];
  framer.on('console', (m) => console_.push(m.text()));
  await framer.goto(`${app.origin}/frame?src=${encodeURIComponent(page.url())}`);
  const frame = framer.frames().find((f) => f !== framer.mainFrame());
  const refused = () => console_.some((t) => /X-Frame-Options|frame-ancestors/i.test(t));
  for (let i = 0; i < 100 && !refused(); i++) await framer.waitForTimeout(50);
  assert.ok(refused(), `Chromium did not report a framing refusal; console: ${console_.join(' | ')}`);
  assert.match(frame.url(), /^chrome-error:/, 'the frame shows an error page');
  assert.equal(await frame.locator('button[name="decision"]').count(), 0, 'consent page rendered inside a frame');
  await framer.close();

  // the user refuses one scope and allows the rest; the browser lands at the app's redirect_uri
  await page.uncheck('input[name="scope"][value="patient/Observation.rs"]');
  await Promise.all([
    page.waitForURL(`${app.origin}/callback?**`),
    page.click('button[name="decision"][value="allow"]'),
  ]);
  assert.equal(await page.textContent('#done'), 'back at the app');
  for (const p of pages.filter((p) => p.status === 200)) {
    assert.equal(p.headers['x-frame-options']?.toUpperCase(), 'DENY', `${p.url} can be framed`);
  }
  const callback = new URL(page.url());
  assert.ok(app.hits.some((h) => h.href === callback.href), 'the app server saw the redirect');
  await page.close();

  // openid-client: state check, code + PKCE verifier + client_secret_post, id_token checks
  // (signature against the JWKS because of enableNonRepudiationChecks; iss, aud, exp, iat, nonce)
  const tokens = await client.authorizationCodeGrant(config, callback, checks);
  assert.deepEqual(fetched, [meta.token_endpoint, meta.jwks_uri], 'the id_token signature was checked against the JWKS');
  assert.equal(tokens.token_type, 'bearer');
  assert.equal(tokens.scope, 'openid fhirUser launch/patient offline_access patient/Patient.rs');
  assert.equal(tokens.patient, 'pt-1');
  assert.ok(tokens.refresh_token);
  const claims = tokens.claims();
  assert.equal(claims.iss, fg.base);
  assert.equal(claims.aud, 'node-app');
  assert.equal(claims.sub, 'amy');
  assert.equal(claims.nonce, checks.expectedNonce);
  assert.equal(claims.fhirUser, `${fg.fhir}/Patient/pt-1`);
  signedInAt = claims.auth_time;
  assert.ok(Number.isInteger(signedInAt));

  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  assert.equal(userinfo.fhirUser, claims.fhirUser);

  // the FHIR API with the access token: Patient granted, Observation refused on the consent page
  let r = await client.fetchProtectedResource(config, tokens.access_token, new URL(`${fg.fhir}/Patient/pt-1`), 'GET', undefined, FHIR_JSON);
  assert.equal(r.status, 200);
  assert.equal((await r.json()).name[0].family, 'Shaw');
  r = await client.fetchProtectedResource(config, tokens.access_token, new URL(`${fg.fhir}/Patient/pt-2`), 'GET', undefined, FHIR_JSON);
  assert.equal(r.status, 404, 'another patient is not found');
  r = await client.fetchProtectedResource(config, tokens.access_token, new URL(`${fg.fhir}/Observation?patient=pt-1`), 'GET', undefined, FHIR_JSON);
  assert.equal(r.status, 403, 'the unticked scope was not granted');

  // refresh (openid-client checks a returned id_token's signature and claims again)
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  assert.notEqual(refreshed.access_token, tokens.access_token);
  assert.notEqual(refreshed.refresh_token, tokens.refresh_token, 'refresh tokens rotate');
  assert.equal(refreshed.scope, tokens.scope);
  if (refreshed.id_token) assert.equal(refreshed.claims().sub, claims.sub);

  const info = await client.tokenIntrospection(config, refreshed.access_token);
  assert.equal(info.active, true);
  assert.equal(info.client_id, 'node-app');
  assert.equal(info.patient, 'pt-1');

  // revoking the refresh token ends the grant: no more refresh, the access token is refused
  await client.tokenRevocation(config, refreshed.refresh_token, { token_type_hint: 'refresh_token' });
  await assert.rejects(client.refreshTokenGrant(config, refreshed.refresh_token),
    (e) => e instanceof client.ResponseBodyError && e.error === 'invalid_grant');
  assert.deepEqual(await client.tokenIntrospection(config, refreshed.access_token), { active: false });
  await assert.rejects(
    client.fetchProtectedResource(config, refreshed.access_token, new URL(`${fg.fhir}/Patient/pt-1`), 'GET', undefined, FHIR_JSON),
    (e) => e instanceof client.WWWAuthenticateChallengeError && e.response.status === 401
      && e.cause[0].scheme === 'bearer',
    'the revoked access token is refused with a Bearer challenge');
}));

test('openid-client + Chromium: asymmetric app (private_key_jwt ES384), signed-in session, remembered consent, max_age', () => withServerLog(fg, async () => {
  const config = await client.discovery(new URL(fg.base), 'node-jwt-app', undefined,
    client.PrivateKeyJwt({ key: jwtKey, kid: 'node-k1' }), // assertion aud = the issuer
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks] });
  const page = await context.newPage();

  // two seconds after Amy signed in, so that auth_time tells sign-in time from code time
  while (Date.now() / 1000 < signedInAt + 2) await page.waitForTimeout(100);

  // the browser still holds fhirgate's session cookie: no login, straight to consent
  let { url, checks } = await authorizationRequest(config);
  await page.goto(url.href);
  assert.doesNotMatch(page.url(), /\/auth\/login/);
  await page.waitForSelector('button[name="decision"][value="allow"]');
  await page.check('input[name="remember"]');
  await Promise.all([
    page.waitForURL(`${app.origin}/callback?**`),
    page.click('button[name="decision"][value="allow"]'),
  ]);
  let tokens = await client.authorizationCodeGrant(config, new URL(page.url()), checks);
  assert.equal(tokens.scope, SCOPE);
  assert.equal(tokens.claims().sub, 'amy');
  assert.equal(tokens.claims().auth_time, signedInAt, 'auth_time is when Amy signed in');

  // remembered: the next authorization goes straight back to the app
  ({ url, checks } = await authorizationRequest(config));
  await page.goto(url.href);
  assert.ok(page.url().startsWith(`${app.origin}/callback?`), page.url());
  tokens = await client.authorizationCodeGrant(config, new URL(page.url()), checks);
  const r = await client.fetchProtectedResource(config, tokens.access_token, new URL(`${fg.fhir}/Patient/pt-1`), 'GET', undefined, FHIR_JSON);
  assert.equal(r.status, 200);

  // max_age shorter than the sign-in's age: Chromium is sent to the login page again, and
  // openid-client checks the new auth_time against max_age
  ({ url, checks } = await authorizationRequest(config, { max_age: '1' }));
  await page.goto(url.href);
  assert.match(page.url(), /\/auth\/login\?/, 'asked to sign in again');
  await page.fill('input[name="username"]', 'amy');
  await page.fill('input[name="password"]', 'amy-pass');
  await Promise.all([
    page.waitForURL(`${app.origin}/callback?**`), // remembered: no consent page
    page.click('button[type="submit"]'),
  ]);
  tokens = await client.authorizationCodeGrant(config, new URL(page.url()), { ...checks, maxAge: 1 });
  assert.ok(tokens.claims().auth_time > signedInAt);

  // prompt=consent shows the page again even so
  ({ url } = await authorizationRequest(config, { prompt: 'consent' }));
  await page.goto(url.href);
  await page.waitForSelector('button[name="decision"][value="deny"]');
  await Promise.all([
    page.waitForURL(`${app.origin}/callback?**`),
    page.click('button[name="decision"][value="deny"]'),
  ]);
  const denied = new URL(page.url());
  assert.equal(denied.searchParams.get('error'), 'access_denied');
  await page.close();
}));
