// A tiny SMART app built on npm `fhirclient` (the SMART on FHIR JavaScript client) and its Node
// adapter, served by node:http: `/launch` calls `smart(req, res).authorize(options)` (which
// redirects to the authorization server; for an EHR launch `iss` and `launch` come from the URL)
// and `/redirect` calls `smart(req, res).ready()`, which exchanges the code. The client that
// `ready()` resolves with is handed to the test. Sessions are an in-memory map keyed by a cookie,
// exposed as `req.session`, which is what fhirclient's default ServerStorage uses.
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import smart from 'fhirclient';

const escape = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));

export async function startFhirclientApp() {
  const sessions = new Map();
  const waiting = []; // resolvers of nextClient(), oldest first
  const app = {
    origin: '',
    authorizeOptions: {}, // set by the test before each launch
    errors: [],
    // A promise of the fhirclient Client that the next /redirect produces (or its error).
    nextClient() {
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
  };
  const server = createServer(async (req, res) => {
    const sid = /(?:^|;\s*)app_sid=([^;]+)/.exec(req.headers.cookie ?? '')?.[1];
    let id = sid && sessions.has(sid) ? sid : null;
    if (!id) {
      id = randomUUID();
      sessions.set(id, {});
      res.setHeader('set-cookie', `app_sid=${id}; Path=/; HttpOnly; SameSite=Lax`);
    }
    req.session = sessions.get(id);
    const path = new URL(req.url, app.origin).pathname;
    try {
      if (path === '/launch') {
        await smart(req, res).authorize({ redirectUri: '/redirect', ...app.authorizeOptions });
      } else if (path === '/redirect') {
        let client;
        try {
          client = await smart(req, res).ready();
        } catch (e) {
          waiting.shift()?.reject(e);
          throw e;
        }
        waiting.shift()?.resolve(client);
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end('<!doctype html><html lang="en"><title>app</title><p id="done">authorized</p></html>');
      } else {
        res.statusCode = 404;
        res.end('not found');
      }
    } catch (e) {
      app.errors.push(e);
      if (!res.headersSent) {
        res.statusCode = 500;
        res.setHeader('content-type', 'text/html; charset=utf-8');
      }
      res.end(`<!doctype html><title>app error</title><p id="error">${escape(e.message)}</p>`);
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  app.origin = `http://127.0.0.1:${server.address().port}`;
  app.stop = () => new Promise((ok) => { server.closeAllConnections(); server.close(ok); });
  return app;
}
