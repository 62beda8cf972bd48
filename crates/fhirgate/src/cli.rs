//! The command line (contract §1). Every flag also reads an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fhirgate",
    version,
    about = "SMART on FHIR gateway: Aidbox-style EDN projects as an authorization-enforcing FHIR API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the EDN project and serve HTTP.
    Serve(ServeArgs),
    /// Load and validate the EDN project; print each problem as FILE:LINE:COL: error: MESSAGE.
    Check(ProjectArgs),
    /// Print the route table: method, path, action, middlewares, public.
    Routes(RoutesArgs),
    /// Bulk-load resources (JSON, NDJSON, YAML, FHIR Bundles) into the store.
    Load(LoadArgs),
    /// Bulk Data export to local NDJSON files, as a Client's backend-services access allows.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The Client whose access applies: the system/ scopes its `scope` lists, and the
    /// AccessPolicies linked to it, exactly as for its client_credentials tokens.
    #[arg(long, value_name = "CLIENT_ID")]
    pub client: String,
    /// Export this Group's members' records (`Group/{id}/$export`).
    #[arg(long, value_name = "ID", conflicts_with = "patients")]
    pub group: Option<String>,
    /// Export every patient's records (`Patient/$export`); default: the whole system.
    #[arg(long)]
    pub patients: bool,
    /// `_type`: resource types, comma-separated.
    #[arg(long = "type", value_name = "TYPES")]
    pub types: Option<String>,
    /// `_since`: a FHIR instant.
    #[arg(long, value_name = "INSTANT")]
    pub since: Option<String>,
    /// `_until`: a FHIR instant.
    #[arg(long, value_name = "INSTANT")]
    pub until: Option<String>,
    /// `_typeFilter`: `Type?search` (repeatable).
    #[arg(long = "type-filter", value_name = "FILTER")]
    pub type_filters: Vec<String>,
    /// `_elements`, comma-separated.
    #[arg(long, value_name = "ELEMENTS")]
    pub elements: Option<String>,
    /// Where the NDJSON files go (created if needed).
    #[arg(long, short, value_name = "DIR", default_value = "export")]
    pub output: PathBuf,
    /// The project's entry file.
    #[arg(long = "config", env = "FHIRGATE_CONFIG", default_value = "core.edn")]
    pub config: PathBuf,
    /// The database: `sqlite:PATH` (the embedded default) or `postgres://…`.
    #[arg(
        long,
        env = "FHIRGATE_DATABASE_URL",
        default_value = "sqlite:data/fhirgate.db"
    )]
    pub database_url: String,
    /// The public base URL (the tokens' issuer, and the manifest's URLs).
    #[arg(
        long,
        env = "FHIRGATE_BASE_URL",
        default_value = "http://localhost:8080"
    )]
    pub base_url: String,
}

impl ExportArgs {
    /// The kick-off's parameters.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                p.push((k.to_string(), v.clone()));
            }
        };
        add("_type", &self.types);
        add("_since", &self.since);
        add("_until", &self.until);
        add("_elements", &self.elements);
        for f in &self.type_filters {
            p.push(("_typeFilter".to_string(), f.clone()));
        }
        p
    }
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Files to load.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The database: `sqlite:PATH` (the embedded default) or `postgres://…`.
    #[arg(
        long,
        env = "FHIRGATE_DATABASE_URL",
        default_value = "sqlite:data/fhirgate.db"
    )]
    pub database_url: String,
    /// Skip invalid NDJSON lines and resources (bad JSON, no resourceType, a bad id, …) and
    /// files that do not read, load the rest, and report what was skipped (FILE:LINE: reason);
    /// the exit status is then 3. Without it, a file with an invalid line loads nothing.
    #[arg(long, env = "FHIRGATE_LOAD_SKIP_INVALID")]
    pub skip_invalid: bool,
}

#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// The project's entry file (default: --config, then core.edn).
    pub file: Option<PathBuf>,
    /// The project's entry file.
    #[arg(long = "config", env = "FHIRGATE_CONFIG", default_value = "core.edn")]
    pub config: PathBuf,
}

impl ProjectArgs {
    pub fn path(&self) -> &PathBuf {
        self.file.as_ref().unwrap_or(&self.config)
    }
}

