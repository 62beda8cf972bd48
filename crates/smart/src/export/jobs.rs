//! The [`Exporter`]: the jobs of one process (worker pool, cancel flags) and the sweeper that
//! fails jobs whose process died and removes expired ones with their files.
//!
//! ```no_run
//! # async fn example(access: fhirgate_smart::confined::DataAccess) {
//! use fhirgate_smart::export::{ExportSettings, Exporter};
//!
//! let exporter = Exporter::new(access, ExportSettings::default());
//! exporter.start_sweeper(); // every minute; or sweep once by hand:
//! exporter.sweep(false).await.ok();
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirgate_store::{ExportJob, JobStatus, JobUpdate, now_secs};

use crate::authorize::Authorized;
use crate::confined::DataAccess;

use super::*;

/// Runs the jobs of one process: the kick-offs' worker pool, the cancel flags of the jobs it
/// runs, and the sweeper of stale and expired jobs.
pub struct Exporter {
    pub(super) access: DataAccess,
    pub(super) settings: ExportSettings,
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    /// This process, as the lease owner of the jobs it runs.
    pub(super) owner: String,
    /// Cancel flags of the jobs this process runs.
    pub(super) running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl Exporter {
    /// An exporter on `access`'s store. Call [`Exporter::start_sweeper`] once the runtime runs.
    pub fn new(access: DataAccess, settings: ExportSettings) -> Arc<Exporter> {
        Arc::new(Exporter {
            permits: Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1))),
            access,
            settings,
            owner: uuid::Uuid::new_v4().to_string(),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Every minute (and now): fail the jobs whose process died (stale heartbeat), and remove
    /// the expired ones with their files.
    pub fn start_sweeper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = Arc::downgrade(self);
        rt.spawn(async move {
            let mut first = true;
            loop {
                let Some(exporter) = this.upgrade() else {
                    return;
                };
                if let Err(e) = exporter.sweep(first).await {
                    tracing::warn!("export sweep: {e}");
                }
                first = false;
                drop(exporter);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }

    /// One sweep (see [`Exporter::start_sweeper`]). At `start` on SQLite, which one process
    /// uses, every unfinished job of another process is failed at once (its process is gone);
    /// otherwise a job is failed once its heartbeat is stale.
    pub async fn sweep(&self, start: bool) -> Result<(), fhirgate_store::StoreError> {
        let jobs = self.access.jobs();
        let now = now_secs();
        let mine: HashSet<String> = self
            .running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        for job in jobs
            .export_jobs_with(&[JobStatus::Queued, JobStatus::Running])
            .await?
        {
            let alive = job.heartbeat.unwrap_or(job.created);
            let gone = start
                && self.access.single_process()
                && job.lease_owner.as_deref() != Some(self.owner.as_str());
            if mine.contains(&job.id) || (!gone && now - alive < STALE_SECS) {
                continue;
            }
            // its process is gone: fail it with the reason (never a manifest of partial files)
            let failed = jobs
                .export_job_update(
                    &job.id,
                    &[JobStatus::Queued, JobStatus::Running],
                    &JobUpdate {
                        status: Some(JobStatus::Failed),
                        error: Some(
                            "the server process running this export stopped before it completed; start a new export".into(),
                        ),
                        expires: Some(now + self.settings.expiry_secs),
                        ..JobUpdate::default()
                    },
                )
                .await?;
            if failed {
                self.remove_files(&job.id).await;
            }
        }
        for job in jobs
            .export_jobs_with(&[
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled,
            ])
            .await?
        {
            if job.expires.is_some_and(|e| e <= now) {
                self.remove_files(&job.id).await;
                jobs.export_job_delete(&job.id).await?;
            }
        }
        Ok(())
    }

    /// `job` as it stands, after failing it if it is queued or running in no live process
    /// (its heartbeat is stale and this process does not run it).
    pub(super) async fn orphaned(
        &self,
        job: ExportJob,
    ) -> Result<ExportJob, fhirgate_store::StoreError> {
        let active = matches!(job.status, JobStatus::Queued | JobStatus::Running);
        let mine = self
            .running
            .lock()
            .map(|r| r.contains_key(&job.id))
            .unwrap_or(true);
        let alive = job.heartbeat.unwrap_or(job.created);
        if !active || mine || now_secs() - alive < STALE_SECS {
            return Ok(job);
        }
        self.sweep(false).await?;
        Ok(self.access.jobs().export_job(&job.id).await?.unwrap_or(job))
    }

    pub(super) fn dir(&self) -> Option<PathBuf> {
        self.access.data_dir().map(|d| d.join("exports"))
    }

    pub(super) async fn remove_files(&self, job: &str) {
        if let Some(dir) = self.dir() {
            let _ = tokio::fs::remove_dir_all(dir.join(job)).await;
        }
        // stored chunks go with the job row (export_job_delete), or now for a cancelled one
        if let Err(e) = self.access.jobs().export_output_delete(job).await {
            tracing::warn!("export {job}: removing stored output: {e}");
        }
    }
}

/// The User a job belongs to: the token's subject, unless the token is a backend service's.
pub(super) fn owner_user(auth: &Authorized) -> Option<String> {
    let p = auth.principal();
    (!p.is_service()).then(|| p.subject.clone())
}
