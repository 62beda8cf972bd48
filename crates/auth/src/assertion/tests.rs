//! The assertion verifier's tests: keys, signatures, claims, replay and `jwks_uri` fetching.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::keys::LEEWAY_SECS;
use crate::tokens::unix_now;

use super::*;

const TOKEN_URL: &str = "http://localhost:8080/auth/token";
const ISSUER: &str = "http://localhost:8080";
const AUDS: &[&str] = &[TOKEN_URL, ISSUER];

/// A client's key pair, as a client would hold it.
struct TestKey {
    alg: jsonwebtoken::Algorithm,
    kid: String,
    encoding: EncodingKey,
    /// The public JWK (with `kid`; `alg` and `use` as the test wants).
    jwk: Value,
}

impl TestKey {
    fn es384(kid: &str) -> TestKey {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        assert_eq!((point.len(), point[0]), (97, 4));
        TestKey {
            alg: jsonwebtoken::Algorithm::ES384,
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(doc.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-384", "kid": kid, "use": "sig",
                "x": B64.encode(&point[1..49]), "y": B64.encode(&point[49..])}),
        }
    }

    fn rs384(kid: &str) -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_ref()).unwrap();
        let public = pair.public_key();
        TestKey {
            alg: jsonwebtoken::Algorithm::RS384,
            kid: kid.into(),
            encoding: EncodingKey::from_rsa_der(info.private_key),
            jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS384",
                "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
                "e": B64.encode(public.exponent().big_endian_without_leading_zero())}),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding).unwrap()
    }
}

fn claims(client_id: &str) -> Value {
    json!({"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": unix_now() + 240,
        "iat": unix_now(), "jti": random_jti()})
}

