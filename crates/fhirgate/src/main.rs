//! `fhirgate`: a thin shell over the `fhirgate` library.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use fhirgate::cli::{
    Cli, Command, LoadArgs, ProjectArgs, RoutesArgs, ServeArgs, validate_base_url,
};
use fhirgate::{load_project, registry};
use fhirgate_config::{Diagnostic, Project};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Routes(args) => routes(&args),
        Command::Serve(args) => serve(args),
        Command::Load(args) => load_files(args),
        Command::Export(args) => export(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say("error", format!("fhirgate: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Whether `serve --log-format json` runs: then every stderr line is a JSON object, and what
/// the other commands print as plain lines goes through `tracing` instead ([`say`]).
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A message for the operator on stderr: the line itself, or with JSON logs a `tracing` event of
/// `level` (`"error"`, `"warn"` or `"info"`).
fn say(level: &str, msg: impl std::fmt::Display) {
    if !JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{msg}");
        return;
    }
    match level {
        "error" => tracing::error!("{msg}"),
        "warn" => tracing::warn!("{msg}"),
        _ => tracing::info!("{msg}"),
    }
}

fn print_diagnostics(diags: &[Diagnostic]) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        for d in diags {
            let level = match d.severity {
                fhirgate_edn::Severity::Error => "error",
                _ => "warn",
            };
            say(level, d);
        }
        return;
    }
    let mut err = std::io::stderr().lock();
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
}

/// Load the project, printing its diagnostics; `None` when it has errors.
fn load(path: &std::path::Path, registry: &fhirgate_router::Registry) -> Option<Project> {
    if fhirgate::app::uses_embedded(path) {
        say(
            "info",
            "fhirgate: no ./core.edn here; using the embedded default project (pass --config FILE for yours)",
        );
    }
    match load_project(path, registry) {
        Ok(project) => {
            print_diagnostics(&project.warnings);
            Some(project)
        }
        Err(diags) => {
            print_diagnostics(&diags);
            None
        }
    }
}

fn check(args: &ProjectArgs) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let Some(project) = load(args.path(), &registry) else {
        return Ok(ExitCode::FAILURE);
    };
    let seeds = match fhirgate::seed::read_seeds(&project, &[]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let lint = fhirgate::policy_lint::policy_warnings(
        &project,
        &registry,
        seeds.iter().flat_map(|s| &s.resources),
    );
    print_diagnostics(&lint);
    let warnings = project.warnings.len() + lint.len();
    let apis: std::collections::BTreeSet<&str> = project
        .routes
        .routes
        .iter()
        .map(|r| r.api.as_str())
        .collect();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let files = match project.seed_files.len() {
        0 => String::new(),
        n => format!(", {n} seed file{}", plural(n)),
    };
    println!(
        "{}: ok, {} routes from {} API{}, {} seed resource{}{files}, {} warning{}",
        args.path().display(),
        project.routes.routes.len(),
        apis.len(),
        plural(apis.len()),
        project.seeds.len(),
        plural(project.seeds.len()),
        warnings,
        plural(warnings),
    );
    Ok(ExitCode::SUCCESS)
}

