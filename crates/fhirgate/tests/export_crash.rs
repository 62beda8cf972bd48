//! Bulk Data jobs survive their process being killed (kill -9) the way issue 13 asks: the next
//! `fhirgate serve` on the same SQLite store fails the jobs it finds unfinished, with a reason,
//! and removes their partial files; a job that completed before the kill stays complete, its
//! files whole. Real processes of the `fhirgate` binary.

mod common;

use common::process::free_port;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn fhirgate(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    c.current_dir(dir)
        .env_remove("FHIRGATE_CONFIG")
        .env_remove("FHIRGATE_DATABASE_URL")
        .env_remove("FHIRGATE_DEMO")
        .env_remove("FHIRGATE_SEED")
        .env("FHIRGATE_ROOT_SECRET", "crash-root-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn serve(dir: &Path, port: u16) -> Child {
    fhirgate(dir)
        .args(["serve", "--demo", "--export-concurrency", "1"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--base-url", &format!("http://127.0.0.1:{port}")])
        .spawn()
        .unwrap()
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "fhirgate serve did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn token(http: &reqwest::Client, base: &str) -> String {
    let t: Value = http
        .post(format!("{base}/auth/token"))
        .basic_auth("demo-confidential", Some("demo-confidential-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_leaves_failed_jobs_never_partial_files() {
    let dir = common::tempdir("export-crash");
    // 40 patients with 1,000 Observations each, and a Group of them
    let mut data = std::fs::File::create(dir.join("data.ndjson")).unwrap();
    for p in 0..40 {
        writeln!(
            data,
            "{}",
            json!({"resourceType": "Patient", "id": format!("bp-{p}")})
        )
        .unwrap();
        for o in 0..1000 {
            writeln!(
                data,
                "{}",
                json!({"resourceType": "Observation", "id": format!("bo-{p}-{o}"), "status": "final",
                       "code": {"text": "heart rate"}, "subject": {"reference": format!("Patient/bp-{p}")}})
            )
            .unwrap();
        }
    }
    let members: Vec<Value> = (0..40)
        .map(|p| json!({"entity": {"reference": format!("Patient/bp-{p}")}}))
        .collect();
    writeln!(data, "{}", json!({"resourceType": "Group", "id": "bench", "type": "person", "actual": true, "member": members})).unwrap();
    drop(data);
    let loaded = fhirgate(&dir)
        .args(["load", "data.ndjson"])
        .status()
        .unwrap();
    assert!(loaded.success());

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut child = serve(&dir, port);
    wait_healthy(&http, &base).await;
    let t = token(&http, &base).await;
    // two jobs, one at a time (--export-concurrency 1): the second waits behind the first
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let r = http
            .get(format!("{base}/smart/Group/bench/$export"))
            .bearer_auth(&t)
            .header("prefer", "respond-async")
            .header("accept", "application/fhir+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        jobs.push(
            r.headers()["content-location"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let mut again = serve(&dir, port);
    wait_healthy(&http, &base).await;
    let t = token(&http, &base).await;
    let mut failed = 0;
    for status in &jobs {
        let job = status.rsplit('/').next().unwrap();
        let files = dir.join("data/exports").join(job);
        let r = http.get(status).bearer_auth(&t).send().await.unwrap();
        match r.status().as_u16() {
            500 => {
                failed += 1;
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["resourceType"], "OperationOutcome");
                let why = body["issue"][0]["diagnostics"].as_str().unwrap();
                assert!(why.contains("stopped before it completed"), "{why}");
                assert!(!files.exists(), "a failed job's files are removed");
            }
            200 => {
                // it completed before the kill: every listed file is whole
                let manifest: Value = r.json().await.unwrap();
                for o in manifest["output"].as_array().unwrap() {
                    let text = http
                        .get(o["url"].as_str().unwrap())
                        .bearer_auth(&t)
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    assert_eq!(text.lines().count() as u64, o["count"].as_u64().unwrap());
                }
            }
            other => panic!("{status}: {other} {}", r.text().await.unwrap()),
        }
    }
    assert!(
        failed >= 1,
        "the queued job, at least, was unfinished at the kill"
    );
    again.kill().unwrap();
    again.wait().unwrap();
}
