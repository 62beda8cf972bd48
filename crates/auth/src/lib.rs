//! fhirgate's authorization server.
//!
//! Built so far: [`keys`] — signing keys the server generates, their JWK Set, and JWT signing and
//! verification with an algorithm allow-list; [`tokens`] — access token claims and a caching
//! verifier with revocation. The OAuth endpoints, sessions and SMART launch
//! build on it.

pub mod keys;
pub mod tokens;

pub use keys::{Algorithm, KeyError, Keyring, SigningKey};