fn routes(args: &RoutesArgs) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let Some(project) = load(args.project.path(), &registry) else {
        return Ok(ExitCode::FAILURE);
    };
    let rows: Vec<[String; 5]> = project
        .routes
        .routes
        .iter()
        .map(|r| {
            let mws: Vec<&str> = r
                .middlewares
                .iter()
                .filter(|m| !(r.public && registry.is_authentication(m)))
                .map(String::as_str)
                .collect();
            [
                r.method.to_string(),
                r.path(),
                r.action.clone(),
                if mws.is_empty() {
                    "-".into()
                } else {
                    mws.join(",")
                },
                if r.public {
                    "public".into()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let json: Vec<serde_json::Value> = project
            .routes
            .routes
            .iter()
            .zip(&rows)
            .map(|(r, row)| {
                serde_json::json!({
                    "method": row[0], "path": row[1], "action": row[2],
                    "middlewares": if row[3] == "-" { vec![] } else { row[3].split(',').collect::<Vec<_>>() },
                    "public": r.public, "resource_type": r.resource_type, "mount": r.mount(),
                    "source": r.location.to_string(),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _logs = fhirgate::telemetry::init_logs(args.log_format);
    JSON_LOGS.store(
        args.log_format == fhirgate::telemetry::LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    let base_url = match validate_base_url(&args.base_url) {
        Ok(u) => u,
        Err(msg) => {
            say("error", format!("fhirgate: {msg}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    // A project error is reported before anything is opened. Validation needs only the
    // keywords, which every registry of fhirgate's shares; the serving registry below adds the
    // store to run them on.
    let Some(project) = load(&args.config, &registry()) else {
        return Ok(ExitCode::FAILURE);
    };
    let tls = match fhirgate::tls::server_config(args.tls_cert.as_deref(), args.tls_key.as_deref())
    {
        Ok(tls) => tls,
        Err(msg) => {
            say("error", format!("fhirgate: {msg}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = runtime()?;
    runtime.block_on(async move {
        // the port first: a busy one stops startup before anything is written (a root secret
        // generated and printed by a run that then fails would be lost)
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                say("error", format!("fhirgate: cannot listen on {}: the address is in use (another fhirgate?); pick another with --listen or FHIRGATE_LISTEN", args.listen));
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => {
                say("error", format!("fhirgate: cannot listen on {}: {e}", args.listen));
                return Ok(ExitCode::FAILURE);
            }
        };
        let metrics_listener = match args.metrics_listen {
            None => None,
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    say("error", format!("fhirgate: cannot listen on {addr} (--metrics-listen): {e}"));
                    return Ok(ExitCode::FAILURE);
                }
            },
        };
        let open = fhirgate_store::OpenOptions {
            max_connections: args.db_max_connections,
            ..Default::default()
        };
        let Some(store) = open_store_or_report_with(&args.database_url, &open).await else {
            return Ok(ExitCode::FAILURE);
        };
        let options = fhirgate::server::ServeOptions {
            base_url: base_url.clone(),
            max_body: args.max_body,
            dev: args.dev,
            root_secret: std::env::var("FHIRGATE_ROOT_SECRET").ok().filter(|s| !s.is_empty()),
            seeds: args.seeds.clone(),
            demo: args.demo,
            audit_events: args.audit_events,
            login_failures_per_user: args.login_failures_per_user,
            login_failures_per_address: args.login_failures_per_address,
            brand_bundle_url: args.brand_bundle_url.clone(),
            export: fhirgate_smart::export::ExportSettings {
                concurrency: args.export_concurrency as usize,
                expiry_secs: i64::from(args.export_expiry),
                ..Default::default()
            },
            lifetimes: fhirgate_auth::server::Lifetimes {
                access: i64::from(args.access_token_lifetime),
                refresh: i64::from(args.refresh_token_lifetime),
                session: i64::from(args.session_lifetime),
            },
        };
        let prepared = match fhirgate::server::prepare(&project, store, &options).await {
            Ok(p) => p,
            Err(msg) => {
                say("error", format!("fhirgate: {msg}"));
                return Ok(ExitCode::FAILURE);
            }
        };
        if let fhirgate::admin::RootSecret::Generated(secret) = &prepared.root {
            if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                // never into a log pipeline: whoever needs root sets FHIRGATE_ROOT_SECRET
                say("warn", "fhirgate: generated a secret for the admin client `root` (stored hashed); JSON logs do not show it: set FHIRGATE_ROOT_SECRET to choose your own");
            } else {
                eprintln!("fhirgate: generated the secret of the admin client `root` (shown once, stored hashed):\n\n    {secret}\n\n  use it as HTTP Basic root:SECRET, or set FHIRGATE_ROOT_SECRET to choose your own");
            }
        }
        let app = prepared.app;
        // installed now, not when the task first runs: until then SIGHUP would end the process
        let hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::spawn(reload_on_sighup(
            hangups,
            prepared.reloader.clone(),
            args.config.clone(),
        ));
        if args.watch {
            tokio::spawn(fhirgate::reload::watch(
                prepared.reloader.clone(),
                args.config.clone(),
                project.root_dir.clone(),
                |outcome| report_reload(&outcome),
            ));
        }
        let local = listener.local_addr()?;
        tracing::info!(
            "fhirgate listening on {}://{local} ({} routes from {}; base URL {})",
            if tls.is_some() { "https" } else { "http" },
            project.routes.routes.len(),
            project.entry.display(),
            base_url
        );
        if let Some(why) = fhirgate::cli::base_url_mismatch(&base_url, local) {
            tracing::warn!("{why}");
        }
        if let Some(demo) = &prepared.demo {
            // over TLS the demo app goes through the base URL: its certificate names that host
            if tls.is_none() {
                demo.set_listen_addr(local);
            }
            let bases = fhirgate::server::fhir_bases(&project, &base_url);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", fhirgate::demo::banner(&base_url, &bases));
            let _ = out.flush();
        }
        if let Some(listener) = metrics_listener {
            let metrics = fhirgate::telemetry::routes(None)
                .into_make_service_with_connect_info::<std::net::SocketAddr>();
            tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, metrics).await {
                    tracing::error!("the metrics listener stopped: {e}");
                }
            });
        }
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        match tls {
            None => axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?,
            Some(config) => {
                // `tap_io` makes axum's `ConnectInfo<SocketAddr>` apply to this listener
                let listener = fhirgate::tls::TlsListener::new(listener, config)?.tap_io(|_| {});
                axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?
            }
        }
        tracing::info!("fhirgate stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Reload the project at each SIGHUP.
async fn reload_on_sighup(
    hangups: Option<tokio::signal::unix::Signal>,
    reloader: fhirgate::server::Reloader,
    config: std::path::PathBuf,
) {
    let Some(mut hup) = hangups else {
        tracing::warn!("cannot listen for SIGHUP: the project is not reloadable by signal");
        return;
    };
    while hup.recv().await.is_some() {
        report_reload(&reloader.reload(&config).await);
    }
}

fn report_reload(outcome: &Result<String, fhirgate::server::ReloadError>) {
    match outcome {
        Ok(done) => tracing::info!("{done}"),
        Err(why) => tracing::error!("reload refused; the previous project keeps serving:\n{why}"),
    }
}

fn load_files(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        let options = fhirgate_store::OpenOptions {
            cache_kib: Some(fhirgate_store::BULK_LOAD_CACHE_KIB),
            ..Default::default()
        };
        let Some(store) = open_store_or_report_with(&args.database_url, &options).await else {
            return Ok(ExitCode::FAILURE);
        };
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos} resources ({per_sec}) {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let options = fhirgate::load::Options {
            skip_invalid: args.skip_invalid,
        };
        let result =
            fhirgate::load::load_with(store.as_ref(), &args.files, options, |n| bar.inc(n as u64))
                .await;
        bar.finish_and_clear();
        match result {
            // something was skipped (--skip-invalid): the rest is loaded, but say so
            Ok(summary) if summary.skipped > 0 => {
                println!("{summary}");
                Ok(ExitCode::from(3))
            }
            Ok(summary) => {
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("fhirgate: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

fn export(args: fhirgate::cli::ExportArgs) -> anyhow::Result<ExitCode> {
    let base_url = match fhirgate::cli::validate_base_url(&args.base_url) {
        Ok(u) => u,
        Err(msg) => {
            eprintln!("fhirgate: {msg}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(project) = load(&args.config, &registry()) else {
        return Ok(ExitCode::FAILURE);
    };
    let runtime = runtime()?;
    runtime.block_on(async move {
        let Some(store) = open_store_or_report(&args.database_url).await else {
            return Ok(ExitCode::FAILURE);
        };
        let request = fhirgate::export::ExportRequest {
            client: args.client.clone(),
            group: args.group.clone(),
            patient_level: args.patients,
            params: args.params(),
            output: args.output.clone(),
        };
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let result = fhirgate::export::run(&project, store, &base_url, &request, |p| {
            bar.set_message(p.to_string())
        })
        .await;
        bar.finish_and_clear();
        match result {
            Ok(summary) => {
                for (path, t, n) in &summary.files {
                    println!("{}: {n} {t}", path.display());
                }
                for e in &summary.errors {
                    eprintln!("fhirgate: not exported: {e}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("fhirgate: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// [`open_store`], printing its explanation on failure.
async fn open_store_or_report(url: &str) -> Option<std::sync::Arc<dyn fhirgate_store::Store>> {
    open_store_or_report_with(url, &fhirgate_store::OpenOptions::default()).await
}

/// [`open_store_or_report`] with `options`.
async fn open_store_or_report_with(
    url: &str,
    options: &fhirgate_store::OpenOptions,
) -> Option<std::sync::Arc<dyn fhirgate_store::Store>> {
    open_store(url, options)
        .await
        .map_err(|msg| say("error", format!("fhirgate: {msg}")))
        .ok()
}

/// Open the store, with a one-line explanation of what to fix when it cannot be.
async fn open_store(
    url: &str,
    options: &fhirgate_store::OpenOptions,
) -> Result<std::sync::Arc<dyn fhirgate_store::Store>, String> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            return Err(format!(
                "cannot create the data directory {}: {e}; choose a writable place with --database-url sqlite:PATH",
                dir.display()
            ));
        }
    }
    fhirgate_store::open_with(url, options).await.map_err(|e| {
        if url.starts_with("postgres") {
            format!("cannot open the PostgreSQL database ({e}); is the server running and the URL in --database-url / FHIRGATE_DATABASE_URL right?")
        } else {
            format!("cannot open the database {url} ({e}); check that the path is writable, or choose another with --database-url")
        }
    })
}

/// Ctrl-C or SIGTERM: stop accepting, drain in-flight requests, exit 0. The SIGTERM handler is
/// installed by this call, not when the future is first polled: axum polls it from a task of
/// its own, which on a busy machine may first run after the first requests were answered, and a
/// SIGTERM before that killed the process (exit by signal 15) instead of stopping it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
}
