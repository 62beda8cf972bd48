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
//! written again, so restarting with the same seeds creates no new versions. A seed changed
//! through admin REST is set back to its seed at the next start.
//!
//! For the project's own seeds (inline and `:files`) seeding is a sync: an `auth_state` record
//! (kind `seed`) keeps the `Type/id` and version of each resource they left stored, and a
//! resource in it that no source declares any more is deleted in the same transaction — unless
//! it was changed since (its version moved on), which keeps it, with a warning, and stops
//! tracking it. `--seed` files and the demo data are not recorded: the operator passes them to
//! one start, and leaving a file off the command line is no decision to delete what it held. The
//! record lives outside the resources so that they stay as declared (no marker in `meta.tag` that
//! clients see and that every existing seed would need a new version for).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use fhirgate_config::Project;
use fhirgate_smart::access::{POLICIES_CHANGED, POLICY_TYPES};
use fhirgate_store::{Deletion, Store, StoreError};
use serde_json::Value;

use crate::admin::prepare_resource;

/// Resources from one place, upserted together.
#[derive(Debug, Clone)]
pub struct SeedSource {
    /// Where they come from, for messages: the project's entry file or a seed file's path.
    pub label: String,
    pub resources: Vec<Value>,
    /// Whether the project declares them (its inline resources and `:files`), so that they are
    /// removed once it no longer does; `--seed` files and the demo data are the operator's.
    pub project: bool,
}

/// What seeding did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seeded {
    /// Resources written (new, or different from the stored version).
    pub written: usize,
    /// Resources already stored exactly so.
    pub unchanged: usize,
    /// `Type/id` of the resources deleted because the project no longer declares them.
    pub removed: Vec<String>,
}

/// Read every seed of `project` and every file of `files` (`--seed`), without writing anything.
/// The error is one line per problem, naming the file.
pub fn read_seeds(project: &Project, files: &[PathBuf]) -> Result<Vec<SeedSource>, String> {
    let mut out = Vec::new();
    if !project.seeds.is_empty() {
        out.push(SeedSource {
            label: project.entry.display().to_string(),
            resources: project.seeds.clone(),
            project: true,
        });
    }
    let project_files = project.seed_files.iter().map(|p| (p, true));
    for (path, from_project) in project_files.chain(files.iter().map(|p| (p, false))) {
        let resources = crate::load::read_seed_file(path).map_err(|e| match e {
            // already `PATH:LINE:COL: error: …`
            crate::load::LoadError::Edn(diags) => diags,
            other => format!("seed {other}"),
        })?;
        // inline EDN seeds get this check, with positions, when the project loads
        let lacking: Vec<String> = resources
            .iter()
            .filter_map(|r| {
                fhirgate_config::client_problem(r).map(|problem| {
                    format!(
                        "{}: error: Client/{}: {problem}",
                        path.display(),
                        r["id"].as_str().unwrap_or_default(),
                    )
                })
            })
            .collect();
        if !lacking.is_empty() {
            return Err(lacking.join("\n"));
        }
        out.push(SeedSource {
            label: path.display().to_string(),
            resources,
            project: from_project,
        });
    }
    Ok(out)
}

/// The `auth_state` record (kind, key) listing what the project's seeds last left stored:
/// `{"Type/id": "versionId"}`. In the database, so every process and every restart sees it.
const RECORD_KIND: &str = "seed";
const RECORD_KEY: &str = "project";

