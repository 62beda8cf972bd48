//! The `fhirgate` binary as a user runs it: check, routes, serve.

mod common;

use common::process::{free_port, wait_listening};
use common::shared_or_not_run;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fhirgate"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str], dir: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(dir)
        .env_remove("FHIRGATE_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `fhirgate check FILE` passes, with no error on stderr.
fn assert_check_passes(f: &Path) {
    let out = run(&["check", f.to_str().unwrap()], &repo());
    assert!(
        out.status.success(),
        "{}: {}",
        f.display(),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(": ok, "),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stderr).contains("error:"));
}

#[test]
fn check_passes_on_every_shipped_project() {
    for f in [
        repo().join("core.edn"),
        repo().join("project-samples/patient-access/core.edn"),
        repo().join("project-samples/provider-launch/core.edn"),
        repo().join("project-samples/multi-file/clinic/main.edn"),
    ] {
        assert_check_passes(&f);
    }
    // with no argument, check reads ./core.edn
    let out = run(&["check"], &repo());
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with("core.edn: ok, 99 routes"),
        "{}",
        text(&out.stdout)
    );
}

/// Aidbox's own sample projects (outside the repository, `../shared/aidbox`), unmodified.
#[test]
fn check_passes_on_aidbox_projects() {
    let Some(shared) = shared_or_not_run("check_passes_on_aidbox_projects") else {
        return;
    };
    let aidbox = shared.join("aidbox/smart-on-fhir");
    assert_check_passes(&aidbox.join("core.edn"));
    assert_check_passes(&aidbox.join("aidbox/patient-access-smart-api/sample.edn"));
}

