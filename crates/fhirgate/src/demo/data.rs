//! The demo data set and the banner `serve --demo` prints: a synthetic US Core population with
//! users, clients and AccessPolicies (`demo/demo-data.yaml`), upserted at start through the same
//! path as `--seed` files ([`seed_source`]), never removed as a dropped project seed.
//!
//! ```
//! let items = fhirgate::demo::resources("http://localhost:8080").unwrap();
//! assert!(items.iter().any(|r| r["resourceType"] == "Patient"));
//! assert!(!fhirgate::demo::seed_source("http://localhost:8080").unwrap().project);
//! ```

use serde_json::Value;

use crate::seed::SeedSource;

/// The demo data set; `{{base}}`, `{{patient_password}}`, `{{doctor_password}}` and
/// `{{client_secret}}` are filled in by [`resources`].
pub const DATA: &str = include_str!("../../demo/demo-data.yaml");

/// The patient user (Rosa Delgado) and its password.
pub const PATIENT_USER: &str = "patient";
pub const PATIENT_PASSWORD: &str = "demo-patient";
/// The Patient the patient user is.
pub const PATIENT_ID: &str = "rosa-delgado";
/// The practitioner user (Dr. Maya Patel) and its password.
pub const DOCTOR_USER: &str = "doctor";
pub const DOCTOR_PASSWORD: &str = "demo-doctor";
/// The public demo client (PKCE, no secret).
pub const PUBLIC_CLIENT: &str = "demo-public";
/// The confidential demo client and its secret.
pub const CONFIDENTIAL_CLIENT: &str = "demo-confidential";
pub const CLIENT_SECRET: &str = "demo-confidential-secret";

/// The demo data set for a server whose public URL is `base_url`.
pub fn resources(base_url: &str) -> Result<Vec<Value>, String> {
    let parsed: Value = serde_norway::from_str(DATA)
        .map_err(|e| format!("the embedded demo data does not parse: {e}"))?;
    let Value::Array(mut items) = parsed else {
        return Err("the embedded demo data is not a list".into());
    };
    let fills = [
        ("{{base}}", base_url),
        ("{{patient_password}}", PATIENT_PASSWORD),
        ("{{doctor_password}}", DOCTOR_PASSWORD),
        ("{{client_secret}}", CLIENT_SECRET),
    ];
    for item in &mut items {
        fill(item, &fills);
    }
    Ok(items)
}

