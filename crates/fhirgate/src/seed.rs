//! Seeds: resources the project (its `aidbox/seed` services) or the operator (`--seed PATH`)
//! wants present when `fhirgate serve` starts.
//!
//! Every seed is read and prepared before anything is written, and all of them are upserted in
//! one transaction: a seed that does not parse or does not load stops startup with the store
//! untouched. Sources apply in order — the project's inline resources, the project's `:files`,
//! then each `--seed` file — and a later one wins for a resource two of them name. Resources go
//! through what admin REST does for fhirgate's own types (write-only `secret`/`password` hashed,
//! references enriched), and a resource equal to the stored one — ignoring `meta.versionId` and
//! `meta.lastUpdated`, and keeping the stored hash when it verifies the given secret — is not
//! written again, so restarting with the same seeds creates no new versions. Seeding is an
//! upsert, not a sync: a resource removed from the seeds stays in the store, and one changed
//! through admin REST is set back to its seed at the next start.

use std::collections::HashMap;
use std::path::PathBuf;

use fhirgate_config::Project;
use fhirgate_smart::access::{POLICIES_CHANGED, POLICY_TYPES};
use fhirgate_store::{Store, StoreError};
use serde_json::Value;

use crate::admin::prepare_resource;

/// Resources from one place, upserted together.
#[derive(Debug, Clone)]
pub struct SeedSource {
    /// Where they come from, for messages: the project's entry file or a seed file's path.
    pub label: String,
    pub resources: Vec<Value>,
}

/// What seeding did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seeded {
    /// Resources written (new, or different from the stored version).
    pub written: usize,
    /// Resources already stored exactly so.
    pub unchanged: usize,
}

/// Read every seed of `project` and every file of `files` (`--seed`), without writing anything.
/// The error is one line per problem, naming the file.
pub fn read_seeds(project: &Project, files: &[PathBuf]) -> Result<Vec<SeedSource>, String> {
    let mut out = Vec::new();
    if !project.seeds.is_empty() {
        out.push(SeedSource {
            label: project.entry.display().to_string(),
            resources: project.seeds.clone(),
        });
    }
    for path in project.seed_files.iter().chain(files) {
        let resources = crate::load::read_seed_file(path).map_err(|e| match e {
            // already `PATH:LINE:COL: error: …`
            crate::load::LoadError::Edn(diags) => diags,
            other => format!("seed {other}"),
        })?;
        // inline EDN seeds get this check, with positions, when the project loads
        let lacking: Vec<String> = resources
            .iter()
            .filter(|r| fhirgate_config::client_lacks_credentials(r))
            .map(|r| {
                format!(
                    "{}: error: Client/{}: {}",
                    path.display(),
                    r["id"].as_str().unwrap_or_default(),
                    fhirgate_config::CLIENT_NEEDS_CREDENTIALS
                )
            })
            .collect();
        if !lacking.is_empty() {
            return Err(lacking.join("\n"));
        }
        out.push(SeedSource {
            label: path.display().to_string(),
            resources,
        });
    }
    Ok(out)
}

/// Upsert `sources` in one transaction, skipping resources stored exactly so.
pub async fn apply(store: &dyn Store, sources: Vec<SeedSource>) -> Result<Seeded, String> {
    // a later source wins for a resource two of them name
    let mut order: Vec<(String, String)> = Vec::new();
    let mut latest: HashMap<(String, String), (String, Value)> = HashMap::new();
    for source in sources {
        for resource in source.resources {
            let rt = resource["resourceType"].as_str().unwrap_or_default();
            let id = resource["id"].as_str().unwrap_or_default();
            if !valid_type(rt) {
                return Err(format!(
                    "seed {}: {rt:?} is not a resource type",
                    source.label
                ));
            }
            if !valid_id(id) {
                return Err(format!(
                    "seed {}: {rt}/{id:?}: not a valid id (1 to 64 letters, digits, '-' and '.')",
                    source.label
                ));
            }
            let key = (rt.to_string(), id.to_string());
            if !latest.contains_key(&key) {
                order.push(key.clone());
            }
            latest.insert(key, (source.label.clone(), resource));
        }
    }
    let mut changed = Vec::new();
    let mut seeded = Seeded::default();
    for key in order {
        let Some((label, mut resource)) = latest.remove(&key) else {
            continue;
        };
        let (rt, id) = key;
        let previous = match store.read(&rt, &id).await {
            Ok(v) => Some(v),
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => None,
            Err(e) => return Err(format!("seed {label}: cannot read {rt}/{id}: {e}")),
        };
        prepare_resource(&mut resource, previous.as_ref())
            .map_err(|e| format!("seed {label}: {rt}/{id}: {e}"))?;
        if previous.is_some_and(|p| same(&p, &resource)) {
            seeded.unchanged += 1;
        } else {
            changed.push(resource);
        }
    }
    seeded.written = changed.len();
    let policies = changed.iter().any(|r| {
        r["resourceType"]
            .as_str()
            .is_some_and(|t| POLICY_TYPES.contains(&t))
    });
    if !changed.is_empty() {
        store
            .upsert_all(changed)
            .await
            .map_err(|e| format!("seeding failed: {e}"))?;
    }
    // other processes reload their AccessPolicy snapshot when policies, users, roles or
    // clients changed (this one loads its snapshot after seeding)
    if policies && let Err(e) = store.auth_state().publish(POLICIES_CHANGED).await {
        tracing::warn!("could not tell other processes about seeded policies: {e}");
    }
    Ok(seeded)
}

