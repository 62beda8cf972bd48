//! fhirgate's FHIR store: resources with versions and history, and FHIR search, over SQLite
//! (the embedded default) or PostgreSQL (several fhirgate processes on one database).
//!
//! Resources are `serde_json::Value`s stored as given plus `id` and `meta.versionId`/
//! `meta.lastUpdated`. Every write also rewrites the resource's search index rows in the same
//! transaction, so a search never sees a half-written resource.
//!
//! ```no_run
//! # async fn demo() -> fhirgate_store::Result<()> {
//! use fhirgate_store::{open, SearchQuery};
//! let store = open("sqlite:data/fhirgate.db").await?;
//! let p = store.create(serde_json::json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]})).await?;
//! let found = store.search(&SearchQuery::new("Patient").filter("family", None, &["chal"])).await?;
//! assert_eq!(found.matches.len(), 1);
//! # Ok(()) }
//! ```

mod auth_state;
mod backend;
mod checkpoint;
mod confinement;
mod date;
mod error;
mod export;
mod fhirpath;
mod index;
mod inline;
mod metered;
mod own_params;
mod refs;
mod search;
mod write;

use std::sync::Arc;

use serde_json::Value;

pub use auth_state::{AuthRecord, AuthState, Consumed, RevocationReceiver};
pub use backend::{PostgresStore, SqliteStore};
pub use confinement::Confinement;
pub use error::{Result, StoreError};
pub use export::{ExportJob, ExportJobs, JobStatus, JobUpdate, now_secs};
pub use index::{UnsupportedParam, unsupported_params};
pub use refs::enrich_references;
pub use search::{
    DEFAULT_COUNT, Filter, Include, MAX_COUNT, SearchQuery, SearchResult, SortKey, TotalMode,
};
pub use write::{PreparedBatch, Stored, check_upsert, prepare_upserts};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A deletion for [`Store::upsert_and_delete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub resource_type: String,
    pub id: String,
    /// Delete only if the live resource is at this version (`meta.versionId`).
    pub if_match: Option<String>,
}

/// One version of a resource, as `_history` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub version_id: String,
    pub last_updated: String,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// The resource as of this version; `None` for a deletion.
    pub resource: Option<Value>,
}

/// The current version of a resource as the store holds it: JSON text, not parsed, for answers
/// that send it on unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResource {
    /// `meta.versionId`.
    pub version_id: String,
    /// The resource, `id` and `meta` included, as JSON text.
    pub json: String,
}

impl RawResource {
    /// The resource as a value.
    pub fn parse(&self) -> Result<Value> {
        serde_json::from_str(&self.json)
            .map_err(|e| StoreError::Backend(format!("stored resource is not JSON: {e}")))
    }
}

/// One row of a keyset scan ([`Store::scan`]): the resource's storage key (increasing, the
/// position to continue after) and its current version as stored JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub key: i64,
    pub json: String,
}

/// A resource deleted in a time window ([`Store::scan_deleted`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedEntry {
    pub key: i64,
    pub id: String,
    /// When it was deleted (FHIR instant).
    pub last_updated: String,
    /// Its last live version, to judge whose it was (`None` if it never had one).
    pub last_live: Option<Value>,
}

/// The FHIR store. Object-safe so the server can hold an `Arc<dyn Store>` whatever the backend.
#[async_trait::async_trait]
pub trait Store: ExportJobs + Send + Sync {
    fn backend(&self) -> Backend;

    /// The authorization server's records, in this store's database (sharing its pool).
    fn auth_state(&self) -> Arc<dyn AuthState>;

    /// Whether the database answers (for `/health`).
    async fn ping(&self) -> Result<()>;

    /// Create a resource. Its `id` is kept when given (an existing live resource with that id
    /// is [`StoreError::AlreadyExists`]), else one is assigned.
    async fn create(&self, resource: Value) -> Result<Stored>;

    /// The current version; [`StoreError::Gone`] if deleted, [`StoreError::NotFound`] if it
    /// never existed.
    async fn read(&self, resource_type: &str, id: &str) -> Result<Value>;

    /// [`Store::read`], as the stored JSON text.
    async fn read_raw(&self, resource_type: &str, id: &str) -> Result<RawResource>;

    /// The live resource `id` of `resource_type` if it is in `patient_compartment`'s
    /// compartment (when given) and matches every one of `filters`: what [`Store::search`]
    /// finds for `_id=id` with that compartment and those filters (`id` taken literally, not
    /// as an escaped search value), as the stored JSON text. The primary key drives the query,
    /// and on SQLite it runs on the calling thread (a few microseconds from the page cache).
    async fn lookup(
        &self,
        resource_type: &str,
        id: &str,
        patient_compartment: Option<&str>,
        filters: &[Filter],
    ) -> Result<Option<RawResource>>;

    /// One version; a deletion version is [`StoreError::Gone`].
    async fn vread(&self, resource_type: &str, id: &str, version_id: &str) -> Result<Value>;

    /// Create or replace the resource named by its `resourceType` and `id`. With `if_match`,
    /// the current version must be that one ([`StoreError::VersionConflict`] otherwise).
    async fn update(&self, resource: Value, if_match: Option<&str>) -> Result<Stored>;

    /// Delete (a new, deleted version in the history). `None` if there was nothing to delete.
    async fn delete(&self, resource_type: &str, id: &str) -> Result<Option<Stored>>;

    /// Every version of one resource, newest first; [`StoreError::NotFound`] if it never existed.
    async fn history(&self, resource_type: &str, id: &str) -> Result<Vec<HistoryEntry>>;

    /// Create or replace all of `resources` in one transaction: all of them or none.
    async fn upsert_all(&self, resources: Vec<Value>) -> Result<Vec<Stored>>;

    /// [`Store::upsert_all`] of `resources` and the deletion of `deletes`, in one transaction:
    /// all of them or none. A deletion whose resource is not live does nothing; one with
    /// `if_match` whose resource is live at another version is [`StoreError::VersionConflict`]
    /// (and nothing is written). Returns what was written, deletions included (`resource` is
    /// `None` for them).
    async fn upsert_and_delete(
        &self,
        resources: Vec<Value>,
        deletes: Vec<Deletion>,
    ) -> Result<Vec<Stored>>;

    /// [`Store::upsert_all`] for a batch that [`prepare_upserts`] made ahead of time (bulk
    /// loads prepare the next batch while this one is written): one transaction, all or none.
    /// Returns the number of resources written; the stored resources are not returned.
    async fn write_prepared(&self, batch: PreparedBatch) -> Result<usize>;

    /// Run a FHIR search.
    async fn search(&self, query: &SearchQuery) -> Result<SearchResult>;

    /// The database's query plan for the page query of `query`, one line per plan step.
    async fn explain(&self, query: &SearchQuery) -> Result<String>;

    /// The folder an SQLite store's file is in (`None` for PostgreSQL and in-memory SQLite).
    fn data_dir(&self) -> Option<std::path::PathBuf>;

    /// A keyset scan of `query`'s matches (its filters and compartment; not its sort, count,
    /// offset or includes): at most `limit` matches whose key is above `after`, in key order.
    /// Start with `after = 0`, continue after the last key returned; no `OFFSET`, so each page
    /// costs the same however deep the scan is.
    async fn scan(&self, query: &SearchQuery, after: i64, limit: usize) -> Result<Vec<Scanned>>;

    /// Resources of `resource_type` deleted after `since` (and at or before `until`, FHIR
    /// instants) that are still deleted, in key order after `after`, at most `limit`.
    async fn scan_deleted(
        &self,
        resource_type: &str,
        since: &str,
        until: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeletedEntry>>;

    /// Refresh the query planner's statistics (`ANALYZE`); worth calling after a bulk load so
    /// that searches pick the selective index.
    async fn optimize(&self) -> Result<()>;
}

/// Open (creating and migrating as needed) the store a URL names: `sqlite:PATH` /
/// `sqlite://PATH` or `postgres://…` / `postgresql://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with(url, &OpenOptions::default()).await
}

