//! SMART scopes: one parser and one permission model, shared by the authorization server and the
//! enforcement middlewares.
//!
//! A scope string (space-separated) parses into [`Scope`]s; parsing never fails: a scope this
//! module does not understand, or a malformed one, becomes [`Scope::Other`] (the authorization
//! server drops those; they never grant anything). Every scope keeps its original text, and
//! [`ScopeSet`]'s `Display` echoes the request in its original order.
//!
//! Supported forms:
//!
//! - SMART v1 resource scopes: `patient/Observation.read`, `user/*.write`, `system/*.*`
//!   (`read` = `r`+`s`, `write` = `c`+`u`+`d`, `*` = all five);
//! - SMART v2: `patient/Observation.rs`, any non-empty subset of `cruds` written in that
//!   canonical order (`.rc` and `.rr` are malformed);
//! - v2 granular: `patient/Observation.rs?category=http://…|laboratory`, several parameters
//!   joined with `&` (all of them must hold). Values are kept as written, never percent-decoded;
//!   v1 scopes cannot be granular;
//! - the `*` resource type; resource type names must look like FHIR type names (`[A-Z][A-Za-z]*`);
//!   contexts are lower case (`Patient/…` is malformed);
//! - `launch`, `launch/patient`, `launch/encounter`, `openid`, `fhirUser`, `profile`,
//!   `offline_access`, `online_access`.
//!
//! # How scopes combine
//!
//! Each resource scope grants only its own context, resource type(s) and interactions. Nothing
//! implies anything across contexts (`user/*.rs` does not grant `patient/Observation.rs`, and
//! vice versa): the middleware asks [`ScopeSet::allows`] once per context it is prepared to
//! honour, and confines `patient/` grants to the patient. Within one context, grants add up:
//! `patient/Observation.r` plus `patient/Observation.s` is `patient/Observation.rs`. If any
//! non-granular scope grants the interaction, the decision is [`Decision::Allow`] (no filter);
//! otherwise each granting granular scope contributes one alternative, and the request (or
//! the resource read) must satisfy ANY one alternative, where an alternative holds when ALL its
//! parameters hold.
//!
//! ```
//! use fhirgate_smart::scopes::{Context, Decision, Interaction, ScopeSet};
//!
//! let scopes = ScopeSet::parse(
//!     "launch/patient openid patient/Patient.rs \
//!      patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
//! );
//! assert!(scopes.allows(Some(Context::Patient), "Patient", Interaction::Search).is_allowed());
//! assert_eq!(scopes.allows(Some(Context::Patient), "Patient", Interaction::Create), Decision::Deny);
//! match scopes.allows(Some(Context::Patient), "Observation", Interaction::Read) {
//!     Decision::Filtered(alternatives) => assert_eq!(alternatives[0][0].param, "category"),
//!     other => panic!("expected a filter, got {other:?}"),
//! }
//! assert!(scopes.has("openid"));
//! assert_eq!(scopes.to_string().split(' ').count(), 4);
//! ```

use std::fmt;

/// Who a resource scope speaks for: `patient/`, `user/` or `system/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// `patient/`: confined to the patient in context.
    Patient,
    /// `user/`: whatever the signed-in user may access.
    User,
    /// `system/`: a backend service, no user.
    System,
}

impl Context {
    /// The scope prefix, without the slash.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }

    fn parse(s: &str) -> Option<Context> {
        match s {
            "patient" => Some(Context::Patient),
            "user" => Some(Context::User),
            "system" => Some(Context::System),
            _ => None,
        }
    }
}

/// A FHIR RESTful interaction as SMART v2 names them (`c r u d s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `c`: create.
    Create,
    /// `r`: read, vread, history of an instance.
    Read,
    /// `u`: update, patch.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search, history of a type.
    Search,
}

impl Interaction {
    /// All five, in canonical `cruds` order.
    pub const ALL: [Interaction; 5] = [
        Interaction::Create,
        Interaction::Read,
        Interaction::Update,
        Interaction::Delete,
        Interaction::Search,
    ];

    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }

    /// The v2 letter.
    pub fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

/// A set of interactions (a bit set; never empty in a parsed scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Interactions(u8);

impl Interactions {
    /// No interaction.
    pub const NONE: Interactions = Interactions(0);
    /// `c r u d s`.
    pub const ALL: Interactions = Interactions(31);
    /// SMART v1 `read` = `r` + `s`.
    pub const V1_READ: Interactions = Interactions(2 | 16);
    /// SMART v1 `write` = `c` + `u` + `d`.
    pub const V1_WRITE: Interactions = Interactions(1 | 4 | 8);

    /// Whether `interaction` is in the set.
    pub fn contains(self, interaction: Interaction) -> bool {
        self.0 & interaction.bit() != 0
    }

