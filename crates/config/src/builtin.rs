//! Namespaces built into fhirgate, so that Aidbox projects can `import` them unchanged.

/// Namespaces a project may import without a file of its own.
pub const NAMESPACES: &[&str] = &[
    "zenbox",
    "aidbox",
    "aidbox.auth",
    "aidbox.rest",
    "smart.fhir",
    "zen",
];

/// The tag of API definitions.
pub const API_TAG: &str = "zenbox/api";
/// The tag of a grant lookup definition.
pub const GRANT_LOOKUP_TAG: &str = "aidbox.auth/grant-lookup";
/// Grant lookup methods fhirgate implements.
pub const GRANT_LOOKUP_METHODS: &[&str] = &["aidbox.auth/single-patient-grant-lookup"];
/// The tag of the definition naming the Role names that give provider access (issue 12).
pub const PROVIDER_ROLES_TAG: &str = "smart.fhir/provider-roles";
/// The provider role when a project names none.
pub const DEFAULT_PROVIDER_ROLES: &[&str] = &["practitioner"];
/// Tags of built-in namespaces that fhirgate knows.
pub const KNOWN_TAGS: &[&str] = &[
    API_TAG,
    GRANT_LOOKUP_TAG,
    PROVIDER_ROLES_TAG,
    crate::seed::SERVICE_TAG,
    crate::seed::SYSTEM_TAG,
];

/// Bulk Data kick-off actions (decisions §3): an API that declares one gets the built-in status
/// and file routes below, under its mount.
pub const EXPORT_ACTIONS: &[&str] = &[
    "smart.fhir/export-group",
    "smart.fhir/export-patient",
    "smart.fhir/export-system",
];
/// The built-in `GET`/`DELETE {mount}/_export/[:job]` route's action (not nameable in EDN).
pub const EXPORT_STATUS_ACTION: &str = "smart.fhir/export-status";
/// The built-in `GET {mount}/_export/[:job]/[:file]` route's action (not nameable in EDN).
pub const EXPORT_FILE_ACTION: &str = "smart.fhir/export-file";
/// The path segment of the built-in export routes.
pub const EXPORT_SEGMENT: &str = "_export";

/// Whether `action` is a Bulk Data kick-off.
pub fn is_export_action(action: &str) -> bool {
    EXPORT_ACTIONS.contains(&action)
}

/// Aidbox's FHIR packages are imported by name (`hl7-fhir-r4-core`, `hl7-fhir-us-core`, …);
/// fhirgate carries FHIR R4 itself, so any `hl7-fhir-*` package name is accepted.
pub fn is_fhir_package(name: &str) -> bool {
    name.starts_with("hl7-fhir-") && name.len() > "hl7-fhir-".len()
}

pub fn is_builtin(name: &str) -> bool {
    NAMESPACES.contains(&name) || is_fhir_package(name)
}

/// Paths owned by fhirgate itself (decisions §5): an EDN route may not shadow them.
/// Returns why `first`/`second` (the first two path segments, literals or `None` for params)
/// collide, if they do.
pub fn reserved_collision(
    first: Option<Option<&str>>,
    second: Option<Option<&str>>,
) -> Option<String> {
    match first {
        None => None, // the root path itself: only `PUT /` is reserved, checked by the caller
        Some(None) => Some("a path parameter as the first segment would shadow fhirgate's built-in routes (/auth, /rpc, /health, admin /{ResourceType})".into()),
        Some(Some(seg)) => {
            if matches!(seg, "auth" | "rpc" | "health" | "demo" | "brands.json" | "metrics") {
                Some(format!("/{seg} is a built-in fhirgate route"))
            } else if seg.starts_with(|c: char| c.is_ascii_uppercase()) {
                Some(format!("/{seg} collides with the admin REST route /{{ResourceType}}"))
            } else if seg == ".well-known" && matches!(second, Some(Some("openid-configuration" | "jwks.json")) | Some(None)) {
                Some("/.well-known/openid-configuration and /.well-known/jwks.json are built-in fhirgate routes".into())
            } else {
                None
            }
        }
    }
}