/// How a store is opened.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The most connections the pool opens (default: 8 on SQLite — one writes at a time, the
    /// rest read — and 16 on PostgreSQL).
    pub max_connections: Option<u32>,
    /// SQLite: the page cache of each connection, in KiB (default [`SERVE_CACHE_KIB`]). The
    /// operating system caches the file too; a bulk load gains from more
    /// ([`BULK_LOAD_CACHE_KIB`]).
    pub cache_kib: Option<u32>,
}

/// SQLite's page cache per connection while serving: small, because each of the pool's, the
/// inline readers' and the inline writer's connections has one of its own and a server's
/// memory must not grow with its database (a lookup by id needs a handful of pages, which the
/// operating system's file cache serves when this one misses).
pub const SERVE_CACHE_KIB: u32 = 2048;

/// SQLite's page cache per connection for `fhirgate load`: a batch changes rows on many index
/// pages.
pub const BULK_LOAD_CACHE_KIB: u32 = 65536;

/// [`open`] with `options`.
pub async fn open_with(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open_with(url, options).await?))
    } else if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        // `sqlite:path?mode=rwc` style options are not used: the store sets its own.
        let path = path.split('?').next().unwrap_or(path);
        Ok(Arc::new(SqliteStore::open_with(path, options).await?))
    } else {
        Err(StoreError::Invalid(format!(
            "unsupported database URL {url:?}: expected sqlite:PATH or postgres://…"
        )))
    }
}