fn random_jti() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).unwrap();
    B64.encode(b)
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn client(id: &str, keys: &[&TestKey]) -> Value {
    json!({"resourceType": "Client", "id": id, "grant_types": ["client_credentials"],
        "jwks": {"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}})
}

/// A real store in a temp dir (the same SQLite `auth_state` table the server uses).
async fn verifier() -> (tempfile::TempDir, AssertionVerifier) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("auth.db").display());
    let store = fhirgate_store::open(&url).await.unwrap();
    (dir, AssertionVerifier::new(store.auth_state()))
}

/// A `jwks_uri` server on 127.0.0.1: serves whatever `keys` holds and counts requests.
struct JwksServer {
    uri: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(jwks: Value) -> JwksServer {
    use axum::routing::get;
    let keys = Arc::new(Mutex::new(jwks));
    let hits = Arc::new(AtomicUsize::new(0));
    let (k, h) = (keys.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/jwks",
            get(move || {
                let (k, h) = (k.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = k.lock().unwrap().clone();
                    axum::Json(body)
                }
            }),
        )
        .route(
            "/jwks-short",
            get({
                let (k, h) = (keys.clone(), hits.clone());
                move |q: axum::extract::RawQuery| {
                    let (k, h) = (k.clone(), h.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let body = k.lock().unwrap().clone();
                        // ?cc=… names the Cache-Control header to answer with
                        let cc =
                            q.0.unwrap_or_default()
                                .replace("cc=", "")
                                .replace("%20", " ");
                        ([(axum::http::header::CACHE_CONTROL, cc)], axum::Json(body))
                    }
                }
            }),
        )
        .route("/big", get(|| async { "x".repeat(MAX_JWKS_BYTES + 1) }))
        .route("/html", get(|| async { "<html>no</html>" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    JwksServer {
        uri: format!("http://{addr}/jwks"),
        keys,
        hits,
    }
}

fn set_of(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

#[tokio::test]
async fn valid_es384_and_rs384_with_inline_jwks() {
    let (_dir, v) = verifier().await;
    let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
    let c = client("app", &[&ec, &rsa]);
    v.verify(&c, &ec.sign(&claims("app")), AUDS).await.unwrap();
    v.verify(&c, &rsa.sign(&claims("app")), AUDS).await.unwrap();
    // the issuer is an accepted audience too; a fractional exp is a NumericDate
    let t = ec.sign(&with(claims("app"), "aud", json!(ISSUER)));
    v.verify(&c, &t, AUDS).await.unwrap();
    let t = ec.sign(&with(claims("app"), "exp", json!(unix_now() as f64 + 60.5)));
    v.verify(&c, &t, AUDS).await.unwrap();
}

#[tokio::test]
async fn valid_es384_and_rs384_with_jwks_uri_fetched_once() {
    let (_dir, v) = verifier().await;
    let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
    let server = jwks_server(set_of(&[&ec, &rsa])).await;
    let c = json!({"resourceType": "Client", "id": "svc", "jwks_uri": server.uri});
    for _ in 0..3 {
        v.verify(&c, &ec.sign(&claims("svc")), AUDS).await.unwrap();
        v.verify(&c, &rsa.sign(&claims("svc")), AUDS).await.unwrap();
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "cached for 5 minutes"
    );
}

#[tokio::test]
async fn jti_is_single_use_and_only_burnt_by_a_valid_assertion() {
    let (_dir, v) = verifier().await;
    let ec = TestKey::es384("ec-1");
    let c = client("app", &[&ec]);
    let good = claims("app");
    // an invalid assertion carrying the jti does not use it up
    let bad = ec.sign(&with(good.clone(), "aud", json!("http://evil")));
    assert!(matches!(
        v.verify(&c, &bad, AUDS).await,
        Err(AssertionError::Audience(_))
    ));
    let token = ec.sign(&good);
    v.verify(&c, &token, AUDS).await.unwrap();
    assert!(matches!(
        v.verify(&c, &token, AUDS).await,
        Err(AssertionError::Replay)
    ));
    // a fresh assertion (new signature, new exp) with the same jti is a replay too
    let again = ec.sign(&with(good.clone(), "exp", json!(unix_now() + 100)));
    assert!(matches!(
        v.verify(&c, &again, AUDS).await,
        Err(AssertionError::Replay)
    ));
    // jtis are per client: another client may use the same value
    let other = TestKey::es384("ec-2");
    let c2 = client("other", &[&other]);
    let t2 = other.sign(&with(claims("other"), "jti", good["jti"].clone()));
    v.verify(&c2, &t2, AUDS).await.unwrap();
    // and the record lives until exp + leeway
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        good["jti"].as_str().unwrap().as_bytes(),
    );
    let key = format!("app:{}", B64.encode(digest));
    let record = v.jti_store.get(JTI_KIND, &key).await.unwrap().unwrap();
    assert_eq!(
        record.expires_at,
        good["exp"].as_i64().unwrap() + LEEWAY_SECS as i64
    );
}

#[tokio::test]
async fn time_claims() {
    let (_dir, v) = verifier().await;
    let ec = TestKey::es384("ec-1");
    let c = client("app", &[&ec]);
    let now = unix_now();
    let leeway = LEEWAY_SECS as i64;
    let check = |exp: Value| ec.sign(&with(claims("app"), "exp", exp));
    assert!(matches!(
        v.verify(&c, &check(json!(now - leeway - 5)), AUDS).await,
        Err(AssertionError::Expired { .. })
    ));
    assert!(matches!(
        v.verify(&c, &check(json!(now + 400)), AUDS).await,
        Err(AssertionError::LifetimeTooLong(_))
    ));
    assert!(matches!(
        v.verify(&c, &check(json!("soon")), AUDS).await,
        Err(AssertionError::Malformed(_))
    ));
    // within the skew on both sides
    v.verify(&c, &check(json!(now - 5)), AUDS).await.unwrap();
    v.verify(&c, &check(json!(now + 300)), AUDS).await.unwrap();
    let t = ec.sign(&without(claims("app"), "exp"));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::MissingExp)
    ));
    for claim in ["iat", "nbf"] {
        let t = ec.sign(&with(claims("app"), claim, json!(now + 120)));
        assert!(
            matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::NotYetValid { claim: c, .. }) if c == claim)
        );
        let t = ec.sign(&with(claims("app"), claim, json!(now + 5)));
        v.verify(&c, &t, AUDS).await.unwrap();
    }
}

#[tokio::test]
async fn issuer_subject_audience_and_jti() {
    let (_dir, v) = verifier().await;
    let ec = TestKey::es384("ec-1");
    let c = client("app", &[&ec]);
    let t = ec.sign(&with(claims("app"), "iss", json!("other")));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::Issuer(Some(_)))
    ));
    let t = ec.sign(&with(claims("app"), "sub", json!("other")));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::Subject(Some(_)))
    ));
    // a client's assertion presented as another client's (same keys registered twice)
    let c2 = client("app2", &[&ec]);
    let t = ec.sign(&claims("app"));
    assert!(matches!(
        v.verify(&c2, &t, AUDS).await,
        Err(AssertionError::Issuer(_))
    ));
    let t = ec.sign(&with(
        claims("app"),
        "aud",
        json!("http://localhost:8080/other"),
    ));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::Audience(_))
    ));
    let t = ec.sign(&without(claims("app"), "aud"));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::Audience(_))
    ));
    let t = ec.sign(&with(claims("app"), "aud", json!(["http://x", TOKEN_URL])));
    v.verify(&c, &t, AUDS).await.unwrap();
    let t = ec.sign(&with(claims("app"), "aud", json!(["http://x", "http://y"])));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::Audience(_))
    ));
    let t = ec.sign(&without(claims("app"), "jti"));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::MissingJti)
    ));
    let t = ec.sign(&with(claims("app"), "jti", json!("")));
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::MissingJti)
    ));
}

