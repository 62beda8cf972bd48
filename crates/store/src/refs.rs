//! Reference enrichment for fhirgate's own resources (contract §3).
//!
//! A Client, User, Role or AccessPolicy may write a reference Aidbox's way
//! (`{"id": "pt-1", "resourceType": "Patient"}`) or FHIR's (`{"reference": "Patient/pt-1"}`);
//! AccessPolicy paths such as `.role.links.patient.id` expect the first, FHIR clients the
//! second. Enriching stores both. Clinical resources are stored as given: callers apply this
//! only to fhirgate's own types.

use serde_json::{Map, Value};

use crate::fhirpath::split_reference;

/// Give every nested reference both forms: `reference` and `id` + `resourceType`. The
/// resource itself (the root object) is left alone.
pub fn enrich_references(resource: &mut Value) {
    match resource {
        Value::Object(map) => map.values_mut().for_each(enrich),
        Value::Array(items) => items.iter_mut().for_each(enrich),
        _ => {}
    }
}

fn enrich(v: &mut Value) {
    match v {
        Value::Object(map) => {
            enrich_object(map);
            map.values_mut().for_each(enrich);
        }
        Value::Array(items) => items.iter_mut().for_each(enrich),
        _ => {}
    }
}

fn enrich_object(map: &mut Map<String, Value>) {
    if let Some(Value::String(r)) = map.get("reference") {
        if let Some((t, id)) = split_reference(r) {
            map.entry("resourceType").or_insert(Value::String(t));
            map.entry("id").or_insert(Value::String(id));
        }
        return;
    }
    let (Some(Value::String(t)), Some(Value::String(id))) =
        (map.get("resourceType"), map.get("id"))
    else {
        return;
    };
    if t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
    {
        let reference = format!("{t}/{id}");
        map.insert("reference".into(), Value::String(reference));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_forms_are_completed() {
        let mut role = json!({
            "resourceType": "Role", "id": "r1", "name": "patient",
            "user": {"id": "u1", "resourceType": "User"},
            "links": {"patient": {"reference": "Patient/pt-1"}, "practitioner": {"reference": "http://h/fhir/Practitioner/dr/_history/2"}},
            "list": [{"reference": "urn:uuid:x"}, {"id": "o", "resourceType": "Organization", "display": "Org"}]
        });
        enrich_references(&mut role);
        assert_eq!(role["id"], "r1");
        assert!(
            role.get("reference").is_none(),
            "the root is not a reference"
        );
        assert_eq!(
            role["user"],
            json!({"id": "u1", "resourceType": "User", "reference": "User/u1"})
        );
        assert_eq!(
            role["links"]["patient"],
            json!({"reference": "Patient/pt-1", "id": "pt-1", "resourceType": "Patient"})
        );
        assert_eq!(role["links"]["practitioner"]["id"], "dr");
        assert_eq!(
            role["list"][0],
            json!({"reference": "urn:uuid:x"}),
            "nothing to split"
        );
        assert_eq!(role["list"][1]["reference"], "Organization/o");
        assert_eq!(role["list"][1]["display"], "Org");
    }

    #[test]
    fn existing_fields_win() {
        let mut v =
            json!({"resourceType": "User", "fhirUser": {"reference": "Patient/a", "id": "b"}});
        enrich_references(&mut v);
        assert_eq!(v["fhirUser"]["id"], "b");
        assert_eq!(v["fhirUser"]["resourceType"], "Patient");
    }
}
