//! Aidbox AccessPolicies: the `allow`, `matcho`, `complex` and `json-schema` engines, `roleName`
//! and `link`, evaluated against a [`Request`].
//!
//! Policies are compiled once ([`AccessPolicy::from_value`]: regexes, paths and schemas are
//! prepared at load) and evaluated without copying the request. Any applicable policy that
//! matches allows the request; none → deny ([`evaluate`], [`PolicySet`]).
//!
//! # Applicability
//!
//! - `roleName: X`: the policy applies when the request has a Role named `X`, and that Role is
//!   what `.role…` paths see (with several such Roles, any one may satisfy the policy).
//! - `link: [{resourceType: User|Client, id}]` (or `{reference: "Client/x"}`): the policy
//!   applies to those principals (`user.id`, `client.id` of the request). Other link targets are
//!   a load error.
//! - With both, the policy applies when either does (each is a way to attach it to principals).
//! - With neither, the policy applies to every authenticated request (one with a `user` or a
//!   `client`), never to an anonymous one (decisions §10). `role` is then each of the request's
//!   Roles in turn (none when it has none).
//! - Sub-policies of `complex` (`and`: all must match, `or`: at least one; both may be given)
//!   have their own engine and may narrow with their own `roleName`/`link`; otherwise they see
//!   the parent's `role`.
//!
//! # Matcho semantics
//!
//! - An object pattern matches an object whose keys all match (extra keys are fine); an array
//!   pattern matches element-wise as a prefix.
//! - `"#regex"` is an UNANCHORED search (Rust `regex` syntax: no look-around, no
//!   back-references — those are load errors). `#/smart/Patient` also matches
//!   `/evil/smart/Patient` and `/smart/Patient/x/../Observation`: write `#^/smart/Patient$` to
//!   anchor (see the test `unanchored_regex_matches_attacker_uris`).
//! - `".a.b"` is a path into the request (`.role.links.patient.id`; digits index arrays); the
//!   data must equal its value. A path with no value matches nothing: there are no `nil = nil`
//!   grants. Null and absent are the same thing in matcho.
//! - `"present?"`, `"nil?"`, `"not-blank?"` (a non-blank string, non-empty array or object, or
//!   any number or boolean). Other strings, numbers (`1` = `1.0`) and booleans compare by value;
//!   `null` means `nil?`. There is no escape for a literal string that starts with `#` or `.`:
//!   use `{"$enum": ["#literal"]}`.
//! - `{"$enum": [..]}` (equal to one literal), `{"$one-of": [..]}` (any sub-pattern),
//!   `{"$not": p}` (p does not match; a missing value is "not p"), `{"$contains": p}` (some
//!   array element matches), `{"$every": p}` (every element matches, and the array is NOT
//!   empty — a vacuous "every" never grants), `{"$reference": p}`: the data (`pt-1`,
//!   `Patient/pt-1`, `Patient/pt-1/_history/2`, `https://host/fhir/Patient/pt-1`,
//!   `{"reference": …}` or `{"id", "resourceType"}`) is parsed into `{resourceType, id}` and
//!   matched against p. A comma-separated list, a query, or an id that is not a FHIR id is not a
//!   reference and matches nothing. An operator object has exactly one key; an unknown `$`
//!   operator is a load error.
//!
//! # Aidbox's SMART guide policies
//!
//! `patient-smart`, `smart-patient-read` and `smart-patient-search-self` work as written. Note
//! that the unanchored `#/smart/Patient` of `smart-patient-search-self` also allows
//! `GET /smart/Patient/pt-2` (and any URI containing `/smart/Patient`): Aidbox relies on the
//! SMART layer's compartment check for that case, and so must fhirgate (decisions §10, §12).
//!
//! # Cost
//!
//! [`allowed_by`] (the per-request path) builds no explanation: about 0.15–0.2 µs for the three
//! guide policies on a release build. [`evaluate`] also explains every policy that did not match
//! (about 1 µs when all three fail); use it for the `x-debug: policy` view and denials.
//!
//! The `json-schema` engine validates the whole request (with `role` bound as above) against a
//! subset of JSON Schema documented in its module (unknown keywords are load errors).
//!
//! ```
//! use fhirgate_smart::policy::{AccessPolicy, Request, evaluate};
//! use serde_json::json;
//!
//! let policy = AccessPolicy::from_value(&json!({
//!     "resourceType": "AccessPolicy", "id": "patient-smart", "engine": "matcho",
//!     "roleName": "patient",
//!     "matcho": {"uri": "#/smart/.*", "params": {"patient": {"$reference": {"id": ".role.links.patient.id"}}}}
//! })).unwrap();
//! let role = json!({"name": "patient", "links": {"patient": {"id": "pt-1", "resourceType": "Patient"}}});
//! let request = |patient: &str| Request::new("GET", "/smart/Observation")
//!     .with_param("patient", patient)
//!     .with_user(json!({"id": "u1"}))
//!     .with_role(role.clone());
//! let policies = [policy];
//! assert_eq!(evaluate(&policies, &request("Patient/pt-1")).allowed_by.as_deref(), Some("patient-smart"));
//! let denied = evaluate(&policies, &request("pt-2"));
//! assert_eq!(denied.allowed_by, None);
//! assert!(denied.explanation[0].reason.contains("params.patient"));
//! ```