#[tokio::test]
async fn refuses_none_hmac_and_other_algorithms() {
    let (_dir, v) = verifier().await;
    let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
    let c = client("app", &[&ec, &rsa]);
    let payload = B64.encode(serde_json::to_vec(&claims("app")).unwrap());
    let none = B64.encode(br#"{"alg":"none","kid":"ec-1"}"#);
    let t = format!("{none}.{payload}.");
    assert!(
        matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::AlgorithmNotAllowed(a)) if a == "none")
    );
    // HS256 keyed with the public key: anyone could make one
    for secret in [
        serde_json::to_vec(&rsa.jwk).unwrap(),
        B64.decode(rsa.jwk["n"].as_str().unwrap()).unwrap(),
        rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let t = jsonwebtoken::encode(
            &header,
            &claims("app"),
            &EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();
        assert!(
            matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::AlgorithmNotAllowed(a)) if a == "HS256")
        );
    }
    // RS256 / ES256 are not accepted either (SMART: RS384 and ES384)
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let t = jsonwebtoken::encode(&header, &claims("app"), &rsa.encoding).unwrap();
    assert!(
        matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::AlgorithmNotAllowed(a)) if a == "RS256")
    );
    let noalg = B64.encode(br#"{"kid":"ec-1"}"#);
    let t = format!("{noalg}.{payload}.c2ln");
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::Malformed(_))
    ));
    let crit = B64.encode(br#"{"alg":"ES384","kid":"ec-1","crit":["exp"]}"#);
    let t = format!("{crit}.{payload}.c2ln");
    assert!(matches!(
        v.verify(&c, &t, AUDS).await,
        Err(AssertionError::CriticalHeader)
    ));
}

#[tokio::test]
async fn key_must_fit_the_algorithm() {
    let (_dir, v) = verifier().await;
    let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
    // the JWK says RS256; the assertion is RS384 with that key
    let mut rs256 = TestKey::rs384("rsa-1");
    rs256.jwk["alg"] = json!("RS256");
    let c = client("app", &[&rs256]);
    assert!(matches!(
        v.verify(&c, &rs256.sign(&claims("app")), AUDS).await,
        Err(AssertionError::KeyAlgorithmMismatch { .. })
    ));
    // an ES384 assertion whose kid names an RSA key
    let mut ec_as_rsa = TestKey::es384("rsa-1");
    ec_as_rsa.kid = "rsa-1".into();
    let c = client("app", &[&rsa]);
    assert!(matches!(
        v.verify(&c, &ec_as_rsa.sign(&claims("app")), AUDS).await,
        Err(AssertionError::KeyTypeMismatch { .. })
    ));
    // a P-256 key cannot verify ES384
    let mut p256 = ec.jwk.clone();
    p256["crv"] = json!("P-256");
    p256["x"] = json!(B64.encode([1u8; 32]));
    p256["y"] = json!(B64.encode([2u8; 32]));
    let c = json!({"id": "app", "jwks": {"keys": [p256]}});
    assert!(matches!(
        v.verify(&c, &ec.sign(&claims("app")), AUDS).await,
        Err(AssertionError::KeyTypeMismatch { .. })
    ));
    // keys for encryption, or whose key_ops do not allow verify, are ignored
    for (member, value) in [("use", json!("enc")), ("key_ops", json!(["encrypt"]))] {
        let mut k = ec.jwk.clone();
        k[member] = value;
        let c = json!({"id": "app", "jwks": {"keys": [k]}});
        assert!(matches!(
            v.verify(&c, &ec.sign(&claims("app")), AUDS).await,
            Err(AssertionError::UnknownKey(_))
        ));
    }
}

#[tokio::test]
async fn key_selection_without_kid() {
    let (_dir, v) = verifier().await;
    let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
    // one EC and one RSA key: each algorithm has exactly one candidate
    let c = client("app", &[&ec, &rsa]);
    v.verify(&c, &ec.sign_without_kid(&claims("app")), AUDS)
        .await
        .unwrap();
    v.verify(&c, &rsa.sign_without_kid(&claims("app")), AUDS)
        .await
        .unwrap();
    // two EC P-384 keys: which one is ambiguous
    let ec2 = TestKey::es384("ec-2");
    let c = client("app", &[&ec, &ec2]);
    assert!(matches!(
        v.verify(&c, &ec.sign_without_kid(&claims("app")), AUDS)
            .await,
        Err(AssertionError::AmbiguousKey(2))
    ));
    // with kids it is not
    v.verify(&c, &ec2.sign(&claims("app")), AUDS).await.unwrap();
    // no key of the algorithm's type
    let c = client("app", &[&rsa]);
    assert!(matches!(
        v.verify(&c, &ec.sign_without_kid(&claims("app")), AUDS)
            .await,
        Err(AssertionError::UnknownKey(None))
    ));
}

