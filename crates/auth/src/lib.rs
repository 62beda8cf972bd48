//! fhirgate's authorization server.
//!
//! - [`server`]: the OAuth 2.0 / OpenID Connect endpoints and pages (authorize, login, consent,
//!   patient picker, token, introspection, revocation, userinfo, discovery, grants, EHR launch);
//! - [`keys`]: signing keys the server generates, their JWK Set, JWT signing and verification
//!   with an algorithm allow-list, and the one unverified JWT reader;
//! - [`tokens`]: access token claims, a caching verifier with revocation, and the clock;
//! - [`assertion`]: `private_key_jwt` client assertions;
//! - [`secrets`]: argon2 client secrets and passwords, with a verified-secret cache;
//! - [`throttle`]: limits on failed sign-ins and failed client authentications.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use fhirgate_auth::server::{AuthConfig, AuthServer};
//!
//! let store = fhirgate_store::open("sqlite:/tmp/fhirgate.db").await?;
//! let config = AuthConfig::new("https://ehr.example", vec!["https://ehr.example/smart".into()]);
//! let auth = AuthServer::start(store, config).await?;
//! let app: axum::Router = auth.routes(); // `/auth/*` and `/.well-known/*`, ready to serve
//! # drop(app);
//! # Ok(())
//! # }
//! ```

pub mod assertion;
pub mod keys;
pub mod secrets;
pub mod server;
pub mod throttle;
pub mod tokens;

pub use keys::{Algorithm, KeyError, Keyring, SigningKey};
