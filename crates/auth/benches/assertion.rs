//! `private_key_jwt` client assertion costs: the whole `AssertionVerifier::verify` (key lookup in
//! the prepared-key cache, signature, claims, and the `jti` recorded in a real SQLite store), and
//! its parts — the signature alone and the `jti` insert alone.
//!
//! Every `verify` iteration gets an assertion with a fresh `jti`, signed in the untimed setup.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fhirgate_auth::assertion::AssertionVerifier;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

const TOKEN_URL: &str = "http://localhost:8080/auth/token";
const AUDS: &[&str] = &[TOKEN_URL, "http://localhost:8080"];

struct ClientKey {
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

fn es384() -> ClientKey {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
        .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let (x, y) = (B64.encode(&point[1..49]), B64.encode(&point[49..]));
    ClientKey {
        alg: Algorithm::ES384,
        encoding: EncodingKey::from_ec_der(doc.as_ref()),
        decoding: DecodingKey::from_ec_components(&x, &y).unwrap(),
        jwk: json!({"kty": "EC", "crv": "P-384", "kid": "ec", "alg": "ES384", "use": "sig", "x": x, "y": y}),
    }
}

fn rs384() -> ClientKey {
    let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_ref()).unwrap();
    let public = pair.public_key();
    let n = B64.encode(public.modulus().big_endian_without_leading_zero());
    let e = B64.encode(public.exponent().big_endian_without_leading_zero());
    ClientKey {
        alg: Algorithm::RS384,
        encoding: EncodingKey::from_rsa_der(info.private_key),
        decoding: DecodingKey::from_rsa_components(&n, &e).unwrap(),
        jwk: json!({"kty": "RSA", "kid": "rsa", "alg": "RS384", "use": "sig", "n": n, "e": e}),
    }
}

impl ClientKey {
    fn assertion(&self, client_id: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut jti = [0u8; 16];
        SystemRandom::new().fill(&mut jti).unwrap();
        let mut header = Header::new(self.alg);
        header.kid = self.jwk["kid"].as_str().map(String::from);
        let claims = json!({"iss": client_id, "sub": client_id, "aud": TOKEN_URL,
            "exp": now + 240, "iat": now, "jti": B64.encode(jti)});
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn assertions(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
    let store = rt.block_on(fhirgate_store::open(&url)).unwrap();
    let state = store.auth_state();
    let verifier = Arc::new(AssertionVerifier::new(state.clone()));
    let (ec, rsa) = (es384(), rs384());
    let client = json!({"resourceType": "Client", "id": "svc", "grant_types": ["client_credentials"],
        "jwks": {"keys": [ec.jwk, rsa.jwk]}});

    for key in [&ec, &rsa] {
        let name = format!("{:?}", key.alg);
        c.bench_function(
            &format!("assertion verify {name} (inline jwks, SQLite jti)"),
            |b| {
                b.to_async(&rt).iter_batched(
                    || key.assertion("svc"),
                    |token| {
                        let (verifier, client) = (verifier.clone(), &client);
                        async move { verifier.verify(client, &token, AUDS).await.unwrap() }
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let token = key.assertion("svc");
        let (message, signature) = token.rsplit_once('.').unwrap();
        c.bench_function(&format!("assertion signature only {name}"), |b| {
            b.iter(|| {
                assert!(
                    jsonwebtoken::crypto::verify(
                        black_box(signature),
                        black_box(message.as_bytes()),
                        &key.decoding,
                        key.alg,
                    )
                    .unwrap()
                )
            })
        });
    }

    let mut n = 0u64;
    c.bench_function("assertion jti insert only (SQLite)", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let (state, key) = (state.clone(), format!("svc:bench-{n}"));
            async move {
                state
                    .insert("jti", &key, None, &json!({}), 4102444800)
                    .await
                    .unwrap()
            }
        })
    });
}

criterion_group!(benches, assertions);
criterion_main!(benches);
