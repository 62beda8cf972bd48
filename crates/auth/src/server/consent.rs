//! What the consent page says: every choice as a sentence in plain language, spoken to the
//! person deciding — "your lab results" to a patient about their own record, "this patient's"
//! to a clinician — with the raw scope string only in small print (issue 12).
//!
//! ```
//! use fhirgate_auth::server::consent::{describe, Voice};
//! use fhirgate_smart::scopes::Scope;
//!
//! let s = Scope::parse("patient/Observation.rs");
//! assert_eq!(describe(&s, Voice::Own), "See your lab results, vital signs and other observations");
//! assert_eq!(describe(&s, Voice::Patient), "See this patient's lab results, vital signs and other observations");
//! ```

use fhirgate_smart::scopes::{Context, Scope, ScopeSet};

/// Who the page speaks to about whose data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    /// A patient (or their representative) about their own record.
    Own,
    /// A clinician or other User about the patient in context.
    Patient,
    /// A provider without a patient in context (`user/` scopes across patients).
    Patients,
}

impl Voice {
    fn whose(self) -> &'static str {
        match self {
            Voice::Own => "your",
            Voice::Patient => "this patient's",
            Voice::Patients => "patients'",
        }
    }
}

/// US Core category slices offered as granular alternatives on the consent page (contract §4).
const GRANULAR: &[(&str, &str, &str)] = &[
    (
        "Observation",
        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        "laboratory results",
    ),
    (
        "Observation",
        "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
        "vital signs",
    ),
    (
        "Observation",
        "http://terminology.hl7.org/CodeSystem/observation-category|social-history",
        "social history",
    ),
    (
        "Observation",
        "http://terminology.hl7.org/CodeSystem/observation-category|survey",
        "surveys",
    ),
    (
        "Observation",
        "http://hl7.org/fhir/us/core/CodeSystem/us-core-category|sdoh",
        "social determinants of health",
    ),
    // ONC's "Clinical Test" sub-resource: US Core 6.1's clinical result category `procedure`
    (
        "Observation",
        "http://terminology.hl7.org/CodeSystem/observation-category|procedure",
        "clinical tests",
    ),
    (
        "Condition",
        "http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item",
        "problem list",
    ),
    (
        "Condition",
        "http://terminology.hl7.org/CodeSystem/condition-category|encounter-diagnosis",
        "encounter diagnoses",
    ),
    (
        "Condition",
        "http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern",
        "health concerns",
    ),
];

/// Plain names of the record types a patient app asks for; other types are named by their
/// FHIR name split into words.
const PLAIN: &[(&str, &str)] = &[
    ("AllergyIntolerance", "allergies"),
    ("CarePlan", "care plans"),
    ("CareTeam", "care team"),
    ("Condition", "conditions and health problems"),
    ("Coverage", "insurance coverage"),
    ("Device", "implanted devices"),
    ("DiagnosticReport", "test reports"),
    ("DocumentReference", "clinical notes and documents"),
    ("Encounter", "visits"),
    ("Goal", "health goals"),
    ("Immunization", "immunizations"),
    ("Location", "care locations"),
    ("Medication", "medications"),
    ("MedicationDispense", "dispensed medications"),
    ("MedicationRequest", "prescriptions"),
    (
        "Observation",
        "lab results, vital signs and other observations",
    ),
    ("Organization", "healthcare organizations"),
    (
        "Patient",
        "demographics (name, birth date, contact details)",
    ),
    ("Practitioner", "clinicians"),
    ("PractitionerRole", "clinicians' roles"),
    ("Procedure", "procedures"),
    ("Provenance", "records of where data came from"),
    ("QuestionnaireResponse", "questionnaire answers"),
    ("RelatedPerson", "related people"),
    ("ServiceRequest", "orders and referrals"),
    ("Specimen", "specimens"),
];

