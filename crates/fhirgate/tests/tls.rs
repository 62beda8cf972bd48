//! `fhirgate serve --tls-cert --tls-key`: HTTPS with TLS 1.2 and 1.3 only, ALPN h2 and
//! http/1.1, and one-line startup errors for a half or broken configuration. Certificates are
//! made at test time with the `openssl` command, which also plays the old clients.

mod common;

use common::process::{free_port, wait_listening};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    for var in [
        "FHIRGATE_CONFIG",
        "FHIRGATE_TLS_CERT",
        "FHIRGATE_TLS_KEY",
        "FHIRGATE_BASE_URL",
        "FHIRGATE_LISTEN",
        "FHIRGATE_DATABASE_URL",
    ] {
        c.env_remove(var);
    }
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
    out
}

/// A self-signed certificate for 127.0.0.1 with a key of `kind` ("rsa" or "ec"):
/// (dir, cert.pem, key.pem); the RSA key comes out as PKCS#8.
fn self_signed(kind: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = common::tempdir("tls");
    let newkey: &[&str] = match kind {
        "ec" => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        _ => &["-newkey", "rsa:2048"],
    };
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
    ]);
    openssl(&args, &dir);
    (dir.clone(), dir.join("cert.pem"), dir.join("key.pem"))
}

struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, cert: &Path, key: &Path) -> Server {
        Server::start_with(dir, cert, key, &[])
    }

    /// [`Server::start`] with `extra` arguments (`--demo`, …).
    fn start_with(dir: &Path, cert: &Path, key: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let mut child = bin()
            .args(["serve", "--config"])
            .arg(common::root_core_edn())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--base-url", &format!("https://127.0.0.1:{port}")])
            .arg("--database-url")
            .arg(format!("sqlite:{}/db.sqlite", dir.display()))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if let Err(why) = wait_listening(port, &mut child, Duration::from_secs(30)) {
            panic!("{why}");
        }
        Server { child, port }
    }

    /// A TLS handshake by `openssl s_client` with extra `args`.
    fn s_client(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.port)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the openssl command");
        (
            out.status.success(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_https_with_tls_12_and_13_only() {
    let (dir, cert, key) = self_signed("rsa");
    let server = Server::start(&dir, &cert, &key);
    let base = format!("https://127.0.0.1:{}", server.port);

    // HTTPS with a client that trusts only this certificate, over HTTP/1.1 and HTTP/2
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pem = std::fs::read(&cert).unwrap();
    rt.block_on(async {
        let trusted = reqwest::Certificate::from_pem(&pem).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([trusted.clone()])
            .build()
            .unwrap();
        let r = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "{\"status\":\"pass\"}");
        let r = client
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let issuer = r.json::<serde_json::Value>().await.unwrap()["issuer"].clone();
        assert_eq!(issuer, base.as_str());
        // a client that does not trust the certificate gets no answer
        let untrusting = reqwest::Client::builder()
            .tls_certs_only([])
            .build()
            .unwrap();
        assert!(
            untrusting
                .get(format!("{base}/health"))
                .send()
                .await
                .is_err()
        );
    });

    // TLS 1.0 and 1.1 are refused by the server: the client is set to SECLEVEL=0 so that it
    // offers them (Debian's OpenSSL would not otherwise, decisions §21), and the refusal is an
    // alert from the server
    for old in ["-tls1", "-tls1_1"] {
        let (ok, out) = server.s_client(&[old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "{old} must fail: {out}");
        // the server's alert, read by the client (a client refusing by itself would say
        // "no protocols available" and send nothing)
        assert!(out.contains("SSL alert number"), "{old}: {out}");
        assert!(!out.contains("no protocols available"), "{old}: {out}");
    }
    let (ok, out) = server.s_client(&["-tls1_2", "-alpn", "h2,http/1.1"]);
    assert!(ok, "TLS 1.2: {out}");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    let (ok, out) = server.s_client(&["-tls1_3", "-alpn", "http/1.1"]);
    assert!(ok, "TLS 1.3: {out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");

    // HTTP/2 over ALPN end to end, with curl; without curl this part is "not run" (a failure
    // in CI), never a silent pass
    let curl = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(&cert)
        .arg(format!("{base}/health"))
        .output();
    match curl {
        Ok(out) => assert_eq!(text(&out.stdout), "2 200", "{}", text(&out.stderr)),
        Err(e) => common::not_run(
            "serves_https_with_tls_12_and_13_only",
            &format!("the HTTP/2-over-ALPN check needs curl ({e}); the TLS version checks ran"),
        ),
    }

    assert!(server.stop().success(), "SIGTERM drains and exits 0");
}

/// The first-run demo behind fhirgate's own TLS: the demo app and its links use the HTTPS base,
/// and a demo backend-services client gets a token and reads over HTTPS.
#[test]
fn the_demo_runs_over_https() {
    let (dir, cert, key) = self_signed("ec");
    let server = Server::start_with(&dir, &cert, &key, &["--demo"]);
    let base = format!("https://127.0.0.1:{}", server.port);
    let pem = std::fs::read(&cert).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .build()
            .unwrap();
        let page = client.get(format!("{base}/demo")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let page = common::browser::unescape(&page.text().await.unwrap());
        assert!(page.contains(&format!("{base}/smart")), "{page}");
        assert!(!page.contains("http://127.0.0.1"), "{page}");
        let bundle = common::demo_backend_patients(&client, &base).await;
        assert!(
            bundle["entry"].as_array().is_some_and(|e| !e.is_empty()),
            "the demo patients: {bundle}"
        );
        assert!(
            bundle["entry"][0]["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{base}/smart/Patient/")),
            "{bundle}"
        );
    });
    assert!(server.stop().success());
}

