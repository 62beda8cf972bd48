//! Signing keys and JWTs.
//!
//! The server signs access tokens with ES256 (decisions §15: RS256 signing is too slow for the
//! issuance targets) and id_tokens with RS256 (what OpenID Connect clients must support). Keys are
//! generated here with aws-lc-rs, identified by their RFC 7638 thumbprint (`kid`), and published
//! as a JWK Set. A [`Keyring`] holds the current key per algorithm plus retired keys that still
//! verify tokens until those expire; it serializes to JSON so the store can persist it.
//!
//! ```
//! use fhirgate_auth::keys::{Algorithm, Keyring};
//! use serde_json::json;
//!
//! let ring = Keyring::generate().unwrap();
//! let token = ring.sign(Algorithm::ES256, &json!({"iss": "https://x", "aud": "https://x/fhir", "exp": 4102444800u64})).unwrap();
//! let claims = ring.verify(&token, &[Algorithm::ES256], "https://x", "https://x/fhir").unwrap();
//! assert_eq!(claims["iss"], "https://x");
//! assert!(ring.verify(&token, &[Algorithm::RS256], "https://x", "https://x/fhir").is_err());
//! assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
//! ```

use std::collections::HashMap;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Allowed leeway for `exp`/`nbf`, in seconds: small, for clock skew between processes.
pub const LEEWAY_SECS: u64 = 30;

/// The JWS algorithms fhirgate signs with. Nothing else is ever accepted for our own tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    ES256,
    RS256,
}

impl Algorithm {
    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("stored key is malformed: {0}")]
    Malformed(String),
    #[error("no current key for {0:?}")]
    NoKey(Algorithm),
    #[error("signing failed: {0}")]
    Sign(String),
    /// The token is not valid: bad signature, unknown key, wrong algorithm, issuer or audience,
    /// expired. The detail is for logs, never for clients.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// One key pair: the private key (PKCS#8 DER) and its public JWK.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    /// PKCS#8 DER, base64url. Secret: keep it in the store, never in logs.
    private_pkcs8: String,
    /// The public JWK (with `kid`, `alg`, `use: sig`).
    pub public_jwk: Value,
    /// Unix time after which the key no longer signs (it still verifies until `verify_until`).
    #[serde(default)]
    pub retired_at: Option<u64>,
    /// Unix time after which the key is dropped (the longest lifetime of what it signed).
    #[serde(default)]
    pub verify_until: Option<u64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generate a new key pair for `alg`.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let (pkcs8, jwk) = match alg {
            Algorithm::ES256 => {
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| KeyError::Generate)?;
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                    .map_err(|_| KeyError::Generate)?;
                // uncompressed point: 0x04 || x (32 bytes) || y (32 bytes)
                let point = pair.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(KeyError::Generate);
                }
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])});
                (doc.as_ref().to_vec(), jwk)
            }
            Algorithm::RS256 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| KeyError::Generate)?;
                let der = pair.as_der().map_err(|_| KeyError::Generate)?;
                let public = pair.public_key();
                let jwk = json!({
                    "kty": "RSA",
                    "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
                });
                (der.as_ref().to_vec(), jwk)
            }
        };
        let kid = thumbprint(&jwk)?;
        let mut public_jwk = jwk;
        if let Some(o) = public_jwk.as_object_mut() {
            o.insert("kid".into(), json!(kid));
            o.insert("alg".into(), json!(alg));
            o.insert("use".into(), json!("sig"));
        }
        Ok(SigningKey {
            kid,
            alg,
            private_pkcs8: B64.encode(pkcs8),
            public_jwk,
            retired_at: None,
            verify_until: None,
        })
    }

    /// The private key parsed once, with the JWS header it signs under: parsing (and aws-lc's
    /// check of the key pair) costs as much as a signature, and `jsonwebtoken::encode` does it
    /// for every token.
    fn signer(&self) -> Result<Signer, KeyError> {
        let der = B64
            .decode(&self.private_pkcs8)
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        let pair = match self.alg {
            Algorithm::ES256 => SignerPair::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|e| KeyError::Malformed(e.to_string()))?,
            ),
            Algorithm::RS256 => SignerPair::Rsa(
                aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)
                    .map_err(|e| KeyError::Malformed(e.to_string()))?,
            ),
        };
        let mut header = Header::new(self.alg.jwt());
        header.kid = Some(self.kid.clone());
        let header = serde_json::to_vec(&header).map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(Signer {
            header: B64.encode(header),
            pair,
        })
    }

    fn decoding_key(&self) -> Result<DecodingKey, KeyError> {
        let field = |k: &str| {
            self.public_jwk[k]
                .as_str()
                .ok_or_else(|| KeyError::Malformed(format!("public JWK has no {k}")))
        };
        match self.alg {
            Algorithm::ES256 => DecodingKey::from_ec_components(field("x")?, field("y")?),
            Algorithm::RS256 => DecodingKey::from_rsa_components(field("n")?, field("e")?),
        }
        .map_err(|e| KeyError::Malformed(e.to_string()))
    }
}

/// RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order.
fn thumbprint(jwk: &Value) -> Result<String, KeyError> {
    let s = |k: &str| jwk[k].as_str().unwrap_or_default().to_string();
    let canonical = match jwk["kty"].as_str() {
        Some("EC") => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        Some("RSA") => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        _ => return Err(KeyError::Generate),
    };
    Ok(B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    )))
}

/// The server's keys: one current signing key per algorithm, and every key that still verifies.
pub struct Keyring {
    keys: Vec<SigningKey>,
    /// kid → (algorithm, decoding key), prepared once.
    verifiers: HashMap<String, (Algorithm, DecodingKey)>,
    /// algorithm → the current signing key, parsed.
    signers: HashMap<Algorithm, Signer>,
}

/// A current signing key, ready to sign: its private key parsed and its header encoded.
struct Signer {
    /// The JWS protected header (`alg`, `typ`, `kid`), base64url.
    header: String,
    pair: SignerPair,
}

enum SignerPair {
    Ec(EcdsaKeyPair),
    Rsa(aws_lc_rs::rsa::KeyPair),
}

impl Signer {
    /// RFC 7515 compact serialization of `claims`, signed.
    fn sign(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 400);
        token.push_str(&self.header);
        token.push('.');
        B64.encode_string(&payload, &mut token);
        let rng = SystemRandom::new();
        let failed = |_| KeyError::Sign("the crypto library refused to sign".into());
        let sig = match &self.pair {
            SignerPair::Ec(pair) => pair
                .sign(&rng, token.as_bytes())
                .map_err(failed)?
                .as_ref()
                .to_vec(),
            SignerPair::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, token.as_bytes(), &mut sig)
                    .map_err(failed)?;
                sig
            }
        };
        token.push('.');
        B64.encode_string(&sig, &mut token);
        Ok(token)
    }
}

