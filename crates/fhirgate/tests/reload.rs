//! Issue 16 §3 over loopback, against a real `fhirgate serve`: SIGHUP reloads the project while
//! requests keep coming (20 reloads, zero failures), the new project's seeds are upserted, a
//! broken file leaves the old routes answering, a project that changes the FHIR bases is
//! refused, and `--watch` reloads on a file change.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::Serve;

const ROOT_SECRET: &str = "reload-root-secret-0123456789abcdef";

/// Routes `smart/metadata` and `a/style` always; `b/style` and a seeded AccessPolicy in B.
fn project(with_b: bool) -> String {
    let b = if with_b {
        r#""b" {"style" {:GET {:action :smart.fhir/style :public true}}}"#
    } else {
        ""
    };
    let seed = if with_b {
        r#" seed {:zen/tags #{aidbox/service} :engine aidbox/seed
       :resources {:AccessPolicy {:reload-b {:engine :matcho :matcho {:jwt {:scope "present?"}}}}}}"#
    } else {
        ""
    };
    format!(
        r#"{{ns core import #{{zenbox aidbox}}
 fhir-api {{:zen/tags #{{zenbox/api}}
   "metadata" {{:GET {{:action :smart.fhir/capability :public true}}}}}}
 root-api {{:zen/tags #{{zenbox/api}}
   "smart" {{:apis #{{fhir-api}}}}
   "a" {{"style" {{:GET {{:action :smart.fhir/style :public true}}}}}}
   {b}}}
{seed}}}
"#
    )
}

async fn status(http: &reqwest::Client, url: &str) -> u16 {
    match http.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Wait until `url` answers `want`.
async fn until(http: &reqwest::Client, url: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if status(http, url).await == want {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_and_a_broken_project_keeps_the_old_routes() {
    let dir = common::tempdir("reload");
    std::fs::write(dir.join("core.edn"), project(false)).unwrap();
    let serve = Serve::start(
        &dir,
        &["--config", "core.edn"],
        &[("FHIRGATE_ROOT_SECRET", ROOT_SECRET)],
    );
    let base = serve.base.clone();
    let http = reqwest::Client::new();
    assert_eq!(status(&http, &format!("{base}/a/style")).await, 200);
    assert_eq!(status(&http, &format!("{base}/b/style")).await, 404);

    // a loop of requests to routes both versions have, for as long as the reloads go on
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for path in ["/a/style", "/smart/metadata"] {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        let (http, url) = (http.clone(), format!("{base}{path}"));
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if status(&http, &url).await == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 0..20 {
        let with_b = i % 2 == 0;
        std::fs::write(dir.join("core.edn"), project(with_b)).unwrap();
        serve.signal("-HUP");
        until(
            &http,
            &format!("{base}/b/style"),
            if with_b { 200 } else { 404 },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "{} requests during 20 reloads, {failed} failed",
        done + failed
    );
    assert_eq!(failed, 0, "{failed} of {} requests failed", done + failed);
    assert!(done > 40, "only {done} requests ran during the reloads");

    // the last reload (an odd one: without B) removed B's seeded policy (410: deleted); reload B:
    // it is back
    let policy = format!("{base}/AccessPolicy/reload-b");
    let admin = |url: String| http.get(url).basic_auth("root", Some(ROOT_SECRET)).send();
    assert_eq!(admin(policy.clone()).await.unwrap().status(), 410);
    std::fs::write(dir.join("core.edn"), project(true)).unwrap();
    serve.signal("-HUP");
    until(&http, &format!("{base}/b/style"), 200).await;
    assert_eq!(admin(policy.clone()).await.unwrap().status(), 200);

    // a broken file: reported, and the old routes keep answering
    std::fs::write(
        dir.join("core.edn"),
        "{ns core import #{zenbox} root-api {:zen/tags",
    )
    .unwrap();
    serve.signal("-HUP");
    // a project that moves the FHIR base: refused (the token audiences are fixed at start)
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(
        dir.join("core.edn"),
        project(true).replace("\"smart\" {:apis", "\"fhir\" {:apis"),
    )
    .unwrap();
    serve.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&http, &format!("{base}/a/style")).await, 200);
    assert_eq!(status(&http, &format!("{base}/b/style")).await, 200);
    assert_eq!(status(&http, &format!("{base}/smart/metadata")).await, 200);
    assert_eq!(status(&http, &format!("{base}/fhir/metadata")).await, 404);
    let log = serve.stop();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(
        log.contains("core.edn:1:"),
        "the broken file's position: {log}"
    );
    assert!(log.contains("the project's FHIR bases changed"), "{log}");
    assert_eq!(
        log.lines().filter(|l| l.contains("reloaded ")).count(),
        21,
        "{log}"
    );
}

#[tokio::test]
async fn watch_reloads_when_the_file_changes() {
    let dir = common::tempdir("reload-watch");
    std::fs::write(dir.join("core.edn"), project(false)).unwrap();
    let serve = Serve::start(
        &dir,
        &["--config", "core.edn", "--watch"],
        &[("FHIRGATE_ROOT_SECRET", ROOT_SECRET)],
    );
    let http = reqwest::Client::new();
    let b = format!("{}/b/style", serve.base);
    assert_eq!(status(&http, &b).await, 404);
    // modification times have a coarse grain on some file systems: make the change visible
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(dir.join("core.edn"), project(true)).unwrap();
    until(&http, &b, 200).await;
    let log = serve.stop();
    assert!(log.contains("reloaded "), "{log}");
}
