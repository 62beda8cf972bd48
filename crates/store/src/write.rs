//! Writes as plans: validate, index and serialize outside the transaction, then turn the batch
//! and the current versions into a few multi-row statements.
//!
//! Both backends run the same plan; batching many rows per statement is what makes bulk loads
//! fast (one statement per table per chunk instead of one per index row). Versions and index
//! rows name their resource by `resource.rid`, an integer that grows with each new resource,
//! so that new rows go at the end of their indexes rather than at random places (ids are often
//! random UUIDs). The text of a full chunk's INSERT is made once per table and shared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use crate::error::{Result, StoreError};
use crate::index::{self, IndexRows};
use crate::search::{Bind, SharedText, Sql};

/// Rows per multi-row statement: keeps binds under SQLite's 32,766 and PostgreSQL's 65,535.
const CHUNK_ROWS: usize = 1000;

/// One write in a batch.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Create; an `id` in the resource is kept, else one is assigned. An existing live resource
    /// with that id is [`StoreError::AlreadyExists`].
    Create(Value),
    /// Create or replace; `if_match` must equal the current version when given.
    Put {
        resource: Value,
        if_match: Option<String>,
    },
    /// Delete; with `if_match`, a live resource must be at that version.
    Delete {
        resource_type: String,
        id: String,
        if_match: Option<String>,
    },
}

pub(crate) type Key = (String, String);

#[derive(Debug)]
pub(crate) struct Prepared {
    key: Key,
    kind: Kind,
    /// The resource as JSON text, serialized before the transaction (`None` for a delete).
    doc: Option<Doc>,
    /// The resource as given, with `id` set (not yet stamped with meta), when the caller wants
    /// the stored resource back.
    body: Option<Value>,
    rows: IndexRows,
}

/// A resource serialized ahead of its write, but for `meta`: `meta.versionId` and
/// `meta.lastUpdated` are only known inside the transaction, which then writes
/// `{"meta":{…},` followed by the rest.
#[derive(Debug)]
struct Doc {
    meta: Map<String, Value>,
    /// The resource without `meta`, as a JSON object's text.
    rest: String,
}

