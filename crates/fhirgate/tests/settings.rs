//! Issue 16 §4: operator settings reach what they tune, against a real `fhirgate serve`.

mod common;

use common::process::Serve;
use serde_json::{Value, json};

const ROOT_SECRET: &str = "settings-root-secret-0123456789abcdef";

/// `--access-token-lifetime` is the default of Clients that set none; a Client's own
/// `access_token_expiration` still wins.
#[tokio::test]
async fn the_access_token_lifetime_flag_is_the_default_of_clients_that_set_none() {
    let dir = common::tempdir("settings");
    let serve = Serve::start(
        &dir,
        &["--access-token-lifetime", "120"],
        &[("FHIRGATE_ROOT_SECRET", ROOT_SECRET)],
    );
    let base = serve.base.clone();
    let http = reqwest::Client::new();
    for (id, own) in [("svc-default", None), ("svc-own", Some(900))] {
        let mut client = json!({"resourceType": "Client", "id": id, "secret": "svc-secret",
            "grant_types": ["client_credentials"], "scope": "system/Patient.rs"});
        if let Some(secs) = own {
            client["auth"] = json!({"client_credentials": {"access_token_expiration": secs}});
        }
        let r = http
            .put(format!("{base}/Client/{id}"))
            .basic_auth("root", Some(ROOT_SECRET))
            .json(&client)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let t: Value = http
            .post(format!("{base}/auth/token"))
            .basic_auth(id, Some("svc-secret"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "system/Patient.rs"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(t["expires_in"], own.unwrap_or(120), "{id}: {t}");
    }
    serve.stop();
}