/// Read and upsert every seed of `project` and `files`; log what it did.
pub async fn seed_all(
    store: &dyn Store,
    project: &Project,
    files: &[PathBuf],
) -> Result<Seeded, String> {
    seed_all_with(store, project, None, files).await
}

/// [`seed_all`] with `extra` (the demo data of `serve --demo`) applied after the project's own
/// seeds and before `files`, in the same transaction.
pub async fn seed_all_with(
    store: &dyn Store,
    project: &Project,
    extra: Option<SeedSource>,
    files: &[PathBuf],
) -> Result<Seeded, String> {
    retire_blanket_policy(store).await?;
    let mut sources = read_seeds(project, files)?;
    if let Some(extra) = extra {
        // read_seeds puts the files last
        let at = sources.len() - files.len();
        sources.insert(at, extra);
    }
    if sources.is_empty() {
        return Ok(Seeded::default());
    }
    let labels: Vec<String> = sources.iter().map(|s| s.label.clone()).collect();
    let seeded = apply(store, sources).await?;
    tracing::info!(
        "seeded from {}: {} written, {} unchanged",
        labels.join(", "),
        seeded.written,
        seeded.unchanged
    );
    Ok(seeded)
}

/// The id of the policy that earlier root projects seeded: "any valid SMART token" (issue 12).
pub const RETIRED_POLICY: &str = "fhirgate-smart-api";

/// Delete the blanket `fhirgate-smart-api` policy earlier versions seeded, when it is stored
/// exactly as they seeded it; one that was edited is kept, with a warning (its author meant
/// something by it). Returns whether it was deleted.
pub async fn retire_blanket_policy(store: &dyn Store) -> Result<bool, String> {
    let stored = match store.read("AccessPolicy", RETIRED_POLICY).await {
        Ok(v) => v,
        Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => return Ok(false),
        Err(e) => return Err(format!("cannot read AccessPolicy/{RETIRED_POLICY}: {e}")),
    };
    let as_seeded = stored["engine"] == "matcho"
        && stored["matcho"] == serde_json::json!({"jwt": {"scope": "present?"}})
        && stored.get("link").is_none()
        && stored.get("roleName").is_none()
        && stored.as_object().is_some_and(|o| {
            o.keys().all(|k| {
                matches!(
                    k.as_str(),
                    "resourceType" | "id" | "meta" | "engine" | "matcho" | "description"
                )
            })
        });
    if !as_seeded {
        tracing::warn!(
            "AccessPolicy/{RETIRED_POLICY} was edited and is kept; earlier versions seeded it to let any valid SMART token reach the SMART API, which the role-aware seeds now replace (docs/security.md)"
        );
        return Ok(false);
    }
    store
        .delete("AccessPolicy", RETIRED_POLICY)
        .await
        .map_err(|e| format!("cannot delete AccessPolicy/{RETIRED_POLICY}: {e}"))?;
    tracing::info!("deleted the retired blanket AccessPolicy/{RETIRED_POLICY}");
    Ok(true)
}