mod data;
mod matcho;
mod schema;

use std::fmt;

use serde_json::{Map, Value};

use self::data::{Data, Env, parse_reference};
use self::matcho::{Matched, Pattern, miss};
use self::schema::Schema;

/// A policy that cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The resource is not a JSON object.
    #[error("an AccessPolicy must be a JSON object")]
    NotAnObject,
    /// The resource has no string `id`.
    #[error("an AccessPolicy needs an id")]
    MissingId,
    /// Anything else, with the policy's id.
    #[error("AccessPolicy {id}: {message}")]
    Invalid {
        /// The policy's id.
        id: String,
        /// What is wrong, and where.
        message: String,
    },
}

/// The request a policy sees: `uri`, `request-method`, `params`, `user`, `client`, `role`,
/// `jwt`, `session`, `headers`.
///
/// Built once per HTTP request. `uri` is the path without the query string; `request-method` is
/// lower case (`"get"`); `params` is the query overlaid by the route params (the caller does the
/// overlay; route params win); header names are lower case. The user's Roles are kept aside:
/// each policy sees at `role` the Role its `roleName` selects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    fields: Map<String, Value>,
    roles: Vec<Value>,
}

impl Request {
    /// A request with `request-method` (lower-cased) and `uri` (any query string cut off), and
    /// empty `params` and `headers`.
    pub fn new(method: &str, uri: &str) -> Request {
        let path = uri.split_once('?').map_or(uri, |(path, _)| path);
        let mut fields = Map::new();
        fields.insert("uri".into(), path.into());
        fields.insert("request-method".into(), method.to_ascii_lowercase().into());
        fields.insert("params".into(), Value::Object(Map::new()));
        fields.insert("headers".into(), Value::Object(Map::new()));
        Request {
            fields,
            roles: Vec::new(),
        }
    }

    /// A request from a JSON object holding the fields above; `role` may be one Role or an array
    /// of them. Anything but an object gives an empty request (which no policy applies to).
    pub fn from_value(value: Value) -> Request {
        let Value::Object(mut fields) = value else {
            return Request::default();
        };
        let roles = match fields.remove("role") {
            Some(Value::Array(roles)) => roles,
            Some(Value::Null) | None => Vec::new(),
            Some(role) => vec![role],
        };
        Request { fields, roles }
    }

    /// The request as JSON, with `role` bound to `role` (for a debug view or a log).
    pub fn to_value(&self, role: Option<&Value>) -> Value {
        let mut fields = self.fields.clone();
        if let Some(role) = role {
            fields.insert("role".into(), role.clone());
        }
        Value::Object(fields)
    }

    fn object_mut(&mut self, key: &str) -> Option<&mut Map<String, Value>> {
        let slot = self.fields.entry(key).or_insert(Value::Null);
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        slot.as_object_mut()
    }

    /// Set one parameter (query or route).
    pub fn with_param(mut self, name: &str, value: impl Into<Value>) -> Request {
        if let Some(params) = self.object_mut("params") {
            params.insert(name.into(), value.into());
        }
        self
    }

