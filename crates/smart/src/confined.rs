//! The store as the SMART data actions see it: through the request's access decision.
//!
//! [`DataAccess`] holds the raw [`Store`] privately; the only way the data actions reach data is
//! [`DataAccess::confined`], which takes the request's [`Authorized`] — what the middleware's
//! [`crate::enforce::decide`] established — and gives a [`ConfinedStore`] that applies its
//! patient compartment and granular filters to every read, vread, history and search. The
//! unconfined form exists only where that decision left the compartment open (a `system/` or
//! provider grant, or a type outside the Patient compartment), so a new data action cannot
//! "forget" confinement: it has no store to forget it with.
//!
//! ```
//! # async fn demo(access: &fhirgate_smart::confined::DataAccess, auth: &fhirgate_smart::authorize::Authorized) {
//! let store = access.confined(auth);
//! // outside the compartment or the granular scopes: the same as a resource that does not exist
//! let read = store.read("Observation", "obs-1").await;
//! # let _ = read;
//! # }
//! ```

use std::sync::Arc;

use fhirgate_config::Route;
use fhirgate_store::{
    Confinement, DeletedEntry, Filter, HistoryEntry, RawResource, Scanned, SearchQuery,
    SearchResult, Store, StoreError,
};
use serde_json::Value;

use crate::authorize::Authorized;

/// What the data actions need: the store (private: reached only through [`Self::confined`]),
/// the public base URL for `fullUrl`s and links, the AccessPolicy check and the audit sink.
#[derive(Clone)]
pub struct DataAccess {
    store: Arc<dyn Store>,
    pub base_url: Arc<str>,
    /// The AccessPolicy check every data request passes (decisions §10); `None` only for an
    /// embedding that does not use AccessPolicies.
    pub access: Option<Arc<crate::access::AccessControl>>,
    /// AuditEvent resources (none: the log only).
    pub audit: Option<Arc<crate::audit::AuditSink>>,
}

impl DataAccess {
    pub fn new(
        store: Arc<dyn Store>,
        base_url: &str,
        access: Option<Arc<crate::access::AccessControl>>,
        audit: Option<Arc<crate::audit::AuditSink>>,
    ) -> Self {
        DataAccess {
            store,
            base_url: base_url.into(),
            access,
            audit,
        }
    }

    /// The raw store, for the Bulk Data job records (never for resources: those go through
    /// [`Self::confined`]).
    pub(crate) fn jobs(&self) -> &dyn fhirgate_store::ExportJobs {
        self.store.as_ref()
    }

    /// Whether one process at most uses the store (SQLite): then every unfinished Bulk Data job
    /// found at start belongs to a process that is gone.
    pub(crate) fn single_process(&self) -> bool {
        self.store.backend() == fhirgate_store::Backend::Sqlite
    }

    /// Where an SQLite store keeps its file (Bulk Data output goes under it).
    pub(crate) fn data_dir(&self) -> Option<std::path::PathBuf> {
        self.store.data_dir()
    }

    /// The FHIR base a route belongs to: the public base URL plus its API's mount.
    pub fn fhir_base(&self, route: &Route) -> String {
        crate::discovery::fhir_base_url(&self.base_url, route)
    }

    /// The store confined by `auth`, the request's access decision.
    pub fn confined(&self, auth: &Authorized) -> ConfinedStore<'_> {
        let confinement = match &auth.compartment {
            Some(p) => Confinement::patient(p.as_str()),
            None => Confinement::unconfined(),
        };
        ConfinedStore {
            store: self.store.as_ref(),
            confinement,
            alternatives: alternatives(&auth.filters),
        }
    }
}

/// Granular scope alternatives (the request's, or another grant's for includes) as store
/// filters (OR of ANDs).
pub(crate) fn alternatives<A: AsRef<[crate::scopes::Filter]>>(filters: &[A]) -> Vec<Vec<Filter>> {
    filters
        .iter()
        .map(|alt| {
            alt.as_ref()
                .iter()
                .map(|f| Filter {
                    name: f.param.clone(),
                    modifier: None,
                    values: vec![f.value.clone()],
                })
                .collect()
        })
        .collect()
}