fn plain(resource_type: &str) -> String {
    if let Some((_, p)) = PLAIN.iter().find(|(t, _)| *t == resource_type) {
        return (*p).to_string();
    }
    let mut out = String::new();
    for (i, c) in resource_type.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// What a scope means, as a sentence for the person deciding.
pub fn describe(s: &Scope, voice: Voice) -> String {
    match s {
        Scope::OpenId => "Confirm to the app who you are".into(),
        Scope::FhirUser => "Tell the app which record describes you".into(),
        Scope::Profile => "Share your name and email".into(),
        Scope::Launch => "Open in the context of your current session".into(),
        Scope::LaunchPatient if voice == Voice::Own => "Open with your record".into(),
        Scope::LaunchPatient => "Know which patient is selected".into(),
        Scope::LaunchEncounter => "Know which visit is selected".into(),
        Scope::OfflineAccess => {
            "Keep access when you are not using the app, until you revoke it (a refresh token that does not expire with your session)".into()
        }
        Scope::OnlineAccess => "Keep access while you are signed in".into(),
        Scope::Resource(r) => {
            let whose = match (r.context, voice) {
                (Context::System, _) => "every patient's",
                (_, v) => v.whose(),
            };
            let what = match r.resource_type.as_deref() {
                None if voice == Voice::Own => "whole record".to_string(),
                None => "records".to_string(),
                Some("Patient") if voice == Voice::Own => {
                    "demographics (name, birth date, contact details)".to_string()
                }
                Some(t) => plain(t),
            };
            format!(
                "{} {whose} {what}{}",
                see(&r.interactions.letters()),
                if r.is_granular() {
                    " (only the kinds listed in the scope)"
                } else {
                    ""
                }
            )
        }
        Scope::Other(_) => String::new(),
    }
}

/// The verbs of a scope's interactions, in plain words: `rs` → "See", `cruds` → "See, add to,
/// change and delete".
fn see(letters: &str) -> String {
    let mut v = Vec::new();
    if letters.contains('r') || letters.contains('s') {
        v.push("see");
    }
    for (l, w) in [('c', "add to"), ('u', "change"), ('d', "delete")] {
        if letters.contains(l) {
            v.push(w);
        }
    }
    let s = match v.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Category-level alternatives for the resource-level Observation and Condition scopes.
pub(crate) fn granular_alternatives(offered: &ScopeSet, voice: Voice) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in offered.resource_scopes() {
        if r.is_granular() {
            continue;
        }
        let Some(t) = r.resource_type.as_deref() else {
            continue;
        };
        let letters = r.interactions.letters();
        if !letters.contains('r') && !letters.contains('s') {
            continue;
        }
        // granular scopes are a v2 form: read and search only
        let rs: String = letters.chars().filter(|c| *c == 'r' || *c == 's').collect();
        for (ty, cat, text) in GRANULAR {
            if *ty == t {
                let scope = format!("{}/{t}.{rs}?category={cat}", r.context.as_str());
                if !out.iter().any(|(s, _)| s == &scope) {
                    out.push((scope, format!("{} only {} {text}", see(&rs), voice.whose())));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_read_about_their_own_record_in_plain_words() {
        let d = |s: &str, v| describe(&Scope::parse(s), v);
        assert_eq!(d("patient/*.rs", Voice::Own), "See your whole record");
        assert_eq!(d("user/*.read", Voice::Own), "See your whole record");
        assert_eq!(
            d("patient/Condition.rs", Voice::Own),
            "See your conditions and health problems"
        );
        assert_eq!(
            d("patient/Patient.cruds", Voice::Own),
            "See, add to, change and delete your demographics (name, birth date, contact details)"
        );
        assert_eq!(d("launch/patient", Voice::Own), "Open with your record");
        assert_eq!(
            d("patient/ServiceRequest.rs", Voice::Patient),
            "See this patient's orders and referrals"
        );
        assert_eq!(
            d("patient/NutritionOrder.rs", Voice::Own),
            "See your nutrition order"
        );
        assert_eq!(
            d("user/Observation.rs", Voice::Patients),
            "See patients' lab results, vital signs and other observations"
        );
        assert!(d("offline_access", Voice::Own).contains("until you revoke it"));
    }

    #[test]
    fn granular_alternatives_speak_the_same_voice() {
        let offered = ScopeSet::parse("patient/Observation.rs patient/Condition.r");
        let alts = granular_alternatives(&offered, Voice::Own);
        assert!(alts.iter().any(|(s, t)| s.ends_with("|laboratory") && t == "See only your laboratory results"), "{alts:?}");
        assert!(
            alts.iter()
                .any(|(s, t)| s.starts_with("patient/Condition.r?")
                    && t == "See only your problem list"),
            "{alts:?}"
        );
    }
}
