//! Search's SQL: the WHERE clause from a [`SearchQuery`]'s filters (the first selective
//! condition drives, the others are correlated `EXISTS`), sorting, paging, counting, keyset
//! scans and `_include`/`_revinclude`. Every request value is a bind.
//!
//! ```
//! use fhirgate_store::SearchQuery;
//!
//! // the query the SQL is built from; its values become binds, never SQL text
//! let q = SearchQuery::from_pairs("Observation", [("code", "x' OR 1=1 --")]).unwrap();
//! assert_eq!(q.resource_type, "Observation");
//! ```

use std::sync::Arc;

use crate::date::{self, MAX_US, MIN_US};
use crate::error::{Result, StoreError};
use crate::fhirpath::split_reference;
use crate::index::{self, IndexKind, normalize};

use super::*;

/// A bound SQL value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    /// Shared, so that a value repeated on many rows (type, id, parameter name) is one
    /// allocation, which SQLite then binds without copying.
    Text(Arc<str>),
    Int(i64),
    Bool(bool),
    /// A JSON document, already serialized.
    Json(Arc<str>),
    /// SQL NULL in a JSON column (a deleted version's body).
    NullJson,
}

/// SQL text with `$n` placeholders and the values they stand for.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
    /// A statement made once and shared (the bulk INSERTs), instead of `text`.
    pub shared: Option<SharedText>,
    /// The best plan depends on the values bound (searches: which condition is selective).
    /// PostgreSQL plans such a statement for each execution (an unnamed statement, never
    /// cached); the others are prepared once per connection and may get PostgreSQL's generic
    /// plan, which saves the planning (most of a primary-key lookup's cost there).
    pub plan_per_values: bool,
}

/// One statement's text in both placeholder styles: `$n`, and SQLite's anonymous `?`, whose
/// binds are in order.
#[derive(Debug, Clone)]
pub(crate) struct SharedText {
    pub dollar: Arc<str>,
    pub question: Arc<str>,
}

impl Sql {
    /// Bind `value` and return its placeholder.
    pub fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    pub fn text(&mut self, value: impl Into<Arc<str>>) -> String {
        self.bind(Bind::Text(value.into()))
    }

    pub fn int(&mut self, value: i64) -> String {
        self.bind(Bind::Int(value))
    }
}

/// How one filter is expressed against its index table.
struct Cond {
    /// The index table, or `None` for a condition on the resource row itself.
    table: Option<&'static str>,
    param: String,
    /// Predicate over alias `s` (index tables) or `r` (resource row).
    pred: String,
    negated: bool,
    /// Lower is more selective; `None` cannot drive the query.
    rank: Option<u8>,
}

/// The WHERE clause (without the keyword) of a search; `$1` is the resource type.
pub(crate) fn build_where(q: &SearchQuery, sql: &mut Sql) -> Result<String> {
    sql.plan_per_values = true;
    let rt = sql.text(q.resource_type.as_str());
    debug_assert_eq!(rt, "$1");
    let conds = conditions(
        &q.resource_type,
        q.patient_compartment.as_deref(),
        &q.params,
        sql,
    )?;
    let driver = conds
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.negated)
        .filter_map(|(i, c)| c.rank.map(|r| (r, i)))
        .min()
        .map(|(_, i)| i);
    let mut clauses = vec![
        format!("r.resource_type = {rt}"),
        "r.deleted = FALSE".to_string(),
    ];
    clauses.extend(render(&conds, driver, &rt));
    Ok(clauses.join(" AND "))
}

/// The conditions of a search's compartment and filters, checked.
fn conditions(
    resource_type: &str,
    patient_compartment: Option<&str>,
    params: &[Filter],
    sql: &mut Sql,
) -> Result<Vec<Cond>> {
    if !resource_type.chars().all(|c| c.is_ascii_alphanumeric()) || resource_type.is_empty() {
        return Err(invalid(format!("{resource_type:?} is not a resource type")));
    }
    let values: usize = params.iter().map(|f| f.values.len()).sum();
    if values > MAX_VALUES {
        return Err(invalid(format!(
            "too many search values ({values}; at most {MAX_VALUES})"
        )));
    }
    let mut conds = Vec::with_capacity(params.len() + 1);
    if let Some(pid) = patient_compartment {
        conds.push(compartment_cond(resource_type, pid, sql)?);
    }
    for f in params {
        conds.push(filter_cond(resource_type, f, sql)?);
    }
    Ok(conds)
}