impl Keyring {
    /// A fresh keyring with one ES256 and one RS256 key.
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_keys(vec![
            SigningKey::generate(Algorithm::ES256)?,
            SigningKey::generate(Algorithm::RS256)?,
        ])
    }

    /// Build from stored keys. The newest non-retired key of each algorithm signs.
    pub fn from_keys(keys: Vec<SigningKey>) -> Result<Self, KeyError> {
        let mut verifiers = HashMap::new();
        let mut signers = HashMap::new();
        for k in &keys {
            verifiers.insert(k.kid.clone(), (k.alg, k.decoding_key()?));
            if k.retired_at.is_none() {
                signers.insert(k.alg, k.signer()?);
            }
        }
        Ok(Keyring {
            keys,
            verifiers,
            signers,
        })
    }

    /// The keys, for persistence.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// Rotate `alg`: a new key signs from now on; the old one verifies until `verify_until`
    /// (now + the longest token lifetime it may have signed).
    pub fn rotate(&mut self, alg: Algorithm, now: u64, verify_until: u64) -> Result<(), KeyError> {
        let fresh = SigningKey::generate(alg)?;
        for k in self
            .keys
            .iter_mut()
            .filter(|k| k.alg == alg && k.retired_at.is_none())
        {
            k.retired_at = Some(now);
            k.verify_until = Some(verify_until);
        }
        self.keys.retain(|k| k.verify_until.is_none_or(|t| t > now));
        self.keys.push(fresh);
        *self = Self::from_keys(std::mem::take(&mut self.keys))?;
        Ok(())
    }

    /// The public JWK Set (`{"keys": [...]}`) of every key that still verifies.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>()})
    }

    /// Sign `claims` with the current key of `alg` (the header carries its `kid`).
    pub fn sign(&self, alg: Algorithm, claims: &impl Serialize) -> Result<String, KeyError> {
        self.signers
            .get(&alg)
            .ok_or(KeyError::NoKey(alg))?
            .sign(claims)
    }

    /// Verify a token we issued: its `kid` must be ours, its `alg` in `algs` and the key's own,
    /// `iss` and `aud` exactly as given, `exp` required and `nbf` honoured (with [`LEEWAY_SECS`]).
    pub fn verify(
        &self,
        token: &str,
        algs: &[Algorithm],
        iss: &str,
        aud: &str,
    ) -> Result<Value, KeyError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| KeyError::Invalid("no kid".into()))?;
        let (alg, key) = self
            .verifiers
            .get(&kid)
            .ok_or_else(|| KeyError::Invalid("unknown kid".into()))?;
        if !algs.contains(alg) || header.alg != alg.jwt() {
            return Err(KeyError::Invalid(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let mut v = Validation::new(alg.jwt());
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[iss]);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<Value>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| KeyError::Invalid(e.to_string()))
    }
}

/// The claims of a compact JWT, **unverified**: only to find which keys verify it (a client
/// assertion's `iss`), or to show a token this server has just issued. `None` when the second
/// part is missing or not base64url (unpadded) JSON.
///
/// ```
/// let t = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJhcHAifQ.c2ln";
/// assert_eq!(fhirgate_auth::keys::unverified_claims(t).unwrap()["iss"], "app");
/// assert!(fhirgate_auth::keys::unverified_claims("not a jwt").is_none());
/// ```
pub fn unverified_claims(jwt: &str) -> Option<Value> {
    decode_jwt_part(jwt.split('.').nth(1)?)
}

