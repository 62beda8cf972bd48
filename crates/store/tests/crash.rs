//! A writer killed with SIGKILL in the middle of a bulk load loses no acknowledged batch and
//! leaves no partial one, on both backends.
//!
//! The test re-runs its own binary as the writer (`crash_child`, ignored unless called with
//! `FHIRGATE_CRASH_CHILD_URL`), reads its "acked N" lines, kills it mid-batch, and then checks
//! every batch from a fresh store.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fhirgate_store::{SearchQuery, TotalMode, open};
use serde_json::json;

const BATCH: usize = 1000;

fn batch(i: usize) -> Vec<serde_json::Value> {
    (0..BATCH)
        .map(|k| {
            json!({"resourceType": "Patient", "id": format!("c{i}-{k}"), "meta": {"tag": [{"system": "urn:batch", "code": format!("b{i}")}]},
                   "name": [{"family": format!("Crash{k}")}], "birthDate": "2000-01-01"})
        })
        .collect()
}

/// The writer: loads batch after batch and reports each one once `upsert_all` returned.
#[tokio::test]
#[ignore = "run by the kill -9 tests as their child process"]
async fn crash_child() {
    let Ok(url) = std::env::var("FHIRGATE_CRASH_CHILD_URL") else {
        return;
    };
    let store = open(&url).await.expect("child opens the store");
    for i in 0.. {
        store.upsert_all(batch(i)).await.expect("batch");
        println!("acked {i}");
    }
}

async fn kill_mid_load(url: &str) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FHIRGATE_CRASH_CHILD_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("child stdout");
    let acked = tokio::task::spawn_blocking(move || {
        let mut last = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line
                .strip_prefix("acked ")
                .and_then(|n| n.trim().parse::<usize>().ok())
            {
                last = Some(n);
                if n >= 3 {
                    break;
                }
            }
        }
        last
    })
    .await
    .expect("reader")
    .expect("the writer acknowledged batches");
    // Part-way into the next batch's transaction.
    std::thread::sleep(Duration::from_millis(40));
    child.kill().expect("SIGKILL the writer");
    child.wait().expect("reap");

    let store = open(url).await.expect("reopen after the crash");
    let mut counts = Vec::new();
    for i in 0..acked + 3 {
        let mut q = SearchQuery::new("Patient").filter("_tag", None, &[&format!("urn:batch|b{i}")]);
        q.count = Some(0);
        q.total = TotalMode::Accurate;
        counts.push(store.search(&q).await.expect("count").total.expect("total"));
    }
    for (i, &c) in counts.iter().enumerate() {
        if i <= acked {
            assert_eq!(
                c, BATCH as u64,
                "acknowledged batch {i} lost rows: {counts:?}"
            );
        } else {
            assert!(
                c == 0 || c == BATCH as u64,
                "batch {i} is partial: {counts:?}"
            );
        }
    }
    // The data is usable, not just countable.
    let p = store
        .read("Patient", &format!("c{acked}-{}", BATCH - 1))
        .await
        .expect("last acked resource");
    assert_eq!(p["meta"]["versionId"], "1");
    store
        .upsert_all(batch(acked + 10))
        .await
        .expect("writes work after recovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_loses_no_acknowledged_batch() {
    let h = common::sqlite().await;
    let url = h.url.clone().expect("url");
    kill_mid_load(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_loses_no_acknowledged_batch() {
    let Some(h) = common::postgres().await else {
        return;
    };
    let url = h.url.clone().expect("url");
    kill_mid_load(&url).await;
}