/// One SQL clause per condition over resource row `r`: the `driver` as an `r.rid IN (…)` range
/// of its index, the others as correlated `EXISTS` per candidate. `rt` is the placeholder of the
/// resource type.
fn render(conds: &[Cond], driver: Option<usize>, rt: &str) -> Vec<String> {
    let mut clauses = Vec::with_capacity(conds.len());
    for (i, c) in conds.iter().enumerate() {
        let Some(table) = c.table else {
            clauses.push(if c.negated {
                format!("NOT ({})", c.pred)
            } else {
                format!("({})", c.pred)
            });
            continue;
        };
        let param_filter = if c.param.is_empty() {
            String::new()
        } else {
            format!(" AND s.param = {}", c.param)
        };
        if Some(i) == driver {
            clauses.push(format!(
                "r.rid IN (SELECT s.rid FROM {table} s WHERE s.resource_type = {rt}{param_filter} AND ({}))",
                c.pred
            ));
        } else {
            clauses.push(format!(
                "{}EXISTS (SELECT 1 FROM {table} s WHERE s.rid = r.rid{param_filter} AND ({}))",
                if c.negated { "NOT " } else { "" },
                c.pred
            ));
        }
    }
    clauses
}

/// The query behind [`crate::Store::lookup`]: `(version_id, body)` of the live resource `id`
/// (taken literally, no search escapes) of `resource_type` when it is in `patient_compartment`
/// and matches every filter. The same conditions as [`build_where`] for
/// `_id=id&…filters` with that compartment, but the primary key drives: one row probed, each
/// condition checked on it.
pub(crate) fn lookup_sql(
    resource_type: &str,
    id: &str,
    patient_compartment: Option<&str>,
    filters: &[Filter],
) -> Result<Sql> {
    let mut sql = Sql::default();
    let rt = sql.text(resource_type);
    let idp = sql.text(id);
    let conds = conditions(resource_type, patient_compartment, filters, &mut sql)?;
    let mut text = format!(
        "SELECT r.version_id, h.body FROM resource r JOIN resource_history h ON {HISTORY_JOIN} \
         WHERE r.resource_type = {rt} AND r.id = {idp} AND r.deleted = FALSE"
    );
    for clause in render(&conds, None, &rt) {
        text.push_str(" AND ");
        text.push_str(&clause);
    }
    sql.text = text;
    Ok(sql)
}

fn compartment_cond(resource_type: &str, patient_id: &str, sql: &mut Sql) -> Result<Cond> {
    if resource_type == "Patient" {
        return Ok(Cond {
            table: None,
            param: String::new(),
            pred: format!("r.id = {}", sql.text(patient_id)),
            negated: false,
            rank: None,
        });
    }
    let params = fhirgate_fhir::patient_compartment_params(resource_type).unwrap_or_default();
    let params: Vec<String> = params
        .iter()
        .filter(|p| index::param(resource_type, p).is_some())
        .map(|p| sql.text(*p))
        .collect();
    if params.is_empty() {
        // Not in the compartment at all: nothing matches.
        return Ok(Cond {
            table: None,
            param: String::new(),
            pred: "1 = 0".into(),
            negated: false,
            rank: None,
        });
    }
    let pred = format!(
        "s.param IN ({}) AND s.ref_type = {} AND s.ref_id = {}",
        params.join(", "),
        sql.text("Patient"),
        sql.text(patient_id)
    );
    Ok(Cond {
        table: Some("search_reference"),
        param: String::new(),
        pred,
        negated: false,
        rank: Some(1),
    })
}