#[derive(Debug, Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print JSON (one array of route objects) for tools.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The project's entry file.
    #[arg(long = "config", env = "FHIRGATE_CONFIG", default_value = "core.edn")]
    pub config: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "FHIRGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The public base URL (the OIDC issuer, exactly; no trailing slash).
    #[arg(
        long,
        env = "FHIRGATE_BASE_URL",
        default_value = "http://localhost:8080"
    )]
    pub base_url: String,
    /// The database: `sqlite:PATH` (the embedded default) or `postgres://…`.
    #[arg(
        long,
        env = "FHIRGATE_DATABASE_URL",
        default_value = "sqlite:data/fhirgate.db"
    )]
    pub database_url: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "FHIRGATE_MAX_BODY", default_value_t = 16 * 1024 * 1024)]
    pub max_body: usize,
    /// Development mode: enables debug explanations such as `x-debug: policy`.
    #[arg(long, env = "FHIRGATE_DEV")]
    pub dev: bool,
    /// Resources to upsert at start (JSON, NDJSON, YAML, FHIR Bundle or EDN; every resource
    /// needs an id). Repeatable; comma-separated in FHIRGATE_SEED.
    #[arg(
        long = "seed",
        env = "FHIRGATE_SEED",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub seeds: Vec<PathBuf>,
    /// Demo mode: seed a synthetic US Core data set with demo users and clients, serve the demo
    /// app at /demo, and print how to try a launch. Never with real data.
    #[arg(long, env = "FHIRGATE_DEMO")]
    pub demo: bool,
    /// Also store every data access decision as a FHIR AuditEvent resource (the
    /// `fhirgate::audit` log has them always).
    #[arg(long, env = "FHIRGATE_AUDIT_EVENTS")]
    pub audit_events: bool,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "FHIRGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, env = "FHIRGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Failed sign-ins allowed per user and client address per minute, and failed client
    /// authentications (token endpoint, admin Basic auth) per client id and address. Correct
    /// passwords and secrets never count.
    #[arg(
        long,
        env = "FHIRGATE_LOGIN_FAILURES_PER_USER",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub login_failures_per_user: u32,
    /// Failed sign-ins allowed per client address per minute (failed client authentications
    /// are counted apart, with the same limit).
    #[arg(
        long,
        env = "FHIRGATE_LOGIN_FAILURES_PER_ADDRESS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub login_failures_per_address: u32,
    /// Where apps find the user-access Brand Bundle (`user_access_brand_bundle` in SMART
    /// discovery), when it is published elsewhere than fhirgate's own `{base}/brands.json`
    /// (e.g. a CDN copy of it).
    #[arg(long, env = "FHIRGATE_BRAND_BUNDLE_URL", value_name = "URL")]
    pub brand_bundle_url: Option<String>,
    /// Bulk Data exports running at once in this process; more wait their turn (docs/bulk.md).
    #[arg(
        long,
        env = "FHIRGATE_EXPORT_CONCURRENCY",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub export_concurrency: u32,
    /// Seconds a finished Bulk Data export's manifest and files stay available.
    #[arg(
        long,
        env = "FHIRGATE_EXPORT_EXPIRY",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u32).range(60..)
    )]
    pub export_expiry: u32,
    /// How log lines on stderr are written: `text`, or `json` (one object per line, with the
    /// request's `request_id`) for a log pipeline. `RUST_LOG` filters them.
    #[arg(long, env = "FHIRGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    /// Also serve `GET /metrics` (Prometheus text) on this address, without authentication:
    /// keep it internal. On the main address `/metrics` needs admin authentication.
    #[arg(long, env = "FHIRGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Access token lifetime in seconds for Clients that set none
    /// (`auth.*.access_token_expiration`); at most 7 days.
    #[arg(
        long,
        env = "FHIRGATE_ACCESS_TOKEN_LIFETIME",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u32).range(60..=604_800)
    )]
    pub access_token_lifetime: u32,
    /// Refresh token lifetime in seconds for Clients that set none
    /// (`auth.authorization_code.refresh_token_expiration`); 92 days by default.
    #[arg(
        long,
        env = "FHIRGATE_REFRESH_TOKEN_LIFETIME",
        default_value_t = 92 * 24 * 3600,
        value_parser = clap::value_parser!(u32).range(60..)
    )]
    pub refresh_token_lifetime: u32,
    /// How long a sign-in at the authorization server lasts, in seconds.
    #[arg(
        long,
        env = "FHIRGATE_SESSION_LIFETIME",
        default_value_t = 8 * 3600,
        value_parser = clap::value_parser!(u32).range(60..)
    )]
    pub session_lifetime: u32,
    /// The most database connections the pool opens (default: 8 on SQLite, 16 on PostgreSQL).
    #[arg(
        long,
        env = "FHIRGATE_DB_MAX_CONNECTIONS",
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub db_max_connections: Option<u32>,
    /// Reload the project when one of its files changes (development; SIGHUP reloads it
    /// always). A project with errors is reported and the old one keeps serving.
    #[arg(long, env = "FHIRGATE_WATCH")]
    pub watch: bool,
}

