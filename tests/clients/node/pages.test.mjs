// fhirgate's interactive pages in a real headless Chromium, driven with the keyboard only: a
// practitioner standalone-launches the fhirclient app with launch/patient, signs in (typing,
// Tab, Enter; a wrong password first), gets the patient picker (arrow keys, Tab, Enter) and the
// consent page (Space unticks a scope, Space on Allow); then opens the grants and apps pages.
// Login, picker and consent are saved as PNGs under target/clients-artifacts/; every page is
// checked for basic accessibility: <html lang>, a <title>, one <h1>, every visible input, select
// and textarea labelled (<label for>, a wrapping <label>, aria-label or aria-labelledby), every
// button named, every form submittable. The token the app gets lacks the unticked scope.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startFhirgate, REPO } from './fhirgate.mjs';
import { startFhirclientApp } from './fhirclient-app.mjs';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-quic'];
const SCOPE = 'launch/patient openid fhirUser patient/Patient.rs patient/Observation.rs';
const ARTIFACTS = join(REPO, 'target/clients-artifacts');

let fg, app, browser;

before(async () => {
  fg = await startFhirgate();
  app = await startFhirclientApp();
  await fg.seed([
    // the root project seeds the patient and provider policies; backend services need one
    { resourceType: 'AccessPolicy', id: 'test-backend-services', engine: 'matcho',
      matcho: { jwt: { scope: '#system/' } } },
    { resourceType: 'Patient', id: 'pt-1', name: [{ family: 'Shaw', given: ['Amy'] }], birthDate: '1987-02-20' },
    { resourceType: 'Patient', id: 'pt-2', name: [{ family: 'Shawcross', given: ['Bob'] }], birthDate: '1950-06-01' },
    { resourceType: 'Observation', id: 'obs-2', status: 'final', code: { text: 'glucose' },
      subject: { reference: 'Patient/pt-2' } },
    { resourceType: 'Practitioner', id: 'pr-1', name: [{ family: 'Who', prefix: ['Dr.'] }] },
    { resourceType: 'User', id: 'drwho', password: 'doc-pass', fhirUser: { reference: 'Practitioner/pr-1' } },
    // provider access (user/ across patients, the picker, EHR launches) comes from a provider Role
    { resourceType: 'Role', id: 'drwho-practitioner', name: 'practitioner', user: { id: 'drwho', resourceType: 'User' } },
    { resourceType: 'Client', id: 'fhirclient-js', grant_types: ['authorization_code'],
      smart: { name: 'Pages test app' },
      auth: { authorization_code: { redirect_uri: `${app.origin}/redirect`, secret_required: false } } },
  ]);
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: CHROMIUM_ARGS });
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await app?.stop();
  await fg?.stop();
});

// Basic accessibility problems of the page in the browser, as a list of strings (empty = fine).
function accessibilityProblems(page) {
  return page.evaluate(() => {
    const problems = [];
    const describe = (el) => el.outerHTML.slice(0, 120);
    if (!document.documentElement.getAttribute('lang')?.trim()) problems.push('<html> has no lang');
    if (!document.title.trim()) problems.push('no <title>');
    if (document.querySelectorAll('h1').length !== 1) problems.push('not exactly one <h1>');
    const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    for (const el of document.querySelectorAll('input, select, textarea')) {
      if (el.type === 'hidden' || !visible(el)) continue;
      const byLabel = [...(el.labels ?? [])].some((l) => l.textContent.trim() !== '');
      const byAria = (el.getAttribute('aria-label') ?? '').trim() !== ''
        || (el.getAttribute('aria-labelledby') ?? '').split(/\s+/)
          .some((id) => id && document.getElementById(id)?.textContent.trim());
      if (!byLabel && !byAria) problems.push(`unlabelled: ${describe(el)}`);
    }
    for (const b of document.querySelectorAll('button, input[type=submit]')) {
      const name = b.textContent.trim() || b.value || b.getAttribute('aria-label') || '';
      if (!name.trim()) problems.push(`button without a name: ${describe(b)}`);
    }
    for (const f of document.querySelectorAll('form')) {
      if (!f.querySelector('button:not([type=button]):not([type=reset]), input[type=submit]')) {
        problems.push(`form without a submit button: ${describe(f)}`);
      }
    }
    return problems;
  });
}

async function snapshot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`# screenshot: ${path}`);
  return path;
}

const focused = (page) => page.evaluate(() => {
  const el = document.activeElement;
  return { tag: el.tagName.toLowerCase(), name: el.getAttribute('name'), value: el.value ?? null, type: el.type ?? null };
});

test('the accessibility check itself finds problems on a bad page', async () => {
  const page = await browser.newPage();
  await page.setContent('<html><body><form><input name="q"><select name="s"></select><button></button></form></body></html>');
  const problems = await accessibilityProblems(page);
  assert.deepEqual(problems.map((p) => p.split(':')[0]), [
    '<html> has no lang', 'no <title>', 'not exactly one <h1>', 'unlabelled', 'unlabelled', 'button without a name']);
  await page.close();
});

