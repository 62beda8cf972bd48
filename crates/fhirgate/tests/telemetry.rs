//! Issue 16 §1–2 over loopback, against a real `fhirgate serve`: request ids in responses,
//! OperationOutcomes and JSON log lines; `/metrics` parsed by a Prometheus text parser
//! (`openmetrics-parser`'s grammar of the Prometheus text format), behind admin authentication on the main address and open on
//! `--metrics-listen`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::process::{Serve, free_port, wait_listening};
use serde_json::Value;

const ROOT_SECRET: &str = "telemetry-root-secret-0123456789";

/// One sample: its labels and value (a counter's, or a histogram's buckets as (le, count)).
struct Sample {
    metric: String,
    labels: std::collections::HashMap<String, String>,
    value: f64,
    buckets: Vec<(f64, f64)>,
}

fn scrape(text: &str) -> Vec<Sample> {
    use openmetrics_parser::{PrometheusValue, prometheus::parse_prometheus};
    let parsed = parse_prometheus(text).expect("the exposition parses as Prometheus text");
    let mut out = Vec::new();
    for (name, family) in &parsed.families {
        for s in family.iter_samples() {
            let labels = s
                .get_labelset()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let (value, buckets) = match &s.value {
                PrometheusValue::Counter(c) => (c.value.as_f64(), vec![]),
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => (n.as_f64(), vec![]),
                PrometheusValue::Histogram(h) => (
                    h.count.unwrap_or(0) as f64,
                    h.buckets
                        .iter()
                        .map(|b| (b.upper_bound, b.count.as_f64()))
                        .collect(),
                ),
                PrometheusValue::Summary(_) => (f64::NAN, vec![]),
            };
            out.push(Sample {
                metric: name.clone(),
                labels,
                value,
                buckets,
            });
        }
    }
    out
}