/// Upsert `sources` and delete what the project seeded before but no longer declares, in one
/// transaction, skipping resources stored exactly so.
///
/// A resource is deleted only if it is still at the version the project's seeds left it at:
/// one changed since (through admin REST) is kept, with a warning, and no longer tracked.
pub async fn apply(store: &dyn Store, sources: Vec<SeedSource>) -> Result<Seeded, String> {
    // a later source wins for a resource two of them name
    let mut order: Vec<(String, String)> = Vec::new();
    let mut latest: HashMap<(String, String), (String, Value)> = HashMap::new();
    let mut from_project: HashSet<(String, String)> = HashSet::new();
    for source in sources {
        for resource in source.resources {
            let rt = resource["resourceType"].as_str().unwrap_or_default();
            let id = resource["id"].as_str().unwrap_or_default();
            if !fhirgate_fhir::is_valid_type_name(rt) {
                return Err(format!(
                    "seed {}: {rt:?} is not a resource type",
                    source.label
                ));
            }
            if !fhirgate_fhir::is_valid_id(id) {
                return Err(format!(
                    "seed {}: {rt}/{id:?}: not a valid id (1 to 64 letters, digits, '-' and '.')",
                    source.label
                ));
            }
            let key = (rt.to_string(), id.to_string());
            if source.project {
                from_project.insert(key.clone());
            }
            if !latest.contains_key(&key) {
                order.push(key.clone());
            }
            latest.insert(key, (source.label.clone(), resource));
        }
    }
    let declared: HashSet<(String, String)> = order.iter().cloned().collect();
    let recorded = read_record(store).await?;

    let mut changed = Vec::new();
    // the version each project seed is at after this run: known now for unchanged ones
    let mut versions: BTreeMap<String, String> = BTreeMap::new();
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
        match previous {
            Some(p) if same(&p, &resource) => {
                seeded.unchanged += 1;
                if from_project.contains(&(rt.clone(), id.clone())) {
                    versions.insert(format!("{rt}/{id}"), version_of(&p));
                }
            }
            _ => changed.push(resource),
        }
    }
    seeded.written = changed.len();

    // what the project seeded before and no one declares now
    let mut deletes = Vec::new();
    for (reference, version) in &recorded {
        let Some((rt, id)) = reference.split_once('/') else {
            continue;
        };
        if declared.contains(&(rt.to_string(), id.to_string())) {
            continue;
        }
        let stored = match store.read(rt, id).await {
            Ok(v) => v,
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => continue,
            Err(e) => return Err(format!("cannot read {reference}, a former seed: {e}")),
        };
        if version_of(&stored) == *version {
            deletes.push(Deletion {
                resource_type: rt.to_string(),
                id: id.to_string(),
                if_match: Some(version.clone()),
            });
        } else {
            tracing::warn!(
                "{reference} was seeded by the project, which no longer declares it, but was changed since: it is kept, and no longer managed by the seeds"
            );
        }
    }

    let policies = changed
        .iter()
        .filter_map(|r| r["resourceType"].as_str())
        .chain(deletes.iter().map(|d| d.resource_type.as_str()))
        .any(|t| POLICY_TYPES.contains(&t));
    seeded.removed = deletes
        .iter()
        .map(|d| format!("{}/{}", d.resource_type, d.id))
        .collect();
    if !changed.is_empty() || !deletes.is_empty() {
        // a deletion expects the version read above: a resource edited meanwhile fails the
        // whole transaction rather than being deleted
        let stored = store
            .upsert_and_delete(changed, deletes)
            .await
            .map_err(|e| format!("seeding failed: {e}"))?;
        for s in stored {
            if s.resource.is_some()
                && from_project.contains(&(s.resource_type.clone(), s.id.clone()))
            {
                versions.insert(format!("{}/{}", s.resource_type, s.id), s.version_id);
            }
        }
    }
    // after the transaction: if this fails, the old record stays, which can only keep a
    // resource that could have been deleted (its version no longer matches), never delete one
    if versions != recorded {
        write_record(store, &versions).await?;
    }
    // other processes reload their AccessPolicy snapshot when policies, users, roles or
    // clients changed (this one loads its snapshot after seeding)
    if policies && let Err(e) = store.auth_state().publish(POLICIES_CHANGED).await {
        tracing::warn!("could not tell other processes about seeded policies: {e}");
    }
    Ok(seeded)
}