impl Doc {
    /// The stored text, with `meta.versionId` and `meta.lastUpdated` set.
    fn stamped(mut self, version: &str, now: &str) -> Result<String> {
        self.meta
            .insert("versionId".into(), Value::String(version.to_string()));
        self.meta
            .insert("lastUpdated".into(), Value::String(now.to_string()));
        let meta = serde_json::to_string(&self.meta)
            .map_err(|e| StoreError::Invalid(format!("unserializable meta: {e}")))?;
        let rest = self.rest.strip_prefix('{').unwrap_or("}");
        let mut out = String::with_capacity(10 + meta.len() + rest.len());
        out.push_str("{\"meta\":");
        out.push_str(&meta);
        if rest != "}" {
            out.push(',');
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A batch of upserts validated, indexed and serialized before its transaction: the CPU part
/// of a write, which a loader runs on another thread while the previous batch is written.
/// Made by [`prepare_upserts`], written by [`crate::Store::write_prepared`].
#[derive(Debug)]
pub struct PreparedBatch {
    pub(crate) prepared: Vec<Prepared>,
    /// The batch's index rows, taken out of `prepared` and sorted.
    pub(crate) sorted: SortedRows,
}

impl PreparedBatch {
    /// The number of resources in the batch.
    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }
}

/// Prepare `resources` for [`crate::Store::write_prepared`], which creates or replaces them
/// all in one transaction as [`crate::Store::upsert_all`] does: each needs a `resourceType`
/// and an `id`. CPU work (index extraction, serialization): run it off the async workers.
pub fn prepare_upserts(resources: Vec<Value>) -> Result<PreparedBatch> {
    let ops = resources
        .into_iter()
        .map(|resource| Op::Put {
            resource,
            if_match: None,
        })
        .collect();
    let mut prepared = prepare(ops, false)?;
    let sorted = SortedRows::take(&mut prepared);
    Ok(PreparedBatch { prepared, sorted })
}

/// Check one resource as [`prepare_upserts`] does, without preparing it: a JSON object whose
/// `resourceType` is a type name, whose `id`, if any, is a FHIR id (1 to 64 letters, digits,
/// `-` and `.`; a missing one is assigned), and whose `meta`, if any, is an object. A loader
/// that skips invalid resources checks each one with this before batching it.
pub fn check_upsert(resource: &Value) -> Result<()> {
    let Value::Object(map) = resource else {
        return Err(StoreError::Invalid(
            "a resource must be a JSON object".into(),
        ));
    };
    match map.get("resourceType") {
        Some(Value::String(rt)) => check_type(rt)?,
        _ => {
            return Err(StoreError::Invalid(
                "the resource has no resourceType".into(),
            ));
        }
    }
    match map.get("id") {
        Some(Value::String(id)) => check_id(id)?,
        None | Some(Value::Null) => {}
        Some(_) => return Err(StoreError::Invalid("id must be a string".into())),
    }
    if map.get("meta").is_some_and(|m| !m.is_object()) {
        return Err(StoreError::Invalid("meta must be an object".into()));
    }
    Ok(())
}

/// A reference row of a batch: (type, param, ref_type, ref_id, ref_url, position).
type SortedReference = (Arc<str>, &'static str, String, String, String, usize);

/// The index rows of a whole batch, per table, sorted in the order of the table's primary key
/// (but for the rid, which the transaction assigns), each tagged with the position of its
/// resource in the batch.
///
/// Rows inserted in key order go into the index B-trees page after page, instead of one
/// random page after another (with random ids, a reference's target or a date lands anywhere
/// in its index): SQLite finds each row's place and splits pages with the pages it just used
/// at hand. Sorting is the loader's reading thread's work, beside the writer's transaction.
#[derive(Debug, Default)]
pub(crate) struct SortedRows {
    /// (type, param, system, code, position)
    tokens: Vec<(Arc<str>, &'static str, String, String, usize)>,
    /// (type, param, normalized, raw, position)
    strings: Vec<(Arc<str>, &'static str, String, String, usize)>,
    references: Vec<SortedReference>,
    /// (type, param, lo, hi, position)
    dates: Vec<(Arc<str>, &'static str, i64, i64, usize)>,
}

impl SortedRows {
    /// Move the index rows out of `prepared` and sort them.
    fn take(prepared: &mut [Prepared]) -> Self {
        let mut out = SortedRows::default();
        for (pos, p) in prepared.iter_mut().enumerate() {
            let rows = std::mem::take(&mut p.rows);
            let rt: Arc<str> = Arc::from(p.key.0.as_str());
            out.tokens.extend(
                rows.tokens
                    .into_iter()
                    .map(|(param, system, code)| (rt.clone(), param, system, code, pos)),
            );
            out.strings.extend(
                rows.strings
                    .into_iter()
                    .map(|(param, value, raw)| (rt.clone(), param, value, raw, pos)),
            );
            out.references.extend(rows.references.into_iter().map(
                |(param, ref_type, ref_id, url)| (rt.clone(), param, ref_type, ref_id, url, pos),
            ));
            out.dates.extend(
                rows.dates
                    .into_iter()
                    .map(|(param, lo, hi)| (rt.clone(), param, lo, hi, pos)),
            );
        }
        // Each table's primary key order: search_token (resource_type, param, code, system),
        // search_string (resource_type, param, value, raw), search_reference (resource_type,
        // param, ref_id, ref_type, ref_url), search_date (resource_type, param, lo, hi); then
        // the batch position, in which new rids grow. Text compares bytewise, as SQLite's
        // BINARY collation does (PostgreSQL's may order text otherwise: there the order
        // is only close to the index's).
        out.tokens.sort_unstable_by(|a, b| {
            (&a.0, a.1, &a.3, &a.2, a.4).cmp(&(&b.0, b.1, &b.3, &b.2, b.4))
        });
        out.strings.sort_unstable();
        out.references.sort_unstable_by(|a, b| {
            (&a.0, a.1, &a.3, &a.2, &a.4, a.5).cmp(&(&b.0, b.1, &b.3, &b.2, &b.4, b.5))
        });
        out.dates.sort_unstable();
        out
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Create,
    Put(Option<String>),
    Delete(Option<String>),
}

/// The current state of a resource inside the write transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current {
    /// 0 for a row this transaction only claimed (PostgreSQL): no resource yet.
    pub version: i64,
    pub deleted: bool,
    /// The row's `resource.rid`, which its versions and index rows name it by.
    pub rid: i64,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version_id: String,
    pub last_updated: String,
    /// True when no live resource existed before (HTTP 201 rather than 200).
    pub created: bool,
    /// The stored resource (with `id` and `meta`); `None` for a deletion.
    pub resource: Option<Value>,
}

/// Validate, assign ids, extract index rows and serialize: the CPU work, done before the
/// transaction. With `keep`, each resource is kept to be returned in [`Stored::resource`].
pub(crate) fn prepare(ops: Vec<Op>, keep: bool) -> Result<Vec<Prepared>> {
    ops.into_iter()
        .map(|op| match op {
            Op::Delete {
                resource_type,
                id,
                if_match,
            } => {
                check_type(&resource_type)?;
                check_id(&id)?;
                Ok(Prepared {
                    key: (resource_type, id),
                    kind: Kind::Delete(if_match),
                    doc: None,
                    body: None,
                    rows: IndexRows::default(),
                })
            }
            Op::Create(v) => with_body(v, Kind::Create, keep),
            Op::Put { resource, if_match } => {
                if resource.get("id").is_none() {
                    return Err(StoreError::Invalid(
                        "an update needs the resource's id".into(),
                    ));
                }
                with_body(resource, Kind::Put(if_match), keep)
            }
        })
        .collect()
}

fn with_body(mut v: Value, kind: Kind, keep: bool) -> Result<Prepared> {
    let Value::Object(map) = &mut v else {
        return Err(StoreError::Invalid(
            "a resource must be a JSON object".into(),
        ));
    };
    let rt = match map.get("resourceType") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(StoreError::Invalid(
                "the resource has no resourceType".into(),
            ));
        }
    };
    check_type(&rt)?;
    let id = match map.get("id") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(_) => return Err(StoreError::Invalid("id must be a string".into())),
    };
    check_id(&id)?;
    map.insert("id".into(), Value::String(id.clone()));
    if let Some(m) = map.get("meta")
        && !m.is_object()
    {
        return Err(StoreError::Invalid("meta must be an object".into()));
    }
    let rows = index::extract(&rt, &v);
    let body = keep.then(|| v.clone());
    let Value::Object(map) = &mut v else {
        unreachable!("checked above")
    };
    let meta = match map.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let rest = serde_json::to_string(&v)
        .map_err(|e| StoreError::Invalid(format!("unserializable resource: {e}")))?;
    Ok(Prepared {
        key: (rt, id),
        kind,
        doc: Some(Doc { meta, rest }),
        body,
        rows,
    })
}

fn check_type(t: &str) -> Result<()> {
    let ok = t.len() <= 64
        && t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{t:?} is not a resource type name"
        )))
    }
}