#[test]
fn check_reports_every_error_with_path_line_col_and_exits_1() {
    let dir = tempdir();
    let f = dir.join("core.edn");
    std::fs::write(
        &f,
        "{ns core import #{zenbox}\n root-api {:zen/tags #{zenbox/api}\n  \"x\" {:GET {:action :smart.fhir/nope}}\n  \"y\" {:GET {:action :smart.fhir/read}}}}\n",
    )
    .unwrap();
    let out = run(&["check", "core.edn"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            "core.edn:3:22: error: unknown action :smart.fhir/nope",
            "core.edn:4:22: error: action :smart.fhir/read needs :resource/type (or a [:resource/type] path parameter)",
        ]
    );
    assert!(out.stdout.is_empty());

    std::fs::write(
        &f,
        "{ns core\n import #{zenbox}\n root-api {:zen/tags #{zenbox/api}\n",
    )
    .unwrap();
    let out = run(&["check", "--config", "core.edn"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("core.edn:4:1: error: unexpected end of input"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["check", "missing.edn"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("missing.edn:1:1: error: cannot read file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn routes_prints_the_table() {
    let out = run(&["routes"], &repo());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/smart/Patient/{id}"))
        .unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        vec![
            "GET",
            "/smart/Patient/{id}",
            "smart.fhir/read",
            "smart.fhir/authorization-middleware",
            "-"
        ]
    );
    let meta = table
        .lines()
        .find(|l| l.contains("/smart/metadata"))
        .unwrap();
    assert_eq!(
        meta.split_whitespace().collect::<Vec<_>>(),
        vec![
            "GET",
            "/smart/metadata",
            "smart.fhir/capability",
            "-",
            "public"
        ]
    );
    assert_eq!(table.lines().count(), 99);

    let out = run(
        &[
            "routes",
            "--json",
            "--config",
            "project-samples/patient-access/core.edn",
        ],
        &repo(),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/patient/fhir/Patient/{id}")
        .unwrap();
    assert_eq!(
        read["middlewares"],
        serde_json::json!(["smart.fhir/single-patient-auth-middleware"])
    );
    assert_eq!(read["mount"], "/patient/fhir");
    assert_eq!(read["public"], false);
}

struct Server {
    child: std::process::Child,
    base: String,
}

impl Server {
    fn start(config: &Path) -> Server {
        Server::start_in(Path::new("."), config)
    }

    /// [`Server::start`] with `dir` as the working directory (where `data/` goes).
    fn start_in(dir: &Path, config: &Path) -> Server {
        let port = free_port();
        let mut child = bin()
            .current_dir(dir)
            .args([
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        if let Err(why) = wait_listening(port, &mut child, Duration::from_secs(20)) {
            let mut log = String::new();
            if let Some(mut err) = child.stderr.take() {
                use std::io::Read;
                let _ = err.read_to_string(&mut log);
            }
            panic!("{why}: {log}");
        }
        Server { child, base }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }

    /// SIGTERM, then the exit status.
    fn stop(self) -> std::process::ExitStatus {
        self.stop_with_log().0
    }

    /// SIGTERM, then the exit status and what the server wrote on stderr.
    fn stop_with_log(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut log = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use std::io::Read;
            let _ = err.read_to_string(&mut log);
        }
        (status, log)
    }
}

#[test]
fn serve_answers_declared_routes_and_stops_cleanly() {
    let server = Server::start(&repo().join("core.edn"));
    assert_eq!(
        server.get("/health"),
        (200, "{\"status\":\"pass\"}".to_string())
    );
    let (s, body) = server.get("/smart/metadata");
    assert_eq!(s, 200, "public op reaches its action: {body}");
    assert!(body.contains("CapabilityStatement"), "{body}");
    let (s, body) = server.get("/smart/Observation?patient=pt-1");
    assert_eq!(s, 401, "protected op requires a token: {body}");
    assert!(body.contains("OperationOutcome"));
    assert_eq!(
        server.get("/smart/Observation?nonsense=1").0,
        401,
        "authentication comes before the params check"
    );
    assert_eq!(server.get("/nope").0, 404);
    assert!(server.stop().success(), "SIGTERM exits 0");
}

#[test]
fn serve_runs_aidbox_samples_unmodified() {
    let Some(shared) = shared_or_not_run("serve_runs_aidbox_samples_unmodified") else {
        return;
    };
    for entry in [
        "aidbox/smart-on-fhir/core.edn",
        "aidbox/smart-on-fhir/aidbox/patient-access-smart-api/sample.edn",
    ] {
        let server = Server::start(&shared.join(entry));
        assert_eq!(
            server.get("/smart/.well-known/smart-configuration").0,
            200,
            "{entry}"
        );
        assert_eq!(server.get("/smart/Patient/pt-1").0, 401, "{entry}");
        assert!(server.stop().success());
    }
}

/// The same for the project's own samples (each FHIR base: public discovery, a protected read).
#[test]
fn serve_runs_the_project_samples() {
    for (entry, fhir_bases) in [
        (
            "project-samples/patient-access/core.edn",
            &["/patient/fhir"][..],
        ),
        ("project-samples/provider-launch/core.edn", &["/ehr"][..]),
        (
            "project-samples/multi-file/clinic/main.edn",
            &["/v1/patient", "/v1/provider"][..],
        ),
    ] {
        let server = Server::start_in(&tempdir(), &repo().join(entry));
        for fhir in fhir_bases {
            assert_eq!(
                server
                    .get(&format!("{fhir}/.well-known/smart-configuration"))
                    .0,
                200,
                "{entry} {fhir}"
            );
            assert_eq!(
                server.get(&format!("{fhir}/Patient/pa-1")).0,
                401,
                "{entry} {fhir}"
            );
        }
        assert!(server.stop().success());
    }
}

#[test]
fn serve_refuses_a_bad_project_or_base_url() {
    let dir = tempdir();
    std::fs::write(dir.join("core.edn"), "{ns core import #{zenbox}\n root-api {:zen/tags #{zenbox/api} \"x\" {:GET {:action :bad/action}}}}").unwrap();
    let out = run(&["serve", "--listen", "127.0.0.1:0"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("core.edn:2:55: error: unknown action :bad/action"),
        "{}",
        text(&out.stderr)
    );

    let out = bin()
        .args(["serve", "--base-url", "http://localhost:8080/"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("must not end with '/'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_explains_a_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin()
        .args(["serve", "--listen", &addr])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("the address is in use"), "{err}");
    let _ = std::io::stderr().flush();
}

fn tempdir() -> PathBuf {
    common::tempdir("cli")
}

#[test]
fn without_a_core_edn_the_embedded_default_is_used() {
    let dir = tempdir();
    let out = run(&["check"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("using the embedded default project"));
    assert!(
        text(&out.stdout).starts_with("core.edn: ok, 99 routes"),
        "{}",
        text(&out.stdout)
    );
    // an explicit file that does not exist is an error, not the default
    let out = run(&["check", "other.edn"], &dir);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn serve_explains_an_unusable_database() {
    let dir = tempdir();
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, "a file where the data directory should be").unwrap();
    let url = format!("sqlite:{}/data/fhirgate.db", blocker.display());
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot create the data directory"), "{err}");

    let port = free_port(); // nothing listens there
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot open the PostgreSQL database")
            && err.contains("is the server running"),
        "{err}"
    );
}

/// decisions §11: `check` warns (exit 0) when protected routes exist and the project seeds no
/// AccessPolicy — every request to them would be refused — and is quiet once a seed has one.
#[test]
fn check_warns_when_no_seeded_access_policy_can_allow_the_protected_routes() {
    let out = run(
        &["check", "project-samples/patient-access/core.edn"],
        &repo(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("no AccessPolicy among the project's seeds"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(
        line.starts_with("project-samples/patient-access/core.edn:")
            && line
                .contains(": warning: 10 protected routes (the first: GET /patient/fhir/Patient)"),
        "{line}"
    );
    assert!(
        text(&out.stdout).ends_with("1 warning\n"),
        "{}",
        text(&out.stdout)
    );

    // the same project seeding a policy: no warning
    let dir = tempdir();
    let project =
        std::fs::read_to_string(repo().join("project-samples/patient-access/core.edn")).unwrap();
    let seeded = project.replacen(
        "import #{zenbox hl7-fhir-r4-core}",
        "import #{zenbox aidbox hl7-fhir-r4-core}
 seed {:zen/tags #{aidbox/service} :engine aidbox/seed
       :resources {:AccessPolicy {:any-token {:engine :matcho :matcho {:jwt {:scope \"present?\"}}}}}}",
        1,
    );
    assert_ne!(seeded, project);
    std::fs::write(dir.join("core.edn"), &seeded).unwrap();
    let out = run(&["check", "core.edn"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("no AccessPolicy"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("1 seed resource, 0 warnings"),
        "{}",
        text(&out.stdout)
    );
    // the root core.edn seeds one
    let out = run(&["check", "core.edn"], &repo());
    assert!(out.status.success());
    assert!(
        !text(&out.stderr).contains("no AccessPolicy"),
        "{}",
        text(&out.stderr)
    );
    // serve says it at start too, when the store has none either
    let dir = tempdir();
    std::fs::copy(
        repo().join("project-samples/patient-access/core.edn"),
        dir.join("core.edn"),
    )
    .unwrap();
    let server = Server::start_in(&dir, &dir.join("core.edn"));
    assert_eq!(server.get("/health").0, 200, "serving");
    let (status, log) = server.stop_with_log();
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.contains(
            "10 protected routes (the first: GET /patient/fhir/Patient) and no AccessPolicy"
        ) && log.contains("the store holds no valid AccessPolicy either"),
        "{log}"
    );
}

/// issue 12 §5: `check` refuses a seeded Client with no secret, jwks or jwks_uri that does not
/// say `secret_required: false` — inline (with its position) and in a seed file.
#[test]
fn check_refuses_a_client_without_credentials_that_does_not_say_it_is_public() {
    let dir = tempdir();
    let project = |clients: &str, files: &str| {
        format!(
            "{{ns core import #{{zenbox aidbox}}\n root-api {{:zen/tags #{{zenbox/api}} \"x\" {{:GET {{:action :smart.fhir/style}}}}}}\n seed {{:zen/tags #{{aidbox/service}} :engine aidbox/seed\n       :resources {{:Client {{{clients}}}}}{files}}}}}\n"
        )
    };
    std::fs::write(
        dir.join("core.edn"),
        project(
            ":app {:auth {:authorization_code {:redirect_uri \"http://app.test/cb\"}}}",
            "",
        ),
    )
    .unwrap();
    let out = run(&["check", "core.edn"], &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "core.edn:4:29: error: Client/app: a Client needs a secret, jwks or jwks_uri"
        ) && err.contains("auth.authorization_code.secret_required: false"),
        "{err}"
    );

    std::fs::write(
        dir.join("core.edn"),
        project(
            ":app {:auth {:authorization_code {:redirect_uri \"http://app.test/cb\" :secret_required false}}}",
            "\n       :files [\"clients.json\"]",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("clients.json"),
        r#"[{"resourceType": "Client", "id": "other", "grant_types": ["authorization_code"]}]"#,
    )
    .unwrap();
    let out = run(&["check", "core.edn"], &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("clients.json: error: Client/other: a Client needs"),
        "{err}"
    );

    std::fs::write(
        dir.join("clients.json"),
        r#"[{"resourceType": "Client", "id": "other", "secret": "s"}]"#,
    )
    .unwrap();
    let out = run(&["check", "core.edn"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