#[tokio::test]
async fn tampered_and_foreign_signatures() {
    let (_dir, v) = verifier().await;
    let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
    let c = client("app", &[&ec, &rsa]);
    for key in [&ec, &rsa] {
        let t = key.sign(&claims("app"));
        let parts: Vec<&str> = t.split('.').collect();
        // another payload under the original signature
        let forged = B64.encode(serde_json::to_vec(&claims("app")).unwrap());
        let t1 = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert!(matches!(
            v.verify(&c, &t1, AUDS).await,
            Err(AssertionError::BadSignature)
        ));
        // one bit of the signature flipped
        let mut sig = B64.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let t2 = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
        assert!(matches!(
            v.verify(&c, &t2, AUDS).await,
            Err(AssertionError::BadSignature)
        ));
        // the signature dropped
        let t3 = format!("{}.{}.", parts[0], parts[1]);
        assert!(matches!(
            v.verify(&c, &t3, AUDS).await,
            Err(AssertionError::BadSignature)
        ));
    }
    // signed by a key of the same kid that the client did not register
    let impostor = TestKey::es384("ec-1");
    assert!(matches!(
        v.verify(&c, &impostor.sign(&claims("app")), AUDS).await,
        Err(AssertionError::BadSignature)
    ));
}

#[tokio::test]
async fn malformed_oversized_and_keyless() {
    let (_dir, v) = verifier().await;
    let ec = TestKey::es384("ec-1");
    let c = client("app", &[&ec]);
    let big = ec.sign(&with(
        claims("app"),
        "pad",
        json!("x".repeat(MAX_ASSERTION_BYTES)),
    ));
    assert!(matches!(
        v.verify(&c, &big, AUDS).await,
        Err(AssertionError::TooLarge(_))
    ));
    assert!(matches!(
        claimed_client_id(&big),
        Err(AssertionError::TooLarge(_))
    ));
    for t in ["", "a.b", "a.b.c.d", "!!.e30.", "e30.e30.e30"] {
        assert!(
            matches!(
                v.verify(&c, t, AUDS).await,
                Err(AssertionError::Malformed(_))
            ),
            "{t}"
        );
    }
    let t = ec.sign(&claims("app"));
    let keyless = json!({"resourceType": "Client", "id": "app", "secret": "s"});
    assert!(matches!(
        v.verify(&keyless, &t, AUDS).await,
        Err(AssertionError::NoKeys)
    ));
    let both = json!({"id": "app", "jwks": set_of(&[&ec]), "jwks_uri": "https://x/jwks"});
    assert!(matches!(
        v.verify(&both, &t, AUDS).await,
        Err(AssertionError::ConflictingKeys)
    ));
    let no_id = json!({"jwks": set_of(&[&ec])});
    assert!(matches!(
        v.verify(&no_id, &t, AUDS).await,
        Err(AssertionError::NoClientId)
    ));
    for jwks in [json!([ec.jwk]), json!({"keys": ec.jwk}), json!("{}")] {
        let c = json!({"id": "app", "jwks": jwks});
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::InvalidJwks(_))
        ));
    }
    let empty = json!({"id": "app", "jwks": {"keys": []}});
    assert!(matches!(
        v.verify(&empty, &t, AUDS).await,
        Err(AssertionError::UnknownKey(_))
    ));
    assert_eq!(claimed_client_id(&t).unwrap(), "app");
}

#[tokio::test]
async fn inline_jwks_change_takes_effect_at_once() {
    let (_dir, v) = verifier().await;
    let (old, new) = (TestKey::es384("k1"), TestKey::es384("k2"));
    v.verify(&client("app", &[&old]), &old.sign(&claims("app")), AUDS)
        .await
        .unwrap();
    let rotated = client("app", &[&new]);
    v.verify(&rotated, &new.sign(&claims("app")), AUDS)
        .await
        .unwrap();
    assert!(matches!(
        v.verify(&rotated, &old.sign(&claims("app")), AUDS).await,
        Err(AssertionError::UnknownKey(_))
    ));
}

