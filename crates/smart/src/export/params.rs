//! A job's validated parameters ([`Params`], stored with the job) and the kick-off's parameter
//! reading: `_since`, `_until`, `_type`, `_typeFilter`, `_elements`, `patient`, `Prefer`.
//!
//! ```
//! // `_outputFormat` accepts these (all mean NDJSON)
//! assert!(fhirgate_smart::export::OUTPUT_FORMATS.contains(&"application/fhir+ndjson"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use fhirgate_config::{Route, RouteTable, Segment};
use fhirgate_router::{Response, RouteMatch, outcome};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::authorize::Authorized;
use crate::confined::DataAccess;

use super::*;

/// The validated parameters of a job, as stored with it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Params {
    pub(super) level: Level,
    /// The FHIR base's mount (`/smart`), for policy requests.
    pub(super) mount: String,
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
    /// Types to export, in order.
    pub(super) types: Vec<String>,
    /// Types the request named in `_type` (a refusal of one is reported in `error[]`).
    pub(super) named: Vec<String>,
    /// `_typeFilter` queries per type (OR of them).
    pub(super) type_filters: BTreeMap<String, Vec<Vec<(String, String)>>>,
    pub(super) elements: Vec<String>,
    /// The patients a Patient- or Group-level export covers (`None`: all).
    pub(super) patients: Option<Vec<String>>,
    /// Group members that name no existing Patient (reported in `error[]`).
    pub(super) missing: Vec<String>,
    /// Types the request named that the decision or the AccessPolicies refused at kick-off,
    /// with why (reported in `error[]`, never exported).
    pub(super) refused: Vec<(String, String)>,
}

impl Params {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "level": self.level.as_str(),
            "mount": self.mount,
            "since": self.since,
            "until": self.until,
            "types": self.types,
            "named": self.named,
            "typeFilters": self.type_filters.iter().map(|(t, qs)| (t.clone(), json!(qs))).collect::<serde_json::Map<_, _>>(),
            "elements": self.elements,
            "patients": self.patients,
            "missing": self.missing,
            "refused": self.refused,
        })
    }

    pub(super) fn from_json(v: &Value) -> Option<Params> {
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let opt = |v: &Value| v.as_str().map(str::to_string);
        let mut type_filters = BTreeMap::new();
        for (t, qs) in v["typeFilters"].as_object()? {
            let mut list = Vec::new();
            for q in qs.as_array()? {
                let mut pairs = Vec::new();
                for p in q.as_array()? {
                    pairs.push((p[0].as_str()?.to_string(), p[1].as_str()?.to_string()));
                }
                list.push(pairs);
            }
            type_filters.insert(t.clone(), list);
        }
        Some(Params {
            level: Level::parse(v["level"].as_str()?)?,
            mount: v["mount"].as_str()?.to_string(),
            since: opt(&v["since"]),
            until: opt(&v["until"]),
            types: strings(&v["types"])?,
            named: strings(&v["named"])?,
            type_filters,
            elements: strings(&v["elements"])?,
            patients: if v["patients"].is_null() {
                None
            } else {
                Some(strings(&v["patients"])?)
            },
            missing: strings(&v["missing"])?,
            refused: v["refused"]
                .as_array()?
                .iter()
                .map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

/// The search routes of one FHIR base, by type: what may be exported, and each type's
/// `:params` for `_typeFilter`.
pub(super) struct Searchable {
    pub(super) by_type: BTreeMap<String, Arc<Route>>,
    /// A `[:resource/type]` search route, which serves every type.
    pub(super) any: Option<Arc<Route>>,
}

impl Searchable {
    pub(super) fn of(route: &Route, table: &RouteTable) -> Searchable {
        let mount = &route.segments[..route.mount_len];
        let mut by_type = BTreeMap::new();
        let mut any = None;
        for r in &table.routes {
            let same_base = r.segments.len() >= r.mount_len && &r.segments[..r.mount_len] == mount;
            let is_search = crate::actions::Kind::for_action(&r.action)
                == Some(crate::actions::Kind::Search)
                && r.method == fhirgate_config::Method::Get;
            if !same_base || !is_search {
                continue;
            }
            let t = r.resource_type.clone().or_else(|| {
                (r.action == "smart.fhir/search-patient").then(|| "Patient".to_string())
            });
            match t {
                Some(t) => {
                    by_type.entry(t).or_insert_with(|| r.clone());
                }
                None if r
                    .segments
                    .iter()
                    .any(|s| *s == Segment::Param("resource/type".into())) =>
                {
                    any.get_or_insert_with(|| r.clone());
                }
                None => {}
            }
        }
        Searchable { by_type, any }
    }

    /// The search route of `t`, if `t` is an R4 type this base can search.
    pub(super) fn route(&self, t: &str) -> Option<&Arc<Route>> {
        if !fhirgate_fhir::is_resource_type(t) {
            return None;
        }
        self.by_type.get(t).or(self.any.as_ref())
    }

    pub(super) fn types(&self) -> Vec<String> {
        if self.any.is_some() {
            return fhirgate_fhir::resource_types()
                .map(str::to_string)
                .collect();
        }
        self.by_type
            .keys()
            .filter(|t| fhirgate_fhir::is_resource_type(t))
            .cloned()
            .collect()
    }
}

pub(super) fn invalid(msg: impl AsRef<str>) -> Response {
    outcome::bad_request("invalid", msg)
}

pub(super) fn not_supported(msg: impl AsRef<str>) -> Response {
    outcome::bad_request("not-supported", msg)
}

pub(super) fn forbidden(msg: impl AsRef<str>) -> Response {
    outcome::response(StatusCode::FORBIDDEN, "forbidden", msg)
}

/// The tokens of the `Prefer` headers.
pub(super) fn prefer(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect()
}

/// A FHIR instant (`2024-01-02T03:04:05Z`, with seconds and a zone), normalized to RFC 3339.
/// An unencoded `+` in a query string arrives as a space; it is read as the `+` it was.
pub(super) fn instant(name: &str, v: &str) -> Result<String, Response> {
    let v = v.trim().replace(' ', "+");
    chrono::DateTime::parse_from_rfc3339(&v)
        .map(|d| {
            d.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .map_err(|_| {
            invalid(format!(
                "{name} must be a FHIR instant such as 2024-01-02T03:04:05Z, not {v:?}"
            ))
        })
}

/// `Patient/pt-1` (or a bare id, or an absolute URL ending so) → `pt-1`.
pub(super) fn patient_ref(v: &str) -> Option<String> {
    let v = v.split("/_history/").next().unwrap_or(v);
    let id = match v.rsplit_once('/') {
        None => v,
        Some((prefix, id)) if prefix == "Patient" || prefix.ends_with("/Patient") => id,
        Some(_) => return None,
    };
    fhirgate_fhir::is_valid_id(id).then(|| id.to_string())
}

/// The kick-off's parameters: the query, and for POST a `Parameters` resource body.
pub(super) async fn kickoff_pairs(
    parts: &http::request::Parts,
    body: Body,
) -> Result<Vec<(String, String)>, Response> {
    let mut pairs: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if parts.method != Method::POST {
        return Ok(pairs);
    }
    let bytes = crate::actions::read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(pairs);
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "the POST body must be a FHIR Parameters resource: {e}"
        ))
    })?;
    if v["resourceType"] != "Parameters" {
        return Err(invalid("the POST body must be a FHIR Parameters resource"));
    }
    for p in v["parameter"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let Some(name) = p["name"].as_str() else {
            return Err(invalid("each parameter needs a name"));
        };
        let value = p
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .map(|(_, v)| v)
            })
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Object(o) => o
                    .get("reference")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            });
        let Some(value) = value else {
            return Err(invalid(format!(
                "parameter {name} needs a value (valueString, valueInstant, valueReference, …)"
            )));
        };
        pairs.push((name.to_string(), value));
    }
    Ok(pairs)
}