fn filter_cond(resource_type: &str, f: &Filter, sql: &mut Sql) -> Result<Cond> {
    if f.values.is_empty() || f.values.iter().any(|v| unescape(v).is_empty()) {
        return Err(invalid(format!(
            "search parameter {} has an empty value",
            f.name
        )));
    }
    let modifier = f.modifier.as_deref();
    if modifier == Some("missing") {
        let missing = match f.values.as_slice() {
            [v] if v == "true" => true,
            [v] if v == "false" => false,
            _ => return Err(invalid(format!("{}:missing must be true or false", f.name))),
        };
        if f.name == "_id" || f.name == "_lastUpdated" {
            return Ok(Cond {
                table: None,
                param: String::new(),
                pred: "1 = 1".into(),
                negated: missing,
                rank: None,
            });
        }
        let p = param_of(resource_type, &f.name)?;
        return Ok(Cond {
            table: Some(table_of(p.kind)),
            param: sql.text(p.code),
            pred: "1 = 1".into(),
            negated: missing,
            rank: None,
        });
    }
    match f.name.as_str() {
        "_id" => {
            no_modifier(f)?;
            let ids: Vec<String> = f.values.iter().map(|v| sql.text(unescape(v))).collect();
            return Ok(Cond {
                table: None,
                param: String::new(),
                pred: format!("r.id IN ({})", ids.join(", ")),
                negated: false,
                rank: None,
            });
        }
        "_lastUpdated" => {
            no_modifier(f)?;
            let mut alts = Vec::new();
            for v in &f.values {
                alts.push(date_pred(v, "r.lu", "(r.lu + 1)", sql)?);
            }
            return Ok(Cond {
                table: None,
                param: String::new(),
                pred: or(&alts),
                negated: false,
                rank: None,
            });
        }
        _ => {}
    }
    let p = param_of(resource_type, &f.name)?;
    let table = Some(table_of(p.kind));
    let param = sql.text(p.code);
    let mut alts = Vec::new();
    let (negated, rank) = match p.kind {
        IndexKind::Token | IndexKind::Uri => {
            let negated = match modifier {
                None => false,
                Some("not") if p.kind == IndexKind::Token => true,
                Some(m) => return Err(unsupported_modifier(f, m)),
            };
            for v in &f.values {
                let (system, code) = if p.kind == IndexKind::Uri {
                    (None, unescape(v))
                } else {
                    split_token(v)
                };
                let code = if p.fold_case {
                    index::fold_case(&code)
                } else {
                    code
                };
                alts.push(match (system, code.is_empty()) {
                    (None, _) => format!("s.code = {}", sql.text(code)),
                    (Some(s), true) => format!("s.system = {}", sql.text(s)),
                    (Some(s), false) => {
                        format!("s.code = {} AND s.system = {}", sql.text(code), sql.text(s))
                    }
                });
            }
            (negated, Some(2))
        }
        IndexKind::String => {
            for v in &f.values {
                let v = unescape(v);
                let norm = normalize(&v);
                alts.push(match modifier {
                    None => {
                        // Prefix match as a range, so it uses the index and `%`/`_` stay literal.
                        let hi = format!("{norm}{}", char::MAX);
                        format!(
                            "s.value >= {} AND s.value < {}",
                            sql.text(norm),
                            sql.text(hi)
                        )
                    }
                    Some("exact") => {
                        format!("s.value = {} AND s.raw = {}", sql.text(norm), sql.text(v))
                    }
                    Some("contains") => format!(
                        "s.value LIKE {} ESCAPE '\\'",
                        sql.text(format!("%{}%", like_escape(&norm)))
                    ),
                    Some(m) => return Err(unsupported_modifier(f, m)),
                });
            }
            (
                false,
                Some(if modifier == Some("exact") {
                    2
                } else if modifier.is_none() {
                    3
                } else {
                    9
                }),
            )
        }
        IndexKind::Reference => {
            let type_modifier = match modifier {
                None => None,
                Some(m)
                    if m.starts_with(|c: char| c.is_ascii_uppercase())
                        && m.chars().all(|c| c.is_ascii_alphanumeric()) =>
                {
                    Some(m)
                }
                Some(m) => return Err(unsupported_modifier(f, m)),
            };
            for v in &f.values {
                let v = unescape(v);
                let (ty, id, url) = parse_reference_value(&f.name, &v)?;
                let ty = ty.or(type_modifier.map(str::to_string));
                alts.push(match (ty, id, url) {
                    (Some(t), Some(id), _) => format!(
                        "s.ref_id = {} AND s.ref_type = {}",
                        sql.text(id),
                        sql.text(t)
                    ),
                    (None, Some(id), _) => format!("s.ref_id = {}", sql.text(id)),
                    (_, None, Some(url)) => format!("s.ref_url = {}", sql.text(url)),
                    _ => return Err(invalid(format!("bad reference {v:?} for {}", f.name))),
                });
            }
            (false, Some(1))
        }
        IndexKind::Date => {
            if let Some(m) = modifier {
                return Err(unsupported_modifier(f, m));
            }
            for v in &f.values {
                alts.push(date_pred(v, "s.lo", "s.hi", sql)?);
            }
            (false, Some(4))
        }
    };
    Ok(Cond {
        table,
        param,
        pred: or(&alts),
        negated,
        rank,
    })
}