#[tokio::test]
async fn unknown_kid_refetches_jwks_uri_at_most_once_per_interval() {
    let (_dir, v) = verifier().await;
    let v = v.with_refetch_interval(Duration::from_millis(300));
    let (k1, k2, k3) = (
        TestKey::es384("k1"),
        TestKey::rs384("k2"),
        TestKey::es384("k3"),
    );
    let server = jwks_server(set_of(&[&k1])).await;
    let c = json!({"id": "svc", "jwks_uri": server.uri});
    v.verify(&c, &k1.sign(&claims("svc")), AUDS).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // the client rotates to k2; right after a fetch, an unknown kid does not refetch
    *server.keys.lock().unwrap() = set_of(&[&k1, &k2]);
    assert!(matches!(
        v.verify(&c, &k2.sign(&claims("svc")), AUDS).await,
        Err(AssertionError::UnknownKey(Some(_)))
    ));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // once the interval has passed, it does, and finds the new key
    tokio::time::sleep(Duration::from_millis(350)).await;
    v.verify(&c, &k2.sign(&claims("svc")), AUDS).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // a kid the client never published: one refetch per interval, however many tries
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..5 {
        assert!(matches!(
            v.verify(&c, &k3.sign(&claims("svc")), AUDS).await,
            Err(AssertionError::UnknownKey(Some(_)))
        ));
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
    // known keys still verify meanwhile, from the cache
    v.verify(&c, &k1.sign(&claims("svc")), AUDS).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn jwks_uri_is_not_cached_longer_than_its_cache_control_says() {
    let (_dir, v) = verifier().await;
    let v = v.with_refetch_interval(Duration::from_millis(300));
    assert_eq!(v.cache_lifetime(None), JWKS_TTL);
    assert_eq!(v.cache_lifetime(Some("public, max-age=3600")), JWKS_TTL);
    assert_eq!(
        v.cache_lifetime(Some("max-age=60, must-revalidate")),
        Duration::from_secs(60)
    );
    assert_eq!(
        v.cache_lifetime(Some("no-store")),
        Duration::from_millis(300),
        "as short as the refetch interval allows"
    );
    let ec = TestKey::es384("ec-1");
    let server = jwks_server(set_of(&[&ec])).await;
    for (cc, expected_hits) in [("max-age=1", 2), ("no-cache", 3), ("max-age=600", 1)] {
        let (_dir, v) = verifier().await;
        let v = v.with_refetch_interval(Duration::from_millis(300));
        let before = server.hits.load(Ordering::SeqCst);
        let uri = server.uri.replace("/jwks", &format!("/jwks-short?cc={cc}"));
        let c = json!({"id": "svc", "jwks_uri": uri});
        // 0 s, 0.4 s, 1.2 s
        for pause in [0, 400, 800] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            v.verify(&c, &ec.sign(&claims("svc")), AUDS).await.unwrap();
        }
        assert_eq!(
            server.hits.load(Ordering::SeqCst) - before,
            expected_hits,
            "Cache-Control: {cc}"
        );
    }
}

#[tokio::test]
async fn jwks_uri_failures_fail_closed() {
    let (_dir, v) = verifier().await;
    let ec = TestKey::es384("k1");
    let server = jwks_server(set_of(&[&ec])).await;
    let base = server.uri.trim_end_matches("/jwks").to_string();
    let t = || ec.sign(&claims("svc"));
    for uri in [
        format!("{base}/big"),
        format!("{base}/html"),
        format!("{base}/missing"),
        // not loopback: plain http refused without a request
        "http://example.com/jwks".to_string(),
        "ftp://127.0.0.1/jwks".to_string(),
        "not a url".to_string(),
    ] {
        let c = json!({"id": "svc", "jwks_uri": uri});
        let r = v.verify(&c, &t(), AUDS).await;
        assert!(
            matches!(r, Err(AssertionError::JwksFetch { .. })),
            "{uri}: {r:?}"
        );
    }
    // a server that does not answer: nothing listens on a freshly closed port
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let c = json!({"id": "svc", "jwks_uri": format!("http://{addr}/jwks")});
    assert!(matches!(
        v.verify(&c, &t(), AUDS).await,
        Err(AssertionError::JwksFetch { .. })
    ));
    // and right after a failure it is not retried: still refused, no new request
    assert!(matches!(
        v.verify(&c, &t(), AUDS).await,
        Err(AssertionError::JwksFetch { .. })
    ));
    let c = json!({"id": "svc", "jwks_uri": 42});
    assert!(matches!(
        v.verify(&c, &t(), AUDS).await,
        Err(AssertionError::InvalidJwks(_))
    ));
}