/// FHIR ids: `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("{id:?} is not a valid id")))
    }
}

/// The distinct keys of a batch, sorted so that concurrent batches lock in the same order.
pub(crate) fn keys(prepared: &[Prepared]) -> BTreeSet<Key> {
    prepared.iter().map(|p| p.key.clone()).collect()
}

/// PostgreSQL: insert a version-0 placeholder for each key that has no row, so that
/// `SELECT … FOR UPDATE` can lock new resources too and concurrent creates serialize.
pub(crate) fn claim_sql(keys: &BTreeSet<Key>) -> Vec<Sql> {
    chunks(keys.iter(), CHUNK_ROWS)
        .map(|chunk| {
            let mut sql = Sql::default();
            let vals: Vec<String> =
                chunk.iter().map(|(t, id)| format!("({}, {}, 0, '', 0, TRUE)", sql.text(t.as_str()), sql.text(id.as_str()))).collect();
            sql.text = format!(
                "INSERT INTO resource (resource_type, id, version_id, last_updated, lu, deleted) VALUES {} ON CONFLICT (resource_type, id) DO NOTHING",
                vals.join(", ")
            );
            sql
        })
        .collect()
}

/// `SELECT resource_type, id, version_id, deleted, rid` of the keys, per type and chunk.
pub(crate) fn current_sql(keys: &BTreeSet<Key>, for_update: &str) -> Vec<Sql> {
    let mut by_type: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (t, id) in keys {
        by_type.entry(t).or_default().push(id);
    }
    let mut out = Vec::new();
    for (t, ids) in by_type {
        for chunk in ids.chunks(CHUNK_ROWS) {
            let mut sql = Sql::default();
            let rt = sql.text(t);
            let ids: Vec<String> = chunk.iter().map(|id| sql.text(*id)).collect();
            sql.text = format!(
                "SELECT resource_type, id, version_id, deleted, rid FROM resource WHERE resource_type = {rt} AND id IN ({}) ORDER BY id{for_update}",
                ids.join(", ")
            );
            out.push(sql);
        }
    }
    out
}

