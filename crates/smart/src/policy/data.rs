//! A borrowed view of the request data the engines walk, without copying it.

use serde_json::{Map, Number, Value};

/// What one evaluation sees: the request's fields and the Role bound to `role`.
pub(crate) struct Env<'a> {
    pub fields: &'a Map<String, Value>,
    pub role: Option<&'a Value>,
}

impl<'a> Env<'a> {
    /// Resolve a `.path` from the request root.
    pub fn resolve(&'a self, segments: &[Box<str>]) -> Data<'a> {
        segments
            .iter()
            .fold(Data::Root(self), |data, segment| data.get(segment))
    }
}

/// One node of the request: the request itself, a JSON value, a string, or a parsed reference.
#[derive(Clone, Copy)]
pub(crate) enum Data<'a> {
    Missing,
    Root(&'a Env<'a>),
    Value(&'a Value),
    Str(&'a str),
    Ref {
        resource_type: Option<&'a str>,
        id: &'a str,
    },
}

impl<'a> Data<'a> {
    pub fn of(value: Option<&'a Value>) -> Data<'a> {
        value.map_or(Data::Missing, Data::Value)
    }

    /// The child at `key` (an object key, or an array index written in digits).
    pub fn get(self, key: &str) -> Data<'a> {
        match self {
            Data::Root(env) if key == "role" => Data::of(env.role),
            Data::Root(env) => Data::of(env.fields.get(key)),
            Data::Value(Value::Object(map)) => Data::of(map.get(key)),
            Data::Value(Value::Array(items)) => {
                Data::of(key.parse::<usize>().ok().and_then(|i| items.get(i)))
            }
            Data::Ref { resource_type, id } => match key {
                "id" => Data::Str(id),
                "resourceType" => resource_type.map_or(Data::Missing, Data::Str),
                _ => Data::Missing,
            },
            _ => Data::Missing,
        }
    }

    /// Absent or JSON `null` (matcho treats both alike).
    pub fn is_missing(self) -> bool {
        matches!(self, Data::Missing | Data::Value(Value::Null))
    }

    pub fn as_str(self) -> Option<&'a str> {
        match self {
            Data::Str(s) => Some(s),
            Data::Value(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(self) -> Option<&'a [Value]> {
        match self {
            Data::Value(Value::Array(items)) => Some(items),
            _ => None,
        }
    }

    /// Whether the node is an object (the request, a JSON object, a parsed reference).
    pub fn is_object(self) -> bool {
        matches!(
            self,
            Data::Root(_) | Data::Value(Value::Object(_)) | Data::Ref { .. }
        )
    }

    /// Calls `f` with each key and value of an object node until it returns false; returns
    /// whether it never did.
    pub fn all_entries(self, mut f: impl FnMut(&str, Data<'a>) -> bool) -> bool {
        match self {
            Data::Root(env) => {
                env.fields
                    .iter()
                    .filter(|(k, _)| k.as_str() != "role")
                    .all(|(k, v)| f(k, Data::Value(v)))
                    && env.role.is_none_or(|r| f("role", Data::Value(r)))
            }
            Data::Value(Value::Object(map)) => map.iter().all(|(k, v)| f(k, Data::Value(v))),
            Data::Ref { resource_type, id } => {
                resource_type.is_none_or(|t| f("resourceType", Data::Str(t)))
                    && f("id", Data::Str(id))
            }
            _ => true,
        }
    }

    /// Parse the node as a reference: `pt-1`, `Patient/pt-1`, `Patient/pt-1/_history/2`,
    /// `https://host/fhir/Patient/pt-1`, `{"reference": …}` or `{"id": …, "resourceType": …}`.
    pub fn as_reference(self) -> Option<Data<'a>> {
        match self {
            Data::Ref { .. } => Some(self),
            Data::Value(Value::Object(map)) => match map.get("reference") {
                Some(Value::String(s)) => parse_reference(s),
                Some(_) => None,
                None => {
                    let id = map.get("id")?.as_str().filter(|id| is_id(id))?;
                    let resource_type = match map.get("resourceType") {
                        None => None,
                        Some(Value::String(t)) if is_type_name(t) => Some(t.as_str()),
                        Some(_) => return None,
                    };
                    Some(Data::Ref { resource_type, id })
                }
            },
            other => parse_reference(other.as_str()?),
        }
    }

    /// A short rendering for explanations.
    pub fn describe(self) -> String {
        let text = match self {
            Data::Missing => return "nothing".to_owned(),
            Data::Root(_) => return "the request".to_owned(),
            Data::Value(v) => v.to_string(),
            Data::Str(s) => Value::from(s).to_string(),
            Data::Ref { resource_type, id } => match resource_type {
                Some(t) => format!("reference {t}/{id}"),
                None => format!("reference {id}"),
            },
        };
        if text.chars().count() > 80 {
            let cut: String = text.chars().take(77).collect();
            format!("{cut}...")
        } else {
            text
        }
    }
}

/// Equality of two nodes: strings by text, numbers by value, arrays and objects deeply. A
/// missing (or null) node equals nothing, not even another missing node.
pub(crate) fn data_eq(a: Data<'_>, b: Data<'_>) -> bool {
    if a.is_missing() || b.is_missing() {
        return false;
    }
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => return x == y,
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (a, b) {
        (Data::Value(x), Data::Value(y)) => value_eq(x, y),
        (
            Data::Ref {
                resource_type: t1,
                id: i1,
            },
            Data::Ref {
                resource_type: t2,
                id: i2,
            },
        ) => t1 == t2 && i1 == i2,
        _ => false,
    }
}

/// JSON equality with numbers compared by value (`1` = `1.0`).
pub(crate) fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| value_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| value_eq(v, w)))
        }
        _ => a == b,
    }
}

