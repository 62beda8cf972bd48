"""Run a real `fhirgate serve` process and drive its HTML pages the way a browser would.

Nothing here talks OAuth: building the authorization URL, PKCE, the token exchange, refresh,
revocation and the FHIR reads are left to the client libraries under test. This module only
starts the server, seeds it through admin REST (`PUT /`), and plays the user: it follows the
redirects inside fhirgate, fills the login form, ticks the consent form and stops at the first
redirect that leaves the server (the app's redirect_uri), whose URL it hands back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import requests

REPO = Path(__file__).resolve().parents[3]
ROOT_SECRET = "client-tests-root-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fhirgate:
    """A `fhirgate serve` child process on a free loopback port with a throwaway SQLite file."""

    def __init__(self) -> None:
        self.bin = os.environ.get("FHIRGATE_BIN", str(REPO / "target/debug/fhirgate"))
        self.tmp = tempfile.TemporaryDirectory(prefix="fhirgate-clients-")
        self.log_path = Path(self.tmp.name) / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.base = ""

    @property
    def fhir(self) -> str:
        return f"{self.base}/smart"

    def start(self) -> "Fhirgate":
        for attempt in range(5):
            port = free_port()
            self.base = f"http://127.0.0.1:{port}"
            env = dict(os.environ, FHIRGATE_ROOT_SECRET=ROOT_SECRET, RUST_LOG="info")
            self.log = open(self.log_path, "w")
            self.proc = subprocess.Popen(
                [self.bin, "serve",
                 "--config", os.environ.get("FHIRGATE_CONFIG", str(REPO / "core.edn")),
                 "--listen", f"127.0.0.1:{port}",
                 "--base-url", self.base,
                 "--database-url", f"sqlite:{self.tmp.name}/fhirgate.db"],
                cwd=self.tmp.name, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # exited: maybe the port was taken in between; try another
                try:
                    if requests.get(f"{self.base}/health", timeout=1).status_code == 200:
                        return self
                except requests.ConnectionError:
                    pass
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"fhirgate did not start:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def seed(self, resources: list[dict]) -> None:
        r = requests.put(f"{self.base}/", json=resources, auth=("root", ROOT_SECRET), timeout=30)
        assert r.status_code == 200, f"PUT / answered {r.status_code}: {r.text}"


# --- the user at the browser ---------------------------------------------------------------

class Form:
    def __init__(self, action: str, method: str) -> None:
        self.action = action
        self.method = method
        self.fields: list[tuple[str, str]] = []     # hidden, text, password, checked boxes
        self.checkboxes: list[tuple[str, str, bool]] = []
        self.buttons: list[tuple[str, str]] = []

    def names(self) -> set[str]:
        return {n for n, _ in self.fields} | {n for n, _, _ in self.checkboxes}


class FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._form: Form | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = Form(a.get("action", ""), a.get("method", "get").lower())
            self.forms.append(self._form)
        elif self._form is None or "name" not in a:
            return
        elif tag == "input":
            kind = a.get("type", "text").lower()
            if kind in ("checkbox", "radio"):
                self._form.checkboxes.append((a["name"], a.get("value", "on"), "checked" in a))
            elif kind == "submit":
                self._form.buttons.append((a["name"], a.get("value", "")))
            else:
                self._form.fields.append((a["name"], a.get("value", "")))
        elif tag == "button" and a.get("type", "submit") == "submit":
            self._form.buttons.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def forms_of(html: str) -> list[Form]:
    p = FormParser()
    p.feed(html)
    return p.forms


class User:
    """A person with a browser: cookies, redirects within fhirgate, form filling. Every step is
    recorded in `steps` (method, URL, status) to explain failures."""

    def __init__(self, server: Fhirgate, username: str, password: str) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.http = requests.Session()
        self.steps: list[str] = []

    def _send(self, method: str, url: str, data=None) -> requests.Response:
        r = self.http.request(method, url, data=data, allow_redirects=False, timeout=30)
        self.steps.append(f"{method} {url} -> {r.status_code} {r.headers.get('location', '')}")
        frame = r.headers.get("x-frame-options", "").upper()
        csp = r.headers.get("content-security-policy", "")
        if r.headers.get("content-type", "").startswith("text/html"):
            assert frame == "DENY" or "frame-ancestors 'none'" in csp, \
                f"{url}: HTML page that can be framed ({r.headers})"
        return r

    def authorize(self, url: str, consent=None) -> str:
        """Open the authorization URL, sign in and allow; return the URL the server finally
        redirects to outside itself (the app's redirect_uri with code and state, or an error).

        `consent(scopes) -> scopes` may change which of the consent page's scopes stay ticked."""
        r = self._send("GET", url)
        for _ in range(10):
            if r.is_redirect:
                target = urljoin(r.url, r.headers["location"])
                if not target.startswith(self.server.base + "/"):
                    return target                      # left fhirgate: the app's redirect_uri
                r = self._send("GET", target)
                continue
            assert r.status_code == 200, f"{r.url} answered {r.status_code}: {r.text}\n{self.trace()}"
            forms = [f for f in forms_of(r.text) if f.method == "post"]
            assert forms, f"no form on {r.url}:\n{r.text}\n{self.trace()}"
            form = forms[0]
            data = list(form.fields)
            if "password" in form.names():               # login page
                data = [(n, v) for n, v in data if n not in ("username", "password")]
                data += [("username", self.username), ("password", self.password)]
            else:                                        # consent (or patient picker) page
                assert ("decision", "allow") in form.buttons, f"no allow button:\n{r.text}"
                ticked = [(n, v) for n, v, on in form.checkboxes if on]
                if consent is not None:
                    scopes = consent([v for n, v in ticked if n == "scope"])
                    ticked = [(n, v) for n, v in ticked if n != "scope"]
                    ticked += [("scope", s) for s in scopes]
                data += ticked + [("decision", "allow")]
            r = self._send("POST", urljoin(r.url, form.action), data=data)
        raise AssertionError(f"too many steps:\n{self.trace()}")

    def trace(self) -> str:
        return "\n".join(self.steps)
