//! A compact JWS split into its parts, its header read (`alg` on the allow-list, no `crit`),
//! its signature checked and its payload read as claims. Header and payload are decoded by
//! [`crate::keys::decode_jwt_part`], the crate's one unverified JWT reader.
//!
//! ```
//! use fhirgate_auth::assertion::{AssertionError, claimed_client_id};
//!
//! // {"alg":"RS384"}.{"sub":"app"}: read, not verified
//! let t = "eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJhcHAifQ.c2ln";
//! assert_eq!(claimed_client_id(t).unwrap(), "app");
//! // {"alg":"none"}: refused before anything else is read
//! let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhcHAifQ.";
//! assert!(matches!(claimed_client_id(none), Err(AssertionError::AlgorithmNotAllowed(_))));
//! ```

use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;

use super::verifier::Claims;
use super::{AssertionAlg, AssertionError};
use crate::keys::decode_jwt_part;

/// A compact JWS, split and its header read.
pub(super) struct Jws<'a> {
    pub(super) alg: AssertionAlg,
    pub(super) kid: Option<String>,
    /// `header.payload`, what the signature covers.
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

impl<'a> Jws<'a> {
    pub(super) fn parse(token: &'a str) -> Result<Self, AssertionError> {
        let malformed = |m: &str| AssertionError::Malformed(m.to_string());
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let header: Header =
            decode_jwt_part(header).ok_or_else(|| malformed("the header is not base64url JSON"))?;
        let alg = header.alg.ok_or_else(|| malformed("no alg"))?;
        let alg = AssertionAlg::parse(&alg).ok_or(AssertionError::AlgorithmNotAllowed(alg))?;
        if header.crit.is_some() {
            return Err(AssertionError::CriticalHeader);
        }
        Ok(Jws {
            alg,
            kid: header.kid,
            signing_input: &token[..token.len() - signature.len() - 1],
            payload,
            signature,
        })
    }

    pub(super) fn verify_signature(&self, key: &DecodingKey) -> Result<(), AssertionError> {
        match jsonwebtoken::crypto::verify(
            self.signature,
            self.signing_input.as_bytes(),
            key,
            self.alg.jwt(),
        ) {
            Ok(true) => Ok(()),
            _ => Err(AssertionError::BadSignature),
        }
    }

    pub(super) fn claims(&self) -> Result<Claims, AssertionError> {
        decode_jwt_part(self.payload).ok_or_else(|| {
            AssertionError::Malformed("the payload is not a JSON claims object".into())
        })
    }
}