    /// Set one header (the name is lower-cased).
    pub fn with_header(mut self, name: &str, value: impl Into<Value>) -> Request {
        if let Some(headers) = self.object_mut("headers") {
            headers.insert(name.to_ascii_lowercase(), value.into());
        }
        self
    }

    /// Set any top-level field (`user`, `client`, `jwt`, `session`, …); `role` adds a Role.
    pub fn with(mut self, key: &str, value: Value) -> Request {
        if key == "role" {
            self.roles.push(value);
        } else {
            self.fields.insert(key.into(), value);
        }
        self
    }

    /// The signed-in User resource.
    pub fn with_user(self, user: Value) -> Request {
        self.with("user", user)
    }

    /// The authenticated Client resource.
    pub fn with_client(self, client: Value) -> Request {
        self.with("client", client)
    }

    /// Add one of the user's Roles.
    pub fn with_role(self, role: Value) -> Request {
        self.with("role", role)
    }

    /// The verified token's claims.
    pub fn with_jwt(self, claims: Value) -> Request {
        self.with("jwt", claims)
    }

    /// The login session.
    pub fn with_session(self, session: Value) -> Request {
        self.with("session", session)
    }

    /// A top-level field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The user's Roles.
    pub fn roles(&self) -> &[Value] {
        &self.roles
    }

    fn principal_id(&self, key: &str) -> Option<&str> {
        self.fields.get(key)?.get("id")?.as_str()
    }

