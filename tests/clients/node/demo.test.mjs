// The README's first command as a new user runs it: `fhirgate serve --demo` in an empty folder
// (the default SQLite file under ./data, the embedded default project), then the standalone-launch
// URL it prints opened in a real headless Chromium: sign in as the printed patient user, allow,
// and see the patient's name on the demo app's result page. Then the EHR launch it describes:
// the doctor launches the demo app from /auth/apps for a patient.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-quic'];

let server, browser, dir;
let stdout = '';
let stderr = '';

async function freePort() {
  const s = createServer();
  await new Promise((ok) => s.listen(0, '127.0.0.1', ok));
  const { port } = s.address();
  await new Promise((ok) => s.close(ok));
  return port;
}

// Start `fhirgate serve --demo` and wait for the banner it prints once it listens.
async function startDemo() {
  const bin = process.env.FHIRGATE_BIN ?? join(REPO, 'target/debug/fhirgate');
  dir = mkdtempSync(join(tmpdir(), 'fhirgate-demo-'));
  const port = await freePort();
  const env = { ...process.env, RUST_LOG: 'info' };
  for (const k of ['FHIRGATE_CONFIG', 'FHIRGATE_DATABASE_URL', 'FHIRGATE_SEED', 'FHIRGATE_ROOT_SECRET']) delete env[k];
  const child = spawn(bin, ['serve', '--demo', '--listen', `127.0.0.1:${port}`, '--base-url', `http://127.0.0.1:${port}`],
    { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const killOnExit = () => child.kill('SIGKILL');
  process.on('exit', killOnExit);
  const deadline = Date.now() + 60_000;
  while (!/Backend services[\s\S]*\n-{10,}/.test(stdout)) {
    if (child.exitCode !== null) throw new Error(`fhirgate serve --demo exited ${child.exitCode}:\n${stderr}`);
    if (Date.now() > deadline) throw new Error(`no banner after 60 s:\n${stdout}\n${stderr}`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
  return {
    child,
    async stop() {
      process.off('exit', killOnExit);
      if (child.exitCode === null) {
        const gone = new Promise((ok) => child.once('exit', ok));
        child.kill('SIGTERM');
        await gone;
      }
    },
  };
}

// `LABEL   value` on a banner line.
function field(label) {
  const line = stdout.split('\n').find((l) => l.startsWith(label));
  assert.ok(line, `no "${label}" line in:\n${stdout}`);
  return line.slice(label.length).trim();
}

before(async () => {
  const started = Date.now();
  server = await startDemo();
  console.log(`fhirgate serve --demo printed its banner after ${Date.now() - started} ms`);
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function withLog(fn) {
  try {
    await fn();
  } catch (e) {
    console.error(`--- stdout ---\n${stdout}\n--- stderr (last 40 lines) ---\n${stderr.split('\n').slice(-40).join('\n')}`);
    throw e;
  }
}

// On the login page: sign in; on the consent page: allow; back at the demo app.
async function signInAndAllow(page, user, password) {
  await page.waitForSelector('input[name="username"]');
  await page.fill('input[name="username"]', user);
  await page.fill('input[name="password"]', password);
  await page.click('button[type="submit"]');
  await page.waitForSelector('button[name="decision"][value="allow"]');
  await Promise.all([
    page.waitForURL(/\/demo\/callback\?/),
    page.click('button[name="decision"][value="allow"]'),
  ]);
}

test('the printed standalone-launch URL completes a launch in Chromium as the printed patient user', () => withLog(async () => {
  // "Standalone launch  open URL and press …", "Users  patient / PASSWORD  …"
  const url = field('Standalone launch').match(/^open (\S+)/)[1];
  const [user, slash, password] = field('Users').split(/\s+/);
  assert.equal(slash, '/');

  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url);
  assert.equal(await page.title(), 'fhirgate demo app');
  await page.click('#standalone');
  assert.match(page.url(), /\/auth\/login\?/, 'sent to sign in');
  await signInAndAllow(page, user, password);
  assert.equal((await page.textContent('#patient-name')).trim(), 'Rosa María Delgado');
  assert.equal((await page.textContent('#patient-id')).trim(), 'rosa-delgado');
  const tokenTable = await page.textContent('#token-response');
  assert.match(tokenTable, /access_token/);
  assert.match(tokenTable, /patient\s*rosa-delgado/);
  const claims = JSON.parse(await page.textContent('#claims'));
  assert.equal(claims.patient, 'rosa-delgado');
  assert.equal(claims.client_id, 'demo-public');
  await context.close();
}));

test('EHR launch from /auth/apps: the printed doctor launches the demo app for a patient', () => withLog(async () => {
  const base = field('OIDC discovery').replace('/.well-known/openid-configuration', '');
  const doctorLine = stdout.split('\n')[stdout.split('\n').findIndex((l) => l.startsWith('Users')) + 1];
  const [user, , password] = doctorLine.trim().split(/\s+/);
  assert.equal(user, 'doctor');

  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/auth/apps`);
  await page.fill('input[name="username"]', user);
  await page.fill('input[name="password"]', password);
  await page.click('button[type="submit"]');
  await page.waitForSelector('input[name="client"][value="demo-public"]');
  await page.fill('input[name="patient"]', 'james-okafor');
  await page.check('input[name="client"][value="demo-public"]');
  await page.click('button[name="decision"][value="allow"]');
  // the app's launch URL got iss and launch, and sent the browser on to authorize: consent
  await page.waitForSelector('button[name="decision"][value="allow"]');
  await Promise.all([
    page.waitForURL(/\/demo\/callback\?/),
    page.click('button[name="decision"][value="allow"]'),
  ]);
  assert.equal((await page.textContent('#patient-name')).trim(), 'James Chidi Okafor');
  assert.match(await page.textContent('body'), /EHR launch as demo-public/);
  await context.close();
}));