/// `meta.versionId` of a stored resource.
fn version_of(v: &Value) -> String {
    v["meta"]["versionId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What the project's seeds left stored at the last start (empty before the first).
async fn read_record(store: &dyn Store) -> Result<BTreeMap<String, String>, String> {
    let record = store
        .auth_state()
        .get(RECORD_KIND, RECORD_KEY)
        .await
        .map_err(|e| format!("cannot read the record of seeded resources: {e}"))?;
    match record {
        None => Ok(BTreeMap::new()),
        Some(r) => serde_json::from_value(r.value)
            .map_err(|e| format!("the record of seeded resources is damaged: {e}")),
    }
}

async fn write_record(
    store: &dyn Store,
    versions: &BTreeMap<String, String>,
) -> Result<(), String> {
    let state = store.auth_state();
    let value = serde_json::json!(versions);
    let failed = |e: StoreError| format!("cannot record the seeded resources: {e}");
    if state
        .replace(RECORD_KIND, RECORD_KEY, &value, i64::MAX)
        .await
        .map_err(failed)?
    {
        return Ok(());
    }
    match state
        .insert(RECORD_KIND, RECORD_KEY, None, &value, i64::MAX)
        .await
    {
        // another process starting at the same time wrote it first: this one's is as good
        Err(StoreError::AlreadyExists { .. }) => state
            .replace(RECORD_KIND, RECORD_KEY, &value, i64::MAX)
            .await
            .map(|_| ())
            .map_err(failed),
        other => other.map_err(failed),
    }
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
    let labels: Vec<String> = sources.iter().map(|s| s.label.clone()).collect();
    // even with no seeds left: the project may have dropped all of them
    let seeded = apply(store, sources).await?;
    if !labels.is_empty() {
        tracing::info!(
            "seeded from {}: {} written, {} unchanged",
            labels.join(", "),
            seeded.written,
            seeded.unchanged
        );
    }
    if !seeded.removed.is_empty() {
        tracing::info!(
            "removed {} resources the project's seeds no longer declare: {}",
            seeded.removed.len(),
            seeded.removed.join(", ")
        );
    }
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
            project: true,
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
                unchanged: 0,
                ..Seeded::default()
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
                unchanged: 3,
                ..Seeded::default()
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
                unchanged: 1,
                ..Seeded::default()
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
                project: true,
            },
            SeedSource {
                label: "extra.yaml".into(),
                resources: vec![json!({"resourceType": "Patient", "id": "p", "active": true})],
                project: false,
            },
        ];
        let done = apply(store.as_ref(), sources.clone()).await.unwrap();
        assert_eq!(
            done,
            Seeded {
                written: 1,
                unchanged: 0,
                ..Seeded::default()
            }
        );
        assert_eq!(store.read("Patient", "p").await.unwrap()["active"], true);
        let done = apply(store.as_ref(), sources).await.unwrap();
        assert_eq!(
            done,
            Seeded {
                written: 0,
                unchanged: 1,
                ..Seeded::default()
            }
        );

        let err = apply(
            store.as_ref(),
            vec![SeedSource {
                label: "x.json".into(),
                resources: vec![json!({"resourceType": "Patient", "id": "a b"})],
                project: false,
            }],
        )
        .await
        .unwrap_err();
        assert!(
            err.starts_with("seed x.json: Patient/\"a b\": not a valid id"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn only_the_projects_seeds_are_removed_and_only_as_seeded() {
        let store = store().await;
        let run = |project: Vec<Value>, operator: Vec<Value>| {
            vec![
                SeedSource {
                    label: "core.edn".into(),
                    resources: project,
                    project: true,
                },
                SeedSource {
                    label: "--seed".into(),
                    resources: operator,
                    project: false,
                },
            ]
        };
        let a = json!({"resourceType": "AccessPolicy", "id": "a", "engine": "allow"});
        let b = json!({"resourceType": "AccessPolicy", "id": "b", "engine": "allow"});
        let c = json!({"resourceType": "Patient", "id": "c"});
        let o = json!({"resourceType": "Patient", "id": "o"});
        let done = apply(
            store.as_ref(),
            run(vec![a.clone(), b.clone(), c.clone()], vec![o.clone()]),
        )
        .await
        .unwrap();
        assert_eq!(done.written, 4);
        // c is changed after it was seeded
        store
            .update(
                json!({"resourceType": "Patient", "id": "c", "active": true}),
                None,
            )
            .await
            .unwrap();
        let done = apply(store.as_ref(), run(vec![a.clone()], vec![]))
            .await
            .unwrap();
        assert_eq!(
            done,
            Seeded {
                written: 0,
                unchanged: 1,
                removed: vec!["AccessPolicy/b".into()],
            }
        );
        assert!(matches!(
            store.read("AccessPolicy", "b").await,
            Err(StoreError::Gone { .. })
        ));
        assert_eq!(store.read("Patient", "c").await.unwrap()["active"], true);
        assert!(store.read("Patient", "o").await.is_ok());
        // no project seeds at all: the last one goes too
        let done = apply(store.as_ref(), vec![]).await.unwrap();
        assert_eq!(done.removed, vec!["AccessPolicy/a".to_string()]);
        assert_eq!(
            apply(store.as_ref(), vec![]).await.unwrap(),
            Seeded::default()
        );
    }
}
