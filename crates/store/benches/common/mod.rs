//! What the store's benches share: a two-thread runtime and a SQLite store in a temporary
//! directory.

use std::sync::Arc;

use fhirgate_store::{Store, open};

/// The runtime the benches run their futures on (two workers, as this machine's cores).
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

/// A SQLite store in a fresh temporary directory, which lives as long as the returned guard.
pub fn sqlite_store(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
    let store = rt.block_on(async { open(&url).await.unwrap_or_else(|e| panic!("open: {e}")) });
    (dir, store)
}
