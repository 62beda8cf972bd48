//! A server for load tests: the root core.edn on a fresh SQLite store with one patient and a few
//! resources, served exactly as `fhirgate serve` does (token check, AccessPolicy, compartment,
//! store), and one printed access token signed with the server's keys. It lets `wrk` measure the
//! whole authorized read path next to a static route.
//!
//!     cargo run --release -p fhirgate --example load_target -- 127.0.0.1:8099
//!     wrk -t2 -c32 -d10s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8099/smart/Patient/pt-1

use fhirgate_auth::tokens::AccessClaims;
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
    // the patient's User (linked through fhirUser): the token below is hers; the root project's
    // seeded `fhirgate-patient-access` policy lets tokens with a patient in context through
    seed.push(
        json!({"resourceType": "User", "id": "amy", "fhirUser": {"reference": "Patient/pt-1"}}),
    );
    store.upsert_all(seed).await?;
    let registry = fhirgate::registry();
    let core = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../core.edn");
    let project = fhirgate::load_project(&core, &registry).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let mut options = fhirgate::server::ServeOptions::new(base);
    options.root_secret = Some(fhirgate_auth::tokens::random_id()?);
    let prepared = fhirgate::server::prepare(&project, store, &options)
        .await
        .map_err(anyhow::Error::msg)?;
    // a token signed by the server's own (persisted) keys, as its token endpoint would issue
    let mut claims = AccessClaims::new(
        base,
        &format!("{base}/smart"),
        "load",
        "launch/patient patient/*.rs",
        24 * 3600,
    )?;
    claims.sub = "amy".into();
    claims.patient = Some("pt-1".into());
    println!("{}", prepared.auth.verifier().issue(&claims)?);
    let app = prepared.app;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
