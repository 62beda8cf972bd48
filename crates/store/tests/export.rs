//! What Bulk Data `$export` needs from the store, on both backends: keyset scans that page
//! through every match of a search exactly once (compartment and filters applied), deletions in
//! a time window, and the job records with their conditional status changes.

mod common;

use std::sync::Arc;

use fhirgate_store::{ExportJob, JobStatus, JobUpdate, SearchQuery, Store, now_secs};
use serde_json::json;

suite!(
    keyset_scans_page_through_every_match_once,
    deletions_are_listed_by_window,
    job_records_change_status_only_from_what_they_expect
);

fn obs(i: usize, patient: &str, category: &str) -> serde_json::Value {
    json!({"resourceType": "Observation", "id": format!("o{i:05}"), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"text": "x"}, "subject": {"reference": format!("Patient/{patient}")}})
}

/// Pages of `limit` after the last key until a short page: every match once, keys increasing.
async fn scan_all(s: &Arc<dyn Store>, q: &SearchQuery, limit: usize) -> Vec<String> {
    let mut after = 0;
    let mut ids = Vec::new();
    loop {
        let page = s.scan(q, after, limit).await.unwrap();
        for row in &page {
            assert!(row.key > after, "keys increase");
            after = row.key;
            let v: serde_json::Value = serde_json::from_str(&row.json).unwrap();
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        if page.len() < limit {
            return ids;
        }
    }
}

async fn keyset_scans_page_through_every_match_once(s: Arc<dyn Store>) {
    let all: Vec<_> = (0..2500)
        .map(|i: usize| {
            let p = if i.is_multiple_of(3) { "pa" } else { "pb" };
            obs(
                i,
                p,
                if i.is_multiple_of(2) {
                    "laboratory"
                } else {
                    "vital-signs"
                },
            )
        })
        .collect();
    s.upsert_all(all).await.unwrap();
    let mut want: Vec<String> = (0..2500).map(|i| format!("o{i:05}")).collect();
    let mut got = scan_all(&s, &SearchQuery::new("Observation"), 1000).await;
    got.sort();
    assert_eq!(got, want);
    // the compartment and a filter, as the search would apply them
    let mut q = SearchQuery::from_pairs("Observation", [("category", "laboratory")]).unwrap();
    q.patient_compartment = Some("pa".into());
    let mut got = scan_all(&s, &q, 100).await;
    got.sort();
    want.retain(|id| {
        let i: usize = id[1..].parse().unwrap();
        i.is_multiple_of(3) && i.is_multiple_of(2)
    });
    assert_eq!(got, want);
    let mut search = q.clone();
    search.count = Some(1000);
    assert_eq!(s.search(&search).await.unwrap().matches.len(), want.len());
    // the scanned text is what a read returns
    let first = s.scan(&q, 0, 1).await.unwrap().remove(0);
    let v: serde_json::Value = serde_json::from_str(&first.json).unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        s.read_raw("Observation", id).await.unwrap().json,
        first.json
    );
}

async fn deletions_are_listed_by_window(s: Arc<dyn Store>) {
    s.upsert_all((0..30).map(|i| obs(i, "pa", "laboratory")).collect())
        .await
        .unwrap();
    let before = s.read("Observation", "o00000").await.unwrap()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for i in 0..25 {
        s.delete("Observation", &format!("o{i:05}")).await.unwrap();
    }
    // pages of 10 after the last key: 25 deletions, each with its last live version
    let mut after = 0;
    let mut ids = Vec::new();
    loop {
        let page = s
            .scan_deleted("Observation", &before, None, after, 10)
            .await
            .unwrap();
        for d in &page {
            assert!(d.key > after);
            after = d.key;
            assert_eq!(d.last_live.as_ref().unwrap()["id"], d.id.as_str());
            ids.push(d.id.clone());
        }
        if page.len() < 10 {
            break;
        }
    }
    assert_eq!(ids.len(), 25);
    // a window that ends before the deletions holds none
    let none = s
        .scan_deleted("Observation", "2000-01-01T00:00:00Z", Some(&before), 0, 100)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(
        s.scan_deleted("Observation", "not-an-instant", None, 0, 10)
            .await
            .is_err()
    );
}

async fn job_records_change_status_only_from_what_they_expect(s: Arc<dyn Store>) {
    let now = now_secs();
    let job = ExportJob {
        id: "j1".into(),
        base: "http://x/smart".into(),
        client: "app".into(),
        user: Some("u1".into()),
        request: "http://x/smart/$export".into(),
        params: json!({"level": "system"}),
        status: JobStatus::Queued,
        progress: None,
        transaction_time: "2024-01-01T00:00:00.000Z".into(),
        error: None,
        manifest: None,
        lease_owner: Some("p1".into()),
        heartbeat: Some(now),
        created: now,
        updated: now,
        expires: None,
    };
    s.export_job_create(&job).await.unwrap();
    assert_eq!(s.export_job("j1").await.unwrap(), Some(job.clone()));
    assert_eq!(s.export_job("nope").await.unwrap(), None);
    let run = JobUpdate {
        status: Some(JobStatus::Running),
        ..JobUpdate::default()
    };
    assert!(
        s.export_job_update("j1", &[JobStatus::Queued], &run)
            .await
            .unwrap()
    );
    // a cancel wins over the worker's completion
    let cancel = JobUpdate {
        status: Some(JobStatus::Cancelled),
        ..JobUpdate::default()
    };
    assert!(
        s.export_job_update("j1", &[JobStatus::Running], &cancel)
            .await
            .unwrap()
    );
    let done = JobUpdate {
        status: Some(JobStatus::Completed),
        manifest: Some(json!({"output": []})),
        ..JobUpdate::default()
    };
    assert!(
        !s.export_job_update("j1", &[JobStatus::Running], &done)
            .await
            .unwrap()
    );
    let j = s.export_job("j1").await.unwrap().unwrap();
    assert_eq!((j.status, j.manifest), (JobStatus::Cancelled, None));
    assert_eq!(
        s.export_jobs_with(&[JobStatus::Cancelled])
            .await
            .unwrap()
            .len(),
        1
    );
    // stored output: chunks in order; removed with the job
    s.export_output_append("j1", "Patient.ndjson", 1, "{\"a\":1}\n")
        .await
        .unwrap();
    s.export_output_append("j1", "Patient.ndjson", 2, "{\"a\":2}\n")
        .await
        .unwrap();
    let chunks = s
        .export_output_chunks("j1", "Patient.ndjson", 0, 10)
        .await
        .unwrap();
    assert_eq!(chunks.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        s.export_output_chunks("j1", "Patient.ndjson", 1, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    s.export_job_delete("j1").await.unwrap();
    assert_eq!(s.export_job("j1").await.unwrap(), None);
    assert!(
        s.export_output_chunks("j1", "Patient.ndjson", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
