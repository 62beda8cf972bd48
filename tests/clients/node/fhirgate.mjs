// Runs a real `fhirgate serve` process (free loopback port, throwaway SQLite file) and a small
// HTTP server that plays the app's redirect_uri. Nothing here speaks OAuth: that is left to
// openid-client, and the user's part to a real Chromium.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const ROOT_SECRET = 'client-tests-root-secret';

async function freePort() {
  const s = createServer();
  await new Promise((ok) => s.listen(0, '127.0.0.1', ok));
  const { port } = s.address();
  await new Promise((ok) => s.close(ok));
  return port;
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

export async function startFhirgate() {
  const bin = process.env.FHIRGATE_BIN ?? join(REPO, 'target/debug/fhirgate');
  const dir = mkdtempSync(join(tmpdir(), 'fhirgate-clients-'));
  const logPath = join(dir, 'serve.log');
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const log = openSync(logPath, 'w');
    const child = spawn(bin, ['serve', '--config', process.env.FHIRGATE_CONFIG ?? join(REPO, 'core.edn'),
      '--listen', `127.0.0.1:${port}`, '--base-url', base,
      '--database-url', `sqlite:${dir}/fhirgate.db`], {
      cwd: dir,
      env: { ...process.env, FHIRGATE_ROOT_SECRET: ROOT_SECRET, RUST_LOG: 'info' },
      stdio: ['ignore', log, log],
    });
    let exited = false;
    child.on('exit', () => { exited = true; });
    const killOnExit = () => child.kill('SIGKILL');
    process.on('exit', killOnExit);
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && !exited) {
      try {
        if ((await fetch(`${base}/health`)).ok) {
          return {
            base,
            fhir: `${base}/smart`,
            log: () => readFileSync(logPath, 'utf8'),
            async seed(resources) {
              const r = await fetch(`${base}/`, {
                method: 'PUT',
                headers: {
                  'content-type': 'application/json',
                  authorization: 'Basic ' + Buffer.from(`root:${ROOT_SECRET}`).toString('base64'),
                },
                body: JSON.stringify(resources),
              });
              if (r.status !== 200) throw new Error(`PUT / answered ${r.status}: ${await r.text()}`);
            },
            async stop() {
              process.off('exit', killOnExit);
              if (!exited) {
                const gone = new Promise((ok) => child.once('exit', ok));
                child.kill('SIGTERM');
                const force = setTimeout(() => child.kill('SIGKILL'), 10_000);
                await gone;
                clearTimeout(force);
              }
              rmSync(dir, { recursive: true, force: true });
            },
          };
        }
      } catch { /* not listening yet */ }
      await sleep(100);
    }
    child.kill('SIGKILL');
    process.off('exit', killOnExit);
  }
  throw new Error(`fhirgate did not start:\n${readFileSync(logPath, 'utf8')}`);
}

// The app's side of the redirect: answers every request with a small page, remembers the URLs it
// was called with, and serves /frame?src=URL, a page that tries to put URL in an iframe.
export async function startApp() {
  const hits = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, `http://${req.headers.host}`);
    hits.push(url);
    res.setHeader('content-type', 'text/html; charset=utf-8');
    if (url.pathname === '/frame') {
      const src = url.searchParams.get('src').replaceAll('&', '&amp;').replaceAll('"', '&quot;');
      res.end(`<!doctype html><title>framer</title><iframe id="victim" src="${src}"></iframe>`);
    } else {
      res.end('<!doctype html><title>app</title><p id="done">back at the app</p>');
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return { origin, hits, stop: () => new Promise((ok) => server.close(ok)) };
}

// Run `fn`; when it throws, print the tail of `fg`'s server log (and `moreOnError()`'s text, if
// any) before rethrowing, so that a failed test shows what the server said.
export async function withServerLog(fg, fn, moreOnError) {
  try {
    await fn();
  } catch (e) {
    console.error('--- fhirgate serve log (last 60 lines) ---\n' + fg.log().split('\n').slice(-60).join('\n'));
    const more = moreOnError?.();
    if (more) console.error(more);
    throw e;
  }
}
