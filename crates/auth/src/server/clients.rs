//! A Client resource read for one request ([`ClientInfo`]): how it authenticates, which grants,
//! redirect URIs and scopes it may use, and its token lifetimes. Which method a Client must use
//! is decided in [`ClientInfo::from_resource`]; a Client with no usable one is `Unusable`.
//!
//! ```
//! use fhirgate_auth::server::clients::{ClientAuth, ClientInfo};
//! use serde_json::json;
//!
//! let c = ClientInfo::from_resource(json!({"id": "svc", "grant_types": ["client_credentials"],
//!     "jwks_uri": "https://svc.example/jwks"}));
//! assert_eq!(c.auth, ClientAuth::PrivateKeyJwt);
//! assert!(c.allows_grant("client_credentials") && !c.allows_grant("authorization_code"));
//! ```

use serde_json::Value;

use super::records::MAX_ACCESS_TTL;

/// How a client proves who it is at the token, introspection and revocation endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` only: no secret, no keys, and `secret_required: false` said explicitly.
    Public,
    /// `client_secret_basic` or `client_secret_post` against the stored argon2 hash.
    Secret(String),
    /// `private_key_jwt` against the client's `jwks` or `jwks_uri`.
    PrivateKeyJwt,
    /// No secret, no keys and no `secret_required: false`: it cannot authenticate, and is never
    /// taken for a public client (fail closed; `check` and admin REST refuse such a Client).
    Unusable,
}

/// Why a Client with no credentials is refused (for `check`, admin REST and the token endpoint).
pub const NO_CREDENTIALS: &str = "a Client needs a secret, jwks or jwks_uri; a public app (no credentials) must say so with auth.authorization_code.secret_required: false";

/// A Client, read for one request.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: String,
    pub resource: Value,
    pub active: bool,
    pub name: String,
    pub auth: ClientAuth,
    pub grant_types: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub refresh_allowed: bool,
    pub pkce_required: bool,
    pub access_ttl: i64,
    pub refresh_ttl: i64,
    pub client_credentials_ttl: i64,
    /// Scopes it may be granted (`None`: whatever the server supports).
    pub allowed_scope: Option<String>,
    pub launch_uri: Option<String>,
    /// `smart.fhir_context_format: "2.0.0"`: the token response's `fhirContext` is SMART
    /// 2.0.0's array of reference strings instead of 2.2's objects (for apps and test kits
    /// written against 2.0.0).
    pub fhir_context_v2_0: bool,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn seconds(v: &Value, default: i64) -> i64 {
    v.as_i64().filter(|s| *s > 0).unwrap_or(default)
}

impl ClientInfo {
    pub fn from_resource(resource: Value) -> ClientInfo {
        ClientInfo::from_resource_with(resource, &super::Lifetimes::default())
    }