/// SQLite: the first `rid` after every row's, for the new resources of a write transaction
/// (which holds the database's only write lock, so nobody else takes these).
pub(crate) const NEXT_RID_SQL: &str = "SELECT COALESCE(MAX(rid), 0) + 1 FROM resource";

/// The final state of one key after the batch.
struct Final {
    rt: Arc<str>,
    id: Arc<str>,
    rid: i64,
    version: i64,
    deleted: bool,
    /// Index rows of the final version (none when deleted).
    rows: IndexRows,
    /// Whether index rows from before the batch must go.
    had_rows: bool,
    /// The position in the batch of the op that wrote the final version.
    pos: usize,
}

/// Apply the batch to `current` (as read under lock: every key that has a resource row, with
/// its `rid`) and return the statements to run and what each op did (`None` for a delete that
/// found nothing to delete). New resources get `rid`s from `next_rid` on; without it (on
/// PostgreSQL, whose writers claim a row for every key first) every key must have a row.
/// With `sorted` (a [`PreparedBatch`]'s), the index rows come from there, not from `prepared`.
pub(crate) fn plan(
    prepared: Vec<Prepared>,
    mut current: HashMap<Key, Current>,
    mut next_rid: Option<i64>,
    sorted: Option<SortedRows>,
) -> Result<(Vec<Sql>, Vec<Option<Stored>>)> {
    let batch_len = prepared.len();
    let (now, now_us) = crate::date::now();
    let now_arc: Arc<str> = Arc::from(now.as_str());
    let mut finals: BTreeMap<Key, Final> = BTreeMap::new();
    let mut history: Vec<Bind> = Vec::with_capacity(prepared.len() * HISTORY_COLS);
    let mut outcomes = Vec::with_capacity(prepared.len());
    for (pos, p) in prepared.into_iter().enumerate() {
        let (rt, id) = p.key.clone();
        let row = current.get(&p.key).copied();
        let cur = row.filter(|c| c.version > 0);
        let live = cur.filter(|c| !c.deleted);
        match &p.kind {
            Kind::Create if live.is_some() => {
                return Err(StoreError::AlreadyExists {
                    resource_type: rt,
                    id,
                });
            }
            Kind::Put(Some(expected))
                if live.map(|c| c.version.to_string()).as_deref() != Some(expected.as_str()) =>
            {
                return Err(StoreError::VersionConflict {
                    resource_type: rt,
                    id,
                    expected: expected.clone(),
                    current: live.map(|c| c.version.to_string()),
                });
            }
            Kind::Delete(_) if live.is_none() => {
                outcomes.push(None);
                continue;
            }
            Kind::Delete(Some(expected))
                if live.map(|c| c.version.to_string()).as_deref() != Some(expected.as_str()) =>
            {
                return Err(StoreError::VersionConflict {
                    resource_type: rt,
                    id,
                    expected: expected.clone(),
                    current: live.map(|c| c.version.to_string()),
                });
            }
            _ => {}
        }
        let rid = match (row, next_rid.as_mut()) {
            (Some(c), _) => c.rid,
            (None, Some(next)) => {
                *next += 1;
                *next - 1
            }
            (None, None) => {
                return Err(StoreError::Backend(format!(
                    "no resource row was claimed for {rt}/{id}"
                )));
            }
        };
        let version = cur.map_or(1, |c| c.version + 1);
        let vid = version.to_string();
        let deleted = matches!(p.kind, Kind::Delete(_));
        let body = match (deleted, p.body) {
            (false, Some(mut body)) => {
                stamp(&mut body, &vid, &now);
                Some(body)
            }
            _ => None,
        };
        let text: Option<Arc<str>> = match p.doc {
            Some(doc) if !deleted => Some(Arc::from(doc.stamped(&vid, &now)?)),
            _ => None,
        };
        history.extend([
            Bind::Int(rid),
            Bind::Int(version),
            Bind::Text(now_arc.clone()),
            Bind::Bool(deleted),
            match text {
                Some(text) => Bind::Json(text),
                None => Bind::NullJson,
            },
        ]);
        outcomes.push(Some(Stored {
            resource_type: rt,
            id,
            version_id: vid,
            last_updated: now.clone(),
            created: live.is_none(),
            resource: body,
        }));
        current.insert(
            p.key.clone(),
            Current {
                version,
                deleted,
                rid,
            },
        );
        let had_rows = finals
            .get(&p.key)
            .map_or(cur.is_some_and(|c| !c.deleted), |f| f.had_rows);
        let rows = if deleted {
            IndexRows::default()
        } else {
            p.rows
        };
        let (rt_arc, id_arc): (Arc<str>, Arc<str>) = match finals.get(&p.key) {
            Some(f) => (f.rt.clone(), f.id.clone()),
            None => (Arc::from(p.key.0.as_str()), Arc::from(p.key.1.as_str())),
        };
        finals.insert(
            p.key,
            Final {
                rt: rt_arc,
                id: id_arc,
                rid,
                version,
                deleted,
                rows,
                had_rows,
                pos,
            },
        );
    }
    let mut out = Vec::new();
    let mut resources = Vec::with_capacity(finals.len() * RESOURCE_COLS);
    for f in finals.values() {
        resources.extend([
            Bind::Int(f.rid),
            Bind::Text(f.rt.clone()),
            Bind::Text(f.id.clone()),
            Bind::Int(f.version),
            Bind::Text(now_arc.clone()),
            Bind::Int(now_us),
            Bind::Bool(f.deleted),
        ]);
    }
    insert_rows(&mut out, &RESOURCE_INSERT, resources);
    insert_rows(&mut out, &HISTORY_INSERT, history);
    let stale: Vec<i64> = finals
        .values()
        .filter(|f| f.had_rows)
        .map(|f| f.rid)
        .collect();
    delete_index_rows(&mut out, &stale);
    match sorted {
        None => insert_index_rows(
            &mut out,
            finals.into_values().map(|f| (f.rt, f.rid, f.rows)),
        ),
        Some(sorted) => {
            // the rows of the op that wrote a key's final version, unless it deleted it
            let mut rid_at: Vec<Option<i64>> = vec![None; batch_len];
            for f in finals.values().filter(|f| !f.deleted) {
                rid_at[f.pos] = Some(f.rid);
            }
            insert_sorted_rows(&mut out, sorted, &rid_at);
        }
    }
    Ok((out, outcomes))
}

