//! The id of the request being answered, for the answers and logs that should name it.
//!
//! fhirgate's request-id middleware runs each request inside [`scope`]; anything answering it
//! on that task reads the id with [`current`] — [`crate::outcome`] puts it in every
//! OperationOutcome's `id`, so that an error a client reports can be found in the server's logs.
//!
//! ```
//! # tokio_test_block_on(async {
//! use fhirgate_router::request_id;
//! assert_eq!(request_id::current(), None);
//! let seen = request_id::scope("abc-123".into(), async { request_id::current() }).await;
//! assert_eq!(seen.as_deref(), Some("abc-123"));
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// Run `fut` as the request `id`.
pub async fn scope<F: Future>(id: Arc<str>, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// The id of the request this task answers, if it runs inside [`scope`].
pub fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}