/// Why a confined search cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Granular alternatives on different parameters: refused rather than widened.
    #[error(
        "this combination of granular scopes cannot be searched; ask for one category at a time"
    )]
    Unsearchable,
}

/// The store through one access decision.
pub struct ConfinedStore<'a> {
    store: &'a dyn Store,
    confinement: Confinement,
    /// Granular alternatives (empty: no filter).
    alternatives: Vec<Vec<Filter>>,
}

impl ConfinedStore<'_> {
    /// Whether the decision limits anything (a compartment or granular filters).
    pub fn is_confined(&self) -> bool {
        self.confinement.patient_id().is_some() || !self.alternatives.is_empty()
    }

    /// Whether one version of a resource is within the decision: judged on its own content,
    /// since a resource can change patient or category between versions.
    pub fn admits(&self, resource_type: &str, resource: &Value) -> bool {
        admits(
            &self.confinement,
            &self.alternatives,
            resource_type,
            resource,
        )
    }

    /// The live resource, if it is within the decision: [`StoreError::NotFound`] otherwise, the
    /// same answer as for an id that does not exist (a deleted resource is `Gone` only when
    /// unconfined). Confined, one primary-key query per alternative checks the compartment and
    /// the filters on that one row.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<RawResource, StoreError> {
        if !self.is_confined() {
            return self.store.read_raw(resource_type, id).await;
        }
        let none: [Vec<Filter>; 1] = [Vec::new()];
        let alternatives: &[Vec<Filter>] = if self.alternatives.is_empty() {
            &none
        } else {
            &self.alternatives
        };
        for alt in alternatives {
            if let Some(found) = self
                .store
                .lookup(resource_type, id, self.confinement.patient_id(), alt)
                .await?
            {
                return Ok(found);
            }
        }
        if resource_type == "Provenance" && self.confinement.patient_id().is_some() {
            match self.store.read_raw(resource_type, id).await {
                Ok(raw) => {
                    if let Ok(r) = raw.parse()
                        && self.admits_unattached_provenance(&r).await?
                    {
                        return Ok(raw);
                    }
                }
                Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(not_found(resource_type, id))
    }

    /// A Provenance in no patient's compartment (its targets are records, not a Patient)
    /// belongs to the patients whose records it targets: a patient-confined token may read it
    /// when one of its targets is in that patient's compartment — what
    /// `_revinclude=Provenance:target` returns with those records. Granular filters still
    /// apply to the Provenance itself.
    async fn admits_unattached_provenance(&self, provenance: &Value) -> Result<bool, StoreError> {
        let Some(patient) = self.confinement.patient_id() else {
            return Ok(false);
        };
        if !Confinement::is_unattached("Provenance", provenance)
            || !admits(
                &Confinement::unconfined(),
                &self.alternatives,
                "Provenance",
                provenance,
            )
        {
            return Ok(false);
        }
        for target in provenance["target"].as_array().into_iter().flatten() {
            let Some((t, id)) = target["reference"].as_str().and_then(|r| r.split_once('/')) else {
                continue;
            };
            // only records of the compartment's types (another Provenance is no record of its own)
            if t == "Provenance"
                || fhirgate_fhir::patient_compartment_params(t).is_none()
                || !fhirgate_fhir::is_valid_id(id)
            {
                continue;
            }
            if self
                .store
                .lookup(t, id, Some(patient), &[])
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One version, if it is within the decision (a deletion version, whose content cannot be
    /// judged, only when unconfined).
    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: &str,
    ) -> Result<Value, StoreError> {
        match self.store.vread(resource_type, id, version_id).await {
            Ok(r) if self.admits(resource_type, &r) => Ok(r),
            Ok(r)
                if resource_type == "Provenance"
                    && self.admits_unattached_provenance(&r).await? =>
            {
                Ok(r)
            }
            Ok(_) => Err(not_found(resource_type, id)),
            Err(StoreError::Gone { .. }) if self.is_confined() => Err(not_found(resource_type, id)),
            Err(e) => Err(e),
        }
    }

    /// The versions of a resource within the decision, newest first. Confined, the current
    /// version must be within it (a deleted resource's history is refused), and deletion
    /// markers are left out.
    pub async fn history(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        if self.is_confined() {
            self.read(resource_type, id).await?;
        }
        let confined = self.is_confined();
        let mut out = Vec::new();
        for e in self.store.history(resource_type, id).await? {
            let keep = match &e.resource {
                Some(r) => {
                    self.admits(resource_type, r)
                        || (resource_type == "Provenance"
                            && self.admits_unattached_provenance(r).await?)
                }
                None => !confined,
            };
            if keep {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// A search within the decision: the compartment is added to the query, and the granular
    /// alternatives — one alternative's filters, or several alternatives on one parameter as
    /// one OR filter; anything else is refused rather than widened.
    pub async fn search(&self, mut q: SearchQuery) -> Result<SearchResult, SearchError> {
        q.patient_compartment = self.confinement.patient_id().map(str::to_string);
        let q = self.with_alternatives(q)?;
        Ok(self.store.search(&q).await?)
    }

    /// A keyset scan of `q`'s matches within the decision, applied as [`Self::search`] applies
    /// it (compartment and granular alternatives in the query), at most `limit` after the key
    /// `after` ([`Store::scan`]). `narrow_to` confines the scan to one patient's compartment
    /// as well (a Group member's): it can only narrow — confined to another patient, nothing
    /// matches.
    pub async fn scan(
        &self,
        mut q: SearchQuery,
        narrow_to: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Scanned>, SearchError> {
        q.patient_compartment = match (self.confinement.patient_id(), narrow_to) {
            (Some(c), Some(p)) if c != p => return Ok(Vec::new()),
            (Some(c), _) => Some(c.to_string()),
            (None, p) => p.map(str::to_string),
        };
        let q = self.with_alternatives(q)?;
        Ok(self.store.scan(&q, after, limit).await?)
    }

    /// Resources of `resource_type` deleted in `[since, until]` whose last live version is
    /// within the decision (and, with `narrow_to`, in one of those patients' compartments), a
    /// page of the keyset scan after `after`; with the key to continue after (`None`: the scan
    /// is done). Unconfined and not narrowed, every deletion is reported.
    pub async fn deleted(
        &self,
        resource_type: &str,
        since: &str,
        until: Option<&str>,
        narrow_to: &[String],
        after: i64,
        limit: usize,
    ) -> Result<(Vec<DeletedEntry>, Option<i64>), StoreError> {
        let mut rows = self
            .store
            .scan_deleted(resource_type, since, until, after, limit)
            .await?;
        let next = (rows.len() >= limit)
            .then(|| rows.last().map(|d| d.key))
            .flatten();
        if self.is_confined() || !narrow_to.is_empty() {
            rows.retain(|d| match &d.last_live {
                None => false,
                Some(r) => {
                    self.admits(resource_type, r)
                        && (narrow_to.is_empty()
                            || narrow_to.iter().any(|p| {
                                Confinement::patient(p.as_str()).admits(resource_type, r, &[])
                            }))
                }
            });
        }
        Ok((rows, next))
    }

    /// `q` with the granular alternatives: one alternative's filters, or several alternatives
    /// on one parameter as one OR filter; anything else is refused rather than widened.
    fn with_alternatives(&self, mut q: SearchQuery) -> Result<SearchQuery, SearchError> {
        match self.alternatives.as_slice() {
            [] => {}
            [one] => q.params.extend(one.iter().cloned()),
            many if many
                .iter()
                .all(|a| a.len() == 1 && a[0].name == many[0][0].name) =>
            {
                let values: Vec<&str> = many.iter().map(|a| a[0].values[0].as_str()).collect();
                q = q.filter(&many[0][0].name, None, &values);
            }
            _ => return Err(SearchError::Unsearchable),
        }
        Ok(q)
    }
}

/// Whose SMART App State a request may touch: the subjects (absolute references) it may name.
#[derive(Debug, Clone)]
pub struct AppStateSubjects {
    /// `{fhir base}/Patient/{id}` of the patient the decision confines the token to, or else of
    /// the patient in the token's launch context.
    pub patient: Option<String>,
    /// The token's `fhirUser` (the user's own state).
    pub user: Option<String>,
}

impl AppStateSubjects {
    /// Whether app state may name `subject` (an absolute reference).
    pub fn allows(&self, subject: &str) -> bool {
        self.patient.as_deref() == Some(subject) || self.user.as_deref() == Some(subject)
    }
}

impl ConfinedStore<'_> {
    /// The subjects app state of this request may name, on the FHIR base `fhir_base`.
    pub fn app_state_subjects(&self, fhir_base: &str, auth: &Authorized) -> AppStateSubjects {
        let principal = auth.principal();
        let patient = self
            .confinement
            .patient_id()
            .or(principal.patient.as_deref())
            .map(|p| format!("{fhir_base}/Patient/{p}"));
        AppStateSubjects {
            patient,
            user: principal.fhir_user.clone(),
        }
    }

    /// Whether app state `r` (a Basic) is within the decision: its granular filters admit it,
    /// and its subject is one the request may name (`subjects`), or it has none (global state).
    pub fn admits_app_state(&self, r: &Value, subjects: &AppStateSubjects) -> bool {
        let subject_ok = match r["subject"]["reference"].as_str() {
            None => r.get("subject").is_none(),
            Some(s) => subjects.allows(s),
        };
        subject_ok && admits(&Confinement::unconfined(), &self.alternatives, "Basic", r)
    }

    /// The live app state with state code `code` (`system|code`) that the decision admits.
    pub async fn app_state_with_code(
        &self,
        code: &str,
        subjects: &AppStateSubjects,
    ) -> Result<Vec<Value>, StoreError> {
        let mut q = SearchQuery::new("Basic").filter("code", None, &[code]);
        q.count = Some(fhirgate_store::MAX_COUNT);
        Ok(self
            .store
            .search(&q)
            .await?
            .matches
            .into_iter()
            .filter(|r| self.admits_app_state(r, subjects))
            .collect())
    }

    /// The current version of app state `id`, whoever's it is ([`StoreError::Gone`] once
    /// deleted): the caller answers 404 unless [`Self::admits_app_state`].
    pub async fn app_state(&self, id: &str) -> Result<Value, StoreError> {
        self.store.read("Basic", id).await
    }

    /// Store new app state the caller has checked with [`Self::admits_app_state`].
    pub async fn create_app_state(&self, r: Value) -> Result<fhirgate_store::Stored, StoreError> {
        self.store.create(r).await
    }

    /// Replace app state at version `if_match` ([`StoreError::VersionConflict`] otherwise).
    pub async fn update_app_state(
        &self,
        r: Value,
        if_match: &str,
    ) -> Result<fhirgate_store::Stored, StoreError> {
        self.store.update(r, Some(if_match)).await
    }

    /// Delete app state `id` at version `if_match`, atomically.
    pub async fn delete_app_state(&self, id: &str, if_match: &str) -> Result<(), StoreError> {
        self.store
            .upsert_and_delete(
                Vec::new(),
                vec![fhirgate_store::Deletion {
                    resource_type: "Basic".into(),
                    id: id.into(),
                    if_match: Some(if_match.into()),
                }],
            )
            .await
            .map(|_| ())
    }
}

/// The Client's own registration: its `smart.app_state` state codes (Null when it has none).
/// A Client is the app's configuration, not patient data.
impl DataAccess {
    pub async fn client_app_state_codes(&self, client_id: &str) -> Result<Value, StoreError> {
        match self.store.read("Client", client_id).await {
            Ok(c) => Ok(c["smart"]["app_state"].clone()),
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => Ok(Value::Null),
            Err(e) => Err(e),
        }
    }
}

/// [`ConfinedStore::admits`] for a confinement and alternatives of another grant (includes).
pub(crate) fn admits(
    confinement: &Confinement,
    alternatives: &[Vec<Filter>],
    resource_type: &str,
    resource: &Value,
) -> bool {
    if alternatives.is_empty() {
        confinement.admits(resource_type, resource, &[])
    } else {
        alternatives
            .iter()
            .any(|alt| confinement.admits(resource_type, resource, alt))
    }
}

fn not_found(resource_type: &str, id: &str) -> StoreError {
    StoreError::NotFound {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
    }
}
