//! Token endpoint throughput: `refresh_token` grants by a confidential client (client_secret_basic)
//! and `client_credentials` grants with an ES384 `private_key_jwt` assertion, over loopback HTTP
//! against the real server (root core.edn, fresh SQLite store, in this process).
//!
//!     cargo run --release -p fhirgate --example grant_load -- [SECONDS] [WORKERS]
//!
//! Each refresh worker follows its own rotation chain (every refresh token is single use); each
//! client_credentials request signs a fresh assertion (a new `jti`), which costs the load
//! generator a signature too — both share this machine's cores with the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REDIRECT: &str = "http://app.test/cb";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let workers: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let dir = std::env::temp_dir().join(format!("fhirgate-grant-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = fhirgate_store::open(&format!("sqlite:{}/db.sqlite", dir.display())).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let registry = fhirgate::registry();
    let project = fhirgate::load_project(std::path::Path::new("core.edn"), &registry)
        .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let mut options = fhirgate::server::ServeOptions::new(&base);
    options.root_secret = Some("load-root".into());
    let prepared = fhirgate::server::prepare(&project, store, &options)
        .await
        .map_err(anyhow::Error::msg)?;
    let app = prepared
        .app
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // an ES384 key for the backend client
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref())
        .map_err(|_| anyhow::anyhow!("key"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-384", "kid": "k1", "alg": "ES384",
                     "x": b64.encode(&point[1..49]), "y": b64.encode(&point[49..])});
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut seed = json!([
        {"resourceType": "Patient", "id": "pt-1"},
        {"resourceType": "Client", "id": "conf-app", "secret": "conf-secret", "grant_types": ["authorization_code"],
         "auth": {"authorization_code": {"redirect_uri": REDIRECT, "refresh_token": true}}},
        {"resourceType": "Client", "id": "backend", "jwks": {"keys": [jwk]}, "grant_types": ["client_credentials"],
         "scope": "system/*.rs"},
    ]);
    // one user per worker: logins are rate limited per user
    for i in 0..workers {
        if let Some(a) = seed.as_array_mut() {
            a.push(
                json!({"resourceType": "User", "id": format!("user{i}"), "password": "pass",
                          "fhirUser": {"reference": "Patient/pt-1"}}),
            );
        }
    }
    let r = http
        .put(format!("{base}/"))
        .basic_auth("root", Some("load-root"))
        .json(&seed)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "seeding failed: {}", r.text().await?);

    // one refresh token per worker, each from a real authorization code flow
    let mut chains = Vec::new();
    for i in 0..workers {
        chains.push(first_refresh_token(&http, &base, &format!("user{i}")).await?);
    }
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut token in chains {
        let (http, base, count, errors) =
            (http.clone(), base.clone(), count.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = http
                    .post(format!("{base}/auth/token"))
                    .basic_auth("conf-app", Some("conf-secret"))
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", token.as_str()),
                    ])
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap_or_default();
                        match v["refresh_token"].as_str() {
                            Some(t) => token = t.to_string(),
                            None => return,
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let n = count.load(Ordering::Relaxed);
    println!(
        "refresh_token (client_secret_basic): {n} grants in {:.1} s = {:.0}/s with {workers} workers, {} errors",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );

    // client_credentials with private_key_jwt
    let key = jsonwebtoken::EncodingKey::from_ec_der(doc.as_ref());
    let token_url = format!("{base}/auth/token");
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (http, key, url, count, errors) = (
            http.clone(),
            key.clone(),
            token_url.clone(),
            count.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let now = fhirgate_auth::tokens::now();
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
                header.kid = Some("k1".into());
                let Ok(jti) = fhirgate_auth::tokens::random_id() else {
                    return;
                };
                let claims = json!({"iss": "backend", "sub": "backend", "aud": url, "exp": now + 240,
                                    "jti": jti});
                let Ok(assertion) = jsonwebtoken::encode(&header, &claims, &key) else {
                    return;
                };
                let r = http
                    .post(&url)
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("scope", "system/Patient.rs"),
                        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                        ("client_assertion", assertion.as_str()),
                    ])
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let n = count.load(Ordering::Relaxed);
    println!(
        "client_credentials (private_key_jwt ES384): {n} grants in {:.1} s = {:.0}/s with {workers} workers, {} errors",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn cookie_of(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.strip_prefix(&format!("{name}="))
                .map(|r| r.split(';').next().unwrap_or("").to_string())
        })
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Authorization code flow as a browser does it (login, consent), then the token.
async fn first_refresh_token(
    http: &reqwest::Client,
    base: &str,
    user: &str,
) -> anyhow::Result<String> {
    let verifier = format!(
        "{}{}",
        fhirgate_auth::tokens::random_id()?,
        fhirgate_auth::tokens::random_id()?
    );
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", "conf-app")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "launch/patient offline_access patient/*.rs")
        .append_pair("aud", &format!("{base}/smart"))
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let r = http
        .get(format!("{base}/auth/authorize?{}", q.finish()))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 302,
        "authorize answered {}: {}",
        r.status(),
        location(&r)
    );
    let login_url = format!("{base}{}", location(&r));
    let r = http.get(&login_url).send().await?;
    let csrf = cookie_of(&r, "fhirgate_csrf").unwrap_or_default();
    let html = r.text().await?;
    let req = hidden(&html, "req").unwrap_or_default();
    let r = http
        .post(format!("{base}/auth/login"))
        .header(reqwest::header::COOKIE, format!("fhirgate_csrf={csrf}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("req", req.as_str()),
            ("username", user),
            ("password", "pass"),
        ])
        .send()
        .await?;
    anyhow::ensure!(r.status() == 302, "login answered {}", r.status());
    let session = cookie_of(&r, "fhirgate_session").unwrap_or_default();
    let cookies = format!("fhirgate_csrf={csrf}; fhirgate_session={session}");
    let r = http
        .get(format!("{base}{}", location(&r)))
        .header(reqwest::header::COOKIE, &cookies)
        .send()
        .await?;
    let html = r.text().await?;
    let mut form = vec![
        ("csrf", csrf.clone()),
        ("req", req.clone()),
        ("decision", "allow".to_string()),
    ];
    for s in ["launch/patient", "offline_access", "patient/*.rs"] {
        form.push(("scope", s.to_string()));
    }
    anyhow::ensure!(html.contains("decision"), "no consent page: {html}");
    let r = http
        .post(format!("{base}/auth/consent"))
        .header(reqwest::header::COOKIE, &cookies)
        .form(&form)
        .send()
        .await?;
    let loc = location(&r);
    let code = url::Url::parse(&loc)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow::anyhow!("no code in {loc}"))?;
    let t: Value = http
        .post(format!("{base}/auth/token"))
        .basic_auth("conf-app", Some("conf-secret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    t["refresh_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no refresh token: {t}"))
}
