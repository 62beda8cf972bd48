//! NDJSON output: one file per type (a `.part` file for SQLite, chunks in the database
//! otherwise), and the per-line transforms (`_elements`, referenced-type collection).
//!
//! ```
//! // one line per resource, in a file per type; the formats a kick-off may ask for:
//! assert!(fhirgate_smart::export::OUTPUT_FORMATS.contains(&"ndjson"));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::worker::*;
use super::*;

/// One output file being written.
pub(super) struct Output {
    pub(super) name: String,
    pub(super) count: u64,
    /// SQLite: the file (written as `.part`, renamed when complete).
    pub(super) file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    pub(super) path: Option<PathBuf>,
    /// Database: the chunk being filled, and the next chunk's number.
    pub(super) chunk: String,
    pub(super) seq: i64,
}

pub(super) async fn append(
    jobs: &dyn fhirgate_store::ExportJobs,
    job: &str,
    o: &mut Output,
    line: &str,
) -> Result<(), Stop> {
    o.count += 1;
    match &mut o.file {
        Some(f) => {
            f.write_all(line.as_bytes()).await?;
            f.write_all(b"\n").await?;
        }
        None => {
            o.chunk.push_str(line);
            o.chunk.push('\n');
            if o.chunk.len() >= CHUNK {
                o.seq += 1;
                jobs.export_output_append(job, &o.name, o.seq, &o.chunk)
                    .await?;
                o.chunk.clear();
            }
        }
    }
    Ok(())
}

pub(super) async fn close(
    jobs: &dyn fhirgate_store::ExportJobs,
    job: &str,
    o: &mut Output,
) -> Result<(), Stop> {
    match (&mut o.file, &o.path) {
        (Some(f), Some(path)) => {
            f.flush().await?;
            f.get_mut().sync_all().await?;
            tokio::fs::rename(path, path.with_extension("")).await?;
        }
        _ => {
            if !o.chunk.is_empty() {
                o.seq += 1;
                jobs.export_output_append(job, &o.name, o.seq, &o.chunk)
                    .await?;
                o.chunk.clear();
            }
        }
    }
    Ok(())
}

/// Record the references of `v` to the `types` (relative `Type/id`, or absolute URLs ending so).
pub(super) fn references(v: &Value, types: &[&str], out: &mut BTreeMap<String, BTreeSet<String>>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("reference") {
                let mut it = r.rsplit('/');
                if let (Some(id), Some(t)) = (it.next(), it.next())
                    && types.contains(&t)
                    && fhirgate_fhir::is_valid_id(id)
                {
                    out.entry(t.to_string()).or_default().insert(id.to_string());
                }
            }
            for x in o.values() {
                references(x, types, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                references(x, types, out);
            }
        }
        _ => {}
    }
}

/// `_elements`: the listed elements of `t` (`element` or `Type.element`), plus `resourceType`,
/// `id` and `meta`, marked SUBSETTED as FHIR search's `_elements` does.
pub(super) fn elements(v: Value, t: &str, list: &[String]) -> Value {
    let Value::Object(o) = v else { return v };
    let keep: Vec<&str> = list
        .iter()
        .filter_map(|e| match e.split_once('.') {
            Some((ty, name)) if ty == t => Some(name),
            Some(_) => None,
            None => Some(e.as_str()),
        })
        .collect();
    if keep.is_empty() {
        return Value::Object(o);
    }
    let mut out = serde_json::Map::new();
    for (k, x) in o {
        if matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.contains(&k.as_str()) {
            out.insert(k, x);
        }
    }
    let meta = out
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Value::Object(m) = meta {
        let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
        match m.get_mut("tag") {
            Some(Value::Array(tags)) => tags.push(tag),
            _ => {
                m.insert("tag".into(), json!([tag]));
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn elements_keep_what_is_listed_and_mark_it() {
        let v = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"}});
        let out = elements(
            v,
            "Observation",
            &["Observation.status".into(), "Patient.name".into()],
        );
        assert_eq!(out["status"], "final");
        assert!(out.get("code").is_none() && out.get("subject").is_none());
        assert_eq!(out["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    pub(super) fn references_are_collected_by_type() {
        let v = json!({"performer": [{"reference": "Practitioner/pr-1"}, {"reference": "https://x/fhir/Organization/org-1"}], "subject": {"reference": "Patient/p"}});
        let mut out = BTreeMap::new();
        references(&v, &["Practitioner", "Organization"], &mut out);
        assert_eq!(out["Practitioner"], BTreeSet::from(["pr-1".to_string()]));
        assert_eq!(out["Organization"], BTreeSet::from(["org-1".to_string()]));
        assert!(!out.contains_key("Patient"));
    }
}