/// Whether the AccessPolicies allow this export request (the kick-off, a status or a file
/// request), as every request must pass them: `pairs` are its parameters. Without policies,
/// every request passes.
pub(super) fn policies_allow(
    access: &DataAccess,
    parts: &http::request::Parts,
    m: &RouteMatch,
    pairs: &[(String, String)],
    auth: &Authorized,
) -> Result<(), Response> {
    let Some(ac) = &access.access else {
        return Ok(());
    };
    let route_params: Vec<(String, String)> = m
        .params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    ac.check(
        parts.method.as_str(),
        parts.uri.path(),
        pairs,
        &route_params,
        auth.principal(),
        &parts.headers,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn instants_are_fhir_instants() {
        assert_eq!(
            instant("_since", "2024-01-02T03:04:05Z").unwrap(),
            "2024-01-02T03:04:05.000Z"
        );
        // an unencoded + in a query string arrives as a space
        assert_eq!(
            instant("_since", "2024-01-02T04:04:05 01:00").unwrap(),
            "2024-01-02T03:04:05.000Z"
        );
        assert!(instant("_since", "2024-01-02").is_err());
        assert!(instant("_since", "yesterday").is_err());
    }

    #[test]
    pub(super) fn params_round_trip() {
        let p = Params {
            level: Level::Group,
            mount: "/smart".into(),
            since: Some("2024-01-02T03:04:05.000Z".into()),
            until: None,
            types: vec!["Observation".into(), "Practitioner".into()],
            named: vec!["Observation".into()],
            type_filters: BTreeMap::from([(
                "Observation".to_string(),
                vec![vec![("status".to_string(), "final".to_string())]],
            )]),
            elements: vec!["status".into()],
            patients: Some(vec!["pt-1".into()]),
            missing: vec!["pt-9".into()],
            refused: vec![("Condition".into(), "not granted".into())],
        };
        assert_eq!(Params::from_json(&p.to_json()), Some(p));
    }
}
