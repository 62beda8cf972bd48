//! Seeds as an operator uses them: a project's `aidbox/seed` service and `--seed` files are
//! upserted when `fhirgate serve` starts, idempotently; a broken seed stops startup.

mod common;

use common::process::{free_port, wait_listening};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ROOT_SECRET: &str = "seed-test-root-secret";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    c.env_remove("FHIRGATE_CONFIG")
        .env_remove("FHIRGATE_SEED")
        .env("FHIRGATE_ROOT_SECRET", ROOT_SECRET);
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A project whose seed service declares a policy, a user with a password and a patient (type
/// map form), plus a resource file named in `:files`.
fn project(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("seeds")).unwrap();
    std::fs::write(
        dir.join("seeds/orgs.ndjson"),
        "{\"resourceType\":\"Organization\",\"id\":\"org-1\",\"name\":\"Clinic\"}\n",
    )
    .unwrap();
    let core = dir.join("core.edn");
    std::fs::write(
        &core,
        r#"{ns core
 import #{zenbox aidbox}
 root-api {:zen/tags #{zenbox/api} "health-ish" {:GET {:action :smart.fhir/style :public true}}}
 seed
 {:zen/tags #{aidbox/service}
  :engine aidbox/seed
  :files ["seeds/orgs.ndjson"]
  :resources
  {:AccessPolicy {:seeded-policy {:engine :matcho :matcho {:jwt {:scope "present?"}} :tags #{:a}}}
   :User {:amy {:password "amy-pass" :email "amy@example.org" :fhirUser {:reference "Patient/pt-1"}}}
   "Patient" {"pt-1" {:name [{:family "Shaw" :given ["Amy"]}]}}}}}
"#,
    )
    .unwrap();
    core
}

struct Server {
    child: std::process::Child,
    base: String,
    log: PathBuf,
}

/// The database of the servers that `Server::start` starts.
const SQLITE: &str = "sqlite:data/db.sqlite";

impl Server {
    /// Start `serve` in `dir` (its database under it) with `extra` arguments and environment.
    fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_on(dir, SQLITE, extra, env)
    }

    /// [`Server::start`] on the database `db`.
    fn start_on(dir: &Path, db: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let log = dir.join(format!("serve-{port}.log"));
        let mut cmd = bin();
        cmd.current_dir(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", db])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        if let Err(why) = wait_listening(port, &mut child, Duration::from_secs(30)) {
            panic!(
                "{why}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Admin REST `GET` as root, or as `user:secret`.
    fn get(&self, path: &str, user: (&str, &str)) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{}{path}", self.base))
                .basic_auth(user.0, Some(user.1))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        })
    }

    /// Admin REST `PUT` as root.
    fn root_put(&self, path: &str, body: &Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = rt.block_on(async {
            reqwest::Client::new()
                .put(format!("{}{path}", self.base))
                .basic_auth("root", Some(ROOT_SECRET))
                .json(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(status, 200, "PUT {path}");
    }

    fn root_get(&self, path: &str) -> Value {
        let (status, body) = self.get(path, ("root", ROOT_SECRET));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// SIGTERM; the server's log.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "SIGTERM exits 0");
                break;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn versions(s: &Server, refs: &[&str]) -> Vec<String> {
    refs.iter()
        .map(|r| {
            s.root_get(&format!("/{r}"))["meta"]["versionId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn project_and_file_seeds_are_upserted_at_start_idempotently() {
    let dir = common::tempdir("seed");
    let core = project(&dir);
    std::fs::write(
        dir.join("clients.yaml"),
        "- resourceType: Client\n  id: app\n  secret: app-secret\n  grant_types: [basic]\n- resourceType: Practitioner\n  id: pr-1\n  name: [{family: Who}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("more.json"),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:5b4d0a8e-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Location", "name": "Ward"}}]})
        .to_string(),
    )
    .unwrap();
    let args = [
        "--config",
        core.to_str().unwrap(),
        "--seed",
        "clients.yaml",
        "--seed",
        "more.json",
    ];
    let all = [
        "AccessPolicy/seeded-policy",
        "User/amy",
        "Patient/pt-1",
        "Organization/org-1",
        "Client/app",
        "Practitioner/pr-1",
        "Location/5b4d0a8e-0000-4000-8000-000000000001",
    ];

    let s = Server::start(&dir, &args, &[]);
    let policy = s.root_get("/AccessPolicy/seeded-policy");
    assert_eq!(policy["engine"], "matcho", "keywords become strings");
    assert_eq!(policy["tags"], json!(["a"]), "sets become arrays");
    let user = s.root_get("/User/amy");
    assert_eq!(user["email"], "amy@example.org");
    assert!(
        user.get("password").is_none() && user.get("password_hash").is_none(),
        "write-only: {user}"
    );
    assert_eq!(
        user["fhirUser"],
        json!({"reference": "Patient/pt-1", "resourceType": "Patient", "id": "pt-1"}),
        "references of fhirgate's own types are enriched"
    );
    assert_eq!(s.root_get("/Patient/pt-1")["name"][0]["family"], "Shaw");
    assert_eq!(s.root_get("/Organization/org-1")["name"], "Clinic");
    assert_eq!(s.root_get("/Practitioner/pr-1")["name"][0]["family"], "Who");
    assert_eq!(
        s.root_get("/Location/5b4d0a8e-0000-4000-8000-000000000001")["name"],
        "Ward",
        "a Bundle entry without id takes its urn:uuid"
    );
    // the seeded client's secret was stored hashed and verifies: the client authenticates (no
    // AccessPolicy opens admin REST to it: 403), a wrong secret does not (401)
    assert_eq!(s.get("/Patient/pt-1", ("app", "app-secret")).0, 403);
    assert_eq!(s.get("/Patient/pt-1", ("app", "wrong")).0, 401);
    let before = versions(&s, &all);
    let log = s.stop();
    assert!(log.contains("7 written, 0 unchanged"), "{log}");

    // the password is stored as an argon2 hash, never in clear
    let db = format!("sqlite:{}/data/db.sqlite", dir.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored = rt.block_on(async {
        let store = fhirgate_store::open(&db).await.unwrap();
        store.read("User", "amy").await.unwrap()
    });
    assert!(stored.get("password").is_none(), "{stored}");
    let hash = stored["password_hash"].as_str().unwrap();
    assert!(hash.starts_with("$argon2"), "{hash}");
    assert!(fhirgate_auth::secrets::verify_hash("amy-pass", hash));

    // a second start with the same seeds (the files through FHIRGATE_SEED) changes nothing
    let s = Server::start(
        &dir,
        &["--config", core.to_str().unwrap()],
        &[("FHIRGATE_SEED", "clients.yaml,more.json")],
    );
    assert_eq!(versions(&s, &all), before, "no new versions on restart");
    let log = s.stop();
    assert!(log.contains("0 written, 7 unchanged"), "{log}");

    // a changed seed is written again (a new version of that resource only)
    std::fs::write(
        dir.join("clients.yaml"),
        "- resourceType: Client\n  id: app\n  secret: app-secret\n  grant_types: [basic]\n- resourceType: Practitioner\n  id: pr-1\n  name: [{family: Else}]\n",
    )
    .unwrap();
    let s = Server::start(&dir, &args, &[]);
    assert_eq!(
        s.root_get("/Practitioner/pr-1")["name"][0]["family"],
        "Else"
    );
    let after = versions(&s, &all);
    let changed: Vec<&str> = all
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(r, _)| *r)
        .collect();
    assert_eq!(changed, vec!["Practitioner/pr-1"]);
    assert_eq!(s.get("/Patient/pt-1", ("app", "app-secret")).0, 403);
    s.stop();
}

fn serve_once(dir: &Path, args: &[&str]) -> Output {
    bin()
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--database-url", "sqlite:data/db.sqlite"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_broken_seed_stops_startup_with_one_clear_line() {
    let dir = common::tempdir("seed-bad");
    let core = project(&dir);
    let core = core.to_str().unwrap();
    std::fs::write(
        dir.join("bad.yaml"),
        "- resourceType: Patient\n  id: [oops\n",
    )
    .unwrap();
    std::fs::write(dir.join("noid.json"), r#"[{"resourceType": "Patient"}]"#).unwrap();
    std::fs::write(dir.join("bad.edn"), "{:Patient {:p1 {:x 1/2}}}").unwrap();
    std::fs::write(
        dir.join("badsecret.yaml"),
        "- {resourceType: User, id: u, password: 5}\n",
    )
    .unwrap();
    for (file, want) in [
        ("bad.yaml", "fhirgate: seed bad.yaml: malformed YAML"),
        ("noid.json", "fhirgate: seed noid.json: a Patient has no id"),
        ("missing.json", "fhirgate: seed missing.json: "),
        (
            "bad.edn",
            "fhirgate: bad.edn:1:20: error: the ratio 1/2 has no JSON form",
        ),
        (
            "badsecret.yaml",
            "fhirgate: seed badsecret.yaml: User/u: User.password must be a non-empty string",
        ),
    ] {
        let out = serve_once(&dir, &["--config", core, "--seed", file]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        let err = text(&out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("INFO") && !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{file}: {err}");
        assert!(lines[0].starts_with(want), "{file}: {err}");
    }

    // all seeds are read and prepared before anything is written: nothing of those runs was
    // stored, the project's own seeds included
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = format!("sqlite:{}/data/db.sqlite", dir.display());
        let store = fhirgate_store::open(&db).await.unwrap();
        assert!(store.read("Patient", "pt-1").await.is_err());
        assert!(store.read("AccessPolicy", "seeded-policy").await.is_err());
    });

    // a broken project seed is a project error: file:line:col, as `check` prints it
    std::fs::write(
        dir.join("dup.edn"),
        "{ns dup import #{zenbox aidbox}\n root-api {:zen/tags #{zenbox/api}}\n s {:zen/tags #{aidbox/service} :engine aidbox/seed\n    :resources {:Patient {:a {} \"a\" {}}}}}\n",
    )
    .unwrap();
    let out = serve_once(&dir, &["--config", "dup.edn"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "dup.edn:4:33: error: duplicate seed resource Patient/a: already declared at dup.edn:4:27"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = bin()
        .current_dir(&dir)
        .args(["check", "dup.edn"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // check reports the seeds in its summary line
    let out = bin()
        .current_dir(&dir)
        .args(["check", core])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .ends_with(": ok, 1 routes from 1 API, 3 seed resources, 1 seed file, 0 warnings\n"),
        "{}",
        text(&out.stdout)
    );
}

/// A project seeding `resources` (EDN, the `:resources` map) and the resource files `files`.
fn write_project(dir: &Path, resources: &str, files: &[&str]) -> PathBuf {
    let core = dir.join("core.edn");
    let files: Vec<String> = files.iter().map(|f| format!("{f:?}")).collect();
    std::fs::write(
        &core,
        format!(
            r#"{{ns core
 import #{{zenbox aidbox}}
 root-api {{:zen/tags #{{zenbox/api}} "health-ish" {{:GET {{:action :smart.fhir/style :public true}}}}}}
 seed {{:zen/tags #{{aidbox/service}} :engine aidbox/seed :files [{}] :resources {resources}}}}}
"#,
            files.join(" ")
        ),
    )
    .unwrap();
    core
}

/// A fresh schema on the PostgreSQL server `FHIRGATE_TEST_POSTGRES_URL` names, as a database
/// URL; `None` (reported as not run) without one.
fn postgres_schema(test: &str) -> Option<String> {
    let url = match std::env::var("FHIRGATE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            common::not_run(
                test,
                "FHIRGATE_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway PostgreSQL and sets it)",
            );
            return None;
        }
    };
    let schema = format!("seed_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some(rt.block_on(common::fresh_postgres_schema(&url, &schema)))
}

/// The status of admin REST `GET path` as root.
fn status(s: &Server, path: &str) -> u16 {
    s.get(path, ("root", ROOT_SECRET)).0
}

/// Seeds the project no longer declares are deleted at start, unless they were changed since;
/// `--seed` files are never removed; the same seeds again write and delete nothing.
fn seeds_the_project_drops_are_removed(db: &str, dir: &Path) {
    std::fs::create_dir_all(dir.join("seeds")).unwrap();
    std::fs::write(
        dir.join("seeds/orgs.ndjson"),
        "{\"resourceType\":\"Organization\",\"id\":\"org-gone\",\"name\":\"Old clinic\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("operator.yaml"),
        "- resourceType: Practitioner\n  id: op-1\n  name: [{family: Who}]\n",
    )
    .unwrap();
    let policy = "{:engine :matcho :matcho {:jwt {:patient \"present?\"}}}";
    let all = write_project(
        dir,
        &format!(
            "{{:AccessPolicy {{:kept {policy} :gone {policy}}} :Patient {{:edited {{:active true}}}}}}"
        ),
        &["seeds/orgs.ndjson"],
    );
    let args = ["--config", all.to_str().unwrap(), "--seed", "operator.yaml"];
    let refs = [
        "AccessPolicy/kept",
        "AccessPolicy/gone",
        "Patient/edited",
        "Organization/org-gone",
        "Practitioner/op-1",
    ];
    let s = Server::start_on(dir, db, &args, &[]);
    let first = versions(&s, &refs);
    let log = s.stop();
    assert!(log.contains("5 written, 0 unchanged"), "{log}");

    // the same seeds again: nothing written, nothing removed
    let s = Server::start_on(dir, db, &args, &[]);
    assert_eq!(versions(&s, &refs), first, "no new versions on restart");
    // an operator edits one of the project's seeds through admin REST
    s.root_put(
        "/Patient/edited",
        &json!({"resourceType": "Patient", "id": "edited", "active": false}),
    );
    let log = s.stop();
    assert!(log.contains("0 written, 5 unchanged"), "{log}");
    assert!(!log.contains("removed"), "{log}");

    // the project now declares only AccessPolicy/kept, and the operator dropped `--seed`
    let only_kept = write_project(dir, &format!("{{:AccessPolicy {{:kept {policy}}}}}"), &[]);
    let args = ["--config", only_kept.to_str().unwrap()];
    let s = Server::start_on(dir, db, &args, &[]);
    assert_eq!(status(&s, "/AccessPolicy/gone"), 410, "dropped inline seed");
    assert_eq!(
        status(&s, "/Organization/org-gone"),
        410,
        "dropped :files seed"
    );
    assert_eq!(
        s.root_get("/Patient/edited")["active"],
        false,
        "changed since it was seeded: kept as edited"
    );
    assert_eq!(
        s.root_get("/Practitioner/op-1")["name"][0]["family"],
        "Who",
        "a --seed file's resources are the operator's: never removed"
    );
    let kept = versions(&s, &["AccessPolicy/kept"]);
    assert_eq!(kept[0], first[0]);
    let log = s.stop();
    assert!(
        log.contains(
            "removed 2 resources the project's seeds no longer declare: AccessPolicy/gone, Organization/org-gone"
        ),
        "{log}"
    );
    let warned = |log: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("Patient/edited") && l.contains("kept"))
    };
    assert!(warned(&log), "{log}");

    // and again: nothing written or removed, and the kept resource is no longer the seeds'
    let s = Server::start_on(dir, db, &args, &[]);
    assert_eq!(versions(&s, &["AccessPolicy/kept"]), kept);
    assert_eq!(s.root_get("/Patient/edited")["active"], false);
    let log = s.stop();
    assert!(log.contains("0 written, 1 unchanged"), "{log}");
    assert!(!log.contains("removed"), "{log}");
    assert!(!warned(&log), "{log}");
}

#[test]
fn seeds_the_project_drops_are_removed_sqlite() {
    let dir = common::tempdir("seed-sync");
    seeds_the_project_drops_are_removed(SQLITE, &dir);
}

#[test]
fn seeds_the_project_drops_are_removed_postgres() {
    let Some(db) = postgres_schema("seeds_the_project_drops_are_removed_postgres") else {
        return;
    };
    let dir = common::tempdir("seed-sync-pg");
    seeds_the_project_drops_are_removed(&db, &dir);
}