/// Check a base URL: absolute http(s), a host, no trailing slash, no query or fragment.
pub fn validate_base_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|_| {
        format!("FHIRGATE_BASE_URL {url:?} is not a URL; use e.g. http://localhost:8080")
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "FHIRGATE_BASE_URL {url:?} must start with http:// or https://"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("FHIRGATE_BASE_URL {url:?} has no host"));
    }
    if url.ends_with('/') {
        return Err(format!(
            "FHIRGATE_BASE_URL {url:?} must not end with '/': use {:?}",
            url.trim_end_matches('/')
        ));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!(
            "FHIRGATE_BASE_URL {url:?} must not have a query or fragment"
        ));
    }
    Ok(url.to_string())
}

/// When the base URL names this machine (`localhost`, a loopback address) but another port than
/// the one the server listens on, the links it prints and the redirects it sends lead nowhere:
/// say what to set instead.
pub fn base_url_mismatch(base_url: &str, listening: SocketAddr) -> Option<String> {
    let uri: http::Uri = base_url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    (local && port != listening.port()).then(|| {
        format!(
            "the base URL {base_url} points at port {port} of this machine, but fhirgate listens on {listening}: \
             links and OAuth redirects will miss it; set --base-url {}://localhost:{} (FHIRGATE_BASE_URL)",
            uri.scheme_str().unwrap_or("http"),
            listening.port()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert!(validate_base_url("http://localhost:8080").is_ok());
        assert!(validate_base_url("https://ehr.example.org/fhirgate").is_ok());
        assert!(
            validate_base_url("http://localhost:8080/")
                .unwrap_err()
                .contains("must not end with '/'")
        );
        assert!(validate_base_url("localhost:8080").is_err());
        assert!(
            validate_base_url("ftp://x")
                .unwrap_err()
                .contains("http://")
        );
        assert!(validate_base_url("http://x/?a=1").is_err());
        assert!(validate_base_url("not a url").is_err());
    }

    #[test]
    fn login_failure_limits_default_to_10_and_60_and_refuse_0() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["fhirgate", "serve"];
            argv.extend(args);
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Serve(s) => (s.login_failures_per_user, s.login_failures_per_address),
                _ => unreachable!(),
            })
        };
        assert_eq!(serve(&[]).unwrap(), (10, 60));
        assert_eq!(
            serve(&[
                "--login-failures-per-user",
                "3",
                "--login-failures-per-address",
                "30"
            ])
            .unwrap(),
            (3, 30)
        );
        assert!(serve(&["--login-failures-per-user", "0"]).is_err());
    }

    #[test]
    fn lifetimes_default_to_an_hour_92_days_and_8_hours_and_are_bounded() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["fhirgate", "serve"];
            argv.extend(args);
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Serve(s) => (
                    s.access_token_lifetime,
                    s.refresh_token_lifetime,
                    s.session_lifetime,
                ),
                _ => unreachable!(),
            })
        };
        assert_eq!(serve(&[]).unwrap(), (3600, 92 * 24 * 3600, 8 * 3600));
        let defaults = fhirgate_auth::server::Lifetimes::default();
        assert_eq!(
            serve(&[]).unwrap(),
            (
                defaults.access as u32,
                defaults.refresh as u32,
                defaults.session as u32
            ),
            "the flags' defaults are the library's"
        );
        assert_eq!(
            serve(&["--access-token-lifetime", "604800"]).unwrap().0,
            604_800
        );
        // an access token never outlives a week; nothing lives under a minute
        assert!(serve(&["--access-token-lifetime", "604801"]).is_err());
        assert!(serve(&["--session-lifetime", "59"]).is_err());
        assert!(serve(&["--refresh-token-lifetime", "0"]).is_err());
    }

    #[test]
    fn the_pool_size_is_the_backends_default_unless_given_and_is_bounded() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["fhirgate", "serve"];
            argv.extend(args);
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Serve(s) => s.db_max_connections,
                _ => unreachable!(),
            })
        };
        assert_eq!(serve(&[]).unwrap(), None);
        assert_eq!(serve(&["--db-max-connections", "4"]).unwrap(), Some(4));
        assert!(serve(&["--db-max-connections", "0"]).is_err());
        assert!(serve(&["--db-max-connections", "1025"]).is_err());
    }

    #[test]
    fn a_local_base_url_on_another_port_is_noticed() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(base_url_mismatch("http://localhost:8080", at("127.0.0.1:8080")).is_none());
        assert!(base_url_mismatch("http://127.0.0.1:9000", at("127.0.0.1:9000")).is_none());
        let w = base_url_mismatch("http://localhost:8080", at("127.0.0.1:9000")).unwrap();
        assert!(w.contains("--base-url http://localhost:9000"), "{w}");
        // a public name may well sit behind a proxy on another port
        assert!(base_url_mismatch("https://ehr.example.org", at("0.0.0.0:8080")).is_none());
    }
}