#[tokio::test]
async fn request_ids_json_logs_and_metrics() {
    let dir = common::tempdir("telemetry");
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut serve = Serve::start(
        &dir,
        &[
            "--log-format",
            "json",
            "--metrics-listen",
            &metrics_listen,
            "--login-failures-per-user",
            "2",
        ],
        &[
            ("FHIRGATE_ROOT_SECRET", ROOT_SECRET),
            ("RUST_LOG", "info,tower_http=debug"),
        ],
    );
    wait_listening(metrics_port, &mut serve.child, Duration::from_secs(10)).unwrap();
    let base = serve.base.clone();
    let http = reqwest::Client::new();

    // a request id the client chose (a FHIR id) comes back, and names the OperationOutcome
    let r = http
        .get(format!("{base}/smart/Patient/pt-secret-123"))
        .header("x-request-id", "client-chosen-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-request-id"], "client-chosen-1");
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["id"], "client-chosen-1", "{outcome}");

    // one that is not a FHIR id is replaced by the server's own
    let r = http
        .get(format!("{base}/no/such/route"))
        .header("x-request-id", "not an id!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let given = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(given, "not an id!");
    assert!(
        !given.is_empty()
            && given.len() <= 64
            && given
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
        "a FHIR id of the server's: {given}"
    );
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["id"], given.as_str());

    // without one, every response gets its own
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let r = http.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        ids.insert(r.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 3);
    let r = http
        .get(format!("{base}/smart/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // token requests: one issued, one refused, and client authentication failures until throttled
    let client = serde_json::json!({"resourceType": "Client", "id": "svc", "secret": "svc-secret",
        "grant_types": ["client_credentials"], "scope": "system/Patient.rs"});
    let r = http
        .put(format!("{base}/Client/svc"))
        .basic_auth("root", Some(ROOT_SECRET))
        .json(&client)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let token = |secret: &'static str| {
        http.post(format!("{base}/auth/token"))
            .basic_auth("svc", Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "system/Patient.rs"),
            ])
            .send()
    };
    let issued: Value = token("svc-secret").await.unwrap().json().await.unwrap();
    let access = issued["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    // a data request: decided (allowed or refused by AccessPolicy), and the store is timed
    let r = http
        .get(format!("{base}/smart/Patient?_count=1"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert!([200, 403].contains(&r.status().as_u16()), "{}", r.status());
    let decided = if r.status() == 200 {
        "allow"
    } else {
        "deny-policy"
    };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(token("wrong").await.unwrap().status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 429],
        "two failures allowed a minute, then throttled"
    );

    // /metrics on the main address: admin authentication
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/metrics"))
        .basic_auth("root", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/metrics"))
        .basic_auth("root", Some(ROOT_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let main = scrape(&r.text().await.unwrap());

    // and open on --metrics-listen
    let r = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let open = scrape(&r.text().await.unwrap());

    for s in [&main, &open] {
        let count = |route: &str, status: &str| -> f64 {
            s.iter()
                .filter(|x| x.metric == "fhirgate_http_requests_total")
                .filter(|x| {
                    x.labels.get("route").map(String::as_str) == Some(route)
                        && x.labels.get("status").map(String::as_str) == Some(status)
                        && x.labels.get("method").map(String::as_str) == Some("GET")
                })
                .map(|x| x.value)
                .sum()
        };
        assert_eq!(count("/health", "2xx"), 3.0);
        assert_eq!(count("/smart/Patient/{id}", "4xx"), 1.0);
        assert_eq!(count("/smart/metadata", "2xx"), 1.0);
        assert_eq!(count("unmatched", "4xx"), 1.0);
        // labels never carry ids or paths: the id asked for appears nowhere
        for x in s {
            for v in x.labels.values() {
                assert!(!v.contains("pt-secret-123"), "{}: {v}", x.metric);
                assert!(!v.contains("no/such"), "{}: {v}", x.metric);
            }
        }
        let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
            s.iter()
                .filter(|x| x.metric == metric)
                .filter(|x| {
                    labels
                        .iter()
                        .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|x| x.value)
                .sum()
        };
        let tokens = "fhirgate_token_requests_total";
        let cc = ("grant_type", "client_credentials");
        assert_eq!(value(tokens, &[cc, ("outcome", "issued")]), 1.0);
        assert_eq!(value(tokens, &[cc, ("outcome", "refused")]), 2.0);
        assert_eq!(value(tokens, &[cc, ("outcome", "throttled")]), 1.0);
        assert_eq!(
            value("fhirgate_throttled_total", &[("kind", "client-auth")]),
            1.0
        );
        assert_eq!(
            value("fhirgate_access_decisions_total", &[("outcome", decided)]),
            1.0
        );
        let timed = |op: &str| {
            s.iter().any(|x| {
                x.metric == "fhirgate_store_operation_duration_seconds"
                    && x.labels.get("backend").map(String::as_str) == Some("sqlite")
                    && x.labels.get("op").map(String::as_str) == Some(op)
                    && x.value >= 1.0
            })
        };
        for op in ["read", "search", "update", "upsert"] {
            assert!(timed(op), "no store timing of {op}");
        }
        assert!(
            s.iter()
                .any(|x| x.metric == "fhirgate_store_pool_connections"
                    && x.labels.get("state").map(String::as_str) == Some("in_use")),
            "pool gauges"
        );
        // latency histograms with buckets, by the same labels
        let hist = s
            .iter()
            .find(|x| {
                x.metric == "fhirgate_http_request_duration_seconds"
                    && x.labels.get("route").map(String::as_str) == Some("/health")
            })
            .expect("a latency histogram for /health");
        assert_eq!(hist.value, 3.0, "its count");
        assert!(hist.buckets.len() >= 10, "{:?}", hist.buckets);
        assert_eq!(hist.buckets.last(), Some(&(f64::INFINITY, 3.0)));
    }

    // stop; every stderr line is a JSON object, and the request's lines name its id
    let log = serve.stop();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    let of_request: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == "client-chosen-1")
        .collect();
    assert!(
        !of_request.is_empty(),
        "no line names the request id:\n{log}"
    );
    assert!(
        of_request
            .iter()
            .all(|l| l["span"]["path"] == "/smart/Patient/pt-secret-123"
                && l["span"]["method"] == "GET"),
        "{of_request:?}"
    );
    assert!(
        of_request
            .iter()
            .any(|l| l["fields"]["status"] == 401 && l["fields"]["latency"].is_string()),
        "the response line, with status and latency: {of_request:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"].is_string()),
        "{log}"
    );
}