/// `(type, id, url)` of a reference search value: `id`, `Type/id`, an absolute URL or a URN.
fn parse_reference_value(
    name: &str,
    v: &str,
) -> Result<(Option<String>, Option<String>, Option<String>)> {
    if v.contains("://") || v.starts_with("urn:") {
        return Ok(match split_reference(v) {
            Some((t, id)) => (Some(t), Some(id), None),
            None => (None, None, Some(v.to_string())),
        });
    }
    if v.contains('/') {
        return match split_reference(v) {
            Some((t, id)) => Ok((Some(t), Some(id), None)),
            None => Err(invalid(format!(
                "bad reference {v:?} for {name}: expected id, Type/id or a URL"
            ))),
        };
    }
    Ok((None, Some(v.to_string()), None))
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn or(alts: &[String]) -> String {
    if alts.len() == 1 {
        alts[0].clone()
    } else {
        alts.iter()
            .map(|a| format!("({a})"))
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

fn no_modifier(f: &Filter) -> Result<()> {
    match &f.modifier {
        None => Ok(()),
        Some(m) => Err(unsupported_modifier(f, m)),
    }
}

fn unsupported_modifier(f: &Filter, m: &str) -> StoreError {
    invalid(format!("modifier :{m} is not supported on {}", f.name))
}

fn param_of(resource_type: &str, name: &str) -> Result<&'static index::CompiledParam> {
    index::param(resource_type, name).ok_or_else(|| {
        if fhirgate_fhir::search_param(resource_type, name).is_some() {
            invalid(format!(
                "search parameter {name} of {resource_type} is not supported"
            ))
        } else {
            invalid(format!(
                "unknown search parameter {name} for {resource_type}"
            ))
        }
    })
}

pub(super) fn reference_param(
    resource_type: &str,
    name: &str,
) -> Result<&'static index::CompiledParam> {
    let p = param_of(resource_type, name)?;
    if p.kind != IndexKind::Reference {
        return Err(invalid(format!(
            "{resource_type}:{name} is not a reference parameter"
        )));
    }
    Ok(p)
}

pub(crate) fn table_of(kind: IndexKind) -> &'static str {
    match kind {
        IndexKind::Token | IndexKind::Uri => "search_token",
        IndexKind::String => "search_string",
        IndexKind::Reference => "search_reference",
        IndexKind::Date => "search_date",
    }
}

/// A date comparison (`ge2020-01`) of the search range against `[lo, hi)` columns.
fn date_pred(v: &str, lo: &str, hi: &str, sql: &mut Sql) -> Result<String> {
    let (prefix, rest) = match v.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => (p, &v[2..]),
        _ => ("eq", v),
    };
    let (ps, pe) = date::parse_range(rest).ok_or_else(|| {
        invalid(format!(
            "bad date {v:?}: expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss][zone]]]]"
        ))
    })?;
    let (ps, pe) = (sql.int(ps), sql.int(pe));
    let within = format!("{lo} >= {ps} AND {hi} <= {pe}");
    Ok(match prefix {
        "eq" => within,
        "ne" => format!("NOT ({within})"),
        "gt" => format!("{hi} > {pe}"),
        "lt" => format!("{lo} < {ps}"),
        "ge" => format!("{hi} > {pe} OR ({within})"),
        "le" => format!("{lo} < {ps} OR ({within})"),
        "sa" => format!("{lo} >= {pe}"),
        "eb" => format!("{hi} <= {ps}"),
        _ => format!("{lo} < {pe} AND {hi} > {ps}"), // ap: overlaps
    })
}

