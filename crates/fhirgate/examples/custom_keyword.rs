//! Register your own action and middleware keywords, load an EDN project that names them, and
//! serve it with fhirgate's built-in SMART keywords alongside.
//!
//! Run: `cargo run -p fhirgate --example custom_keyword`

use axum::extract::{Extension, Request};
use axum::middleware::Next;
use fhirgate_config::{MemorySources, load_sources};
use fhirgate_router::{ActionSpec, RouteMatch};

const PROJECT: &str = r#"
{ns core import #{zenbox}
 root-api {:zen/tags #{zenbox/api}
           :middlewares [:acme/server-header]
           "hello" {[:name] {:GET {:action :acme/hello}}}}}
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // 1. fhirgate's registry, plus two keywords of our own.
    let mut registry = fhirgate::registry();
    registry.handler(
        "acme/hello",
        ActionSpec::default(),
        |Extension(m): Extension<RouteMatch>| async move {
            format!("hello, {}!", m.param("name").unwrap_or("world"))
        },
    );
    registry.middleware(
        "acme/server-header",
        axum::middleware::from_fn(|req: Request, next: Next| async move {
            let mut resp = next.run(req).await;
            resp.headers_mut()
                .insert("x-served-by", http::HeaderValue::from_static("acme"));
            resp
        }),
    );

    // 2. Load (and validate) the project against that registry, and build the app.
    let sources = MemorySources::new([("core.edn", PROJECT)]);
    let project =
        load_sources("core.edn", &sources, &registry).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let app = fhirgate::build_app(&fhirgate::Settings::default(), &project, &registry)?;

    // 3. Serve it on loopback and call it once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let resp = reqwest::get(format!("http://{addr}/hello/rust")).await?;
    let served_by = resp.headers().get("x-served-by").cloned();
    let body = resp.text().await?;
    println!("{body} (x-served-by: {served_by:?})");
    assert_eq!(body, "hello, rust!");
    Ok(())
}