/// Set `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta`.
fn stamp(body: &mut Value, version: &str, now: &str) {
    if let Value::Object(m) = body {
        let meta = m.entry("meta").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            meta.insert("versionId".into(), Value::String(version.to_string()));
            meta.insert("lastUpdated".into(), Value::String(now.to_string()));
        }
    }
}

/// Live resources of one type locked per reindex step: bounds the memory a reindex needs.
pub(crate) const REINDEX_CHUNK: i64 = 500;

/// The ids of the next [`REINDEX_CHUNK`] live resources of type `rt` after `after` (in id
/// order), locked with `for_update` (PostgreSQL) so no write changes them until commit.
pub(crate) fn reindex_ids_sql(rt: &str, after: &str, for_update: &str) -> Sql {
    let mut sql = Sql::default();
    let (rt, after, limit) = (sql.text(rt), sql.text(after), sql.int(REINDEX_CHUNK));
    sql.text = format!(
        "SELECT id FROM resource WHERE resource_type = {rt} AND deleted = FALSE AND id > {after} ORDER BY id LIMIT {limit}{for_update}"
    );
    sql
}

/// `SELECT rid, body` of the current versions of resources `ids` of type `rt`.
pub(crate) fn current_bodies_sql(rt: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::default();
    let rt = sql.text(rt);
    let ids: Vec<String> = ids.iter().map(|id| sql.text(id.as_str())).collect();
    sql.text = format!(
        "SELECT r.rid, h.body FROM resource r \
         JOIN resource_history h ON h.rid = r.rid AND h.version_id = r.version_id \
         WHERE r.resource_type = {rt} AND r.deleted = FALSE AND r.id IN ({})",
        ids.join(", ")
    );
    sql
}