    /// Whether every interaction of `other` is in the set.
    pub fn covers(self, other: Interactions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The set with `interaction` added.
    pub fn with(self, interaction: Interaction) -> Interactions {
        Interactions(self.0 | interaction.bit())
    }

    /// Both sets' common interactions.
    pub fn intersection(self, other: Interactions) -> Interactions {
        Interactions(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The v2 letters in canonical order (`"rs"`).
    pub fn letters(self) -> String {
        Interaction::ALL
            .iter()
            .filter(|i| self.contains(**i))
            .map(|i| i.letter())
            .collect()
    }

    /// Parse v2 letters: a non-empty subset of `cruds` in canonical order, each at most once.
    fn parse_v2(s: &str) -> Option<Interactions> {
        if s.is_empty() {
            return None;
        }
        let mut set = Interactions::NONE;
        let mut last = 0u8;
        for c in s.chars() {
            let interaction = match c {
                'c' => Interaction::Create,
                'r' => Interaction::Read,
                'u' => Interaction::Update,
                'd' => Interaction::Delete,
                's' => Interaction::Search,
                _ => return None,
            };
            // Bits grow in canonical order, so a strictly growing bit means canonical and unique.
            if interaction.bit() <= last {
                return None;
            }
            last = interaction.bit();
            set = set.with(interaction);
        }
        Some(set)
    }
}

/// Which SMART version's syntax a resource scope was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// `.read`, `.write`, `.*`.
    V1,
    /// `.cruds` letters, possibly granular.
    V2,
}

/// One `param=value` restriction of a granular scope, kept as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filter {
    /// The search parameter, e.g. `category`.
    pub param: String,
    /// Its value, e.g. `http://terminology.hl7.org/CodeSystem/observation-category|laboratory`.
    pub value: String,
}

/// A resource-level scope such as `patient/Observation.rs?category=…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    text: String,
    /// `patient`, `user` or `system`.
    pub context: Context,
    /// The resource type; `None` for `*`.
    pub resource_type: Option<String>,
    /// What it grants.
    pub interactions: Interactions,
    /// The syntax it was written in.
    pub version: Version,
    /// Granular restrictions (all must hold); empty for a plain scope.
    pub filters: Vec<Filter>,
}

impl ResourceScope {
    /// The scope as it was written (or, for a scope derived by [`intersect`], its canonical text).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the scope names `resource_type` or is a `*` scope.
    pub fn applies_to(&self, resource_type: &str) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|t| t == resource_type)
    }

    /// Whether the scope is granular.
    pub fn is_granular(&self) -> bool {
        !self.filters.is_empty()
    }

    fn parse(text: &str) -> Option<ResourceScope> {
        let (context, rest) = text.split_once('/')?;
        let context = Context::parse(context)?;
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let (resource_type, permissions) = path.split_once('.')?;
        let resource_type = match resource_type {
            "*" => None,
            t if is_type_name(t) => Some(t.to_owned()),
            _ => return None,
        };
        let (interactions, version) = match permissions {
            "read" => (Interactions::V1_READ, Version::V1),
            "write" => (Interactions::V1_WRITE, Version::V1),
            "*" => (Interactions::ALL, Version::V1),
            letters => (Interactions::parse_v2(letters)?, Version::V2),
        };
        let mut filters = Vec::new();
        if let Some(query) = query {
            if version == Version::V1 {
                return None;
            }
            for pair in query.split('&') {
                let (param, value) = pair.split_once('=')?;
                if param.is_empty() || value.is_empty() {
                    return None;
                }
                filters.push(Filter {
                    param: param.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
        Some(ResourceScope {
            text: text.to_owned(),
            context,
            resource_type,
            interactions,
            version,
            filters,
        })
    }

    /// A scope with these parts and its canonical text (v1 syntax where `prefer_v1` and the
    /// interactions can be written so).
    fn derived(
        context: Context,
        resource_type: Option<String>,
        interactions: Interactions,
        filters: Vec<Filter>,
        prefer_v1: bool,
    ) -> ResourceScope {
        let v1 = if prefer_v1 && filters.is_empty() {
            match interactions {
                Interactions::V1_READ => Some("read"),
                Interactions::V1_WRITE => Some("write"),
                Interactions::ALL => Some("*"),
                _ => None,
            }
        } else {
            None
        };
        let mut text = format!(
            "{}/{}.{}",
            context.as_str(),
            resource_type.as_deref().unwrap_or("*"),
            v1.map_or_else(|| interactions.letters(), str::to_owned)
        );
        for (i, f) in filters.iter().enumerate() {
            text.push(if i == 0 { '?' } else { '&' });
            text.push_str(&f.param);
            text.push('=');
            text.push_str(&f.value);
        }
        ResourceScope {
            text,
            context,
            resource_type,
            interactions,
            version: if v1.is_some() {
                Version::V1
            } else {
                Version::V2
            },
            filters,
        }
    }

    /// Whether `self`'s permissions are a superset of `other`'s for `interaction`: same context,
    /// `*` or the same type, the interaction granted, and every filter of `self` also in `other`
    /// (a narrower request is covered by a wider grant).
    fn covers_interaction(&self, other: &ResourceScope, interaction: Interaction) -> bool {
        self.context == other.context
            && self.interactions.contains(interaction)
            && match (&self.resource_type, &other.resource_type) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            }
            && self.filters.iter().all(|f| other.filters.contains(f))
    }
}

fn is_type_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphabetic())
}

