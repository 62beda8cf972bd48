//! fhirgate's authorization server.
//!
//! - [`server`]: the OAuth 2.0 / OpenID Connect endpoints and pages (authorize, login, consent,
//!   patient picker, token, introspection, revocation, userinfo, discovery, grants, EHR launch);
//! - [`keys`]: signing keys the server generates, their JWK Set, JWT signing and verification
//!   with an algorithm allow-list;
//! - [`tokens`]: access token claims and a caching verifier with revocation;
//! - [`assertion`]: `private_key_jwt` client assertions;
//! - [`secrets`]: argon2 client secrets and passwords, with a verified-secret cache;
//! - [`throttle`]: limits on failed sign-ins and failed client authentications.

pub mod assertion;
pub mod keys;
pub mod secrets;
pub mod server;
pub mod throttle;
pub mod tokens;

pub use keys::{Algorithm, KeyError, Keyring, SigningKey};