/// Statements that rebuild the index rows of live resources of type `rt` from their current
/// bodies (`(rid, body)`), writing no new version: for changes of search parameters.
pub(crate) fn reindex_sql(rt: &str, bodies: Vec<(i64, Value)>) -> Vec<Sql> {
    let rt_arc: Arc<str> = Arc::from(rt);
    let rows: Vec<(Arc<str>, i64, IndexRows)> = bodies
        .into_iter()
        .map(|(rid, body)| (rt_arc.clone(), rid, index::extract(rt, &body)))
        .collect();
    let mut out = Vec::new();
    let stale: Vec<i64> = rows.iter().map(|r| r.1).collect();
    delete_index_rows(&mut out, &stale);
    insert_index_rows(&mut out, rows.into_iter());
    out
}

/// DELETE every index row of the resources `rids`.
fn delete_index_rows(out: &mut Vec<Sql>, rids: &[i64]) {
    for chunk in rids.chunks(CHUNK_ROWS) {
        for table in [
            "search_token",
            "search_string",
            "search_reference",
            "search_date",
        ] {
            let mut sql = Sql::default();
            let list: Vec<String> = chunk.iter().map(|&rid| sql.int(rid)).collect();
            sql.text = format!("DELETE FROM {table} WHERE rid IN ({})", list.join(", "));
            out.push(sql);
        }
    }
}

/// INSERT the index rows of resources `(type, rid, rows)`.
fn insert_index_rows(
    out: &mut Vec<Sql>,
    resources: impl Iterator<Item = (Arc<str>, i64, IndexRows)>,
) {
    // Parameter names repeat on every row: share one allocation per name.
    let mut names: HashMap<&'static str, Arc<str>> = HashMap::new();
    let mut name =
        |p: &'static str| Bind::Text(names.entry(p).or_insert_with(|| Arc::from(p)).clone());
    let mut tokens = Vec::new();
    let mut strings = Vec::new();
    let mut refs = Vec::new();
    let mut dates = Vec::new();
    for (rt, rid, rows) in resources {
        for (p, system, code) in rows.tokens {
            tokens.extend([
                Bind::Text(rt.clone()),
                Bind::Int(rid),
                name(p),
                Bind::Text(system.into()),
                Bind::Text(code.into()),
            ]);
        }
        for (p, value, raw) in rows.strings {
            strings.extend([
                Bind::Text(rt.clone()),
                Bind::Int(rid),
                name(p),
                Bind::Text(value.into()),
                Bind::Text(raw.into()),
            ]);
        }
        for (p, ref_type, ref_id, url) in rows.references {
            refs.extend([
                Bind::Text(rt.clone()),
                Bind::Int(rid),
                name(p),
                Bind::Text(ref_type.into()),
                Bind::Text(ref_id.into()),
                Bind::Text(url.into()),
            ]);
        }
        for (p, lo, hi) in rows.dates {
            dates.extend([
                Bind::Text(rt.clone()),
                Bind::Int(rid),
                name(p),
                Bind::Int(lo),
                Bind::Int(hi),
            ]);
        }
    }
    insert_rows(out, &TOKEN_INSERT, tokens);
    insert_rows(out, &STRING_INSERT, strings);
    insert_rows(out, &REFERENCE_INSERT, refs);
    insert_rows(out, &DATE_INSERT, dates);
}

