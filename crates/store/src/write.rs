//! Writes as plans: validate and index outside the transaction, then turn the batch and the
//! current versions into a few multi-row statements.
//!
//! Both backends run the same plan; batching many rows per statement is what makes bulk loads
//! fast (one statement per table per chunk instead of one per index row).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{Result, StoreError};
use crate::index::{self, IndexRows};
use crate::search::{Bind, Sql};

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
    Delete {
        resource_type: String,
        id: String,
    },
}

pub(crate) type Key = (String, String);

#[derive(Debug)]
pub(crate) struct Prepared {
    key: Key,
    kind: Kind,
    /// The resource as given, with `id` set (not yet stamped with meta).
    body: Option<Value>,
    rows: IndexRows,
}

#[derive(Debug, Clone)]
enum Kind {
    Create,
    Put(Option<String>),
    Delete,
}

/// The current state of a resource inside the write transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current {
    /// 0 for a row this transaction only claimed (PostgreSQL): no resource yet.
    pub version: i64,
    pub deleted: bool,
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

/// Validate, assign ids and extract index rows: the CPU work, done before the transaction.
pub(crate) fn prepare(ops: Vec<Op>) -> Result<Vec<Prepared>> {
    ops.into_iter()
        .map(|op| match op {
            Op::Delete { resource_type, id } => {
                check_type(&resource_type)?;
                check_id(&id)?;
                Ok(Prepared {
                    key: (resource_type, id),
                    kind: Kind::Delete,
                    body: None,
                    rows: IndexRows::default(),
                })
            }
            Op::Create(v) => with_body(v, Kind::Create),
            Op::Put { resource, if_match } => {
                if resource.get("id").is_none() {
                    return Err(StoreError::Invalid(
                        "an update needs the resource's id".into(),
                    ));
                }
                with_body(resource, Kind::Put(if_match))
            }
        })
        .collect()
}

fn with_body(mut v: Value, kind: Kind) -> Result<Prepared> {
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
    Ok(Prepared {
        key: (rt, id),
        kind,
        body: Some(v),
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

/// `SELECT resource_type, id, version_id, deleted` of the keys, per type and chunk.
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
                "SELECT resource_type, id, version_id, deleted FROM resource WHERE resource_type = {rt} AND id IN ({}) ORDER BY id{for_update}",
                ids.join(", ")
            );
            out.push(sql);
        }
    }
    out
}

/// The final state of one key after the batch.
struct Final {
    rt: Arc<str>,
    id: Arc<str>,
    version: i64,
    deleted: bool,
    /// Index rows of the final version (none when deleted).
    rows: IndexRows,
    /// Whether index rows from before the batch must go.
    had_rows: bool,
}

/// Apply the batch to `current` (as read under lock) and return the statements to run and
/// what each op did (`None` for a delete that found nothing to delete).
pub(crate) fn plan(
    prepared: Vec<Prepared>,
    mut current: HashMap<Key, Current>,
) -> Result<(Vec<Sql>, Vec<Option<Stored>>)> {
    let (now, now_us) = crate::date::now();
    let now_arc: Arc<str> = Arc::from(now.as_str());
    let mut finals: BTreeMap<Key, Final> = BTreeMap::new();
    let mut history: Vec<Vec<Bind>> = Vec::new();
    let mut outcomes = Vec::with_capacity(prepared.len());
    for p in prepared {
        let (rt, id) = p.key.clone();
        let cur = current.get(&p.key).copied().filter(|c| c.version > 0);
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
            Kind::Delete if live.is_none() => {
                outcomes.push(None);
                continue;
            }
            _ => {}
        }
        let version = cur.map_or(1, |c| c.version + 1);
        let vid = version.to_string();
        let deleted = matches!(p.kind, Kind::Delete);
        let mut body = p
            .body
            .unwrap_or_else(|| serde_json::json!({"resourceType": rt, "id": id}));
        stamp(&mut body, &vid, &now);
        let text: Arc<str> = Arc::from(
            serde_json::to_string(&body)
                .map_err(|e| StoreError::Invalid(format!("unserializable resource: {e}")))?,
        );
        let (rt_arc, id_arc): (Arc<str>, Arc<str>) =
            (Arc::from(rt.as_str()), Arc::from(id.as_str()));
        history.push(vec![
            Bind::Text(rt_arc.clone()),
            Bind::Text(id_arc.clone()),
            Bind::Int(version),
            Bind::Text(now_arc.clone()),
            Bind::Bool(deleted),
            if deleted {
                Bind::NullJson
            } else {
                Bind::Json(text)
            },
        ]);
        outcomes.push(Some(Stored {
            resource_type: rt,
            id,
            version_id: vid,
            last_updated: now.clone(),
            created: live.is_none(),
            resource: (!deleted).then_some(body),
        }));
        current.insert(p.key.clone(), Current { version, deleted });
        let had_rows = finals
            .get(&p.key)
            .map_or(cur.is_some_and(|c| !c.deleted), |f| f.had_rows);
        let rows = if deleted {
            IndexRows::default()
        } else {
            p.rows
        };
        finals.insert(
            p.key,
            Final {
                rt: rt_arc,
                id: id_arc,
                version,
                deleted,
                rows,
                had_rows,
            },
        );
    }
    Ok((statements(finals, history, now_arc, now_us), outcomes))
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