    /// Whether a user or a client is known.
    pub fn is_authenticated(&self) -> bool {
        ["user", "client"]
            .iter()
            .any(|k| self.fields.get(*k).is_some_and(|v| !v.is_null()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Principal {
    User,
    Client,
}

#[derive(Debug)]
struct Link {
    principal: Principal,
    id: Box<str>,
}

#[derive(Debug)]
enum Engine {
    Allow,
    Matcho(Pattern),
    Schema(Box<Schema>),
    Complex {
        and: Vec<AccessPolicy>,
        or: Option<Vec<AccessPolicy>>,
    },
}

/// A compiled AccessPolicy.
#[derive(Debug)]
pub struct AccessPolicy {
    id: String,
    engine: Engine,
    role_name: Option<Box<str>>,
    links: Vec<Link>,
}

impl AccessPolicy {
    /// Compile an AccessPolicy resource (JSON).
    pub fn from_value(value: &Value) -> Result<AccessPolicy, PolicyError> {
        let map = value.as_object().ok_or(PolicyError::NotAnObject)?;
        let id = map
            .get("id")
            .and_then(Value::as_str)
            .ok_or(PolicyError::MissingId)?;
        AccessPolicy::compile(map, id.to_owned()).map_err(|message| PolicyError::Invalid {
            id: id.to_owned(),
            message,
        })
    }

    /// The policy's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn compile(map: &Map<String, Value>, id: String) -> Result<AccessPolicy, String> {
        let engine = match map.get("engine").and_then(Value::as_str) {
            Some("allow") => Engine::Allow,
            Some("matcho") => Engine::Matcho(Pattern::compile(
                map.get("matcho").ok_or("engine matcho needs `matcho`")?,
                "matcho",
            )?),
            Some("json-schema") => Engine::Schema(Box::new(Schema::compile(
                map.get("schema")
                    .ok_or("engine json-schema needs `schema`")?,
                "schema",
            )?)),
            Some("complex") => {
                let subs = |key: &str| -> Result<Option<Vec<AccessPolicy>>, String> {
                    let Some(list) = map.get(key) else {
                        return Ok(None);
                    };
                    let items = list
                        .as_array()
                        .ok_or_else(|| format!("`{key}` takes a list of policies"))?;
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let label = format!("{id}.{key}[{i}]");
                            let sub = item
                                .as_object()
                                .ok_or_else(|| format!("{label}: not an object"))?;
                            AccessPolicy::compile(sub, label)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some)
                };
                let (and, or) = (subs("and")?, subs("or")?);
                if and.is_none() && or.is_none() {
                    return Err("engine complex needs `and` or `or`".to_owned());
                }
                Engine::Complex {
                    and: and.unwrap_or_default(),
                    or,
                }
            }
            Some(other) => return Err(format!("unsupported engine {other}")),
            None => return Err("`engine` is missing".to_owned()),
        };
        let role_name = match map.get("roleName") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name.as_str().into()),
            Some(_) => return Err("`roleName` must be a string".to_owned()),
        };
        let links = match map.get("link") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                items.iter().map(compile_link).collect::<Result<_, _>>()?
            }
            Some(_) => return Err("`link` must be a list of references".to_owned()),
        };
        Ok(AccessPolicy {
            id,
            engine,
            role_name,
            links,
        })
    }

    /// Whether the policy allows `request`.
    pub fn allows(&self, request: &Request) -> bool {
        self.eval(request, None, false).is_ok()
    }

    /// Why the policy does not allow `request` (`None` when it does).
    pub fn explain(&self, request: &Request) -> Option<String> {
        match self.eval(request, None, true) {
            Ok(()) => None,
            Err(fail) => Some(fail.map_or_else(|| "no match".to_owned(), |f| f.render())),
        }
    }

    /// `inherited`: `None` at the top level, `Some(role)` inside a `complex` policy.
    fn eval(&self, request: &Request, inherited: Option<Option<&Value>>, explain: bool) -> Matched {
        let unrestricted = self.links.is_empty() && self.role_name.is_none();
        if unrestricted && inherited.is_none() && !request.is_authenticated() {
            return miss(explain, || {
                "not applicable: the request is anonymous".to_owned()
            });
        }
        let mut first_failure = None;
        if unrestricted || self.links.iter().any(|l| l.matches(request)) {
            let result = match inherited {
                Some(role) => self.run(request, role, explain),
                None if request.roles.is_empty() => self.run(request, None, explain),
                None => any_role(request.roles.iter(), |role| {
                    self.run(request, Some(role), explain)
                }),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(fail) => first_failure = Some(fail),
            }
        }
        if let Some(name) = &self.role_name {
            let mut roles = request
                .roles
                .iter()
                .filter(|r| r.get("name").and_then(Value::as_str) == Some(name))
                .peekable();
            if roles.peek().is_some() {
                match any_role(roles, |role| self.run(request, Some(role), explain)) {
                    Ok(()) => return Ok(()),
                    Err(fail) => first_failure = first_failure.or(Some(fail)),
                }
            }
        }
        match first_failure {
            Some(fail) => Err(fail),
            None => miss(explain, || {
                let mut wants = Vec::new();
                if let Some(name) = &self.role_name {
                    wants.push(format!("a Role named {name}"));
                }
                if !self.links.is_empty() {
                    wants.push("a linked user or client".to_owned());
                }
                format!("not applicable: needs {}", wants.join(" or "))
            }),
        }
    }

    fn run(&self, request: &Request, role: Option<&Value>, explain: bool) -> Matched {
        let env = Env {
            fields: &request.fields,
            role,
        };
        match &self.engine {
            Engine::Allow => Ok(()),
            Engine::Matcho(pattern) => pattern.matches(Data::Root(&env), &env, explain),
            Engine::Schema(schema) => schema.validate(Data::Root(&env), explain),
            Engine::Complex { and, or } => {
                for sub in and {
                    prefixed(sub.eval(request, Some(role), explain), &sub.id)?;
                }
                match or {
                    None => Ok(()),
                    Some(subs) => {
                        let mut reasons = Vec::new();
                        for sub in subs {
                            match sub.eval(request, Some(role), explain) {
                                Ok(()) => return Ok(()),
                                Err(Some(fail)) => {
                                    reasons.push(format!("{}: {}", sub.id, fail.render()));
                                }
                                Err(None) => {}
                            }
                        }
                        miss(explain, || {
                            format!("no `or` policy matched ({})", reasons.join("; "))
                        })
                    }
                }
            }
        }
    }
}

fn any_role<'a>(
    roles: impl Iterator<Item = &'a Value>,
    mut run: impl FnMut(&'a Value) -> Matched,
) -> Matched {
    let mut first = None;
    for role in roles {
        match run(role) {
            Ok(()) => return Ok(()),
            Err(fail) => first = first.or(Some(fail)),
        }
    }
    // No role tried: a failure (fail closed).
    Err(first.flatten())
}