/// One part of a compact JWT (header or payload), base64url-decoded (unpadded) and read as
/// JSON into `T`; `None` when it is not. Nothing is verified.
pub(crate) fn decode_jwt_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    B64.decode(part)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::now;

    const ISS: &str = "http://localhost:8080";
    const AUD: &str = "http://localhost:8080/smart";

    fn claims(exp: u64) -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": "u1", "exp": exp, "scope": "patient/*.rs"})
    }

    #[test]
    fn signs_and_verifies_both_algorithms() {
        let ring = Keyring::generate().unwrap();
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let t = ring.sign(alg, &claims(now() + 60)).unwrap();
            assert_eq!(ring.verify(&t, &[alg], ISS, AUD).unwrap()["sub"], "u1");
        }
    }

    #[test]
    fn refuses_wrong_algorithm_issuer_audience_and_expiry() {
        let ring = Keyring::generate().unwrap();
        let t = ring.sign(Algorithm::ES256, &claims(now() + 60)).unwrap();
        assert!(
            ring.verify(&t, &[Algorithm::RS256], ISS, AUD).is_err(),
            "alg not in allow-list"
        );
        assert!(
            ring.verify(&t, &[Algorithm::ES256], "http://evil", AUD)
                .is_err(),
            "issuer"
        );
        assert!(
            ring.verify(&t, &[Algorithm::ES256], ISS, "http://localhost:8080/other")
                .is_err(),
            "audience"
        );
        let old = ring
            .sign(Algorithm::ES256, &claims(now() - LEEWAY_SECS - 5))
            .unwrap();
        assert!(
            ring.verify(&old, &[Algorithm::ES256], ISS, AUD).is_err(),
            "expired"
        );
        let skewed = ring.sign(Algorithm::ES256, &claims(now() - 5)).unwrap();
        assert!(
            ring.verify(&skewed, &[Algorithm::ES256], ISS, AUD).is_ok(),
            "small skew tolerated"
        );
    }

    #[test]
    fn refuses_tampered_foreign_and_unsigned_tokens() {
        let ring = Keyring::generate().unwrap();
        let other = Keyring::generate().unwrap();
        let t = ring.sign(Algorithm::ES256, &claims(now() + 60)).unwrap();
        // another server's key with the same kid shape: unknown kid
        let foreign = other.sign(Algorithm::ES256, &claims(now() + 60)).unwrap();
        assert!(
            ring.verify(&foreign, &[Algorithm::ES256], ISS, AUD)
                .is_err()
        );
        // payload tampering breaks the signature
        let parts: Vec<&str> = t.split('.').collect();
        let payload = B64.encode(
            serde_json::to_vec(&json!({"iss": ISS, "aud": AUD, "sub": "admin", "exp": now() + 60}))
                .unwrap(),
        );
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert!(
            ring.verify(&tampered, &[Algorithm::ES256], ISS, AUD)
                .is_err()
        );
        // alg:none with our kid
        let kid = ring.keys()[0].kid.clone();
        let none_header =
            B64.encode(serde_json::to_vec(&json!({"alg": "none", "kid": kid})).unwrap());
        assert!(
            ring.verify(
                &format!("{none_header}.{}.", parts[1]),
                &[Algorithm::ES256],
                ISS,
                AUD
            )
            .is_err()
        );
        // HS256 "signed" with the public key material, claiming our kid
        let hs_header =
            B64.encode(serde_json::to_vec(&json!({"alg": "HS256", "kid": kid})).unwrap());
        assert!(
            ring.verify(
                &format!("{hs_header}.{}.{}", parts[1], parts[2]),
                &[Algorithm::ES256],
                ISS,
                AUD
            )
            .is_err()
        );
    }

    #[test]
    fn rotation_keeps_old_keys_verifying_until_their_tokens_expire() {
        let mut ring = Keyring::generate().unwrap();
        let before = ring.sign(Algorithm::ES256, &claims(now() + 600)).unwrap();
        let t0 = now();
        ring.rotate(Algorithm::ES256, t0, t0 + 3600).unwrap();
        let after = ring.sign(Algorithm::ES256, &claims(now() + 600)).unwrap();
        assert_ne!(
            jsonwebtoken::decode_header(&before).unwrap().kid,
            jsonwebtoken::decode_header(&after).unwrap().kid
        );
        assert!(ring.verify(&before, &[Algorithm::ES256], ISS, AUD).is_ok());
        assert!(ring.verify(&after, &[Algorithm::ES256], ISS, AUD).is_ok());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 3);
        // once past verify_until, the next rotation drops the retired key
        ring.rotate(Algorithm::ES256, t0 + 3601, t0 + 7200).unwrap();
        assert!(ring.verify(&before, &[Algorithm::ES256], ISS, AUD).is_err());
    }

    #[test]
    fn keys_round_trip_through_json_and_kid_is_the_thumbprint() {
        let ring = Keyring::generate().unwrap();
        let json = serde_json::to_string(ring.keys()).unwrap();
        let restored = Keyring::from_keys(serde_json::from_str(&json).unwrap()).unwrap();
        let t = ring.sign(Algorithm::RS256, &claims(now() + 60)).unwrap();
        assert!(restored.verify(&t, &[Algorithm::RS256], ISS, AUD).is_ok());
        for k in ring.keys() {
            let mut bare = k.public_jwk.clone();
            for m in ["kid", "alg", "use"] {
                bare.as_object_mut().unwrap().remove(m);
            }
            assert_eq!(thumbprint(&bare).unwrap(), k.kid);
            assert!(
                !format!("{k:?}").contains("private"),
                "Debug must not print the private key"
            );
        }
    }
}
