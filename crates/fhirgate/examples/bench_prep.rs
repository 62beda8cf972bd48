//! The client side of `scripts/bench`: prepares a running `fhirgate serve` for the load runs and
//! writes what `wrk` then sends.
//!
//!     bench_prep setup BASE ROOT_SECRET DIR CHAINS
//!         seeds a patient with 200 Observations, the bench clients and CHAINS × 4 users (admin
//!         REST, HTTP Basic of `root`); runs one authorization code flow per user as a browser
//!         does (login, consent, PKCE) and writes DIR/read.token (an access token for the
//!         patient) and DIR/refresh-{0..3}.txt (CHAINS refresh tokens each: one file per wrk run,
//!         since every refresh token is single use); keeps the backend client's ES384 key in
//!         DIR/backend.pk8.
//!     bench_prep assertions BASE DIR COUNT
//!         writes DIR/assertions.txt: COUNT form bodies of `client_credentials` grants, each
//!         with a freshly signed `private_key_jwt` assertion (its own `jti`, exp in 4 minutes).
//!
//! Everything goes over HTTP to the real server; nothing is written into its store directly.

use base64::Engine;
use serde_json::{Value, json};

const REDIRECT: &str = "http://app.test/cb";
const KID: &str = "bench-k1";
const REFRESH_SCOPES: &[&str] = &["launch/patient", "offline_access", "patient/Patient.rs"];
const READ_SCOPES: &[&str] = &["launch/patient", "patient/*.rs"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["setup", base, root, dir, chains] => {
            setup(base, root, dir.as_ref(), chains.parse()?).await
        }
        ["assertions", base, dir, count] => assertions(base, dir.as_ref(), count.parse()?),
        _ => anyhow::bail!(
            "usage: bench_prep setup BASE ROOT_SECRET DIR CHAINS | bench_prep assertions BASE DIR COUNT"
        ),
    }
}

async fn setup(base: &str, root: &str, dir: &std::path::Path, chains: usize) -> anyhow::Result<()> {
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref())
        .map_err(|_| anyhow::anyhow!("key"))?;
    std::fs::write(dir.join("backend.pk8"), doc.as_ref())?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-384", "kid": KID, "alg": "ES384",
                     "x": b64.encode(&point[1..49]), "y": b64.encode(&point[49..])});
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut seed = vec![
        json!({"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw", "given": ["Amy"]}],
               "gender": "female", "birthDate": "1987-02-20"}),
        json!({"resourceType": "Client", "id": "bench-app", "secret": "bench-app-secret",
               "grant_types": ["authorization_code"],
               "auth": {"authorization_code": {"redirect_uri": REDIRECT, "refresh_token": true}}}),
        json!({"resourceType": "Client", "id": "bench-backend", "jwks": {"keys": [jwk]},
               "grant_types": ["client_credentials"], "scope": "system/*.rs"}),
        json!({"resourceType": "Client", "id": "bench-service", "secret": "bench-service-secret",
               "grant_types": ["client_credentials"], "scope": "system/*.rs"}),
    ];
    for i in 0..200 {
        let category = if i % 2 == 0 {
            "laboratory"
        } else {
            "vital-signs"
        };
        seed.push(json!({"resourceType": "Observation", "id": format!("obs-{i}"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": "Patient/pt-1"},
            "effectiveDateTime": format!("2024-01-{:02}", i % 28 + 1),
            "valueQuantity": {"value": 90 + i % 20, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}));
    }
    // one user per chain and run: sign-in is rate limited per user
    let users = chains * 4 + 1;
    for i in 0..users {
        seed.push(
            json!({"resourceType": "User", "id": format!("bench-user{i}"), "password": "pass",
                         "fhirUser": {"reference": "Patient/pt-1"}}),
        );
    }
    let r = http
        .put(format!("{base}/"))
        .basic_auth("root", Some(root))
        .json(&seed)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "seeding failed: {}", r.text().await?);

    // the refresh chains have the scope (no `openid`, so no id_token on refresh)
    for run in 0..4 {
        let mut lines = String::new();
        for c in 0..chains {
            let user = format!("bench-user{}", run * chains + c);
            let t = first_tokens(&http, base, &user, REFRESH_SCOPES).await?;
            lines.push_str(&t.refresh);
            lines.push('\n');
        }
        std::fs::write(dir.join(format!("refresh-{run}.txt")), lines)?;
    }
    let reader = format!("bench-user{}", chains * 4);
    let t = first_tokens(&http, base, &reader, READ_SCOPES).await?;
    std::fs::write(dir.join("read.token"), t.access)?;
    Ok(())
}

fn assertions(base: &str, dir: &std::path::Path, count: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let key = jsonwebtoken::EncodingKey::from_ec_der(&std::fs::read(dir.join("backend.pk8"))?);
    let url = format!("{base}/auth/token");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(KID.into());
    let now = fhirgate_auth::tokens::now();
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("assertions.txt"))?);
    for _ in 0..count {
        let claims = json!({"iss": "bench-backend", "sub": "bench-backend", "aud": url,
                            "exp": now + 240, "jti": fhirgate_auth::tokens::random_id()?});
        let assertion = jsonwebtoken::encode(&header, &claims, &key)?;
        writeln!(
            out,
            "grant_type=client_credentials&scope=system%2FPatient.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
        )?;
    }
    out.flush()?;
    Ok(())
}

struct Tokens {
    access: String,
    refresh: String,
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
async fn first_tokens(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    scopes: &[&str],
) -> anyhow::Result<Tokens> {
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
        .append_pair("client_id", "bench-app")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", &scopes.join(" "))
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
    for s in scopes {
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
        .basic_auth("bench-app", Some("bench-app-secret"))
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
    let refresh_asked = scopes.contains(&"offline_access");
    match (t["access_token"].as_str(), t["refresh_token"].as_str()) {
        (Some(access), refresh) if refresh.is_some() == refresh_asked => Ok(Tokens {
            access: access.into(),
            refresh: refresh.unwrap_or_default().into(),
        }),
        _ => anyhow::bail!("unexpected token response: {t}"),
    }
}
