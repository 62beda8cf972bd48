//! Two `fhirgate serve` processes on one PostgreSQL behave as one authorization server
//! (issue 4 item 7, decisions §16): a code issued by one is redeemed at the other, a revocation
//! at one is honoured by the other on the very next request.

mod common;

use common::process::{free_port, wait_listening};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::browser::{Browser, pkce};
use serde_json::{Value, json};

const ROOT_SECRET: &str = "two-process-root-secret";
const REDIRECT: &str = "http://app.test/cb";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(port: u16, base_url: &str, db: &str) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args([
            "serve",
            "--config",
            common::root_core_edn().to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--base-url",
            base_url,
            "--database-url",
            db,
        ])
        .env("FHIRGATE_ROOT_SECRET", ROOT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    if let Err(why) = wait_listening(port, &mut child, Duration::from_secs(30)) {
        panic!("{why} (its stderr is above)");
    }
    Proc(child)
}

/// A fresh schema on the test server, as a database URL; `None` when PostgreSQL tests are
/// explicitly skipped.
async fn postgres_schema() -> Option<String> {
    let url = match std::env::var("FHIRGATE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var("FHIRGATE_TEST_SKIP_POSTGRES").as_deref() == Ok("1") => return None,
        _ => panic!(
            "FHIRGATE_TEST_POSTGRES_URL is not set: run scripts/test, or start a server with scripts/pg-tmp-start (FHIRGATE_TEST_SKIP_POSTGRES=1 skips)"
        ),
    };
    let schema = format!("two_{}", std::process::id());
    Some(common::fresh_postgres_schema(&url, &schema).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_codes_tokens_and_revocations() {
    let Some(db) = postgres_schema().await else {
        common::not_run(
            "two_processes_share_codes_tokens_and_revocations",
            "FHIRGATE_TEST_SKIP_POSTGRES=1: no PostgreSQL server to share",
        );
        return;
    };
    let (pa, pb) = (free_port(), free_port());
    // both serve the same public URL, as behind a load balancer
    let base = format!("http://127.0.0.1:{pa}");
    let a_url = base.clone();
    let b_url = format!("http://127.0.0.1:{pb}");
    let _a = spawn(pa, &base, &db);
    let _b = spawn(pb, &base, &db);
    let http = reqwest::Client::new();
    let seed = json!([
        {"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw"}]},
        {"resourceType": "User", "id": "amy", "password": "amy-pass", "fhirUser": {"reference": "Patient/pt-1"}},
        {"resourceType": "Client", "id": "conf-app", "secret": "conf-secret", "grant_types": ["authorization_code"],
         "auth": {"authorization_code": {"redirect_uri": REDIRECT, "refresh_token": true}}},
    ]);
    let r = http
        .put(format!("{a_url}/"))
        .basic_auth("root", Some(ROOT_SECRET))
        .json(&seed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // authorize at A
    let (verifier, challenge) = pkce();
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", "conf-app")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "launch/patient offline_access patient/*.rs")
        .append_pair("state", "s")
        .append_pair("aud", &format!("{base}/smart"))
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut browser = Browser::new(&a_url);
    let login = browser
        .open(&format!("{a_url}/auth/authorize?{}", q.finish()))
        .await;
    let consent = browser.login_follow(&login, "amy", "amy-pass").await;
    let back = browser.consent(&consent, "allow", None, false).await;
    let code = back.redirect_params()["code"].clone();
    // redeem at B
    let token = |url: String, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{url}/auth/token"))
                .basic_auth("conf-app", Some("conf-secret"))
                .form(&form)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, t) = token(
        b_url.clone(),
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.into()),
            ("code_verifier", verifier.clone()),
        ],
    )
    .await;
    assert_eq!(st, 200, "a code issued by A is redeemed at B: {t}");
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    // the same code at A: already used there too
    let (st, e) = token(
        a_url.clone(),
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", code),
            ("redirect_uri", REDIRECT.into()),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    // the replay revoked the grant everywhere: B refuses the token on its next request
    let get = |url: String| {
        let (http, access) = (http.clone(), access.clone());
        async move {
            http.get(format!("{url}/smart/Patient/pt-1"))
                .bearer_auth(access)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(b_url.clone()).await, 401);
    assert_eq!(get(a_url.clone()).await, 401);
    let (st, _) = token(
        b_url.clone(),
        vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh),
        ],
    )
    .await;
    assert_eq!(st, 400);

    // a fresh authorization; tokens from A work at B; revocation at A is honoured by B at once
    let (verifier, challenge) = pkce();
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", "conf-app")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "launch/patient patient/*.rs")
        .append_pair("aud", &format!("{base}/smart"))
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let consent = browser
        .open(&format!("{a_url}/auth/authorize?{}", q.finish()))
        .await;
    let back = browser.consent(&consent, "allow", None, false).await;
    let code = back.redirect_params()["code"].clone();
    let (st, t) = token(
        a_url.clone(),
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", code),
            ("redirect_uri", REDIRECT.into()),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(st, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_string();
    let read = |url: String| {
        let (http, access) = (http.clone(), access.clone());
        async move {
            http.get(format!("{url}/smart/Patient/pt-1"))
                .bearer_auth(access)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(read(b_url.clone()).await, 200, "B verifies A's token");
    let r = http
        .post(format!("{a_url}/auth/revoke"))
        .basic_auth("conf-app", Some("conf-secret"))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(read(b_url.clone()).await, 401, "revoked at A, refused by B");
    assert_eq!(read(a_url).await, 401);
}
