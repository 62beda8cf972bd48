//! What the store tells the process's metrics (the `metrics` facade; `fhirgate serve` exposes
//! them at `/metrics`): how long each operation takes, and how many pool connections are busy.
//!
//! Every operation of [`crate::Store`] that reaches the database starts a [`Timed`]; its drop
//! records `fhirgate_store_operation_duration_seconds{backend, op}` (errors included), and its
//! start sets `fhirgate_store_pool_connections{backend, state="idle"|"in_use"}`.

use std::time::Instant;

use crate::Backend;

/// An operation being timed.
pub(crate) struct Timed {
    backend: &'static str,
    op: &'static str,
    start: Instant,
}

impl Timed {
    /// Start timing `op`, and report `pool`'s connections.
    pub(crate) fn start<DB: sqlx::Database>(
        backend: Backend,
        op: &'static str,
        pool: &sqlx::Pool<DB>,
    ) -> Timed {
        let backend = label(backend);
        let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
        metrics::gauge!("fhirgate_store_pool_connections", "backend" => backend, "state" => "idle")
            .set(idle);
        metrics::gauge!("fhirgate_store_pool_connections", "backend" => backend, "state" => "in_use")
            .set((size - idle).max(0.0));
        Timed {
            backend,
            op,
            start: Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!(
            "fhirgate_store_operation_duration_seconds",
            "backend" => self.backend,
            "op" => self.op
        )
        .record(self.start.elapsed().as_secs_f64());
    }
}

fn label(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}
