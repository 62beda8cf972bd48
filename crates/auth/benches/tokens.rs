//! Token signing and verification costs (before any verified-token cache).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate_auth::keys::{Algorithm, Keyring};
use serde_json::json;

fn tokens(c: &mut Criterion) {
    let ring = Keyring::generate().unwrap();
    let claims = json!({"iss": "http://localhost:8080", "aud": "http://localhost:8080/smart", "exp": 4102444800u64,
        "sub": "user-1", "client_id": "app", "scope": "launch/patient openid fhirUser patient/*.rs", "patient": "pt-1"});
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let token = ring.sign(alg, &claims).unwrap();
        c.bench_function(&format!("sign {alg:?}"), |b| {
            b.iter(|| black_box(ring.sign(alg, &claims).unwrap()))
        });
        c.bench_function(&format!("verify {alg:?}"), |b| {
            b.iter(|| {
                black_box(
                    ring.verify(
                        black_box(&token),
                        &[alg],
                        "http://localhost:8080",
                        "http://localhost:8080/smart",
                    )
                    .unwrap(),
                )
            })
        });
    }
}

fn cached_verification(c: &mut Criterion) {
    use fhirgate_auth::tokens::{AccessClaims, TokenVerifier};
    let ring = std::sync::Arc::new(Keyring::generate().unwrap());
    let verifier = TokenVerifier::new(ring, "http://localhost:8080");
    let claims = AccessClaims::new(
        "http://localhost:8080",
        "http://localhost:8080/smart",
        "app",
        "patient/*.rs",
        3600,
    )
    .unwrap();
    let token = verifier.issue(&claims).unwrap();
    verifier
        .verify(&token, "http://localhost:8080/smart")
        .unwrap();
    c.bench_function("verify access token (cached)", |b| {
        b.iter(|| {
            black_box(
                verifier
                    .verify(black_box(&token), "http://localhost:8080/smart")
                    .unwrap(),
            )
        })
    });
}

criterion_group!(benches, tokens, cached_verification);
criterion_main!(benches);
