//! fhirgate as a library: the registry of built-in actions and middlewares, project loading, and
//! the axum app that `fhirgate serve` runs. The binary is a thin shell over this.

pub mod admin;
pub mod app;
pub mod brands;
pub mod cli;
pub mod demo;
pub mod export;
pub mod load;
pub mod log_writer;
pub mod policy_lint;
pub mod reload;
pub mod rpc;
pub mod seed;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use app::{Settings, build_app, load_project, registry, registry_with};
