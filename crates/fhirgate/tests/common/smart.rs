//! A whole fhirgate (`fhirgate::server::prepare`, as `serve` assembles it) on a loopback port,
//! and what a SMART app or a test kit does with it: authorize in a scripted browser, call the
//! token, introspection and revocation endpoints, sign client assertions, read the FHIR API.
#![allow(dead_code)]

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use fhirgate::server::{ServeOptions, prepare};
use serde_json::{Value, json};

use super::browser::{Browser, Page};

pub const ROOT_SECRET: &str = "root-secret-for-tests";
pub const REDIRECT: &str = "http://app.test/cb";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A running server.
pub struct Server {
    /// The public base URL (= the OIDC issuer).
    pub base: String,
    /// The FHIR base of the root project (`{base}/smart`).
    pub fhir: String,
    /// Follows no redirects.
    pub http: reqwest::Client,
}

/// A deployment the conformance suite runs against instead of an in-process server
/// (`tests/conformance/run --base-url …`): `FHIRGATE_CONFORMANCE_BASE_URL` (the deployment's
/// `--base-url`, its OIDC issuer), `FHIRGATE_CONFORMANCE_ROOT_SECRET` (its `root` Client's
/// secret: the suite registers its clients, users and data through the admin API) and optionally
/// `FHIRGATE_CONFORMANCE_FHIR_BASE` (default `{base}/smart`, the root `core.edn`'s SMART API).
pub struct Target {
    pub base: String,
    pub fhir: String,
    pub root_secret: String,
}

/// The deployment named by the environment, if any; a half-given target is a test failure, not
/// a silent fallback to the in-process server.
pub fn external_target() -> Option<Target> {
    let base = std::env::var("FHIRGATE_CONFORMANCE_BASE_URL")
        .ok()
        .filter(|b| !b.is_empty())?;
    let base = base.trim_end_matches('/').to_string();
    let root_secret = std::env::var("FHIRGATE_CONFORMANCE_ROOT_SECRET")
        .expect("FHIRGATE_CONFORMANCE_BASE_URL needs FHIRGATE_CONFORMANCE_ROOT_SECRET");
    let fhir = std::env::var("FHIRGATE_CONFORMANCE_FHIR_BASE")
        .ok()
        .filter(|f| !f.is_empty())
        .map(|f| f.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("{base}/smart"));
    Some(Target {
        base,
        fhir,
        root_secret,
    })
}

/// `root`'s secret on the server under test.
pub fn root_secret() -> String {
    external_target()
        .map(|t| t.root_secret)
        .unwrap_or_else(|| ROOT_SECRET.to_string())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The server the conformance suite checks: the deployment of [`external_target`], or else a
/// fresh in-process `fhirgate serve` of the root `core.edn` on a new SQLite store.
pub async fn start_conformance(prefix: &str) -> Server {
    match external_target() {
        Some(t) => Server {
            base: t.base,
            fhir: t.fhir,
            http: no_redirects(),
        },
        None => {
            let store = super::sqlite_store(prefix).await;
            start_project(store, &super::root_core_edn()).await
        }
    }
}

/// Serve `config` on `store`, as `fhirgate serve` would, with `root` = [`ROOT_SECRET`].
pub async fn start_project(
    store: std::sync::Arc<dyn fhirgate_store::Store>,
    config: &std::path::Path,
) -> Server {
    start_project_with(store, config, |_| {}).await
}

/// [`start_project`] with `adjust` applied to the options (`dev`, …) first.
pub async fn start_project_with(
    store: std::sync::Arc<dyn fhirgate_store::Store>,
    config: &std::path::Path,
    adjust: impl FnOnce(&mut ServeOptions),
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let registry = fhirgate::registry();
    let project = fhirgate::load_project(config, &registry).unwrap();
    let mut options = ServeOptions::new(&base);
    options.root_secret = Some(ROOT_SECRET.into());
    adjust(&mut options);
    let prepared = prepare(&project, store, &options).await.unwrap();
    let app = prepared
        .app
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        fhir: format!("{base}/smart"),
        base,
        http: no_redirects(),
    }
}

impl Server {
    /// Upsert `resources` (a JSON array) in one transaction, as `root`.
    pub async fn put(&self, resources: &Value) {
        let resp = self
            .http
            .put(format!("{}/", self.base))
            .basic_auth("root", Some(root_secret()))
            .json(resources)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }

    /// `POST /auth/token`; the status, the headers and the JSON body.
    pub async fn token_raw(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        origin: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}/auth/token", self.base))
            .form(form);
        if let Some((u, p)) = basic {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }

    /// `POST /auth/token`; a 200 must carry `Cache-Control: no-store` and `Pragma: no-cache`.
    pub async fn token(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
        let (status, headers, body) = self.token_raw(form, basic, None).await;
        if status == 200 {
            assert!(
                headers["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("no-store")
            );
            assert!(headers["pragma"].to_str().unwrap().contains("no-cache"));
        }
        (status, body)
    }

    /// `GET {fhir}/{path}` with a bearer token; status and JSON body (Null if none).
    pub async fn fhir_get(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/{path}", self.fhir))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A form POST to `{base}{path}`, authenticated with HTTP Basic.
    pub async fn form_post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: (&str, &str),
    ) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(basic.0, Some(basic.1))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// An authorization request URL: `aud` = the FHIR base, `state` = `st-123`, PKCE S256 when
    /// a challenge is given, then `extra`.
    pub fn authorize_url(
        &self,
        client: &str,
        scope: &str,
        challenge: Option<&str>,
        extra: &[(&str, &str)],
    ) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("response_type", "code")
            .append_pair("client_id", client)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("scope", scope)
            .append_pair("state", "st-123")
            .append_pair("aud", &self.fhir);
        if let Some(c) = challenge {
            q.append_pair("code_challenge", c)
                .append_pair("code_challenge_method", "S256");
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        format!("{}/auth/authorize?{}", self.base, q.finish())
    }
}

/// Log in on `page` if it is the login form, follow our redirects; the page reached.
pub async fn login_if_asked(b: &mut Browser, page: Page, user: &str, password: &str) -> Page {
    if page.body.contains("name=\"password\"") {
        let mut after = b.login(&page, user, password).await;
        // A deployment's login rate limits (10/min per user, 60/min per address) hold for the
        // whole suite there: wait as a person would, then sign in again on the form it shows.
        let mut waits = 0;
        while after.status == 429 && waits < 3 && external_target().is_some() {
            let secs: u64 = after
                .headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            tokio::time::sleep(std::time::Duration::from_secs(secs.min(65))).await;
            let form = after;
            after = b.login(&form, user, password).await;
            waits += 1;
        }
        assert_eq!(after.status, 302, "login: {}", after.body);
        b.follow(after).await
    } else {
        page
    }
}

/// Open `url`, log in, and stop at the consent page.
pub async fn consent_page(b: &mut Browser, url: &str, user: &str, password: &str) -> Page {
    let page = b.open(url).await;
    let page = login_if_asked(b, page, user, password).await;
    assert_eq!(page.status, 200, "consent page: {}", page.body);
    assert!(page.body.contains("name=\"decision\""), "{}", page.body);
    page
}

/// Authorize → login → consent (`scopes` ticked; None: as offered) → the redirect to the app,
/// whose `code` it returns.
pub async fn authorize_code(
    b: &mut Browser,
    url: &str,
    user: &str,
    password: &str,
    scopes: Option<&[&str]>,
) -> String {
    let consent = consent_page(b, url, user, password).await;
    let back = b.consent(&consent, "allow", scopes, false).await;
    assert_eq!(back.status, 302, "{}", back.body);
    assert!(
        back.location.as_deref().unwrap_or("").starts_with(REDIRECT),
        "{:?}",
        back.location
    );
    let q = back.redirect_params();
    assert_eq!(q.get("state").map(String::as_str), Some("st-123"));
    q.get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code: {:?}", back.location))
}

/// A client's signing key for `private_key_jwt`, as Inferno holds its own: the public JWK
/// carries `kid`, `alg`, `use: sig`, `key_ops: [verify]` and `ext: true`.
pub enum ClientKey {
    Es384 {
        pair: aws_lc_rs::signature::EcdsaKeyPair,
        jwk: Value,
    },
    Rs384 {
        pair: aws_lc_rs::rsa::KeyPair,
        jwk: Value,
    },
}

impl ClientKey {
    pub fn es384(kid: &str) -> ClientKey {
        use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        ClientKey::Es384 {
            pair,
            jwk: json!({"kty": "EC", "crv": "P-384", "x": B64.encode(&point[1..49]),
                        "y": B64.encode(&point[49..]), "use": "sig", "key_ops": ["verify"],
                        "ext": true, "kid": kid, "alg": "ES384"}),
        }
    }

    pub fn rs384(kid: &str) -> ClientKey {
        use aws_lc_rs::signature::KeyPair;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let jwk = json!({"kty": "RSA", "alg": "RS384",
            "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
            "use": "sig", "key_ops": ["verify"], "ext": true, "kid": kid});
        ClientKey::Rs384 { pair, jwk }
    }

    pub fn jwk(&self) -> &Value {
        match self {
            ClientKey::Es384 { jwk, .. } | ClientKey::Rs384 { jwk, .. } => jwk,
        }
    }

    /// A compact JWS of `claims` with `header` (alg and kid are added).
    pub fn sign(&self, mut header: Value, claims: &Value) -> String {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        header["alg"] = self.jwk()["alg"].clone();
        header["kid"] = self.jwk()["kid"].clone();
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = match self {
            ClientKey::Es384 { pair, .. } => {
                pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
            }
            ClientKey::Rs384 { pair, .. } => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA384,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
        };
        format!("{input}.{}", B64.encode(signature))
    }

    /// A client assertion as most libraries build one: `iss` = `sub` = the client, `aud`,
    /// `iat`, `exp` four minutes ahead, a random `jti`.
    pub fn assertion(&self, client: &str, aud: &str) -> String {
        use fhirgate_auth::tokens::{now, random_id};
        self.sign(
            json!({"typ": "JWT"}),
            &json!({"iss": client, "sub": client, "aud": aud, "iat": now(),
                    "exp": now() + 240, "jti": random_id().unwrap()}),
        )
    }

    /// A client assertion built the way Inferno's `ClientAssertionBuilder` builds one:
    /// `iss` = `sub` = the client, `aud`, `exp` five minutes ahead, a random `jti`, no `iat`;
    /// header `typ: JWT` with `alg` and `kid`.
    pub fn inferno_assertion(&self, client: &str, aud: &str) -> String {
        use fhirgate_auth::tokens::{now, random_id};
        let jti = format!("{}{}", random_id().unwrap(), random_id().unwrap());
        self.sign(
            json!({"typ": "JWT"}),
            &json!({"iss": client, "sub": client, "aud": aud, "exp": now() + 300, "jti": jti}),
        )
    }
}

/// The claims of a JWT, unverified.
pub fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&B64.decode(payload).expect("base64url")).expect("JSON claims")
}

/// The header of a JWT, unverified.
pub fn jwt_header(jwt: &str) -> Value {
    let header = jwt.split('.').next().expect("a JWT");
    serde_json::from_slice(&B64.decode(header).expect("base64url")).expect("JSON header")
}

/// The ids of a searchset Bundle's `match` entries, sorted.
pub fn match_ids(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}