/// One parsed scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A resource-level scope.
    Resource(ResourceScope),
    /// `launch` (EHR launch).
    Launch,
    /// `launch/patient`.
    LaunchPatient,
    /// `launch/encounter`.
    LaunchEncounter,
    /// `openid`.
    OpenId,
    /// `fhirUser`.
    FhirUser,
    /// `profile`.
    Profile,
    /// `offline_access`.
    OfflineAccess,
    /// `online_access`.
    OnlineAccess,
    /// Unknown or malformed, kept verbatim; grants nothing.
    Other(String),
}

impl Scope {
    /// Parse one scope (never fails: see [`Scope::Other`]).
    pub fn parse(text: &str) -> Scope {
        match text {
            "launch" => Scope::Launch,
            "launch/patient" => Scope::LaunchPatient,
            "launch/encounter" => Scope::LaunchEncounter,
            "openid" => Scope::OpenId,
            "fhirUser" => Scope::FhirUser,
            "profile" => Scope::Profile,
            "offline_access" => Scope::OfflineAccess,
            "online_access" => Scope::OnlineAccess,
            _ => ResourceScope::parse(text)
                .map_or_else(|| Scope::Other(text.to_owned()), Scope::Resource),
        }
    }

    /// The scope's text as written.
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Resource(r) => r.as_str(),
            Scope::Launch => "launch",
            Scope::LaunchPatient => "launch/patient",
            Scope::LaunchEncounter => "launch/encounter",
            Scope::OpenId => "openid",
            Scope::FhirUser => "fhirUser",
            Scope::Profile => "profile",
            Scope::OfflineAccess => "offline_access",
            Scope::OnlineAccess => "online_access",
            Scope::Other(s) => s,
        }
    }

    /// Whether the scope is unknown or malformed.
    pub fn is_other(&self) -> bool {
        matches!(self, Scope::Other(_))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`ScopeSet::allows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// No scope grants the interaction on the type.
    Deny,
    /// A non-granular scope grants it: no filter applies.
    Allow,
    /// Only granular scopes grant it: the request or resource must satisfy ANY alternative, and
    /// an alternative holds when ALL its filters hold. Never empty.
    Filtered(Vec<&'a [Filter]>),
}

impl Decision<'_> {
    /// Whether the interaction is granted at all (possibly with filters).
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Decision::Deny)
    }
}

/// A parsed scope string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
}

impl ScopeSet {
    /// Parse a space-separated scope string (any ASCII whitespace separates; never fails).
    pub fn parse(s: &str) -> ScopeSet {
        s.split_ascii_whitespace().map(Scope::parse).collect()
    }

    /// Every scope, in the original order.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The resource-level scopes, in order.
    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.scopes.iter().filter_map(|s| match s {
            Scope::Resource(r) => Some(r),
            _ => None,
        })
    }

    /// Whether there is no scope.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether this set grants `scope`: a non-resource scope must be present itself; a resource
    /// scope is granted when the set's scopes together cover every interaction it names (so
    /// `patient/*.read` has `patient/Observation.rs`). Unknown scopes are never had.
    pub fn has(&self, scope: &str) -> bool {
        match Scope::parse(scope) {
            Scope::Other(_) => false,
            Scope::Resource(r) => self.covers(&r),
            keyword => self.scopes.contains(&keyword),
        }
    }

    /// Whether the set's resource scopes together cover every interaction `scope` names.
    pub fn covers(&self, scope: &ResourceScope) -> bool {
        Interaction::ALL
            .iter()
            .filter(|i| scope.interactions.contains(**i))
            .all(|i| {
                self.resource_scopes()
                    .any(|a| a.covers_interaction(scope, *i))
            })
    }

    /// What the scopes allow for `interaction` on `resource_type`, in `context` (`None`: any
    /// context — enough to answer "is this type/interaction granted at all", not to confine).
    pub fn allows(
        &self,
        context: Option<Context>,
        resource_type: &str,
        interaction: Interaction,
    ) -> Decision<'_> {
        let mut alternatives = Vec::new();
        for scope in self.resource_scopes() {
            if context.is_some_and(|c| c != scope.context)
                || !scope.interactions.contains(interaction)
                || !scope.applies_to(resource_type)
            {
                continue;
            }
            if scope.filters.is_empty() {
                return Decision::Allow;
            }
            alternatives.push(scope.filters.as_slice());
        }
        if alternatives.is_empty() {
            Decision::Deny
        } else {
            Decision::Filtered(alternatives)
        }
    }

    /// The contexts that have at least one resource scope.
    pub fn contexts(&self) -> impl Iterator<Item = Context> + '_ {
        [Context::Patient, Context::User, Context::System]
            .into_iter()
            .filter(|c| self.resource_scopes().any(|s| s.context == *c))
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet {
            scopes: iter.into_iter().collect(),
        }
    }
}

impl fmt::Display for ScopeSet {
    /// The scopes' texts joined by single spaces, in order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

/// What a client may be granted of what it requested: `requested ∩ allowed`.
///
/// - Unknown scopes ([`Scope::Other`]) are dropped.
/// - A non-resource scope is kept when `allowed` has it.
/// - A resource scope that `allowed` covers entirely (see [`ScopeSet::covers`]: a `*` grant
///   covers a type, a plain grant covers a granular request, v1 covers the equivalent v2, and
///   grants add up) is kept with its original text, so a client that gets what it asked for
///   sees its request echoed.
/// - Otherwise it is narrowed to what each allowed scope of its context shares with it (type:
///   the more specific one; interactions: the common ones; filters: both scopes' filters), in
///   canonical text (v1 syntax when the request was v1 and the result can be written so);
///   narrowed scopes subsumed by another are left out, and nothing is kept when nothing is
///   shared.
/// - Duplicates (same text) are kept once.
///
/// ```
/// use fhirgate_smart::scopes::{ScopeSet, intersect};
/// let requested = ScopeSet::parse("openid patient/Observation.rs?category=a|b patient/*.cruds bogus");
/// let allowed = ScopeSet::parse("openid patient/*.rs");
/// assert_eq!(intersect(&requested, &allowed).to_string(), "openid patient/Observation.rs?category=a|b patient/*.rs");
/// ```
pub fn intersect(requested: &ScopeSet, allowed: &ScopeSet) -> ScopeSet {
    let mut out: Vec<Scope> = Vec::new();
    let push = |scope: Scope, out: &mut Vec<Scope>| {
        if !out.iter().any(|s| s.as_str() == scope.as_str()) {
            out.push(scope);
        }
    };
    for scope in &requested.scopes {
        match scope {
            Scope::Other(_) => {}
            Scope::Resource(r) if allowed.covers(r) => push(scope.clone(), &mut out),
            Scope::Resource(r) => {
                let parts: Vec<ResourceScope> = allowed
                    .resource_scopes()
                    .filter_map(|a| narrow(r, a))
                    .collect();
                for (i, part) in parts.iter().enumerate() {
                    // Left out when another part covers it, unless they cover each other and
                    // this one comes first.
                    let subsumed = parts.iter().enumerate().any(|(j, other)| {
                        j != i && covers_all(other, part) && (j < i || !covers_all(part, other))
                    });
                    if !subsumed {
                        push(Scope::Resource(part.clone()), &mut out);
                    }
                }
            }
            keyword => {
                if allowed.scopes.contains(keyword) {
                    push(keyword.clone(), &mut out);
                }
            }
        }
    }
    ScopeSet { scopes: out }
}

fn covers_all(a: &ResourceScope, b: &ResourceScope) -> bool {
    Interaction::ALL
        .iter()
        .filter(|x| b.interactions.contains(**x))
        .all(|x| a.covers_interaction(b, *x))
}

/// What `requested` and `allowed` share, if anything.
fn narrow(requested: &ResourceScope, allowed: &ResourceScope) -> Option<ResourceScope> {
    if requested.context != allowed.context {
        return None;
    }
    let resource_type = match (&requested.resource_type, &allowed.resource_type) {
        (None, t) | (t, None) => t.clone(),
        (Some(a), Some(b)) if a == b => Some(a.clone()),
        _ => return None,
    };
    let interactions = requested.interactions.intersection(allowed.interactions);
    if interactions.is_empty() {
        return None;
    }
    let mut filters = requested.filters.clone();
    for f in &allowed.filters {
        if !filters.contains(f) {
            filters.push(f.clone());
        }
    }
    Some(ResourceScope::derived(
        requested.context,
        resource_type,
        interactions,
        filters,
        requested.version == Version::V1,
    ))
}

#[cfg(test)]
mod tests;
