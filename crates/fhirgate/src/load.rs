//! `fhirgate load`: bulk-load resources into the store.
//!
//! Accepted files: JSON (one resource, an array, or a FHIR Bundle), NDJSON (one resource per
//! line), YAML (like JSON), and EDN seeds (a vector of resources, one resource, or
//! `{ResourceType {id {…}}}`, as in a project's seed service). Resources are upserted in
//! batches, each batch one transaction: a batch the command reported as loaded is committed; an
//! interrupted load leaves no partial batch.
//!
//! Bundles: a `document` or a `message` is a resource in its own right (a document is attested
//! as a whole, a message is one exchange) and is stored as one Bundle. Every other type
//! (`transaction`, `batch`, `collection`, `searchset`, `history`, and the responses) is a
//! container: its entries' resources are loaded, in order (entries without a resource, such
//! as a batch's GETs and DELETEs, and a searchset's `outcome` entries, are skipped; a Bundle
//! entry of a container is stored as that Bundle). An entry whose `fullUrl` is `urn:uuid:…`
//! (or `urn:oid:…`) and whose resource has no id takes the urn's value as its id, so that
//! loading the file again updates the same resources, and every reference to that urn is
//! rewritten to `Type/id`.
//!
//! Invalid input: by default a file with an invalid line or resource loads nothing (an NDJSON
//! file is checked in a first pass before any of it is written). With
//! [`Options::skip_invalid`], each invalid NDJSON line or resource is skipped instead (a JSON,
//! YAML or EDN file that does not read is skipped whole), the rest loads, and the
//! [`Summary`] counts what was skipped, with the first reasons.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fhirgate_store::{PreparedBatch, Store};
use serde_json::Value;
use serde_json::value::RawValue;

/// Resources per transaction. Bigger batches write fewer pages per resource (a page of an
/// index that many rows of a batch change is written once); 5,000 loaded a third faster than
/// 1,000. With 16 KiB pages and index rows inserted in key order, 10,000 load 300,000
/// resources with random UUID ids 15% faster than 5,000 (the WAL takes 5.4 GB instead of
/// 7.9 GB), for a peak memory of 500 MB instead of 390 MB.
pub const BATCH: usize = 10_000;

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

/// How [`load_with`] treats invalid input.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Skip invalid NDJSON lines and invalid resources (and files that do not read), counting
    /// them in [`Summary::skipped`], instead of refusing their file.
    pub skip_invalid: bool,
}

/// How many skip reasons a [`Summary`] keeps: the first ones.
pub const SKIP_REASONS: usize = 10;

/// What a load did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub resources: usize,
    pub by_type: BTreeMap<String, usize>,
    pub seconds: f64,
    /// Invalid lines, resources and files skipped ([`Options::skip_invalid`]).
    pub skipped: usize,
    /// The first [`SKIP_REASONS`] of them, each `FILE:LINE: what is wrong` (`FILE: …` for a
    /// file that is not NDJSON).
    pub skip_reasons: Vec<String>,
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
        if self.skipped > 0 {
            write!(
                f,
                "\nskipped {} invalid line{} or resource{}:",
                self.skipped,
                if self.skipped == 1 { "" } else { "s" },
                if self.skipped == 1 { "" } else { "s" },
            )?;
            for r in &self.skip_reasons {
                write!(f, "\n  {r}")?;
            }
            if self.skipped > self.skip_reasons.len() {
                write!(
                    f,
                    "\n  … and {} more",
                    self.skipped - self.skip_reasons.len()
                )?;
            }
        }
        Ok(())
    }
}

