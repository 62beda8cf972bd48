//! Search index rows extracted from a resource on every write.
//!
//! Each supported R4 search parameter of the resource's type is evaluated with the FHIRPath
//! subset in [`crate::fhirpath`], and every value it selects becomes a row in one of four tables
//! (token, string, reference, date). Parameters that cannot be indexed faithfully are listed by
//! [`unsupported_params`] rather than indexed approximately. fhirgate's own types (`User`,
//! `Role`, …) have a few hand-written parameters besides the common ones: see
//! [`crate::own_params`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use fhirgate_fhir::SearchParamType;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::date::{self, MAX_US, MIN_US};
use crate::fhirpath::{self, Expr, Node};
use crate::own_params;

/// Longest indexed string, in characters: keeps index entries under PostgreSQL's B-tree limit.
const MAX_STRING_CHARS: usize = 512;

/// The kinds of index the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexKind {
    Token,
    String,
    Reference,
    Date,
    /// `uri` parameters: exact matches, kept in the token table without a system.
    Uri,
}

#[derive(Debug)]
pub(crate) struct CompiledParam {
    pub code: &'static str,
    pub kind: IndexKind,
    pub expr: Expr,
    /// Token codes indexed and searched lowercased (see [`fold_case`]).
    pub fold_case: bool,
}

/// A search parameter the store does not index, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedParam {
    pub resource_type: String,
    pub code: String,
    pub reason: String,
}

/// The compiled search parameters of one resource type (its own and the common ones).
struct TypeParams {
    params: Vec<CompiledParam>,
    unsupported: Vec<UnsupportedParam>,
}

/// `_id` and `_lastUpdated` are columns of the resource table, not index rows.
fn is_column_param(code: &str) -> bool {
    matches!(code, "_id" | "_lastUpdated")
}

/// Compiled once per type and kept for the life of the process; only R4 types and fhirgate's
/// own types get their own entry (others share the `Resource`/`DomainResource` parameters), so
/// the cache stays bounded whatever types clients write.
fn type_params(resource_type: &str) -> &'static TypeParams {
    static CACHE: OnceLock<RwLock<HashMap<String, &'static TypeParams>>> = OnceLock::new();
    let key = if fhirgate_fhir::is_resource_type(resource_type)
        || own_params::is_own_type(resource_type)
    {
        resource_type
    } else {
        "DomainResource"
    };
    let cache = CACHE.get_or_init(Default::default);
    if let Some(tp) = cache.read().unwrap_or_else(|e| e.into_inner()).get(key) {
        return tp;
    }
    let mut params: Vec<CompiledParam> = Vec::new();
    let mut unsupported = Vec::new();
    // Hand-written definitions first (there are none for R4 types), then the R4 ones.
    let own = own_params::own_params(key).map(|p| {
        let def = fhirgate_fhir::SearchParam {
            kind: p.kind,
            expression: Some(p.expression.to_string()),
            target: Vec::new(),
            url: String::new(),
        };
        (p.code, Cow::Owned(def), p.case_insensitive)
    });
    let r4 = fhirgate_fhir::search_params(key).map(|(code, p)| (code, Cow::Borrowed(p), false));
    for (code, p, fold_case) in own.chain(r4) {
        if is_column_param(code)
            || params.iter().any(|q| q.code == code)
            || unsupported
                .iter()
                .any(|u: &UnsupportedParam| u.code == code)
        {
            continue;
        }
        match compile(&p) {
            Ok((kind, expr)) => params.push(CompiledParam {
                code,
                kind,
                expr,
                fold_case: fold_case && kind == IndexKind::Token,
            }),
            Err(reason) => unsupported.push(UnsupportedParam {
                resource_type: key.to_string(),
                code: code.to_string(),
                reason,
            }),
        }
    }
    let mut w = cache.write().unwrap_or_else(|e| e.into_inner());
    w.entry(key.to_string()).or_insert_with(|| {
        Box::leak(Box::new(TypeParams {
            params,
            unsupported,
        }))
    })
}

