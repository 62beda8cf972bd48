//! Bulk Data `$export` job state (issue 13), on both backends: the jobs, and the output files
//! kept in the database (PostgreSQL always; SQLite only when it has no data folder, since there
//! they are files under `<data>/exports`).
//!
//! A job belongs to the FHIR base, client and user that started it; status changes are
//! conditional on the current status (`from`), so a cancelled job is never marked completed
//! by the worker that was still running it.

use serde_json::Value;

use crate::error::{Result, StoreError};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<JobStatus> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => {
                return Err(StoreError::Backend(format!(
                    "unknown export job status {other:?}"
                )));
            }
        })
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One export job.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportJob {
    pub id: String,
    /// The FHIR base URL of the kick-off.
    pub base: String,
    pub client: String,
    /// The token's User (`None` for a backend service).
    pub user: Option<String>,
    /// The kick-off request URL.
    pub request: String,
    /// The validated parameters, as the worker reads them.
    pub params: Value,
    pub status: JobStatus,
    pub progress: Option<String>,
    /// FHIR instant.
    pub transaction_time: String,
    pub error: Option<String>,
    pub manifest: Option<Value>,
    pub lease_owner: Option<String>,
    pub heartbeat: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub expires: Option<i64>,
}

/// A change of a job's state ([`ExportJobs::export_job_update`]); `None` fields stay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    pub status: Option<JobStatus>,
    pub progress: Option<String>,
    pub error: Option<String>,
    pub manifest: Option<Value>,
    pub lease_owner: Option<String>,
    pub heartbeat: Option<i64>,
    pub expires: Option<i64>,
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The export job records.
#[async_trait::async_trait]
pub trait ExportJobs: Send + Sync {
    async fn export_job_create(&self, job: &ExportJob) -> Result<()>;

    async fn export_job(&self, id: &str) -> Result<Option<ExportJob>>;

    /// Apply `update` if the job's status is one of `from`; whether it was applied.
    async fn export_job_update(
        &self,
        id: &str,
        from: &[JobStatus],
        update: &JobUpdate,
    ) -> Result<bool>;

    /// Jobs with one of `statuses`, oldest first.
    async fn export_jobs_with(&self, statuses: &[JobStatus]) -> Result<Vec<ExportJob>>;

    /// Remove a job and its stored output.
    async fn export_job_delete(&self, id: &str) -> Result<()>;

    /// Remove a job's stored output (the job stays).
    async fn export_output_delete(&self, job: &str) -> Result<()>;

    /// Append one chunk (whole NDJSON lines) to a stored output file.
    async fn export_output_append(&self, job: &str, file: &str, seq: i64, data: &str)
    -> Result<()>;

