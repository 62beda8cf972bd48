//! The authorization server over loopback when something it relies on is missing: a random
//! generator that fails, a Client with no credentials that does not say it is public.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fhirgate_auth::secrets::hash_secret;
use fhirgate_auth::server::{AuthConfig, AuthServer};
use fhirgate_auth::tokens::{RandomError, RandomSource, SystemRandomSource};
use serde_json::{Value, json};

/// The system generator, until it is told to fail.
#[derive(Default)]
struct Breakable(AtomicBool);

impl RandomSource for Breakable {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomError> {
        if self.0.load(Ordering::SeqCst) {
            return Err(RandomError);
        }
        SystemRandomSource.fill(dest)
    }
}

struct Server {
    base: String,
    http: reqwest::Client,
    rng: Arc<Breakable>,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap().keep();
    let store = fhirgate_store::open(&format!("sqlite:{}/db.sqlite", dir.display()))
        .await
        .unwrap();
    for r in [
        json!({"resourceType": "Client", "id": "svc", "secret_hash": hash_secret("svc-secret").unwrap(),
               "grant_types": ["client_credentials"], "scope": "system/*.rs"}),
        json!({"resourceType": "User", "id": "amy", "password_hash": hash_secret("amy-pass").unwrap()}),
        json!({"resourceType": "Client", "id": "pub", "grant_types": ["authorization_code"],
               "auth": {"authorization_code": {"redirect_uri": "http://app.test/cb", "secret_required": false}}}),
        // no secret, no keys, and no `secret_required: false`: stored past admin REST's check
        json!({"resourceType": "Client", "id": "keyless", "grant_types": ["authorization_code"],
               "auth": {"authorization_code": {"redirect_uri": "http://app.test/cb"}}}),
    ] {
        store.update(r, None).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let rng = Arc::new(Breakable::default());
    let auth = AuthServer::start_with_random(
        store,
        AuthConfig::new(&base, vec![format!("{base}/smart")]),
        rng.clone(),
    )
    .await
    .unwrap();
    let app = auth
        .routes()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        rng,
    }
}

impl Server {
    async fn post_form(
        &self,
        path: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    }

    /// A complete authorization request of `client` (PKCE, aud) to http://app.test/cb.
    fn authorize_url(&self, client: &str) -> String {
        format!(
            "{}/auth/authorize?response_type=code&client_id={client}&redirect_uri=http%3A%2F%2Fapp.test%2Fcb&state=st&scope=openid&aud={}%2Fsmart&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
            self.base, self.base
        )
    }

    async fn client_credentials(&self) -> (u16, Value) {
        let (status, _, body) = self
            .post_form(
                "/auth/token",
                "grant_type=client_credentials&scope=system%2FPatient.rs&client_id=svc&client_secret=svc-secret",
                &[],
            )
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// issue 12 §5: a failed generator is an error at every endpoint that needs randomness, never
/// a token, code, session or CSRF value made of a zeroed buffer.
#[tokio::test]
async fn a_failing_random_generator_is_a_server_error_not_a_token() {
    let s = start().await;
    let (status, body) = s.client_credentials().await;
    assert_eq!(status, 200, "{body}");

    s.rng.0.store(true, Ordering::SeqCst);
    let (status, body) = s.client_credentials().await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "server_error");
    assert!(body.get("access_token").is_none(), "{body}");

    // the login page needs a CSRF value
    let r = s
        .http
        .get(format!("{}/auth/login", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.headers().get("set-cookie").is_none());

    // a right password needs a session id
    let csrf = "c".repeat(43);
    let (status, headers, _) = s
        .post_form(
            "/auth/login",
            &format!("csrf={csrf}&username=amy&password=amy-pass"),
            &[("cookie", &format!("fhirgate_csrf={csrf}"))],
        )
        .await;
    assert_eq!(status, 500);
    assert!(
        !headers.get_all("set-cookie").iter().any(|c| c
            .to_str()
            .unwrap_or_default()
            .starts_with("fhirgate_session=")),
        "no session cookie"
    );

    // an authorization request needs a request id
    let r = s.http.get(s.authorize_url("pub")).send().await.unwrap();
    assert_eq!(r.status(), 500);

    s.rng.0.store(false, Ordering::SeqCst);
    assert_eq!(s.client_credentials().await.0, 200, "works again");
}

/// issue 12 §5: a Client without a secret, jwks or jwks_uri is public only when it says
/// `secret_required: false`; one stored without saying so (before `check` and admin REST refused
/// it) cannot get tokens by sending its client_id alone.
#[tokio::test]
async fn a_client_without_credentials_is_not_taken_for_a_public_one() {
    let s = start().await;
    let (status, headers, body) = s
        .post_form(
            "/auth/token",
            "grant_type=authorization_code&code=x&client_id=keyless&code_verifier=v",
            &[],
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("secret_required: false"),
        "{body}"
    );
    assert!(headers.contains_key("www-authenticate"));

    // and authorize sends the app back with unauthorized_client instead of a login form
    let r = s.http.get(s.authorize_url("keyless")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("http://app.test/cb?error=unauthorized_client"),
        "{location}"
    );
}