fn prefixed(result: Matched, label: &str) -> Matched {
    result.map_err(|fail| {
        fail.map(|mut f| {
            f.reason = format!("{label}: {}", f.reason);
            f
        })
    })
}

fn compile_link(value: &Value) -> Result<Link, String> {
    let (resource_type, id) = match value.get("reference").and_then(Value::as_str) {
        Some(reference) => match parse_reference(reference) {
            Some(Data::Ref {
                resource_type: Some(t),
                id,
            }) => (t, id),
            _ => return Err(format!("bad link reference {reference}")),
        },
        None => (
            value
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or(""),
            value
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("link {value} has no id"))?,
        ),
    };
    let principal = match resource_type {
        "User" => Principal::User,
        "Client" => Principal::Client,
        other => {
            return Err(format!(
                "link to {other:?} is not supported (User or Client)"
            ));
        }
    };
    Ok(Link {
        principal,
        id: id.into(),
    })
}

impl Link {
    fn matches(&self, request: &Request) -> bool {
        let key = match self.principal {
            Principal::User => "user",
            Principal::Client => "client",
        };
        request.principal_id(key) == Some(&*self.id)
    }
}

/// Why one policy did not allow a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Miss {
    /// The policy's id.
    pub policy: String,
    /// The first failing path and why, or why the policy does not apply.
    pub reason: String,
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The first policy that allows the request; `None`: denied.
    pub allowed_by: Option<String>,
    /// For each policy tried before (all of them when denied), why it did not match.
    pub explanation: Vec<Miss>,
}

impl Outcome {
    /// Whether a policy allowed the request.
    pub fn is_allowed(&self) -> bool {
        self.allowed_by.is_some()
    }
}

impl fmt::Display for Outcome {
    /// One line per policy, for the `x-debug: policy` view.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for miss in &self.explanation {
            writeln!(f, "{}: no: {}", miss.policy, miss.reason)?;
        }
        match &self.allowed_by {
            Some(id) => writeln!(f, "{id}: allowed"),
            None => writeln!(f, "denied: no AccessPolicy allows this request"),
        }
    }
}

/// Evaluate `policies` in order: the first that allows wins; the explanation says why each one
/// before it did not.
pub fn evaluate(policies: &[AccessPolicy], request: &Request) -> Outcome {
    let mut explanation = Vec::new();
    for policy in policies {
        match policy.eval(request, None, true) {
            Ok(()) => {
                return Outcome {
                    allowed_by: Some(policy.id.clone()),
                    explanation,
                };
            }
            Err(fail) => explanation.push(Miss {
                policy: policy.id.clone(),
                reason: fail.map_or_else(|| "no match".to_owned(), |f| f.render()),
            }),
        }
    }
    Outcome {
        allowed_by: None,
        explanation,
    }
}

/// The first of `policies` that allows `request`, without building an explanation (the fast
/// path for every request).
pub fn allowed_by<'p>(policies: &'p [AccessPolicy], request: &Request) -> Option<&'p AccessPolicy> {
    policies.iter().find(|p| p.allows(request))
}

/// A loaded list of policies.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<AccessPolicy>,
}

impl PolicySet {
    /// Compile every policy; the first error stops the load.
    pub fn from_values<'a>(
        values: impl IntoIterator<Item = &'a Value>,
    ) -> Result<PolicySet, PolicyError> {
        Ok(PolicySet {
            policies: values
                .into_iter()
                .map(AccessPolicy::from_value)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The policies, in order.
    pub fn policies(&self) -> &[AccessPolicy] {
        &self.policies
    }

    /// See [`allowed_by`].
    pub fn allowed_by(&self, request: &Request) -> Option<&AccessPolicy> {
        allowed_by(&self.policies, request)
    }

    /// See [`evaluate`].
    pub fn evaluate(&self, request: &Request) -> Outcome {
        evaluate(&self.policies, request)
    }
}

impl From<Vec<AccessPolicy>> for PolicySet {
    fn from(policies: Vec<AccessPolicy>) -> Self {
        PolicySet { policies }
    }
}