    /// The chunks of a stored output file after `after_seq`, at most `limit`, in order:
    /// `(seq, data)`. Empty when the file has no more (or does not exist).
    async fn export_output_chunks(
        &self,
        job: &str,
        file: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>>;
}

macro_rules! export_jobs_impl {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl ExportJobs for crate::backend::$store {
            async fn export_job_create(&self, job: &ExportJob) -> Result<()> {
                sqlx::query::<$db>(
                    "INSERT INTO export_job (id, base, client, user_id, request, params, status, progress, \
                     transaction_time, error, manifest, lease_owner, heartbeat, created, updated, expires) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                )
                .bind(&job.id)
                .bind(&job.base)
                .bind(&job.client)
                .bind(&job.user)
                .bind(&job.request)
                .bind(job.params.to_string())
                .bind(job.status.as_str())
                .bind(&job.progress)
                .bind(&job.transaction_time)
                .bind(&job.error)
                .bind(job.manifest.as_ref().map(Value::to_string))
                .bind(&job.lease_owner)
                .bind(job.heartbeat)
                .bind(job.created)
                .bind(job.updated)
                .bind(job.expires)
                .execute(self.pool())
                .await?;
                Ok(())
            }

            async fn export_job(&self, id: &str) -> Result<Option<ExportJob>> {
                let row = sqlx::query::<$db>(sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM export_job WHERE id = $1")))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?;
                row.map(|r| job_from_row!(r)).transpose()
            }

            async fn export_job_update(&self, id: &str, from: &[JobStatus], u: &JobUpdate) -> Result<bool> {
                if from.is_empty() {
                    return Ok(false);
                }
                let from_list: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 10)).collect();
                let sql = format!(
                    "UPDATE export_job SET status = COALESCE($2, status), progress = COALESCE($3, progress), \
                     error = COALESCE($4, error), manifest = COALESCE($5, manifest), \
                     lease_owner = COALESCE($6, lease_owner), heartbeat = COALESCE($7, heartbeat), \
                     expires = COALESCE($8, expires), updated = $9 \
                     WHERE id = $1 AND status IN ({})",
                    from_list.join(", ")
                );
                let mut q = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .bind(u.status.map(JobStatus::as_str))
                    .bind(u.progress.clone())
                    .bind(u.error.clone())
                    .bind(u.manifest.as_ref().map(Value::to_string))
                    .bind(u.lease_owner.clone())
                    .bind(u.heartbeat)
                    .bind(u.expires)
                    .bind(now_secs());
                for s in from {
                    q = q.bind(s.as_str());
                }
                Ok(q.execute(self.pool()).await?.rows_affected() > 0)
            }

            async fn export_jobs_with(&self, statuses: &[JobStatus]) -> Result<Vec<ExportJob>> {
                if statuses.is_empty() {
                    return Ok(Vec::new());
                }
                let list: Vec<String> = (0..statuses.len()).map(|i| format!("${}", i + 1)).collect();
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM export_job WHERE status IN ({}) ORDER BY created, id",
                    list.join(", ")
                );
                let mut q = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql));
                for s in statuses {
                    q = q.bind(s.as_str());
                }
                q.fetch_all(self.pool()).await?.into_iter().map(|r| job_from_row!(r)).collect()
            }

            async fn export_job_delete(&self, id: &str) -> Result<()> {
                let mut tx = self.pool().begin().await?;
                sqlx::query::<$db>("DELETE FROM export_output WHERE job = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query::<$db>("DELETE FROM export_job WHERE id = $1").bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn export_output_delete(&self, job: &str) -> Result<()> {
                sqlx::query::<$db>("DELETE FROM export_output WHERE job = $1").bind(job).execute(self.pool()).await?;
                Ok(())
            }

            async fn export_output_append(&self, job: &str, file: &str, seq: i64, data: &str) -> Result<()> {
                sqlx::query::<$db>("INSERT INTO export_output (job, file, seq, data) VALUES ($1, $2, $3, $4)")
                    .bind(job)
                    .bind(file)
                    .bind(seq)
                    .bind(data)
                    .execute(self.pool())
                    .await?;
                Ok(())
            }

            async fn export_output_chunks(&self, job: &str, file: &str, after_seq: i64, limit: i64) -> Result<Vec<(i64, String)>> {
                let rows = sqlx::query::<$db>(
                    "SELECT seq, data FROM export_output WHERE job = $1 AND file = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                )
                .bind(job)
                .bind(file)
                .bind(after_seq)
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
                rows.into_iter()
                    .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
                    .collect()
            }
        }
    };
}

const JOB_COLUMNS: &str = "id, base, client, user_id, request, params, status, progress, transaction_time, \
     error, manifest, lease_owner, heartbeat, created, updated, expires";

macro_rules! job_from_row {
    ($r:expr) => {{
        let r = $r;
        let json = |s: String| -> Result<Value> {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Backend(format!("stored export job JSON: {e}")))
        };
        Ok::<ExportJob, StoreError>(ExportJob {
            id: r.try_get(0)?,
            base: r.try_get(1)?,
            client: r.try_get(2)?,
            user: r.try_get(3)?,
            request: r.try_get(4)?,
            params: json(r.try_get(5)?)?,
            status: JobStatus::parse(&r.try_get::<String, _>(6)?)?,
            progress: r.try_get(7)?,
            transaction_time: r.try_get(8)?,
            error: r.try_get(9)?,
            manifest: r.try_get::<Option<String>, _>(10)?.map(json).transpose()?,
            lease_owner: r.try_get(11)?,
            heartbeat: r.try_get(12)?,
            created: r.try_get(13)?,
            updated: r.try_get(14)?,
            expires: r.try_get(15)?,
        })
    }};
}

use sqlx::Row;

export_jobs_impl!(SqliteStore, sqlx::Sqlite);
export_jobs_impl!(PostgresStore, sqlx::Postgres);
