//! What the store tells the process's metrics (the `metrics` facade; `fhirgate serve` exposes
//! them at `/metrics`): how long each operation takes, and how many pool connections are busy.
//!
//! Every operation of [`crate::Store`] that reaches the database starts a [`Timed`]; its drop
//! records `fhirgate_store_operation_duration_seconds{backend, op}` (errors included), and its
//! start sets `fhirgate_store_pool_connections{backend, state="idle"|"in_use"}`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use crate::Backend;

/// An operation being timed.
pub(crate) struct Timed {
    time: metrics::Histogram,
    start: Instant,
}

impl Timed {
    /// Start timing `op`, and report `pool`'s connections.
    pub(crate) fn start<DB: sqlx::Database>(
        backend: Backend,
        op: &'static str,
        pool: &sqlx::Pool<DB>,
    ) -> Timed {
        let m = handles(label(backend), op);
        let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
        m.idle.set(idle);
        m.in_use.set((size - idle).max(0.0));
        Timed {
            time: m.time.clone(),
            start: Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.time.record(self.start.elapsed().as_secs_f64());
    }
}

/// The metrics of one (backend, operation).
struct Handles {
    time: metrics::Histogram,
    idle: metrics::Gauge,
    in_use: metrics::Gauge,
}

/// Made once per (backend, operation): building a metric's key for every operation would cost
/// more than recording into it.
fn handles(backend: &'static str, op: &'static str) -> Arc<Handles> {
    type Cache = RwLock<HashMap<(&'static str, &'static str), Arc<Handles>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache
        .read()
        .ok()
        .and_then(|m| m.get(&(backend, op)).cloned())
    {
        return found;
    }
    let made = Arc::new(Handles {
        time: metrics::histogram!(
            "fhirgate_store_operation_duration_seconds",
            "backend" => backend,
            "op" => op
        ),
        idle: metrics::gauge!("fhirgate_store_pool_connections", "backend" => backend, "state" => "idle"),
        in_use: metrics::gauge!("fhirgate_store_pool_connections", "backend" => backend, "state" => "in_use"),
    });
    if let Ok(mut m) = cache.write() {
        m.insert((backend, op), made.clone());
    }
    made
}

fn label(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}