/// INSERT the rows of `sorted` whose resource's position has a rid in `rid_at`, in order.
fn insert_sorted_rows(out: &mut Vec<Sql>, sorted: SortedRows, rid_at: &[Option<i64>]) {
    let mut names: HashMap<&'static str, Arc<str>> = HashMap::new();
    let mut name =
        |p: &'static str| Bind::Text(names.entry(p).or_insert_with(|| Arc::from(p)).clone());
    let SortedRows {
        tokens,
        strings,
        references,
        dates,
    } = sorted;
    push_chunks(
        out,
        &TOKEN_INSERT,
        tokens.into_iter().filter_map(|(rt, p, system, code, pos)| {
            let rid = rid_at[pos]?;
            Some([
                Bind::Text(rt),
                Bind::Int(rid),
                name(p),
                Bind::Text(system.into()),
                Bind::Text(code.into()),
            ])
        }),
    );
    push_chunks(
        out,
        &STRING_INSERT,
        strings.into_iter().filter_map(|(rt, p, value, raw, pos)| {
            let rid = rid_at[pos]?;
            Some([
                Bind::Text(rt),
                Bind::Int(rid),
                name(p),
                Bind::Text(value.into()),
                Bind::Text(raw.into()),
            ])
        }),
    );
    push_chunks(
        out,
        &REFERENCE_INSERT,
        references
            .into_iter()
            .filter_map(|(rt, p, ref_type, ref_id, url, pos)| {
                let rid = rid_at[pos]?;
                Some([
                    Bind::Text(rt),
                    Bind::Int(rid),
                    name(p),
                    Bind::Text(ref_type.into()),
                    Bind::Text(ref_id.into()),
                    Bind::Text(url.into()),
                ])
            }),
    );
    push_chunks(
        out,
        &DATE_INSERT,
        dates.into_iter().filter_map(|(rt, p, lo, hi, pos)| {
            let rid = rid_at[pos]?;
            Some([
                Bind::Text(rt),
                Bind::Int(rid),
                name(p),
                Bind::Int(lo),
                Bind::Int(hi),
            ])
        }),
    );
}

/// Multi-row INSERTs of `rows` ([`CHUNK_ROWS`] at a time), each chunk's binds gathered once.
fn push_chunks<const C: usize>(
    out: &mut Vec<Sql>,
    insert: &Insert,
    rows: impl Iterator<Item = [Bind; C]>,
) {
    debug_assert_eq!(insert.cols, C);
    let mut chunk: Vec<Bind> = Vec::with_capacity(C * CHUNK_ROWS);
    for row in rows {
        chunk.extend(row);
        if chunk.len() == C * CHUNK_ROWS {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(C * CHUNK_ROWS));
            out.push(Sql {
                text: String::new(),
                shared: Some(insert.text(CHUNK_ROWS)),
                binds: full,
                plan_per_values: false,
            });
        }
    }
    if !chunk.is_empty() {
        out.push(Sql {
            text: String::new(),
            shared: Some(insert.text(chunk.len() / C)),
            binds: chunk,
            plan_per_values: false,
        });
    }
}

/// A multi-row `INSERT … VALUES (…), (…) …` of one table.
struct Insert {
    /// `INSERT INTO table (columns)`.
    head: &'static str,
    /// SQLite's head, when it differs: `INSERT OR IGNORE` for the index tables. A statement
    /// that may fail half-way makes SQLite journal every page it changes, to undo just that
    /// statement (some 6% of a bulk load); index rows cannot conflict (each has its
    /// resource's rid and is deduplicated) and are never NULL, so IGNORE changes nothing but
    /// that. Any other failure fails the whole transaction anyway.
    sqlite_head: &'static str,
    /// After the VALUES: `ON CONFLICT …`, or nothing.
    tail: &'static str,
    cols: usize,
    /// The text of a full chunk ([`CHUNK_ROWS`] rows), made once.
    full: OnceLock<SharedText>,
}

impl Insert {
    const fn new(head: &'static str, tail: &'static str, cols: usize) -> Self {
        Insert {
            head,
            sqlite_head: head,
            tail,
            cols,
            full: OnceLock::new(),
        }
    }

