//! Compiles FHIR R4's patient CompartmentDefinition (data/r4-patient-compartment.json) into a
//! Rust table, so that the compartment rule cannot fall back to an empty table at run time: a
//! file that does not parse, or that lost its core members, fails the build (fail closed).
//! fhirgate adds `Device` (through `patient`) to it: see `ADDITIONS`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Types added to R4's patient compartment, with the parameters through which they belong.
const ADDITIONS: &[(&str, &[&str])] = &[("Device", &["patient"])];

fn main() {
    let path = "data/r4-patient-compartment.json";
    println!("cargo::rerun-if-changed={path}");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} does not parse: {e}"));
    let resources = json["resources"]
        .as_object()
        .unwrap_or_else(|| panic!("{path}: no \"resources\" object"));
    let mut table: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (t, params) in resources {
        let params: Vec<&str> = params
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {t} is not a list of parameters"))
            .iter()
            .map(|p| {
                p.as_str()
                    .unwrap_or_else(|| panic!("{path}: {t} lists a non-string"))
            })
            .collect();
        assert!(!params.is_empty(), "{path}: {t} has no parameters");
        table.insert(t, params);
    }
    // the members every SMART deployment relies on: a table without them is broken
    for t in [
        "Observation",
        "Condition",
        "Encounter",
        "AllergyIntolerance",
        "Provenance",
    ] {
        assert!(table.contains_key(t), "{path}: {t} is missing");
    }
    assert!(table.len() > 60, "{path}: only {} types", table.len());
    // fhirgate's additions: records that are one patient's own but that R4's definition leaves
    // out of the compartment, which would make them readable by every patient's token.
    // - Device: US Core's Implantable Device profile requires `Device.patient` (UDI, serial
    //   number: the patient's record); R4 puts Device in a Device compartment only.
    for &(t, params) in ADDITIONS {
        assert!(
            !table.contains_key(t),
            "{path}: {t} is in R4's compartment now: drop the addition"
        );
        table.insert(t, params.to_vec());
    }
    let mut out = String::from(
        "/// FHIR R4 `CompartmentDefinition/patient`: (type, parameters), sorted by type.\n\
         pub(crate) static PATIENT_COMPARTMENT: &[(&str, &[&str])] = &[\n",
    );
    for (t, params) in &table {
        let _ = writeln!(out, "    ({t:?}, &{params:?}),");
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"))
        .join("patient_compartment.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}
