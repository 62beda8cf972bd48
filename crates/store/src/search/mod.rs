//! FHIR search: the typed query, its parsing from request parameters, and its translation to
//! SQL over the index tables.
//!
//! Every value from the request is bound as a parameter (`$n`); the SQL text only ever contains
//! table and column names chosen here. The first selective condition drives the query
//! (`r.rid IN (SELECT rid FROM index WHERE resource_type, param, value …)`, an index range scan)
//! and the others are checked per candidate with correlated `EXISTS` on the per-resource index,
//! so `Observation?patient=X&category=laboratory` reads the patient's rows, not every lab result.
//!
//! Where things live: the query and its parsing here, the SQL in `sql.rs`, the unit tests in
//! `tests.rs`.
//!
//! ```
//! use fhirgate_store::SearchQuery;
//!
//! let q = SearchQuery::from_pairs("Observation", [("patient", "Patient/1"), ("_count", "10")]).unwrap();
//! assert_eq!(q.count, Some(10));
//! ```

use serde_json::Value;

use crate::error::{Result, StoreError};

mod sql;

pub(crate) use sql::*;

/// Page size when the query names none.
pub const DEFAULT_COUNT: usize = 100;
/// The largest page a request's `_count` (or `_limit`) may ask for, whatever an EDN project's
/// `:max` says (issue 12: a limit a project cannot forget).
pub const MAX_COUNT: usize = 1000;

/// Most values (across all parameters) one search may carry: each is a bound parameter, and
/// SQLite allows 32,766 per statement.
const MAX_VALUES: usize = 1000;

/// Matches per `_include`/`_revinclude` statement.
const INCLUDE_CHUNK: usize = 1000;

/// A search on one resource type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    /// The type searched; any name (types that are neither R4 nor fhirgate's own have the
    /// common parameters only).
    pub resource_type: String,
    /// Conditions that must all hold (AND).
    pub params: Vec<Filter>,
    pub sort: Vec<SortKey>,
    /// Page size; `None` means [`DEFAULT_COUNT`]. `Some(0)` returns no resources (for `_total`).
    pub count: Option<usize>,
    /// Resources to skip: the paging position.
    pub offset: usize,
    pub total: TotalMode,
    /// `_include=Source:param[:Target]`.
    pub include: Vec<Include>,
    /// `_revinclude=Source:param[:Target]`.
    pub revinclude: Vec<Include>,
    /// Only resources in this Patient's compartment (R4 `CompartmentDefinition/patient`).
    pub patient_compartment: Option<String>,
}

/// One search parameter of the query: `name[:modifier]=v1,v2` (any value matches: OR).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The parameter's code (`patient`, `_id`, …).
    pub name: String,
    /// `exact`, `contains`, `not`, `missing`, or a type for references (`Patient`).
    pub modifier: Option<String>,
    /// Values as the request wrote them, FHIR `\` escapes included, date prefixes included.
    pub values: Vec<String>,
}

/// One `_sort` key: `_id`, `_lastUpdated`, or a date, string or token parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub param: String,
    /// `-param`: dates sort by their latest instant, descending.
    pub descending: bool,
}

/// `Source:param[:Target]` of `_include` / `_revinclude`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    /// A reference parameter of `source_type`.
    pub param: String,
    /// Only targets of this type.
    pub target_type: Option<String>,
}

/// `_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TotalMode {
    #[default]
    None,
    Estimate,
    Accurate,
}

/// One page of results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResult {
    /// The matches of this page, in order.
    pub matches: Vec<Value>,
    /// Resources pulled in by `_include`/`_revinclude` (each once, none of them a match).
    pub included: Vec<Value>,
    /// The number of matches across all pages, when `_total` asked for it.
    pub total: Option<u64>,
    /// The `offset` of the next page, if there is one.
    pub next_offset: Option<usize>,
}

/// Parameters that steer the result rather than filter it, handled above the store.
const RESULT_PARAMS: [&str; 6] = [
    "_format",
    "_summary",
    "_elements",
    "_pretty",
    "_contained",
    "_containedType",
];