    /// An index table's INSERT: `sqlite_head` is the same with `OR IGNORE`.
    const fn index(head: &'static str, sqlite_head: &'static str, cols: usize) -> Self {
        Insert {
            head,
            sqlite_head,
            tail: "",
            cols,
            full: OnceLock::new(),
        }
    }

    /// The statement for `rows` rows.
    fn text(&self, rows: usize) -> SharedText {
        if rows == CHUNK_ROWS {
            self.full.get_or_init(|| self.make(rows)).clone()
        } else {
            self.make(rows)
        }
    }

    /// The text with `$n` placeholders and with SQLite's `?` (bound in order).
    fn make(&self, rows: usize) -> SharedText {
        let mut dollar = String::with_capacity(self.head.len() + rows * self.cols * 8);
        let mut question = String::with_capacity(self.sqlite_head.len() + rows * self.cols * 3);
        for (s, head) in [(&mut dollar, self.head), (&mut question, self.sqlite_head)] {
            s.push_str(head);
            s.push_str(" VALUES ");
        }
        let mut n = 0;
        for r in 0..rows {
            let sep = if r == 0 { "(" } else { ", (" };
            dollar.push_str(sep);
            question.push_str(sep);
            for c in 0..self.cols {
                n += 1;
                let sep = if c == 0 { "" } else { ", " };
                let _ = write!(dollar, "{sep}${n}");
                question.push_str(sep);
                question.push('?');
            }
            dollar.push(')');
            question.push(')');
        }
        dollar.push_str(self.tail);
        question.push_str(self.tail);
        SharedText {
            dollar: Arc::from(dollar),
            question: Arc::from(question),
        }
    }
}

const HISTORY_COLS: usize = 5;
const RESOURCE_COLS: usize = 7;

static RESOURCE_INSERT: Insert = Insert::new(
    "INSERT INTO resource (rid, resource_type, id, version_id, last_updated, lu, deleted)",
    " ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id, \
     last_updated = excluded.last_updated, lu = excluded.lu, deleted = excluded.deleted",
    RESOURCE_COLS,
);
static HISTORY_INSERT: Insert = Insert::new(
    "INSERT INTO resource_history (rid, version_id, last_updated, deleted, body)",
    "",
    HISTORY_COLS,
);
static TOKEN_INSERT: Insert = Insert::index(
    "INSERT INTO search_token (resource_type, rid, param, system, code)",
    "INSERT OR IGNORE INTO search_token (resource_type, rid, param, system, code)",
    5,
);
static STRING_INSERT: Insert = Insert::index(
    "INSERT INTO search_string (resource_type, rid, param, value, raw)",
    "INSERT OR IGNORE INTO search_string (resource_type, rid, param, value, raw)",
    5,
);
static REFERENCE_INSERT: Insert = Insert::index(
    "INSERT INTO search_reference (resource_type, rid, param, ref_type, ref_id, ref_url)",
    "INSERT OR IGNORE INTO search_reference (resource_type, rid, param, ref_type, ref_id, ref_url)",
    6,
);
static DATE_INSERT: Insert = Insert::index(
    "INSERT INTO search_date (resource_type, rid, param, lo, hi)",
    "INSERT OR IGNORE INTO search_date (resource_type, rid, param, lo, hi)",
    5,
);

/// Multi-row INSERTs of the rows in `binds` (`insert.cols` values each), [`CHUNK_ROWS`] rows
/// at a time.
fn insert_rows(out: &mut Vec<Sql>, insert: &Insert, binds: Vec<Bind>) {
    let per_chunk = insert.cols * CHUNK_ROWS;
    let mut binds = binds.into_iter();
    loop {
        let chunk: Vec<Bind> = binds.by_ref().take(per_chunk).collect();
        if chunk.is_empty() {
            break;
        }
        out.push(Sql {
            text: String::new(),
            shared: Some(insert.text(chunk.len() / insert.cols)),
            binds: chunk,
            plan_per_values: false,
        });
    }
}

fn chunks<T: Clone>(it: impl Iterator<Item = T>, n: usize) -> impl Iterator<Item = Vec<T>> {
    let all: Vec<T> = it.collect();
    let v: Vec<Vec<T>> = all.chunks(n).map(<[T]>::to_vec).collect();
    v.into_iter()
}