fn fill(v: &mut Value, fills: &[(&str, &str)]) {
    match v {
        Value::String(s) if s.contains("{{") => {
            for (from, to) in fills {
                *s = s.replace(from, to);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| fill(i, fills)),
        Value::Object(map) => map.values_mut().for_each(|i| fill(i, fills)),
        _ => {}
    }
}

/// The demo data as a seed source (applied after the project's seeds, before `--seed` files).
pub fn seed_source(base_url: &str) -> Result<SeedSource, String> {
    Ok(SeedSource {
        label: "the demo data (--demo)".into(),
        resources: resources(base_url)?,
        // the operator's choice at this start, not the project's: never removed by seeding
        project: false,
    })
}

/// What `serve --demo` prints once it listens: where to go and how to sign in.
pub fn banner(base_url: &str, bases: &[String]) -> String {
    let fhir = bases
        .iter()
        .find(|b| b.ends_with("/smart"))
        .or(bases.first())
        .cloned();
    let mut out = String::new();
    let line = "-".repeat(78);
    out.push_str(&format!(
        "{line}\nfhirgate demo: synthetic US Core data, demo users and clients (never use --demo with real data)\n{line}\n"
    ));
    match &fhir {
        Some(f) => {
            out.push_str(&format!("FHIR base          {f}\n"));
            out.push_str(&format!(
                "SMART discovery    {f}/.well-known/smart-configuration\n"
            ));
            for other in bases.iter().filter(|b| *b != f) {
                out.push_str(&format!("other FHIR base    {other}\n"));
            }
        }
        None => out.push_str(
            "FHIR base          none: this project declares no :smart.fhir/capability route\n",
        ),
    }
    out.push_str(&format!(
        "OIDC discovery     {base_url}/.well-known/openid-configuration\n\n"
    ));
    out.push_str(&format!(
        "Users              {PATIENT_USER} / {PATIENT_PASSWORD}    Rosa Delgado, Patient/{PATIENT_ID}\n"
    ));
    out.push_str(&format!(
        "                   {DOCTOR_USER} / {DOCTOR_PASSWORD}      Dr. Maya Patel, Practitioner/maya-patel (picks a patient)\n"
    ));
    out.push_str(&format!(
        "Clients            {PUBLIC_CLIENT}                public, PKCE; redirect_uri {base_url}/demo/callback\n"
    ));
    out.push_str(&format!(
        "                   {CONFIDENTIAL_CLIENT} / {CLIENT_SECRET}\n\n"
    ));
    out.push_str(&format!(
        "Standalone launch  open {base_url}/demo and press \"Standalone launch\";\n\
         \x20                  sign in as {PATIENT_USER} / {PATIENT_PASSWORD} and allow\n"
    ));
    out.push_str(&format!(
        "EHR launch         sign in as {DOCTOR_USER} / {DOCTOR_PASSWORD} at {base_url}/auth/apps, enter patient id\n\
         \x20                  james-okafor and launch \"fhirgate demo app\"; or make a launch URI and open its \"uri\":\n"
    ));
    let iss = fhir.unwrap_or_else(|| format!("{base_url}/smart"));
    out.push_str(&format!(
        "  curl -s -u {CONFIDENTIAL_CLIENT}:{CLIENT_SECRET} {base_url}/rpc -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"method\":\"aidbox.smart/get-launch-uri\",\"params\":{{\"user\":\"{DOCTOR_USER}\",\"client\":\"{PUBLIC_CLIENT}\",\"iss\":\"{iss}\",\"ctx\":{{\"patient\":\"james-okafor\"}}}}}}'\n"
    ));
    out.push_str(&format!(
        "Backend services   curl -s -u {CONFIDENTIAL_CLIENT}:{CLIENT_SECRET} {base_url}/auth/token \\\n\
         \x20   -d grant_type=client_credentials -d scope=system/Patient.rs\n\
         Bulk Data          {iss}/Group/demo-patients/$export with a system/*.rs token (docs/bulk.md)\n{line}\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_data_is_never_removed_as_a_dropped_project_seed() {
        // seeding removes only what the project declared; demo data is there for one start
        assert!(!seed_source("http://localhost:9999").unwrap().project);
    }

    #[test]
    fn the_demo_data_parses_and_fills_its_placeholders() {
        let items = resources("http://localhost:9999").unwrap();
        let text = serde_json::to_string(&items).unwrap();
        assert!(!text.contains("{{"), "unfilled placeholder");
        let client = items
            .iter()
            .find(|r| r["resourceType"] == "Client" && r["id"] == PUBLIC_CLIENT)
            .unwrap();
        assert_eq!(
            client["auth"]["authorization_code"]["redirect_uri"],
            "http://localhost:9999/demo/callback"
        );
        assert_eq!(
            client["smart"]["launch_uri"],
            "http://localhost:9999/demo/launch"
        );
        let user = items
            .iter()
            .find(|r| r["resourceType"] == "User" && r["id"] == PATIENT_USER)
            .unwrap();
        assert_eq!(user["password"], PATIENT_PASSWORD);
        assert_eq!(user["fhirUser"]["id"], PATIENT_ID);
        // every resource has a type and an id; ids are unique per type
        let mut seen = std::collections::HashSet::new();
        for r in &items {
            let key = (
                r["resourceType"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            );
            assert!(seen.insert(key.clone()), "duplicate {key:?}");
        }
        // US Core shapes the demo promises
        let count = |t: &str| items.iter().filter(|r| r["resourceType"] == t).count();
        assert_eq!(count("Patient"), 3);
        // one Group of the three, for Bulk Data's Group export
        let group = items.iter().find(|r| r["resourceType"] == "Group").unwrap();
        assert_eq!(group["member"].as_array().unwrap().len(), 3);
        for t in [
            "Condition",
            "Observation",
            "Encounter",
            "MedicationRequest",
            "Immunization",
            "Procedure",
            "DocumentReference",
            "Provenance",
            "Practitioner",
            "Organization",
            "Location",
            "AccessPolicy",
        ] {
            assert!(count(t) > 0, "no {t}");
        }
        let categories: std::collections::HashSet<&str> = items
            .iter()
            .filter(|r| r["resourceType"] == "Condition" || r["resourceType"] == "Observation")
            .filter_map(|r| r["category"][0]["coding"][0]["code"].as_str())
            .collect();
        for c in [
            "problem-list-item",
            "encounter-diagnosis",
            "vital-signs",
            "laboratory",
        ] {
            assert!(categories.contains(c), "no category {c}");
        }
        // every clinical reference points at a resource in the set (or a contained one)
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("reference") {
                        out.push(r);
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        let everything = Value::Array(items.clone());
        refs(&everything, &mut all);
        for r in all {
            if r.starts_with('#') {
                continue;
            }
            let (t, id) = r.split_once('/').unwrap();
            assert!(
                seen.contains(&(t.to_string(), id.to_string())),
                "dangling {r}"
            );
        }
    }

    #[test]
    fn the_banner_names_the_urls_and_credentials() {
        let b = banner(
            "http://localhost:8080",
            &["http://localhost:8080/smart".to_string()],
        );
        for want in [
            "FHIR base          http://localhost:8080/smart\n",
            "http://localhost:8080/smart/.well-known/smart-configuration",
            "open http://localhost:8080/demo ",
            "patient / demo-patient",
            "doctor / demo-doctor",
            "demo-confidential / demo-confidential-secret",
            "http://localhost:8080/auth/apps",
            "aidbox.smart/get-launch-uri",
        ] {
            assert!(b.contains(want), "{want:?} missing from\n{b}");
        }
    }
}