fn compile(p: &fhirgate_fhir::SearchParam) -> Result<(IndexKind, Expr), String> {
    let kind = match p.kind {
        SearchParamType::Token => IndexKind::Token,
        SearchParamType::String => IndexKind::String,
        SearchParamType::Reference => IndexKind::Reference,
        SearchParamType::Date => IndexKind::Date,
        SearchParamType::Uri => IndexKind::Uri,
        other => return Err(format!("{other:?} parameters are not indexed")),
    };
    let src = p.expression.as_deref().ok_or("no FHIRPath expression")?;
    let expr = fhirpath::parse(src).map_err(|e| format!("expression {src:?}: {e}"))?;
    Ok((kind, expr))
}

/// The indexed parameter `code` of `resource_type`, if the store can search it.
pub(crate) fn param(resource_type: &str, code: &str) -> Option<&'static CompiledParam> {
    type_params(resource_type)
        .params
        .iter()
        .find(|p| p.code == code)
}

/// The R4 search parameters of `resource_type` that the store cannot search, with the reason.
pub fn unsupported_params(resource_type: &str) -> &'static [UnsupportedParam] {
    &type_params(resource_type).unsupported
}

/// Index rows of one resource.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct IndexRows {
    /// (param, system, code)
    pub tokens: Vec<(&'static str, String, String)>,
    /// (param, normalized, raw)
    pub strings: Vec<(&'static str, String, String)>,
    /// (param, ref_type, ref_id, ref_url)
    pub references: Vec<(&'static str, String, String, String)>,
    /// (param, lo, hi)
    pub dates: Vec<(&'static str, i64, i64)>,
}

/// Extract the index rows of `resource` (whose `resourceType` is `resource_type`).
pub(crate) fn extract(resource_type: &str, resource: &Value) -> IndexRows {
    let mut rows = IndexRows::default();
    for p in &type_params(resource_type).params {
        for node in fhirpath::eval(&p.expr, resource) {
            add(&mut rows, p, node);
        }
    }
    rows.tokens.sort();
    rows.tokens.dedup();
    rows.strings.sort();
    rows.strings.dedup();
    rows.references.sort();
    rows.references.dedup();
    rows.dates.sort();
    rows.dates.dedup();
    rows
}

fn add(rows: &mut IndexRows, p: &CompiledParam, node: Node<'_>) {
    let v = node.value;
    match p.kind {
        IndexKind::Token => {
            let from = rows.tokens.len();
            token_rows(p.code, v, &mut rows.tokens);
            if p.fold_case {
                for t in &mut rows.tokens[from..] {
                    t.2 = fold_case(&t.2);
                }
            }
        }
        IndexKind::Uri => {
            if let Some(s) = v.as_str() {
                rows.tokens.push((p.code, String::new(), s.to_string()));
            }
        }
        IndexKind::String => string_rows(p.code, v, &mut rows.strings),
        IndexKind::Reference => {
            if let Some(r) = reference_row(v) {
                rows.references.push((p.code, r.0, r.1, r.2));
            }
        }
        IndexKind::Date => date_rows(p.code, v, &mut rows.dates),
    }
}

fn token_rows(code: &'static str, v: &Value, out: &mut Vec<(&'static str, String, String)>) {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    match v {
        Value::String(x) => out.push((code, String::new(), x.clone())),
        Value::Bool(b) => out.push((code, String::new(), b.to_string())),
        Value::Number(n) => out.push((code, String::new(), n.to_string())),
        Value::Object(m) => {
            if let Some(Value::Array(codings)) = m.get("coding") {
                // CodeableConcept
                for c in codings {
                    token_rows(code, c, out);
                }
            } else if m.contains_key("value") {
                // Identifier, ContactPoint
                out.push((code, s(m.get("system")), s(m.get("value"))));
            } else if m.contains_key("code") || m.contains_key("system") {
                // Coding
                out.push((code, s(m.get("system")), s(m.get("code"))));
            }
        }
        _ => {}
    }
}

/// Fields of complex string targets (HumanName, Address) that are not searchable text.
const NOT_TEXT: [&str; 4] = ["use", "type", "id", "period"];

fn string_rows(code: &'static str, v: &Value, out: &mut Vec<(&'static str, String, String)>) {
    match v {
        Value::String(s) => push_string(code, s, out),
        Value::Object(m) => {
            for (k, val) in m {
                if NOT_TEXT.contains(&k.as_str()) {
                    continue;
                }
                match val {
                    Value::String(s) => push_string(code, s, out),
                    Value::Array(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .for_each(|s| push_string(code, s, out)),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn push_string(code: &'static str, s: &str, out: &mut Vec<(&'static str, String, String)>) {
    let raw: String = s.chars().take(MAX_STRING_CHARS).collect();
    out.push((code, normalize(&raw), raw));
}

/// Lowercase with accents removed, so that `name=jose` finds `José`.
pub(crate) fn normalize(s: &str) -> String {
    s.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .take(MAX_STRING_CHARS)
        .collect()
}

/// The case-folded form of a case-insensitive token code (Unicode lowercase).
pub(crate) fn fold_case(code: &str) -> String {
    code.to_lowercase()
}

/// (ref_type, ref_id, ref_url) of a Reference, an Aidbox reference or a canonical string.
fn reference_row(v: &Value) -> Option<(String, String, String)> {
    let (text, declared_type) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(m) => match m.get("reference").and_then(Value::as_str) {
            Some(r) => (r, m.get("type").and_then(Value::as_str)),
            None => {
                // Aidbox form {id, resourceType}
                let id = m.get("id").and_then(Value::as_str)?;
                let t = m
                    .get("resourceType")
                    .or_else(|| m.get("type"))
                    .and_then(Value::as_str)?;
                return Some((t.to_string(), id.to_string(), format!("{t}/{id}")));
            }
        },
        _ => return None,
    };
    if text.starts_with('#') {
        return None; // contained resources are not searchable by reference
    }
    match fhirpath::split_reference(text) {
        Some((t, id)) => Some((t, id, text.to_string())),
        None => match declared_type {
            // A bare id with an explicit `type`
            Some(t) if !text.contains([':', '/']) => {
                Some((t.to_string(), text.to_string(), text.to_string()))
            }
            _ => Some((String::new(), String::new(), text.to_string())),
        },
    }
}

fn date_rows(code: &'static str, v: &Value, out: &mut Vec<(&'static str, i64, i64)>) {
    match v {
        Value::String(s) => {
            if let Some((lo, hi)) = date::parse_range(s) {
                out.push((code, lo, hi));
            }
        }
        Value::Object(m) => {
            if m.contains_key("start") || m.contains_key("end") {
                // Period: open ends are unbounded.
                let lo = m
                    .get("start")
                    .and_then(Value::as_str)
                    .and_then(date::parse_range)
                    .map_or(MIN_US, |r| r.0);
                let hi = m
                    .get("end")
                    .and_then(Value::as_str)
                    .and_then(date::parse_range)
                    .map_or(MAX_US, |r| r.1);
                if lo < hi {
                    out.push((code, lo, hi));
                }
            } else {
                // Timing: its events and its bounds.
                if let Some(Value::Array(events)) = m.get("event") {
                    for e in events {
                        date_rows(code, e, out);
                    }
                }
                if let Some(b) = m.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                    date_rows(code, b, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn us_core_params_are_supported() {
        for (t, c) in [
            ("Patient", "name"),
            ("Patient", "family"),
            ("Patient", "given"),
            ("Patient", "identifier"),
            ("Patient", "birthdate"),
            ("Patient", "gender"),
            ("Patient", "_tag"),
            ("Observation", "patient"),
            ("Observation", "category"),
            ("Observation", "code"),
            ("Observation", "date"),
            ("Observation", "status"),
            ("MedicationRequest", "medication"),
            ("MedicationRequest", "intent"),
            ("MedicationRequest", "authoredon"),
            ("Provenance", "target"),
            ("Condition", "onset-date"),
            ("Encounter", "date"),
            ("Goal", "target-date"),
        ] {
            assert!(param(t, c).is_some(), "{t}.{c} should be indexed");
        }
        assert!(
            unsupported_params("Patient")
                .iter()
                .any(|u| u.code == "deceased")
        );
        assert!(
            unsupported_params("Observation")
                .iter()
                .any(|u| u.code == "value-quantity")
        );
        assert!(
            param("Client", "_tag").is_some(),
            "non-R4 types get the common parameters"
        );
    }

    #[test]
    fn us_core_own_params_are_extracted() {
        let race = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
        let p = json!({
            "resourceType": "Patient", "id": "p1",
            "extension": [
                {"url": race, "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}},
                    {"url": "text", "valueString": "White"}
                ]},
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity", "extension": [
                    {"url": "ombCategory", "valueCoding": {"code": "2186-5"}}
                ]},
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-genderIdentity",
                 "valueCodeableConcept": {"coding": [{"code": "446141000124107"}]}}
            ]
        });
        let rows = extract("Patient", &p);
        let codes = |param: &str| -> Vec<&str> {
            rows.tokens
                .iter()
                .filter(|t| t.0 == param)
                .map(|t| t.2.as_str())
                .collect()
        };
        // the expression selects `.value.code`: the code alone, never the text
        assert_eq!(codes("race"), ["2106-3"]);
        assert_eq!(codes("ethnicity"), ["2186-5"]);
        assert_eq!(codes("gender-identity"), ["446141000124107"]);

        let c = json!({
            "resourceType": "Condition", "id": "c1",
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/condition-assertedDate",
                           "valueDateTime": "2021-05-06"}]
        });
        let rows = extract("Condition", &c);
        assert!(rows.dates.iter().any(|d| d.0 == "asserted-date"));
        for (t, code) in [
            ("Encounter", "discharge-disposition"),
            ("CareTeam", "role"),
            ("Goal", "description"),
        ] {
            assert!(param(t, code).is_some(), "{t}.{code} should be indexed");
        }
    }

    #[test]
    fn extracts_each_kind() {
        let o = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-1"}], "text": "x"},
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2020-01", "end": "2020-02-03"},
            "identifier": [{"system": "urn:s", "value": "v1"}],
            "meta": {"tag": [{"system": "t", "code": "c"}]}
        });
        let rows = extract("Observation", &o);
        assert!(
            rows.tokens
                .contains(&("status", String::new(), "final".into()))
        );
        assert!(rows.tokens.contains(&(
            "category",
            "http://terminology.hl7.org/CodeSystem/observation-category".into(),
            "laboratory".into()
        )));
        assert!(
            rows.tokens
                .contains(&("identifier", "urn:s".into(), "v1".into()))
        );
        assert!(rows.tokens.contains(&("_tag", "t".into(), "c".into())));
        assert!(rows.references.contains(&(
            "patient",
            "Patient".into(),
            "p1".into(),
            "Patient/p1".into()
        )));
        assert!(rows.references.contains(&(
            "subject",
            "Patient".into(),
            "p1".into(),
            "Patient/p1".into()
        )));
        let d = rows.dates.iter().find(|d| d.0 == "date").copied();
        let (lo, hi) = (
            date::parse_range("2020-01").map(|r| r.0),
            date::parse_range("2020-02-03").map(|r| r.1),
        );
        assert_eq!(d.map(|d| (Some(d.1), Some(d.2))), Some((lo, hi)));
    }

    #[test]
    fn names_are_normalized() {
        let p = json!({"resourceType": "Patient", "name": [{"use": "official", "family": "Muñoz", "given": ["José"]}]});
        let rows = extract("Patient", &p);
        assert!(
            rows.strings
                .contains(&("family", "munoz".into(), "Muñoz".into()))
        );
        assert!(
            rows.strings
                .contains(&("name", "jose".into(), "José".into()))
        );
        assert!(
            !rows.strings.iter().any(|s| s.1 == "official"),
            "HumanName.use is not text"
        );
    }

    #[test]
    fn own_types_have_their_params() {
        for (t, c, kind) in [
            ("User", "email", IndexKind::Token),
            ("User", "fhirUser", IndexKind::Reference),
            ("User", "active", IndexKind::Token),
            ("Role", "user", IndexKind::Reference),
            ("Role", "name", IndexKind::Token),
            ("Client", "grant_types", IndexKind::Token),
            ("Client", "active", IndexKind::Token),
            ("AccessPolicy", "engine", IndexKind::Token),
            ("AccessPolicy", "roleName", IndexKind::Token),
            ("AccessPolicy", "link", IndexKind::Reference),
        ] {
            assert_eq!(param(t, c).map(|p| p.kind), Some(kind), "{t}.{c}");
            assert!(
                param(t, "_tag").is_some(),
                "{t} keeps the common parameters"
            );
        }
        for p in own_params::OWN_PARAMS {
            assert!(
                !unsupported_params(p.resource_type)
                    .iter()
                    .any(|u| u.code == p.code),
                "{}.{} compiles",
                p.resource_type,
                p.code
            );
        }
        assert!(param("User", "email").is_some_and(|p| p.fold_case));
        assert!(param("Role", "name").is_some_and(|p| !p.fold_case));
        assert!(param("Patient", "email").is_some_and(|p| !p.fold_case));
        assert!(param("Client", "email").is_none());
        assert!(param("Widget", "email").is_none());
    }

    #[test]
    fn own_types_are_extracted() {
        let user = json!({"resourceType": "User", "id": "amy", "email": "Amy@Example.COM",
                          "active": true, "fhirUser": {"id": "pt-1", "resourceType": "Patient"}});
        let rows = extract("User", &user);
        assert!(
            rows.tokens
                .contains(&("email", String::new(), "amy@example.com".into()))
        );
        assert!(
            rows.tokens
                .contains(&("active", String::new(), "true".into()))
        );
        let aidbox = (
            "fhirUser",
            "Patient".into(),
            "pt-1".into(),
            "Patient/pt-1".into(),
        );
        assert_eq!(rows.references, vec![aidbox.clone()]);
        let mut fhir_style = user.clone();
        fhir_style["fhirUser"] = json!({"reference": "Patient/pt-1"});
        assert_eq!(
            extract("User", &fhir_style).references,
            vec![aidbox.clone()]
        );
        let mut enriched = fhir_style.clone();
        crate::refs::enrich_references(&mut enriched);
        assert_eq!(extract("User", &enriched).references, vec![aidbox]);

        let client = json!({"resourceType": "Client", "id": "c", "active": false,
                            "grant_types": ["authorization_code", "refresh_token"]});
        let rows = extract("Client", &client);
        assert_eq!(rows.tokens.len(), 3, "{:?}", rows.tokens);
        assert!(
            rows.tokens
                .contains(&("grant_types", String::new(), "refresh_token".into()))
        );
        let policy = json!({"resourceType": "AccessPolicy", "id": "p", "engine": "matcho",
                            "roleName": "patient",
                            "link": [{"id": "c", "resourceType": "Client"}, {"reference": "User/amy"}]});
        let rows = extract("AccessPolicy", &policy);
        assert!(
            rows.tokens
                .contains(&("roleName", String::new(), "patient".into()))
        );
        assert!(rows.references.contains(&(
            "link",
            "Client".into(),
            "c".into(),
            "Client/c".into()
        )));
        assert!(rows.references.contains(&(
            "link",
            "User".into(),
            "amy".into(),
            "User/amy".into()
        )));
        assert!(
            extract("Widget", &json!({"resourceType": "Widget", "email": "x"}))
                .tokens
                .is_empty(),
            "other types keep only the common parameters"
        );
    }

    #[test]
    fn references_in_every_form() {
        let r = |v: Value| reference_row(&v);
        assert_eq!(
            r(json!({"reference": "https://h/fhir/Patient/1"})),
            Some((
                "Patient".into(),
                "1".into(),
                "https://h/fhir/Patient/1".into()
            ))
        );
        assert_eq!(
            r(json!({"reference": "urn:uuid:1"})),
            Some((String::new(), String::new(), "urn:uuid:1".into()))
        );
        assert_eq!(
            r(json!({"id": "1", "resourceType": "Patient"})),
            Some(("Patient".into(), "1".into(), "Patient/1".into()))
        );
        assert_eq!(r(json!({"reference": "#c"})), None);
    }
}