test('Chromium, keyboard only: login, patient picker and consent pages are labelled and work; the unticked scope is not granted', async () => {
  try {
    app.authorizeOptions = { iss: fg.fhir, clientId: 'fhirclient-js', scope: SCOPE };
    const context = await browser.newContext({ viewport: { width: 800, height: 700 } });
    const page = await context.newPage();
    const ready = app.nextClient();
    await page.goto(`${app.origin}/launch`);

    // login: the user name field has the focus; type, Tab to the password, Enter submits
    assert.match(page.url(), /\/auth\/login\?/);
    assert.equal(await page.title(), 'Sign in');
    assert.deepEqual(await accessibilityProblems(page), [], 'login page');
    await snapshot(page, 'login');
    assert.deepEqual(await focused(page), { tag: 'input', name: 'username', value: '', type: 'text' }, 'autofocus');
    await page.keyboard.type('drwho');
    await page.keyboard.press('Tab');
    assert.equal((await focused(page)).name, 'password');
    await page.keyboard.type('wrong-pass');
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
    // a wrong password: the login page again, with an error, still accessible
    assert.match(page.url(), /\/auth\/login/);
    assert.ok(await page.locator('#error').isVisible(), 'an error is shown');
    assert.deepEqual(await accessibilityProblems(page), [], 'login page with an error');
    await page.locator('input[name="password"]').focus();
    await page.keyboard.type('doc-pass');
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);

    // the patient picker: a practitioner with launch/patient searches (contract §4: nothing is
    // listed before a search), then chooses a patient
    assert.equal(await page.title(), 'Choose a patient');
    assert.deepEqual(await accessibilityProblems(page), [], 'picker page');
    assert.equal(await page.locator('input[name="patient"]').count(), 0, 'no patient before a search');
    assert.deepEqual(await focused(page), { tag: 'input', name: 'q', value: '', type: 'text' }, 'the search has the focus');
    await page.keyboard.type('Shaw');
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
    assert.equal(await page.title(), 'Choose a patient');
    assert.deepEqual(await accessibilityProblems(page), [], 'picker page with results');
    await snapshot(page, 'picker');
    const options = await page.locator('input[name="patient"]').evaluateAll((els) => els.map((e) => e.value));
    assert.deepEqual([...options].sort(), ['pt-1', 'pt-2']);
    const first = await page.locator('input[name="patient"]:checked').getAttribute('value');
    await page.locator('input[name="patient"]:checked').focus();
    await page.keyboard.press('ArrowDown'); // moves the choice to the next radio
    const chosen = await page.locator('input[name="patient"]:checked').getAttribute('value');
    assert.notEqual(chosen, first, 'the arrow key changed the choice');
    await page.keyboard.press('Tab');
    assert.deepEqual(await focused(page), { tag: 'button', name: 'decision', value: 'allow', type: 'submit' });
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);

    // consent: Space unticks a scope, Space on Allow submits
    assert.equal(await page.title(), 'Allow access');
    assert.deepEqual(await accessibilityProblems(page), [], 'consent page');
    const observation = page.locator('input[name="scope"][value="patient/Observation.rs"]');
    await observation.focus();
    await page.keyboard.press('Space');
    assert.equal(await observation.isChecked(), false);
    await snapshot(page, 'consent');
    await page.locator('button[name="decision"][value="allow"]').focus();
    await Promise.all([page.waitForURL(`${app.origin}/redirect?**`), page.keyboard.press('Space')]);
    const client = await ready;

    // the signed-in user's other pages: grants and launchable apps
    for (const [path, title] of [['/auth/grants', 'Your app grants'], ['/auth/apps', 'Launch an app']]) {
      await page.goto(`${fg.base}${path}`);
      assert.equal(await page.title(), title, path);
      assert.deepEqual(await accessibilityProblems(page), [], path);
    }
    await context.close();

    // the token: the picked patient, without the unticked scope
    const granted = 'launch/patient openid fhirUser patient/Patient.rs';
    assert.equal(client.getState('tokenResponse.scope'), granted);
    assert.equal(client.patient.id, chosen);
    const claims = JSON.parse(Buffer.from(client.getState('tokenResponse.access_token').split('.')[1], 'base64url'));
    assert.equal(claims.scope, granted, 'the access token lacks patient/Observation.rs');
    assert.equal(claims.patient, chosen);
    assert.equal((await client.patient.read()).id, chosen);
    await assert.rejects(client.patient.request('Observation'), (e) => e.status === 403, 'Observation was not granted');
  } catch (e) {
    console.error('--- fhirgate serve log (last 60 lines) ---\n' + fg.log().split('\n').slice(-60).join('\n'));
    throw e;
  }
});