/// What to do with a resource that has no id (a Bundle entry's `urn:uuid:`/`urn:oid:`
/// `fullUrl` always names it, when there is one).
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
        Value::Object(_)
            if v["resourceType"] == "Bundle"
                && !matches!(v["type"].as_str(), Some("document" | "message")) =>
        {
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
                if e["search"]["mode"] == "outcome" {
                    continue; // a searchset's warnings about the search, not data
                }
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
                        (_, Some(urn)) => urn.to_string(),
                        (Ids::Assign, None) => uuid::Uuid::new_v4().to_string(),
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

/// What the reading thread skipped.
#[derive(Debug, Default)]
struct Skips {
    count: usize,
    reasons: Vec<String>,
}

impl Skips {
    fn add(&mut self, reason: String) {
        self.count += 1;
        if self.reasons.len() < SKIP_REASONS {
            self.reasons.push(reason);
        }
    }
}

/// One batch on its way from the reading thread to the writer.
struct Batch {
    /// Index of its file in the paths.
    file: usize,
    prepared: PreparedBatch,
}

/// Load `paths` into `store`, calling `progress(n)` after each batch of `n` resources is
/// committed.
///
/// Reading, parsing, indexing and serializing run on a blocking thread, one batch ahead of the
/// writer, which only runs transactions. NDJSON files are streamed (memory stays at a few
/// batches, whatever the file's size), after a first pass that checks every line, so that a
/// file with a malformed line loads nothing; other files are read whole (a Bundle's `urn:uuid:`
/// references may point anywhere in it).
pub async fn load(
    store: &dyn Store,
    paths: &[impl AsRef<Path>],
    progress: impl FnMut(usize),
) -> Result<Summary, LoadError> {
    load_with(store, paths, Options::default(), progress).await
}

/// [`load`] with [`Options`].
pub async fn load_with(
    store: &dyn Store,
    paths: &[impl AsRef<Path>],
    options: Options,
    mut progress: impl FnMut(usize),
) -> Result<Summary, LoadError> {
    let started = Instant::now();
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.as_ref().to_path_buf()).collect();
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    // One batch written, one prepared and waiting, one being prepared.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Batch, LoadError>>(1);
    let skip = options.skip_invalid;
    let reader = tokio::task::spawn_blocking(move || read_batches(&paths, BATCH, skip, &tx));
    let mut summary = Summary::default();
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        let n = store
            .write_prepared(batch.prepared)
            .await
            .map_err(|e| LoadError::Store {
                path: names[batch.file].clone(),
                message: e.to_string(),
            })?;
        summary.resources += n;
        progress(n);
    }
    let (by_type, skips) = reader.await.map_err(|e| LoadError::File {
        path: names.join(", "),
        message: format!("the reading thread failed: {e}"),
    })?;
    summary.by_type = by_type;
    summary.skipped = skips.count;
    summary.skip_reasons = skips.reasons;
    summary.files = names.len();
    // fresh statistics so that searches choose the selective index
    let _ = store.optimize().await;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The reading side of [`load`]: every file's resources, prepared in batches of `size`, sent in