/// An ORDER BY term for one sort key.
pub(crate) fn sort_expr(resource_type: &str, k: &SortKey, sql: &mut Sql) -> Result<String> {
    let dir = if k.descending { "DESC" } else { "ASC" };
    Ok(match k.param.as_str() {
        "_id" => format!("r.id {dir}"),
        "_lastUpdated" => format!("r.lu {dir}"),
        name => {
            let p = param_of(resource_type, name)?;
            let param = sql.text(p.code);
            let corr = "s.rid = r.rid AND s.param =";
            match p.kind {
                IndexKind::Date if k.descending => {
                    format!(
                        "COALESCE((SELECT MAX(s.hi) FROM search_date s WHERE {corr} {param}), {MIN_US}) DESC"
                    )
                }
                IndexKind::Date => format!(
                    "COALESCE((SELECT MIN(s.lo) FROM search_date s WHERE {corr} {param}), {MAX_US}) ASC"
                ),
                IndexKind::String | IndexKind::Token | IndexKind::Uri => {
                    let (col, table) = if p.kind == IndexKind::String {
                        ("value", "search_string")
                    } else {
                        ("code", "search_token")
                    };
                    let agg = if k.descending { "MAX" } else { "MIN" };
                    let sub =
                        format!("(SELECT {agg}(s.{col}) FROM {table} s WHERE {corr} {param})");
                    format!("({sub} IS NULL) ASC, {sub} {dir}")
                }
                IndexKind::Reference => {
                    return Err(invalid(format!(
                        "cannot sort by reference parameter {name}"
                    )));
                }
            }
        }
    })
}

/// The current body of resource row `r`.
const HISTORY_JOIN: &str = "h.rid = r.rid AND h.version_id = r.version_id";

/// The page query: `SELECT h.body …` with sort, limit (one more than the page, to tell
/// whether a next page exists) and offset.
pub(crate) fn page_sql(q: &SearchQuery) -> Result<Sql> {
    let mut sql = Sql::default();
    let w = build_where(q, &mut sql)?;
    let mut order = Vec::new();
    for k in &q.sort {
        order.push(sort_expr(&q.resource_type, k, &mut sql)?);
    }
    order.push("r.id ASC".into());
    let count = q.count.unwrap_or(DEFAULT_COUNT);
    let limit = sql.int(i64::try_from(count.saturating_add(1)).unwrap_or(i64::MAX));
    let offset = sql.int(i64::try_from(q.offset).unwrap_or(i64::MAX));
    sql.text = format!(
        "SELECT h.body FROM resource r JOIN resource_history h ON {HISTORY_JOIN} WHERE {w} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        order.join(", ")
    );
    Ok(sql)
}

/// The keyset scan behind [`crate::Store::scan`]: `(rid, body)` of the matches of `q`'s filters
/// and compartment with `rid > after`, in rid order, at most `limit`.
pub(crate) fn scan_sql(q: &SearchQuery, after: i64, limit: usize) -> Result<Sql> {
    let mut sql = Sql::default();
    let w = build_where(q, &mut sql)?;
    let after = sql.int(after);
    let limit = sql.int(i64::try_from(limit).unwrap_or(i64::MAX));
    sql.text = format!(
        "SELECT r.rid, h.body FROM resource r JOIN resource_history h ON {HISTORY_JOIN} WHERE {w} AND r.rid > {after} ORDER BY r.rid LIMIT {limit}"
    );
    Ok(sql)
}

