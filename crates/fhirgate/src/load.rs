//! `fhirgate load`: bulk-load resources into the store.
//!
//! Accepted files: JSON (one resource, an array, or a FHIR Bundle — transaction, batch,
//! collection or searchset), NDJSON (one resource per line), YAML (like JSON), and EDN seeds
//! (a vector of resources, one resource, or `{ResourceType {id {…}}}`, as in a project's seed
//! service). Bundle entries whose `fullUrl` is `urn:uuid:…` get a real id and every reference
//! to that urn is rewritten to `Type/id`. Resources are upserted in batches, each batch one
//! transaction: a batch the command reported as loaded is committed; an interrupted load leaves
//! no partial batch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use fhirgate_store::Store;
use serde_json::Value;

/// Resources per transaction.
pub const BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: storing failed: {message}")]
    Store { path: String, message: String },
    /// An EDN seed's diagnostics, each `PATH:LINE:COL: error: message`.
    #[error("{0}")]
    Edn(String),
}

/// What a load did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub resources: usize,
    pub by_type: BTreeMap<String, usize>,
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = if self.seconds > 0.0 {
            self.resources as f64 / self.seconds
        } else {
            0.0
        };
        write!(
            f,
            "loaded {} resources from {} file{} in {:.2} s ({:.0}/s)",
            self.resources,
            self.files,
            if self.files == 1 { "" } else { "s" },
            self.seconds,
            rate
        )?;
        for (t, n) in &self.by_type {
            write!(f, "\n  {t:<28} {n}")?;
        }
        Ok(())
    }
}

/// What to do with a resource that has no id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ids {
    /// Give it a random one (`fhirgate load`).
    Assign,
    /// Refuse it, unless a Bundle's `urn:uuid:`/`urn:oid:` `fullUrl` names it, which becomes
    /// its id (seeds: a restart must update the same resource, not add another).
    Required,
}

/// Parse one file into resources (ids assigned, urn:uuid references resolved).
pub fn read_file(path: &Path) -> Result<Vec<Value>, LoadError> {
    read(path, Ids::Assign)
}

/// Parse one seed file (`--seed`, a seed service's `:files`): like [`read_file`], but every
/// resource must have an id — its own, or its Bundle entry's `urn:uuid:` — so that upserting
/// the file again updates the same resources.
pub fn read_seed_file(path: &Path) -> Result<Vec<Value>, LoadError> {
    read(path, Ids::Required)
}

fn read(path: &Path, ids: Ids) -> Result<Vec<Value>, LoadError> {
    let file_err = |message: String| LoadError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let values: Vec<Value> = match ext.as_str() {
        "ndjson" | "jsonl" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| file_err(format!("line {}: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?,
        "yaml" | "yml" => vec![
            serde_norway::from_str(&text).map_err(|e| file_err(format!("malformed YAML: {e}")))?,
        ],
        "json" => vec![
            serde_json::from_str(&text).map_err(|e| file_err(format!("malformed JSON: {e}")))?,
        ],
        "edn" => {
            return fhirgate_config::read_seed_edn(path, &text).map_err(|diags| {
                LoadError::Edn(
                    diags
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            });
        }
        other => {
            return Err(file_err(format!(
                "unknown file type .{other} (expected .json, .ndjson, .yaml, .edn)"
            )));
        }
    };
    let mut out = Vec::new();
    for v in values {
        flatten(v, &mut out, ids).map_err(file_err)?;
    }
    Ok(out)
}

/// Arrays and Bundles become their resources; everything gets an id.
fn flatten(v: Value, out: &mut Vec<Value>, ids: Ids) -> Result<(), String> {
    match v {
        Value::Array(items) => items.into_iter().try_for_each(|i| flatten(i, out, ids)),
        Value::Object(_) if v["resourceType"] == "Bundle" && v["type"] != "document" => {
            let Value::Object(mut bundle) = v else {
                return Ok(());
            };
            let entries = match bundle.remove("entry") {
                Some(Value::Array(e)) => e,
                _ => Vec::new(),
            };
            let mut urns: HashMap<String, String> = HashMap::new();
            let mut resources = Vec::with_capacity(entries.len());
            for mut e in entries {
                let Some(mut r) = e.get_mut("resource").map(Value::take) else {
                    continue;
                };
                let rt = r["resourceType"]
                    .as_str()
                    .ok_or("a Bundle entry's resource has no resourceType")?
                    .to_string();
                let urn = e["fullUrl"].as_str().and_then(|u| {
                    u.strip_prefix("urn:uuid:")
                        .or_else(|| u.strip_prefix("urn:oid:"))
                });
                if r["id"].as_str().is_none() {
                    let id = match (ids, urn) {
                        (Ids::Assign, _) => uuid::Uuid::new_v4().to_string(),
                        (Ids::Required, Some(urn)) => urn.to_string(),
                        (Ids::Required, None) => {
                            return Err(format!(
                                "a {rt} in the Bundle has neither an id nor a urn:uuid fullUrl; a seed needs one, so that restarts update it rather than add another"
                            ));
                        }
                    };
                    r["id"] = Value::String(id);
                }
                if let Some(full) = e["fullUrl"]
                    .as_str()
                    .filter(|u| u.starts_with("urn:uuid:") || u.starts_with("urn:oid:"))
                {
                    urns.insert(
                        full.to_string(),
                        format!("{rt}/{}", r["id"].as_str().unwrap_or_default()),
                    );
                }
                resources.push(r);
            }
            for mut r in resources {
                rewrite_refs(&mut r, &urns);
                out.push(r);
            }
            Ok(())
        }
        Value::Object(_) => {
            let mut r = v;
            if r["resourceType"].as_str().is_none() {
                return Err("a resource has no resourceType".into());
            }
            if r["id"].as_str().is_none() {
                if ids == Ids::Required {
                    return Err(format!(
                        "a {} has no id; a seed needs one, so that restarts update it rather than add another",
                        r["resourceType"].as_str().unwrap_or_default()
                    ));
                }
                r["id"] = Value::String(uuid::Uuid::new_v4().to_string());
            }
            out.push(r);
            Ok(())
        }
        other => Err(format!("expected resources, found {other}")),
    }
}

fn rewrite_refs(v: &mut Value, urns: &HashMap<String, String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("reference")
                && let Some(target) = urns.get(r.as_str())
            {
                *r = target.clone();
            }
            map.values_mut().for_each(|x| rewrite_refs(x, urns));
        }
        Value::Array(items) => items.iter_mut().for_each(|x| rewrite_refs(x, urns)),
        _ => {}
    }
}

/// Load `paths` into `store`, calling `progress(done, total_of_file)` after each batch.
pub async fn load(
    store: &dyn Store,
    paths: &[impl AsRef<Path>],
    mut progress: impl FnMut(usize),
) -> Result<Summary, LoadError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    for path in paths {
        let path = path.as_ref();
        let resources = read_file(path)?;
        for batch in resources.chunks(BATCH) {
            for r in batch {
                *summary
                    .by_type
                    .entry(r["resourceType"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
            }
            store
                .upsert_all(batch.to_vec())
                .await
                .map_err(|e| LoadError::Store {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            summary.resources += batch.len();
            progress(batch.len());
        }
        summary.files += 1;
    }
    // fresh statistics so that searches choose the selective index
    let _ = store.optimize().await;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