/// `Patient`, `AccessPolicy`: what the store accepts as a type name.
fn valid_type(t: &str) -> bool {
    t.len() <= 64
        && t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A FHIR id: 1 to 64 of `[A-Za-z0-9.-]`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Whether `stored` already is `given`, apart from the version stamp.
fn same(stored: &Value, given: &Value) -> bool {
    strip_stamp(stored.clone()) == strip_stamp(given.clone())
}

/// Without `meta.versionId` and `meta.lastUpdated` (and without `meta` if nothing else is left).
fn strip_stamp(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        let empty = match obj.get_mut("meta") {
            Some(Value::Object(meta)) => {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                meta.is_empty()
            }
            _ => false,
        };
        if empty {
            obj.remove("meta");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn store() -> std::sync::Arc<dyn Store> {
        let dir = std::env::temp_dir().join(format!(
            "fhirgate-seed-unit-{}",
            fhirgate_auth::tokens::random_id().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        fhirgate_store::open(&format!("sqlite:{}/db.sqlite", dir.display()))
            .await
            .unwrap()
    }

    fn source(resources: Vec<Value>) -> Vec<SeedSource> {
        vec![SeedSource {
            label: "test".into(),
            resources,
        }]
    }

    #[tokio::test]
    async fn a_second_run_with_the_same_seed_writes_nothing() {
        let store = store().await;
        let seed = vec![
            json!({"resourceType": "User", "id": "u1", "password": "pw", "email": "u@x"}),
            json!({"resourceType": "Role", "id": "r1", "name": "patient",
                   "user": {"reference": "User/u1"}}),
            json!({"resourceType": "Patient", "id": "p1", "meta": {"profile": ["http://x"]}}),
        ];
        let first = apply(store.as_ref(), source(seed.clone())).await.unwrap();
        assert_eq!(
            first,
            Seeded {
                written: 3,
                unchanged: 0
            }
        );
        let user = store.read("User", "u1").await.unwrap();
        assert!(user.get("password").is_none(), "{user}");
        let hash = user["password_hash"].as_str().unwrap().to_string();
        assert!(fhirgate_auth::secrets::verify_hash("pw", &hash));
        let role = store.read("Role", "r1").await.unwrap();
        assert_eq!(role["user"]["id"], "u1", "references are enriched");

        let again = apply(store.as_ref(), source(seed.clone())).await.unwrap();
        assert_eq!(
            again,
            Seeded {
                written: 0,
                unchanged: 3
            }
        );
        assert_eq!(
            store.read("User", "u1").await.unwrap()["meta"]["versionId"],
            user["meta"]["versionId"]
        );

        // a changed password is a new hash; a changed field is a new version
        let mut changed = seed;
        changed[0]["password"] = json!("other");
        changed[2]["active"] = json!(true);
        let third = apply(store.as_ref(), source(changed)).await.unwrap();
        assert_eq!(
            third,
            Seeded {
                written: 2,
                unchanged: 1
            }
        );
        let user = store.read("User", "u1").await.unwrap();
        assert!(fhirgate_auth::secrets::verify_hash(
            "other",
            user["password_hash"].as_str().unwrap()
        ));
    }

    #[tokio::test]
    async fn a_bad_secret_is_reported_and_nothing_is_written() {
        let store = store().await;
        let err = apply(
            store.as_ref(),
            source(vec![
                json!({"resourceType": "Patient", "id": "p1"}),
                json!({"resourceType": "Client", "id": "c", "secret": 5}),
            ]),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            "seed test: Client/c: Client.secret must be a non-empty string"
        );
        assert!(store.read("Patient", "p1").await.is_err());
    }

    #[tokio::test]
    async fn a_later_source_wins_and_bad_ids_name_their_file() {
        let store = store().await;
        let sources = vec![
            SeedSource {
                label: "core.edn".into(),
                resources: vec![json!({"resourceType": "Patient", "id": "p", "active": false})],
            },
            SeedSource {
                label: "extra.yaml".into(),
                resources: vec![json!({"resourceType": "Patient", "id": "p", "active": true})],
            },
        ];
        let done = apply(store.as_ref(), sources.clone()).await.unwrap();
        assert_eq!(
            done,
            Seeded {
                written: 1,
                unchanged: 0
            }
        );
        assert_eq!(store.read("Patient", "p").await.unwrap()["active"], true);
        let done = apply(store.as_ref(), sources).await.unwrap();
        assert_eq!(
            done,
            Seeded {
                written: 0,
                unchanged: 1
            }
        );

        let err = apply(
            store.as_ref(),
            vec![SeedSource {
                label: "x.json".into(),
                resources: vec![json!({"resourceType": "Patient", "id": "a b"})],
            }],
        )
        .await
        .unwrap_err();
        assert!(
            err.starts_with("seed x.json: Patient/\"a b\": not a valid id"),
            "{err}"
        );
    }
}