/// The query behind [`crate::Store::scan_deleted`]: `(rid, id, last_updated, last live body)`.
pub(crate) fn deleted_sql(
    resource_type: &str,
    since: &str,
    until: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<Sql> {
    let bad = |v: &str| invalid(format!("bad instant {v:?}"));
    let (since_us, _) = date::parse_range(since).ok_or_else(|| bad(since))?;
    let mut sql = Sql {
        plan_per_values: true,
        ..Sql::default()
    };
    let rt = sql.text(resource_type);
    let since_p = sql.int(since_us);
    let mut text = format!(
        "SELECT r.rid, r.id, r.last_updated, (SELECT h.body FROM resource_history h WHERE h.rid = r.rid AND h.deleted = FALSE ORDER BY h.version_id DESC LIMIT 1) \
         FROM resource r WHERE r.resource_type = {rt} AND r.deleted = TRUE AND r.version_id > 0 AND r.lu >= {since_p}"
    );
    if let Some(u) = until {
        let (_, until_end) = date::parse_range(u).ok_or_else(|| bad(u))?;
        let until_p = sql.int(until_end);
        text.push_str(&format!(" AND r.lu < {until_p}"));
    }
    let after = sql.int(after);
    let limit = sql.int(i64::try_from(limit).unwrap_or(i64::MAX));
    text.push_str(&format!(
        " AND r.rid > {after} ORDER BY r.rid LIMIT {limit}"
    ));
    sql.text = text;
    Ok(sql)
}

/// `SELECT COUNT(*)` of all matches, for `_total=accurate`.
pub(crate) fn count_sql(q: &SearchQuery) -> Result<Sql> {
    let mut sql = Sql::default();
    let w = build_where(q, &mut sql)?;
    sql.text = format!("SELECT COUNT(*) FROM resource r WHERE {w}");
    Ok(sql)
}

/// Queries returning `(resource_type, id, body)` of the resources that `_include` and
/// `_revinclude` pull in for the matches `ids` (all of type `q.resource_type`).
pub(crate) fn include_sql(q: &SearchQuery, ids: &[String]) -> Result<Vec<Sql>> {
    let mut out = Vec::new();
    // Keep each statement's binds well under the backends' limits, whatever the page size.
    for chunk in ids.chunks(INCLUDE_CHUNK) {
        out.extend(include_chunk(q, chunk)?);
    }
    Ok(out)
}

fn include_chunk(q: &SearchQuery, ids: &[String]) -> Result<Vec<Sql>> {
    let mut out = Vec::new();
    for inc in &q.include {
        let p = reference_param(&inc.source_type, &inc.param)?;
        if inc.source_type != q.resource_type {
            continue; // applies to matches of another type: none here
        }
        let mut sql = Sql {
            plan_per_values: true,
            ..Sql::default()
        };
        let (rt, param) = (sql.text(q.resource_type.as_str()), sql.text(p.code));
        let list: Vec<String> = ids.iter().map(|id| sql.text(id.as_str())).collect();
        let target = match &inc.target_type {
            Some(t) => format!(" AND s.ref_type = {}", sql.text(t.as_str())),
            None => String::new(),
        };
        sql.text = format!(
            "SELECT t.resource_type, t.id, h.body FROM resource m \
             JOIN search_reference s ON s.rid = m.rid \
             JOIN resource t ON t.resource_type = s.ref_type AND t.id = s.ref_id \
             JOIN resource_history h ON h.rid = t.rid AND h.version_id = t.version_id \
             WHERE m.resource_type = {rt} AND m.id IN ({}) AND s.param = {param}{target} AND t.deleted = FALSE",
            list.join(", ")
        );
        out.push(sql);
    }
    for inc in &q.revinclude {
        let p = reference_param(&inc.source_type, &inc.param)?;
        if inc
            .target_type
            .as_deref()
            .is_some_and(|t| t != q.resource_type)
        {
            continue;
        }
        let mut sql = Sql {
            plan_per_values: true,
            ..Sql::default()
        };
        let (src, param, target) = (
            sql.text(inc.source_type.as_str()),
            sql.text(p.code),
            sql.text(q.resource_type.as_str()),
        );
        let list: Vec<String> = ids.iter().map(|id| sql.text(id.as_str())).collect();
        sql.text = format!(
            "SELECT t.resource_type, t.id, h.body FROM search_reference s \
             JOIN resource t ON t.rid = s.rid \
             JOIN resource_history h ON h.rid = t.rid AND h.version_id = t.version_id \
             WHERE s.resource_type = {src} AND s.param = {param} AND s.ref_type = {target} AND s.ref_id IN ({}) AND t.deleted = FALSE",
            list.join(", ")
        );
        out.push(sql);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> SearchQuery {
        let pairs = p.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        SearchQuery::from_pairs("Observation", pairs).expect("query")
    }

    #[test]
    fn searches_are_planned_for_their_values_and_key_lookups_are_not() {
        let q = pairs(&[
            ("patient", "pt-1"),
            ("category", "laboratory"),
            ("_include", "Observation:patient"),
            ("_revinclude", "Provenance:target"),
        ]);
        assert!(page_sql(&q).expect("page").plan_per_values);
        assert!(count_sql(&q).expect("count").plan_per_values);
        assert!(scan_sql(&q, 0, 10).expect("scan").plan_per_values);
        assert!(
            deleted_sql("Observation", "2020-01-01", None, 0, 10)
                .expect("deleted")
                .plan_per_values
        );
        let includes = include_sql(&q, &["o1".to_string()]).expect("include");
        assert_eq!(includes.len(), 2, "one _include and one _revinclude");
        assert!(includes.iter().all(|s| s.plan_per_values));
        // a lookup is driven by the primary key whatever its values: its plan may be kept
        let filters = [Filter {
            name: "category".into(),
            modifier: None,
            values: vec!["laboratory".into()],
        }];
        let lookup = lookup_sql("Observation", "o1", Some("pt-1"), &filters).expect("lookup");
        assert!(!lookup.plan_per_values);
    }
}