    /// [`ClientInfo::from_resource`] with the server's default `lifetimes` where the Client sets
    /// none.
    pub fn from_resource_with(resource: Value, lifetimes: &super::Lifetimes) -> ClientInfo {
        let id = resource["id"].as_str().unwrap_or_default().to_string();
        let ac = &resource["auth"]["authorization_code"];
        let cc = &resource["auth"]["client_credentials"];
        let grant_types = strings(&resource["grant_types"]);
        let has_keys = resource["jwks"].is_object() || resource["jwks_uri"].is_string();
        let secret_hash = resource["secret_hash"].as_str().map(str::to_string);
        let secret_required = ac["secret_required"].as_bool();
        let auth = if has_keys {
            ClientAuth::PrivateKeyJwt
        } else if let Some(h) = secret_hash {
            ClientAuth::Secret(h)
        } else if secret_required == Some(false) {
            ClientAuth::Public
        } else {
            ClientAuth::Unusable
        };
        let refresh_allowed = grant_types.iter().any(|g| g == "refresh_token")
            || ac["refresh_token"].as_bool() == Some(true);
        // decisions §13: a confidential client may opt out of PKCE; a public one never can
        let pkce_required = auth == ClientAuth::Public || ac["pkce"].as_bool() != Some(false);
        let allowed_scope = match &resource["scope"] {
            Value::Null => None,
            v => Some(strings(v).join(" ")),
        };
        let name = resource["smart"]["name"]
            .as_str()
            .or(resource["name"].as_str())
            .unwrap_or(&id)
            .to_string();
        ClientInfo {
            active: resource["active"].as_bool() != Some(false),
            name,
            auth,
            redirect_uris: strings(&ac["redirect_uri"]),
            refresh_allowed,
            pkce_required,
            access_ttl: seconds(&ac["access_token_expiration"], lifetimes.access)
                .min(MAX_ACCESS_TTL),
            refresh_ttl: seconds(&ac["refresh_token_expiration"], lifetimes.refresh),
            client_credentials_ttl: seconds(&cc["access_token_expiration"], lifetimes.access)
                .min(MAX_ACCESS_TTL),
            allowed_scope,
            launch_uri: resource["smart"]["launch_uri"].as_str().map(str::to_string),
            fhir_context_v2_0: resource["smart"]["fhir_context_format"] == "2.0.0",
            grant_types,
            id,
            resource,
        }
    }

    pub fn allows_grant(&self, grant_type: &str) -> bool {
        match grant_type {
            // Aidbox clients list `authorization_code` and enable refresh separately
            "refresh_token" => self.refresh_allowed,
            g => self.grant_types.iter().any(|t| t == g),
        }
    }

    pub fn is_confidential(&self) -> bool {
        matches!(self.auth, ClientAuth::Secret(_) | ClientAuth::PrivateKeyJwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aidbox_inferno_client() {
        let c = ClientInfo::from_resource(json!({
            "resourceType": "Client", "id": "inferno-client", "secret_hash": "$argon2id$x",
            "auth": {"authorization_code": {"redirect_uri": "https://x/redirect", "refresh_token": true,
                     "secret_required": true, "access_token_expiration": 36000}},
            "smart": {"launch_uri": "https://x/launch"}, "grant_types": ["authorization_code", "basic"]
        }));
        assert_eq!(c.auth, ClientAuth::Secret("$argon2id$x".into()));
        assert!(c.allows_grant("authorization_code") && c.allows_grant("refresh_token"));
        assert!(!c.allows_grant("client_credentials"));
        assert_eq!(c.access_ttl, 36000);
        assert_eq!(c.redirect_uris, vec!["https://x/redirect"]);
        assert!(c.pkce_required && c.active);
    }

    #[test]
    fn public_and_unusable_and_keys() {
        let public = ClientInfo::from_resource(json!({"id": "p", "auth": {"authorization_code": {
            "secret_required": false, "pkce": false}}}));
        assert_eq!(public.auth, ClientAuth::Public);
        assert!(
            public.pkce_required,
            "public clients cannot opt out of PKCE"
        );
        let broken = ClientInfo::from_resource(
            json!({"id": "b", "auth": {"authorization_code": {"secret_required": true}}}),
        );
        assert_eq!(broken.auth, ClientAuth::Unusable);
        let keyless =
            ClientInfo::from_resource(json!({"id": "n", "grant_types": ["authorization_code"],
            "auth": {"authorization_code": {"redirect_uri": "https://n/cb"}}}));
        assert_eq!(
            keyless.auth,
            ClientAuth::Unusable,
            "no credentials and no secret_required: false is not public"
        );
        assert!(!keyless.is_confidential());
        let keyed = ClientInfo::from_resource(json!({"id": "k", "jwks_uri": "https://k/jwks",
            "scope": "system/*.rs  system/Patient.r", "active": false}));
        assert_eq!(keyed.auth, ClientAuth::PrivateKeyJwt);
        assert_eq!(
            keyed.allowed_scope.as_deref(),
            Some("system/*.rs system/Patient.r")
        );
        assert!(!keyed.active);
    }
}