#[test]
fn serves_https_with_an_ec_key_and_with_a_traditional_rsa_key() {
    // the EC key as SEC1 ("BEGIN EC PRIVATE KEY")
    let (dir, cert, _) = self_signed("ec");
    openssl(&["ec", "-in", "key.pem", "-out", "key-sec1.pem"], &dir);
    let sec1 = dir.join("key-sec1.pem");
    assert!(text(&std::fs::read(&sec1).unwrap()).starts_with("-----BEGIN EC PRIVATE KEY"));
    let server = Server::start(&dir, &cert, &sec1);
    let (ok, out) = server.s_client(&["-tls1_3"]);
    assert!(ok, "{out}");
    drop(server);

    // the RSA key as PKCS#1 ("BEGIN RSA PRIVATE KEY")
    let (dir, cert, _) = self_signed("rsa");
    openssl(
        &[
            "rsa",
            "-in",
            "key.pem",
            "-traditional",
            "-out",
            "key-pkcs1.pem",
        ],
        &dir,
    );
    let pkcs1 = dir.join("key-pkcs1.pem");
    assert!(text(&std::fs::read(&pkcs1).unwrap()).starts_with("-----BEGIN RSA PRIVATE KEY"));
    let server = Server::start(&dir, &cert, &pkcs1);
    let (ok, out) = server.s_client(&["-tls1_2"]);
    assert!(ok, "{out}");
}

/// `serve` with `args` added exits 1 with one line on stderr; that line.
fn refused(dir: &Path, args: &[&std::ffi::OsStr], envs: &[(&str, &Path)]) -> String {
    let mut cmd = bin();
    cmd.args(["serve", "--config"])
        .arg(common::root_core_edn())
        .args(["--listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite:{}/db.sqlite", dir.display()))
        .args(args)
        .current_dir(dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        !dir.join("db.sqlite").exists(),
        "nothing is written before the TLS configuration is checked"
    );
    lines[0].to_string()
}

#[test]
fn half_or_broken_tls_configuration_is_a_one_line_error() {
    let (dir, cert, key) = self_signed("ec");
    let os = |p: &Path| p.as_os_str().to_owned();
    let flag = |s: &str| std::ffi::OsString::from(s);

    let line = refused(&dir, &[&flag("--tls-cert"), &os(&cert)], &[]);
    assert!(
        line.contains("--tls-cert") && line.contains("--tls-key"),
        "{line}"
    );
    let line = refused(&dir, &[], &[("FHIRGATE_TLS_KEY", &key)]);
    assert!(line.contains("needs --tls-cert"), "{line}");

    let missing = dir.join("nope.pem");
    let line = refused(
        &dir,
        &[
            &flag("--tls-cert"),
            &os(&missing),
            &flag("--tls-key"),
            &os(&key),
        ],
        &[],
    );
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert!(line.contains("No such file"), "{line}");

    // a key where the certificate belongs, and the other way round
    let line = refused(
        &dir,
        &[
            &flag("--tls-cert"),
            &os(&key),
            &flag("--tls-key"),
            &os(&key),
        ],
        &[],
    );
    assert!(
        line.contains(&key.display().to_string()) && line.contains("no PEM CERTIFICATE"),
        "{line}"
    );
    let line = refused(
        &dir,
        &[
            &flag("--tls-cert"),
            &os(&cert),
            &flag("--tls-key"),
            &os(&cert),
        ],
        &[],
    );
    assert!(
        line.contains(&cert.display().to_string()) && line.contains("no PEM private key"),
        "{line}"
    );

    // garbage inside the PEM armour
    let bad = dir.join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let line = refused(
        &dir,
        &[
            &flag("--tls-cert"),
            &os(&bad),
            &flag("--tls-key"),
            &os(&key),
        ],
        &[],
    );
    assert!(line.contains(&bad.display().to_string()), "{line}");

    // a certificate with another certificate's key
    let (_, _, other_key) = self_signed("ec");
    let line = refused(
        &dir,
        &[
            &flag("--tls-cert"),
            &os(&cert),
            &flag("--tls-key"),
            &os(&other_key),
        ],
        &[],
    );
    assert!(line.contains("do not go together"), "{line}");
}