fn statements(
    finals: BTreeMap<Key, Final>,
    history: Vec<Vec<Bind>>,
    now: Arc<str>,
    now_us: i64,
) -> Vec<Sql> {
    let mut out = Vec::new();
    let resource_rows = finals.values().map(|f| {
        vec![
            Bind::Text(f.rt.clone()),
            Bind::Text(f.id.clone()),
            Bind::Int(f.version),
            Bind::Text(now.clone()),
            Bind::Int(now_us),
            Bind::Bool(f.deleted),
        ]
    });
    insert_rows(
        &mut out,
        "INSERT INTO resource (resource_type, id, version_id, last_updated, lu, deleted) VALUES",
        " ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id, last_updated = excluded.last_updated, \
         lu = excluded.lu, deleted = excluded.deleted",
        resource_rows,
    );
    insert_rows(
        &mut out,
        "INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, body) VALUES",
        "",
        history.into_iter(),
    );
    // Old index rows of resources that had any, per type.
    let mut stale: BTreeMap<&str, Vec<&Arc<str>>> = BTreeMap::new();
    for ((t, _), f) in &finals {
        if f.had_rows {
            stale.entry(t).or_default().push(&f.id);
        }
    }
    delete_index_rows(&mut out, stale);
    insert_index_rows(&mut out, finals.into_values().map(|f| (f.rt, f.id, f.rows)));
    out
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

/// `SELECT id, body` of the current versions of resources `ids` of type `rt`.
pub(crate) fn current_bodies_sql(rt: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::default();
    let rt = sql.text(rt);
    let ids: Vec<String> = ids.iter().map(|id| sql.text(id.as_str())).collect();
    sql.text = format!(
        "SELECT r.id, h.body FROM resource r \
         JOIN resource_history h ON h.resource_type = r.resource_type AND h.id = r.id AND h.version_id = r.version_id \
         WHERE r.resource_type = {rt} AND r.deleted = FALSE AND r.id IN ({})",
        ids.join(", ")
    );
    sql
}

/// Statements that rebuild the index rows of live resources of type `rt` from their current
/// bodies (`(id, body)`), writing no new version: for [`crate::own_params`] changes.
pub(crate) fn reindex_sql(rt: &str, bodies: Vec<(String, Value)>) -> Vec<Sql> {
    let rt_arc: Arc<str> = Arc::from(rt);
    let rows: Vec<(Arc<str>, Arc<str>, IndexRows)> = bodies
        .into_iter()
        .map(|(id, body)| {
            let rows = index::extract(rt, &body);
            (rt_arc.clone(), Arc::from(id.as_str()), rows)
        })
        .collect();
    let mut out = Vec::new();
    let mut stale: BTreeMap<&str, Vec<&Arc<str>>> = BTreeMap::new();
    stale.insert(rt, rows.iter().map(|r| &r.1).collect());
    delete_index_rows(&mut out, stale);
    insert_index_rows(&mut out, rows.into_iter());
    out
}

/// DELETE every index row of the given resources (ids per type).
fn delete_index_rows(out: &mut Vec<Sql>, stale: BTreeMap<&str, Vec<&Arc<str>>>) {
    for (t, ids) in stale {
        for chunk in ids.chunks(CHUNK_ROWS) {
            for table in [
                "search_token",
                "search_string",
                "search_reference",
                "search_date",
            ] {
                let mut sql = Sql::default();
                let rt = sql.text(t);
                let ids: Vec<String> = chunk
                    .iter()
                    .map(|id| sql.bind(Bind::Text(Arc::clone(id))))
                    .collect();
                sql.text = format!(
                    "DELETE FROM {table} WHERE resource_type = {rt} AND id IN ({})",
                    ids.join(", ")
                );
                out.push(sql);
            }
        }
    }
}

/// INSERT the index rows of resources `(type, id, rows)`.
fn insert_index_rows(
    out: &mut Vec<Sql>,
    resources: impl Iterator<Item = (Arc<str>, Arc<str>, IndexRows)>,
) {
    // Parameter names repeat on every row: share one allocation per name.
    let mut names: HashMap<&'static str, Arc<str>> = HashMap::new();
    let mut name =
        |p: &'static str| Bind::Text(names.entry(p).or_insert_with(|| Arc::from(p)).clone());
    let mut tokens = Vec::new();
    let mut strings = Vec::new();
    let mut refs = Vec::new();
    let mut dates = Vec::new();
    for (rt, id, rows) in resources {
        let key = || [Bind::Text(rt.clone()), Bind::Text(id.clone())];
        for (p, system, code) in rows.tokens {
            tokens.push(
                [
                    key().as_slice(),
                    &[name(p), Bind::Text(system.into()), Bind::Text(code.into())],
                ]
                .concat(),
            );
        }
        for (p, value, raw) in rows.strings {
            strings.push(
                [
                    key().as_slice(),
                    &[name(p), Bind::Text(value.into()), Bind::Text(raw.into())],
                ]
                .concat(),
            );
        }
        for (p, ref_type, rid, url) in rows.references {
            refs.push(
                [
                    key().as_slice(),
                    &[
                        name(p),
                        Bind::Text(ref_type.into()),
                        Bind::Text(rid.into()),
                        Bind::Text(url.into()),
                    ],
                ]
                .concat(),
            );
        }
        for (p, lo, hi) in rows.dates {
            dates.push([key().as_slice(), &[name(p), Bind::Int(lo), Bind::Int(hi)]].concat());
        }
    }
    let tables = [
        (
            "INSERT INTO search_token (resource_type, id, param, system, code) VALUES",
            tokens,
        ),
        (
            "INSERT INTO search_string (resource_type, id, param, value, raw) VALUES",
            strings,
        ),
        (
            "INSERT INTO search_reference (resource_type, id, param, ref_type, ref_id, ref_url) VALUES",
            refs,
        ),
        (
            "INSERT INTO search_date (resource_type, id, param, lo, hi) VALUES",
            dates,
        ),
    ];
    for (head, rows) in tables {
        insert_rows(out, head, "", rows.into_iter());
    }
}

/// Multi-row INSERTs of `rows`, [`CHUNK_ROWS`] at a time.
fn insert_rows(out: &mut Vec<Sql>, head: &str, tail: &str, rows: impl Iterator<Item = Vec<Bind>>) {
    let mut sql = Sql::default();
    let mut tuples: Vec<String> = Vec::new();
    let flush = |sql: &mut Sql, tuples: &mut Vec<String>, out: &mut Vec<Sql>| {
        if !tuples.is_empty() {
            let mut done = std::mem::take(sql);
            done.text = format!("{head} {}{tail}", tuples.join(", "));
            tuples.clear();
            out.push(done);
        }
    };
    for row in rows {
        let ph: Vec<String> = row.into_iter().map(|b| sql.bind(b)).collect();
        tuples.push(format!("({})", ph.join(", ")));
        if tuples.len() >= CHUNK_ROWS {
            flush(&mut sql, &mut tuples, out);
        }
    }
    flush(&mut sql, &mut tuples, out);
}

fn chunks<T: Clone>(it: impl Iterator<Item = T>, n: usize) -> impl Iterator<Item = Vec<T>> {
    let all: Vec<T> = it.collect();
    let v: Vec<Vec<T>> = all.chunks(n).map(<[T]>::to_vec).collect();
    v.into_iter()
}
