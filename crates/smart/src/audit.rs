//! The audit trail of data access decisions: always one structured `tracing` event (target
//! `fhirgate::audit`), and, when enabled, a FHIR `AuditEvent` resource in the store.
//!
//! Writing AuditEvents must never slow down or fail the request it records: events go through a
//! bounded channel to one background task that stores them in batches (one transaction per
//! batch). When the channel is full (the store cannot keep up) events are dropped and counted,
//! and the count is logged; the `tracing` event is emitted either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fhirgate_store::Store;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Events waiting to be written at most.
const QUEUE: usize = 10_000;
/// Events per transaction at most.
const BATCH: usize = 500;

/// One access decision.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The user (or the client, for backend services).
    pub who: String,
    pub client: String,
    pub patient: Option<String>,
    pub resource_type: String,
    /// `read`, `search-type` or `history-instance` (FHIR restful-interaction codes).
    pub interaction: &'static str,
    /// The resource id for instance interactions.
    pub id: Option<String>,
    /// The request path and query.
    pub query: String,
    pub allowed: bool,
    /// The AccessPolicy that allowed it, or why it was refused.
    pub detail: String,
}

impl AccessRecord {
    /// `principal`'s request (who, client, patient from the token), as decided.
    pub fn of(
        principal: &crate::enforce::Principal,
        resource_type: &str,
        interaction: &'static str,
        id: Option<String>,
        query: String,
        allowed: bool,
        detail: String,
    ) -> AccessRecord {
        AccessRecord {
            who: principal.subject.clone(),
            client: principal.client_id.clone(),
            patient: principal.patient.clone(),
            resource_type: resource_type.to_string(),
            interaction,
            id,
            query,
            allowed,
            detail,
        }
    }
}

/// Writes [`AccessRecord`]s as AuditEvent resources.
pub struct AuditSink {
    tx: mpsc::Sender<AccessRecord>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Start the background writer on `store` (must be called within a tokio runtime).
    pub fn start(store: Arc<dyn Store>) -> Arc<AuditSink> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_batches(store, rx, dropped.clone()));
        Arc::new(AuditSink { tx, dropped })
    }

    /// Queue one record; never waits.
    pub fn record(&self, r: AccessRecord) {
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<AccessRecord>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let resources: Vec<Value> = batch.drain(..).map(|r| audit_event(&r)).collect();
        let n = resources.len();
        if let Err(e) = store.upsert_all(resources).await {
            tracing::error!(target: "fhirgate::audit", "{n} AuditEvents could not be stored: {e}");
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(target: "fhirgate::audit", "{lost} AuditEvents were dropped: the store could not keep up");
        }
        // let a burst gather into fewer transactions
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_instant() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The record as an R4 AuditEvent (type `rest`, subtype the interaction).
pub fn audit_event(r: &AccessRecord) -> Value {
    let who = if r.who == r.client {
        json!({"reference": format!("Client/{}", r.client)})
    } else {
        json!({"reference": format!("User/{}", r.who)})
    };
    let mut entity = vec![json!({
        "what": match &r.id {
            Some(id) => json!({"reference": format!("{}/{id}", r.resource_type)}),
            None => json!({"display": r.resource_type}),
        },
        "query": base64_of(&r.query),
    })];
    if let Some(p) = &r.patient {
        entity.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    json!({
        "resourceType": "AuditEvent",
        "id": fhirgate_uuid(),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": r.interaction}],
        "action": if r.interaction == "search-type" { "E" } else { "R" },
        "recorded": now_instant(),
        "outcome": if r.allowed { "0" } else { "4" },
        "outcomeDesc": r.detail,
        "agent": [
            {"who": who, "requestor": true},
            {"who": {"reference": format!("Client/{}", r.client)}, "requestor": false},
        ],
        "source": {"observer": {"display": "fhirgate"}},
        "entity": entity,
    })
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn fhirgate_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_events_are_r4_shaped() {
        let e = audit_event(&AccessRecord {
            who: "amy".into(),
            client: "app".into(),
            patient: Some("pt-1".into()),
            resource_type: "Observation".into(),
            interaction: "search-type",
            id: None,
            query: "/smart/Observation?category=laboratory".into(),
            allowed: true,
            detail: "fhirgate-smart-api".into(),
        });
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["subtype"][0]["code"], "search-type");
        assert_eq!(e["action"], "E");
        assert_eq!(e["outcome"], "0");
        assert_eq!(e["agent"][0]["who"]["reference"], "User/amy");
        assert_eq!(e["entity"][1]["what"]["reference"], "Patient/pt-1");
        assert_eq!(base64_of("ab"), "YWI=");
        assert_eq!(base64_of("abc"), "YWJj");
        let r = e["recorded"].as_str().unwrap();
        assert!(
            r.len() == 24 && r.ends_with('Z') && r.starts_with("20"),
            "{r}"
        );
        assert_ne!(fhirgate_uuid(), fhirgate_uuid());
    }
}
