//! `fhirgate serve --demo` as a newcomer runs it: a fresh folder, no flags but `--demo` (and a
//! free port): it prints where to go and the credentials, the demo app completes a standalone
//! launch and an EHR launch against its own server, a second start seeds nothing new, and without
//! `--demo` there is no `/demo`.

mod common;

use common::process::{free_port, wait_listening};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::{Browser, Page};
use serde_json::{Value, json};

/// A running `fhirgate serve`; its stdout (the banner) and stderr (the log) collected.
struct Serve {
    child: Child,
    base: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    fn start(dir: &Path, extra: &[&str]) -> Serve {
        Serve::start_on(free_port(), dir, extra)
    }

    fn start_on(port: u16, dir: &Path, extra: &[&str]) -> Serve {
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .arg("serve")
            .args(extra)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--base-url",
                &base,
            ])
            .current_dir(dir)
            .env_remove("FHIRGATE_CONFIG")
            .env_remove("FHIRGATE_DATABASE_URL")
            .env_remove("FHIRGATE_DEMO")
            .env_remove("FHIRGATE_SEED")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&mut r);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    b.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        if let Err(why) = wait_listening(port, &mut child, Duration::from_secs(60)) {
            std::thread::sleep(Duration::from_millis(100)); // the reader thread's last lines
            panic!("{why}:\n{}", stderr.lock().unwrap());
        }
        Serve {
            child,
            base,
            stdout,
            stderr,
        }
    }

    fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until stdout holds the whole banner (it ends with a rule after "Backend services").
    fn banner(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.out();
            if let Some(i) = out.find("Backend services")
                && out[i..].contains("\n----")
            {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "no banner; stdout:\n{out}\nstderr:\n{}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "SIGTERM exits 0");
                return;
            }
            assert!(Instant::now() < deadline, "fhirgate did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `label` on the banner line that starts with it.
fn banner_field<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in\n{banner}"))
        .trim()
}

/// The `NAME / PASSWORD` pair on a banner line.
fn credentials(line: &str) -> (String, String) {
    let mut words = line.split_whitespace();
    let user = words.next().unwrap().to_string();
    assert_eq!(words.next(), Some("/"), "{line}");
    (user, words.next().unwrap().to_string())
}

/// Sign in on the login page we were sent to, allow everything on the consent page, and follow
/// the redirect back to the demo app.
async fn sign_in_and_allow(b: &mut Browser, page: Page, user: &str, password: &str) -> Page {
    assert!(page.body.contains("name=\"username\""), "{}", page.body);
    let consent = b.login_follow(&page, user, password).await;
    assert!(
        consent.body.contains("value=\"allow\""),
        "consent page: {}",
        consent.body
    );
    let back = b.consent(&consent, "allow", None, false).await;
    assert_eq!(back.status, 302, "{}", back.body);
    assert!(
        back.location
            .as_deref()
            .is_some_and(|l| l.starts_with(&format!("{}/demo/callback?", b.base))),
        "{:?}",
        back.location
    );
    b.follow(back).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_from_a_fresh_folder() {
    let dir = common::tempdir("demo");
    let started = Instant::now();
    let serve = Serve::start(&dir, &["--demo"]);
    let banner = serve.banner();
    eprintln!("first start took {:?}", started.elapsed());
    let base = serve.base.clone();

    // where to go, and the credentials
    assert_eq!(banner_field(&banner, "FHIR base"), format!("{base}/smart"));
    assert_eq!(
        banner_field(&banner, "SMART discovery"),
        format!("{base}/smart/.well-known/smart-configuration")
    );
    assert_eq!(
        banner_field(&banner, "OIDC discovery"),
        format!("{base}/.well-known/openid-configuration")
    );
    let (patient_user, patient_password) = credentials(banner_field(&banner, "Users"));
    let doctor_line = banner
        .lines()
        .skip_while(|l| !l.starts_with("Users"))
        .nth(1)
        .unwrap();
    let (doctor_user, doctor_password) = credentials(doctor_line);
    assert_eq!(
        (patient_user.as_str(), doctor_user.as_str()),
        ("patient", "doctor")
    );
    let launch_line = banner_field(&banner, "Standalone launch");
    let demo_url = launch_line
        .strip_prefix("open ")
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_eq!(demo_url, format!("{base}/demo"));
    assert!(banner.contains(&format!("{base}/auth/apps")), "{banner}");
    assert!(banner.contains("aidbox.smart/get-launch-uri"), "{banner}");
    // the default database was created in the working folder
    assert!(dir.join("data/fhirgate.db").exists());
    assert!(
        serve
            .err()
            .contains("the demo data (--demo): 69 written, 0 unchanged"),
        "{}",
        serve.err()
    );

    // the start page, and its form's target: a standalone launch
    let mut b = Browser::new(&base);
    let start = b.get(demo_url).await;
    assert_eq!(start.status, 200);
    assert_eq!(
        start.form_action(),
        Some(format!("{base}/demo/standalone")),
        "{}",
        start.body
    );
    assert_eq!(start.headers["x-frame-options"], "DENY");
    let to_authorize = b
        .get(&format!("/demo/standalone?iss={base}/smart&client=demo-public&scope=openid+fhirUser+launch/patient+patient/*.rs"))
        .await;
    assert_eq!(to_authorize.status, 302);
    let q = to_authorize.redirect_params();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["aud"], format!("{base}/smart"));
    assert_eq!(q["redirect_uri"], format!("{base}/demo/callback"));
    assert!(q["state"].len() >= 43);
    let login = b.follow(to_authorize).await;
    let result = sign_in_and_allow(&mut b, login, &patient_user, &patient_password).await;
    assert_eq!(result.status, 200, "{}", result.body);
    assert!(
        result
            .body
            .contains("<span id=\"patient-name\">Rosa María Delgado</span>"),
        "{}",
        result.body
    );
    assert!(
        result
            .body
            .contains("&quot;resourceType&quot;: &quot;Patient&quot;"),
        "the Patient read with the token is shown"
    );
    assert!(
        result.body.contains("characters)"),
        "tokens are abbreviated"
    );

    // a callback this browser did not start is refused
    let mut stranger = Browser::new(&base);
    let forged = stranger.get("/demo/callback?code=x&state=not-mine").await;
    assert_eq!(forged.status, 400);
    assert!(forged.body.contains("State mismatch"), "{}", forged.body);
    // the demo app talks to this server's FHIR bases only
    let foreign = stranger
        .get("/demo/launch?iss=http://evil.example/fhir&launch=x")
        .await;
    assert_eq!(foreign.status, 400);
    assert!(foreign.body.contains("not a FHIR base"), "{}", foreign.body);

    // EHR launch: the "EHR" (the confidential demo client, allowed by a demo AccessPolicy) asks
    // for a launch URI; the doctor opens it, signs in and allows; the app gets James
    let http = reqwest::Client::new();
    let rpc: Value = http
        .post(format!("{base}/rpc"))
        .basic_auth("demo-confidential", Some("demo-confidential-secret"))
        .json(&json!({"method": "aidbox.smart/get-launch-uri", "params": {
            "user": doctor_user, "client": "demo-public", "iss": format!("{base}/smart"),
            "ctx": {"patient": "james-okafor"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uri = rpc["result"]["uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{rpc}"));
    assert!(
        uri.starts_with(&format!("{base}/demo/launch?iss=")),
        "{uri}"
    );
    let mut doctor = Browser::new(&base);
    let login = doctor.open(uri).await;
    let result = sign_in_and_allow(&mut doctor, login, &doctor_user, &doctor_password).await;
    assert!(
        result
            .body
            .contains("<span id=\"patient-name\">James Chidi Okafor</span>"),
        "{}",
        result.body
    );
    assert!(result.body.contains("EHR launch"), "{}", result.body);

    // the printed backend-services curl works
    let bundle = common::demo_backend_patients(&http, &base).await;
    assert_eq!(
        bundle["entry"].as_array().map(Vec::len),
        Some(3),
        "{bundle}"
    );
    let version = |b: &Value| {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["id"] == "rosa-delgado")
            .unwrap()["resource"]["meta"]["versionId"]
            .clone()
    };
    let rosa_version = version(&bundle);
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    serve.stop();

    // a second start (same folder, same base URL) seeds nothing new
    let again = Serve::start_on(port, &dir, &["--demo"]);
    again.banner();
    assert!(
        again
            .err()
            .contains("the demo data (--demo): 0 written, 69 unchanged"),
        "{}",
        again.err()
    );
    let bundle: Value = http
        .get(format!("{}/smart/Patient", again.base))
        .bearer_auth(
            http.post(format!("{}/auth/token", again.base))
                .basic_auth("demo-confidential", Some("demo-confidential-secret"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "system/Patient.rs"),
                ])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["access_token"]
                .as_str()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version(&bundle), rosa_version, "no new version");
    again.stop();

    // without --demo: the data stays, /demo is not served, nothing is printed
    let plain = Serve::start(&dir, &[]);
    let mut b = Browser::new(&plain.base);
    for path in [
        "/demo",
        "/demo/standalone",
        "/demo/launch",
        "/demo/callback",
    ] {
        assert_eq!(b.get(path).await.status, 404, "{path}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!plain.out().contains("fhirgate demo"), "{}", plain.out());
    plain.stop();
}

#[test]
fn a_project_cannot_declare_demo() {
    let dir = common::tempdir("demo-shadow");
    std::fs::write(
        dir.join("core.edn"),
        "{ns core import #{zenbox}\n root-api {:zen/tags #{zenbox/api}\n  \"demo\" {:GET {:action :smart.fhir/capability :public true}}}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "core.edn"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/demo is a built-in fhirgate route"), "{err}");
}

/// The errors a newcomer meets first are one line each with `--demo` too, and a busy port stops
/// startup before anything is written (a root secret printed by a failed run would be lost).
#[test]
fn first_run_errors_are_one_line_and_write_nothing() {
    let dir = common::tempdir("demo-errors");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .arg("serve")
            .arg("--demo")
            .args(args)
            .current_dir(&dir)
            .env_remove("FHIRGATE_CONFIG")
            .env_remove("FHIRGATE_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // the embedded-project note, then exactly one error line
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("using the embedded default project"))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        lines[0].to_string()
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = run(&["--listen", &addr]);
    assert!(
        err.contains("the address is in use") && err.contains("--listen"),
        "{err}"
    );
    assert!(!dir.join("data").exists(), "nothing written on a busy port");

    let err = run(&["--base-url", "localhost:8080"]);
    assert!(err.contains("must start with http://"), "{err}");

    let blocker = dir.join("file");
    std::fs::write(&blocker, "").unwrap();
    let err = run(&[
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &format!("sqlite:{}/data/db.sqlite", blocker.display()),
    ]);
    assert!(
        err.contains("cannot create the data directory") && err.contains("--database-url"),
        "{err}"
    );
}