impl SearchQuery {
    /// An unfiltered search of `resource_type`.
    pub fn new(resource_type: impl Into<String>) -> Self {
        SearchQuery {
            resource_type: resource_type.into(),
            ..Default::default()
        }
    }

    /// Add `name[:modifier]=values`.
    pub fn filter(mut self, name: &str, modifier: Option<&str>, values: &[&str]) -> Self {
        self.params.push(Filter {
            name: name.to_string(),
            modifier: modifier.map(str::to_string),
            values: values.iter().map(|v| v.to_string()).collect(),
        });
        self
    }

    /// Build a query from decoded request parameters (`name[:modifier]`, raw value).
    /// Unknown or unsupported parameters and malformed values are [`StoreError::Invalid`].
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        resource_type: &str,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        let mut q = SearchQuery::new(resource_type);
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            let (name, modifier) = match k.split_once(':') {
                Some((n, m)) => (n, Some(m)),
                None => (k, None),
            };
            match name {
                "_count" | "_limit" => q.count = Some(parse_usize(k, v)?.min(MAX_COUNT)),
                "_offset" => q.offset = parse_usize(k, v)?,
                "_total" => {
                    q.total = match v {
                        "none" => TotalMode::None,
                        "estimate" => TotalMode::Estimate,
                        "accurate" => TotalMode::Accurate,
                        _ => {
                            return Err(invalid(format!(
                                "_total must be none, estimate or accurate, not {v:?}"
                            )));
                        }
                    }
                }
                "_sort" => {
                    for key in v.split(',').filter(|s| !s.is_empty()) {
                        let (param, descending) = match key.strip_prefix('-') {
                            Some(p) => (p, true),
                            None => (key, false),
                        };
                        q.sort.push(SortKey {
                            param: param.to_string(),
                            descending,
                        });
                    }
                }
                "_include" | "_revinclude" => {
                    let mut parts = v.split(':');
                    let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
                        return Err(invalid(format!(
                            "{name} must be Type:param[:Target], not {v:?}"
                        )));
                    };
                    let inc = Include {
                        source_type: source.to_string(),
                        param: param.to_string(),
                        target_type: parts.next().map(str::to_string),
                    };
                    if name == "_include" {
                        q.include.push(inc)
                    } else {
                        q.revinclude.push(inc)
                    }
                }
                n if RESULT_PARAMS.contains(&n) => {}
                _ => q.params.push(Filter {
                    name: name.to_string(),
                    modifier: modifier.map(str::to_string),
                    values: split_values(v),
                }),
            }
        }
        q.validate()?;
        Ok(q)
    }

    /// Check every parameter, modifier, value and sort key against the type's definitions.
    pub fn validate(&self) -> Result<()> {
        let mut sql = Sql::default();
        build_where(self, &mut sql).map(|_| ())?;
        for k in &self.sort {
            sort_expr(&self.resource_type, k, &mut sql)?;
        }
        for inc in self.include.iter().chain(&self.revinclude) {
            reference_param(&inc.source_type, &inc.param)?;
        }
        Ok(())
    }
}

fn parse_usize(k: &str, v: &str) -> Result<usize> {
    v.parse()
        .map_err(|_| invalid(format!("{k} must be a non-negative integer, not {v:?}")))
}

fn invalid(msg: String) -> StoreError {
    StoreError::Invalid(msg)
}

/// Split on commas not escaped with `\` (FHIR search escaping); escapes stay for later steps.
fn split_values(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let cur = out.last_mut();
                if let Some(cur) = cur {
                    cur.push('\\');
                    cur.extend(chars.next());
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(cur) = out.last_mut() {
                    cur.push(c);
                }
            }
        }
    }
    out
}

/// Split a token on its first unescaped `|` and remove the escapes.
pub(crate) fn split_token(v: &str) -> (Option<String>, String) {
    let mut prev_backslash = false;
    for (i, c) in v.char_indices() {
        if c == '|' && !prev_backslash {
            return (Some(unescape(&v[..i])), unescape(&v[i + 1..]));
        }
        prev_backslash = c == '\\' && !prev_backslash;
    }
    (None, unescape(v))
}

pub(crate) fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