fn number_eq(x: &Number, y: &Number) -> bool {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return a == b;
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `[A-Z][A-Za-z]*`
pub(crate) fn is_type_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphabetic())
}

/// A FHIR id (one definition: [`fhirgate_fhir::is_valid_id`]).
pub(crate) use fhirgate_fhir::is_valid_id as is_id;

/// Parse a reference string into a node; `None` when it is not exactly one well-formed
/// reference (a comma-separated list, a query, a path trick such as `Patient/a/../b`).
pub(crate) fn parse_reference(s: &str) -> Option<Data<'_>> {
    let (absolute, path) = match s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    {
        Some(rest) if rest.contains(['?', '#']) => return None,
        Some(rest) => (true, rest.split_once('/')?.1),
        None => (false, s),
    };
    let mut back = path.rsplit('/');
    let last = back.next()?;
    let (resource_type, id) = match back.next() {
        Some("_history") if is_id(last) => {
            let id = back.next()?;
            (Some(back.next()?), id)
        }
        Some("_history") => return None,
        Some(t) => (Some(t), last),
        None => (None, last),
    };
    // A relative reference is exactly `id`, `Type/id` or `Type/id/_history/v`; an absolute one
    // needs a type (the base before it is not checked).
    let well_formed = if absolute {
        resource_type.is_some()
    } else {
        back.next().is_none()
    };
    if !well_formed
        || !is_id(id)
        || id == "."
        || id == ".."
        || resource_type.is_some_and(|t| !is_type_name(t))
    {
        return None;
    }
    Some(Data::Ref { resource_type, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Option<(Option<String>, String)> {
        match parse_reference(s)? {
            Data::Ref { resource_type, id } => {
                Some((resource_type.map(str::to_owned), id.to_owned()))
            }
            _ => None,
        }
    }

    #[test]
    fn references_parse_in_every_accepted_form() {
        let patient = Some((Some("Patient".to_owned()), "pt-1".to_owned()));
        assert_eq!(parsed("pt-1"), Some((None, "pt-1".to_owned())));
        assert_eq!(parsed("Patient/pt-1"), patient);
        assert_eq!(parsed("Patient/pt-1/_history/3"), patient);
        assert_eq!(parsed("https://x/fhir/Patient/pt-1"), patient);
        assert_eq!(parsed("http://x/Patient/pt-1/_history/2"), patient);
    }

    #[test]
    fn malformed_references_do_not_parse() {
        for bad in [
            "",
            "pt-1,pt-2",
            "Patient/pt-1,Patient/pt-2",
            "Patient/a/../pt-1",
            "Patient/..",
            "patient/pt-1",
            "Patient/",
            "/pt-1",
            "https://x/fhir/Patient/pt-1?x=1",
            "https://x",
            "https://x/pt-1",
            "pt 1",
            "Patient/pt-1/_history/",
        ] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_never_equals_missing_and_numbers_compare_by_value() {
        let null = Value::Null;
        assert!(!data_eq(Data::Missing, Data::Missing));
        assert!(!data_eq(Data::Value(&null), Data::Value(&null)));
        let (one, one_f) = (serde_json::json!(1), serde_json::json!(1.0));
        assert!(data_eq(Data::Value(&one), Data::Value(&one_f)));
        let s = Value::from("1");
        assert!(!data_eq(Data::Value(&one), Data::Value(&s)));
        assert!(data_eq(Data::Str("x"), Data::Value(&Value::from("x"))));
    }
}