/// order; an error is sent in its place and ends the reading. With `skip`, invalid lines,
/// resources and unreadable files are skipped instead. Returns the resources per type and what
/// was skipped.
fn read_batches(
    paths: &[PathBuf],
    size: usize,
    skip: bool,
    tx: &tokio::sync::mpsc::Sender<Result<Batch, LoadError>>,
) -> (BTreeMap<String, usize>, Skips) {
    let mut by_type = BTreeMap::new();
    let mut skips = Skips::default();
    let mut stop = false;
    for (file, path) in paths.iter().enumerate() {
        let mut send = |resources: Vec<Value>| -> bool {
            for r in &resources {
                *by_type
                    .entry(r["resourceType"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
            }
            let batch = fhirgate_store::prepare_upserts(resources)
                .map(|prepared| Batch { file, prepared })
                .map_err(|e| LoadError::Store {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            stop = batch.is_err();
            // a closed channel: the writer stopped (it failed), so stop too
            stop |= tx.blocking_send(batch).is_err();
            !stop
        };
        let outcome = if is_ndjson(path) {
            stream_ndjson(path, size, skip.then_some(&mut skips), &mut send)
        } else {
            let read = match read_file(path) {
                Err(e) if skip => {
                    skips.add(e.to_string());
                    Ok(Vec::new())
                }
                Ok(resources) if skip => Ok(resources
                    .into_iter()
                    .filter(|r| match fhirgate_store::check_upsert(r) {
                        Ok(()) => true,
                        Err(e) => {
                            skips.add(format!("{}: {}{e}", path.display(), type_of(r)));
                            false
                        }
                    })
                    .collect()),
                other => other,
            };
            read.map(|resources| {
                let mut it = resources.into_iter();
                loop {
                    let batch: Vec<Value> = it.by_ref().take(size).collect();
                    if batch.is_empty() || !send(batch) {
                        break;
                    }
                }
            })
        };
        if let Err(e) = outcome {
            let _ = tx.blocking_send(Err(e));
            break;
        }
        if stop {
            break;
        }
    }
    (by_type, skips)
}

/// `Patient: ` for a resource of type Patient, else nothing (for a skip reason).
fn type_of(r: &Value) -> String {
    r["resourceType"]
        .as_str()
        .map(|t| format!("{t}: "))
        .unwrap_or_default()
}

fn is_ndjson(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("ndjson") || e.eq_ignore_ascii_case("jsonl"))
}

/// An NDJSON file in batches of `size`, each handed to `send` (which says whether to go on).
/// A first pass checks every line (see [`check_line`]), so that a bad file sends nothing; with
/// `skips`, there is no first pass: each invalid line or resource is skipped and recorded as
/// `FILE:LINE: what is wrong`.
fn stream_ndjson(
    path: &Path,
    size: usize,
    mut skips: Option<&mut Skips>,
    send: &mut impl FnMut(Vec<Value>) -> bool,
) -> Result<(), LoadError> {
    let file_err = |message: String| LoadError::File {
        path: path.display().to_string(),
        message,
    };
    let open = || {
        std::fs::File::open(path)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| file_err(e.to_string()))
    };
    // the next line into `line`, counted in `n`; false at the end of the file
    let next = |reader: &mut std::io::BufReader<std::fs::File>,
                line: &mut String,
                n: &mut usize|
     -> Result<bool, LoadError> {
        line.clear();
        *n += 1;
        let read = reader
            .read_line(line)
            .map_err(|e| file_err(format!("line {n}: {e}")))?;
        Ok(read > 0)
    };
    let mut line = String::new();
    if skips.is_none() {
        let mut reader = open()?;
        let mut n = 0;
        while next(&mut reader, &mut line, &mut n)? {
            if !line.trim().is_empty() {
                check_line(&line).map_err(|e| file_err(format!("line {n}: {e}")))?;
            }
        }
    }
    let mut one = Vec::new();
    let mut reader = open()?;
    let mut n = 0;
    let mut pending = Vec::with_capacity(size);
    while next(&mut reader, &mut line, &mut n)? {
        if line.trim().is_empty() {
            continue;
        }
        let Some(skips) = skips.as_deref_mut() else {
            let v: Value =
                serde_json::from_str(&line).map_err(|e| file_err(format!("line {n}: {e}")))?;
            flatten(v, &mut pending, Ids::Assign)
                .map_err(|e| file_err(format!("line {n}: {e}")))?;
            while pending.len() >= size {
                let rest = pending.split_off(size);
                if !send(std::mem::replace(&mut pending, rest)) {
                    return Ok(());
                }
            }
            continue;
        };
        let at = format!("{}:{n}", path.display());
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                skips.add(format!("{at}: {e}"));
                continue;
            }
        };
        one.clear();
        if let Err(e) = flatten(v, &mut one, Ids::Assign) {
            skips.add(format!("{at}: {e}"));
            continue;
        }
        for r in one.drain(..) {
            match fhirgate_store::check_upsert(&r) {
                Ok(()) => pending.push(r),
                Err(e) => skips.add(format!("{at}: {}{e}", type_of(&r))),
            }
        }
        while pending.len() >= size {
            let rest = pending.split_off(size);
            if !send(std::mem::replace(&mut pending, rest)) {
                return Ok(());
            }
        }
    }
    if !pending.is_empty() {
        send(pending);
    }
    Ok(())
}

/// The first pass's check of one NDJSON line, without building it: JSON, and an object has a
/// string `resourceType`; a resource that is not a Bundle also passes
/// [`fhirgate_store::check_upsert`] (its type name, id and `meta`).
fn check_line(line: &str) -> Result<(), String> {
    match serde_json::from_str::<HashMap<String, &RawValue>>(line) {
        Ok(top) => match top.get("resourceType") {
            Some(rt) if rt.get().starts_with('"') => {
                let mut head = serde_json::Map::new();
                for key in ["resourceType", "id"] {
                    if let Some(raw) = top.get(key) {
                        let v = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
                        head.insert(key.into(), v);
                    }
                }
                if head["resourceType"] == "Bundle" {
                    return Ok(()); // its entries are checked as the second pass reads them
                }
                if let Some(meta) = top.get("meta") {
                    let object = meta.get().starts_with('{');
                    head.insert(
                        "meta".into(),
                        if object {
                            serde_json::json!({})
                        } else {
                            Value::Null
                        },
                    );
                }
                fhirgate_store::check_upsert(&Value::Object(head)).map_err(|e| e.to_string())
            }
            _ => Err("a resource has no resourceType".into()),
        },
        // not an object (an array of resources, say), or not JSON
        Err(_) => serde_json::from_str::<&RawValue>(line)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}
