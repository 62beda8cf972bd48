//! A server for load tests: the root core.edn on a fresh SQLite store with one patient and a few
//! resources, a token verifier whose keys live in this process, and one printed access token.
//! Not a product feature (it mints its own token); it lets `wrk` measure the whole authorized
//! read path next to a static route.
//!
//!     cargo run --release -p fhirgate --example load_target -- 127.0.0.1:8099
//!     wrk -t2 -c32 -d10s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8099/smart/Patient/pt-1

use std::sync::Arc;

use fhirgate_auth::keys::Keyring;
use fhirgate_auth::tokens::{AccessClaims, TokenVerifier};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let base = "http://localhost:8080";
    let dir = std::env::temp_dir().join(format!("fhirgate-load-target-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = fhirgate_store::open(&format!("sqlite:{}/db.sqlite", dir.display())).await?;
    let mut seed = vec![
        json!({"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw", "given": ["Amy"]}], "gender": "female", "birthDate": "1987-02-20"}),
    ];
    for i in 0..200 {
        seed.push(json!({"resourceType": "Observation", "id": format!("obs-{i}"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": if i % 2 == 0 { "laboratory" } else { "vital-signs" }}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]}, "subject": {"reference": "Patient/pt-1"},
            "effectiveDateTime": format!("2024-01-{:02}", i % 28 + 1)}));
    }
    store.upsert_all(seed).await?;
    let verifier = Arc::new(TokenVerifier::new(Arc::new(Keyring::generate()?), base));
    let registry = fhirgate::registry_with(&fhirgate_smart::Setup {
        verifier: Some(verifier.clone()),
        store: Some(store.clone()),
        base_url: base.into(),
    });
    let core = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../core.edn");
    let project = fhirgate::load_project(&core, &registry).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let settings = fhirgate::Settings {
        base_url: base.into(),
        store: Some(store),
        ..fhirgate::Settings::default()
    };
    let app = fhirgate::build_app(&settings, &project, &registry)?;
    let mut claims = AccessClaims::new(
        base,
        &format!("{base}/smart"),
        "load",
        "launch/patient patient/*.rs",
        24 * 3600,
    );
    claims.patient = Some("pt-1".into());
    println!("{}", verifier.issue(&claims)?);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
