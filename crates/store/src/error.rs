//! Store errors, split so the HTTP layer can tell the client's fault (4xx) from ours (5xx).

/// What went wrong in a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such resource (or version) ever existed.
    #[error("{resource_type}/{id} not found")]
    NotFound { resource_type: String, id: String },
    /// The resource existed and was deleted (HTTP 410).
    #[error("{resource_type}/{id} was deleted")]
    Gone {
        resource_type: String,
        id: String,
        version_id: String,
    },
    /// A conditional update named a version that is not the current one (HTTP 409/412).
    #[error("version conflict on {resource_type}/{id}: expected version {expected}, current is {}", current.as_deref().unwrap_or("none"))]
    VersionConflict {
        resource_type: String,
        id: String,
        expected: String,
        current: Option<String>,
    },
    /// A create named an id that is already taken (HTTP 409).
    #[error("{resource_type}/{id} already exists")]
    AlreadyExists { resource_type: String, id: String },
    /// The request itself is wrong: bad resource, bad search parameter or value (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The database failed; not the client's fault (HTTP 5xx).
    #[error("database error: {0}")]
    Backend(String),
}

impl StoreError {
    /// The HTTP status this error maps to.
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::NotFound { .. } => 404,
            StoreError::Gone { .. } => 410,
            StoreError::VersionConflict { .. } => 412,
            StoreError::AlreadyExists { .. } => 409,
            StoreError::Invalid(_) => 400,
            StoreError::Backend(_) => 500,
        }
    }

    /// Whether the client caused it (a 4xx).
    pub fn is_client_error(&self) -> bool {
        self.http_status() < 500
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Backend(format!("migration failed: {e}"))
    }
}

/// Result of a store call.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
