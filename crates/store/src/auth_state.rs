//! The authorization server's own records: codes, sessions, pending authorization requests,
//! grants, refresh tokens, launch values, used assertion `jti`s, signing keys and revocations.
//!
//! They are small, short-lived and security-sensitive, so they live in one table of their own
//! (`auth_state`), not among FHIR resources: no history, no search index, and the operations the
//! OAuth flows need done atomically in SQL — "insert unless a live one exists" (a `jti` used
//! twice), "consume once" (a code redeemed twice), "list a user's grants". Because they are in the
//! database, two fhirgate processes on one PostgreSQL behave as one server (decisions §16): a code
//! issued by one is redeemed at the other. Revocations are also *published*: every subscriber in
//! every process on the database hears them (PostgreSQL `LISTEN/NOTIFY`; SQLite, which serves one
//! process, an in-process channel).
//!
//! Keys are opaque to the store: callers hash secrets (codes, refresh tokens, cookies) before they
//! use them as keys, so a database dump holds no usable credential. Times are Unix seconds.

use serde_json::Value;

use crate::error::Result;

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRecord {
    /// What it is: `code`, `session`, `grant`, `refresh`, `launch`, `jti`, `key`, … (the
    /// caller's vocabulary; the store only keeps kinds apart).
    pub kind: String,
    /// Unique within `kind`.
    pub key: String,
    /// Whom it belongs to (a User id for grants and sessions), for [`AuthState::list_by_owner`].
    pub owner: Option<String>,
    pub value: Value,
    /// Unix seconds after which the record no longer exists for any call.
    pub expires_at: i64,
    /// Set by [`AuthState::consume`].
    pub consumed: bool,
    /// Unix seconds when it was inserted.
    pub created_at: i64,
}

/// What [`AuthState::consume`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Consumed {
    /// This call consumed it: the record as it was.
    First(AuthRecord),
    /// It had already been consumed (a replay): the record, so the caller can undo what the
    /// first use issued.
    Again(AuthRecord),
    /// No live record (never existed, removed or expired).
    Missing,
}

/// Revocation events are strings such as `grant:ID` or `jti:ID` (the caller's vocabulary).
pub type RevocationReceiver = tokio::sync::broadcast::Receiver<String>;

/// Atomic storage for the authorization server. Object-safe, like [`crate::Store`]; every
/// method takes effect (is committed) before it returns.
#[async_trait::async_trait]
pub trait AuthState: Send + Sync {
    /// Insert a record. A *live* record with the same kind and key →
    /// [`crate::StoreError::AlreadyExists`] (so `insert` doubles as "use once": a `jti`); an
    /// expired one is replaced.
    async fn insert(
        &self,
        kind: &str,
        key: &str,
        owner: Option<&str>,
        value: &Value,
        expires_at: i64,
    ) -> Result<()>;

    /// The live record (consumed or not), if any.
    async fn get(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>>;

    /// Mark a live record consumed, atomically: of any number of concurrent callers, in any
    /// number of processes, exactly one gets [`Consumed::First`].
    async fn consume(&self, kind: &str, key: &str) -> Result<Consumed>;

    /// Replace the value and expiry of a live record; `false` when there is none.
    async fn replace(&self, kind: &str, key: &str, value: &Value, expires_at: i64) -> Result<bool>;

    /// Remove a record; `false` when there was none.
    async fn remove(&self, kind: &str, key: &str) -> Result<bool>;

    /// Every live record of `kind` owned by `owner`, newest first.
    async fn list_by_owner(&self, kind: &str, owner: &str) -> Result<Vec<AuthRecord>>;

    /// Every live record of `kind` (signing keys; revocations at start-up), oldest first.
    async fn list(&self, kind: &str) -> Result<Vec<AuthRecord>>;

    /// Delete every record that expired before `now`; how many went.
    async fn purge_expired(&self, now: i64) -> Result<u64>;

    /// Tell every subscriber, in this process and every other process on the same database,
    /// about a revocation. Returns once the notification is committed.
    async fn publish(&self, event: &str) -> Result<()>;

    /// Hear published revocations. When the channel reports `Lagged` or the database connection
    /// was lost and re-established, the subscriber must reload what it caches from the records
    /// (events sent meanwhile may be missing); a lost PostgreSQL connection is reported to the
    /// receiver as the event `"*"`.
    async fn subscribe(&self) -> Result<RevocationReceiver>;
}
