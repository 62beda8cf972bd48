//! The patient picker and the encounter choice: who may be chosen, the provider's search,
//! and the submitted choice checked against the User's standing (`picker_submit`).
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! // a choice without the page's CSRF value is refused
//! let resp = reqwest::Client::new()
//!     .post("https://ehr.example/auth/picker")
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body("req=r1&decision=allow&patient=pt-1")
//!     .send()
//!     .await?;
//! assert_eq!(resp.status(), 403);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use fhirgate_smart::standing::Standing;

use http::{HeaderMap, StatusCode};
use minijinja::context;
use serde_json::Value;

use super::{form_request, internal, pending_return};
use crate::server::AuthServer;
use crate::server::clients::ClientInfo;
use crate::server::records::PENDING;
use crate::server::web::{redirect, with_query};

impl AuthServer {
    /// The patient's encounters, newest first, for the encounter choice.
    pub(super) async fn encounters_of(&self, patient: &str) -> Result<Vec<Value>, Response> {
        let q = fhirgate_store::SearchQuery::from_pairs(
            "Encounter",
            [("patient", patient), ("_count", "50"), ("_sort", "-date")],
        )
        .map_err(|e| internal(self, e))?;
        let found = self.store.search(&q).await.map_err(|e| internal(self, e))?;
        Ok(found
            .matches
            .iter()
            .filter_map(|e| {
                let id = e["id"].as_str()?;
                let when = e["period"]["start"].as_str().unwrap_or("date unknown");
                let what = e["type"][0]["text"]
                    .as_str()
                    .or(e["class"]["display"].as_str())
                    .or(e["class"]["code"].as_str())
                    .unwrap_or("encounter");
                Some(serde_json::json!({"id": id, "label": format!("{when}: {what} ({})", e["status"].as_str().unwrap_or("?"))}))
            })
            .collect())
    }

    /// The patient picker: a linked User chooses among their own patients; a provider searches
    /// (nothing is listed before a search: contract §4). Other Users never see it.
    pub(super) async fn picker_page(
        &self,
        headers: &HeaderMap,
        req: &str,
        client: &ClientInfo,
        standing: &Standing,
    ) -> Response {
        self.picker_with(headers, req, client, standing, None).await
    }

    pub(super) async fn picker_with(
        &self,
        headers: &HeaderMap,
        req: &str,
        client: &ClientInfo,
        standing: &Standing,
        q: Option<&str>,
    ) -> Response {
        let found: Vec<Value> = match standing {
            Standing::Linked(links) => {
                let mut out = Vec::new();
                for id in links {
                    if let Ok(p) = self.store.read("Patient", id).await {
                        out.push(p);
                    }
                }
                out
            }
            Standing::Provider => match q.map(str::trim).filter(|q| !q.is_empty()) {
                Some(q) => match self.search_patients(q).await {
                    Ok(found) => found,
                    Err(e) => return internal(self, e),
                },
                None => Vec::new(),
            },
            _ => {
                return self.pages.error(
                    StatusCode::FORBIDDEN,
                    "No patient to choose",
                    "This user has no provider access.",
                );
            }
        };
        let patients: Vec<Value> = found
            .iter()
            .map(|p| {
                serde_json::json!({"id": p["id"].as_str().unwrap_or_default(),
                    "label": patient_label(p)})
            })
            .collect();
        let searchable = matches!(standing, Standing::Provider);
        let searched = q.is_some();
        self.page_with_csrf(headers, "picker", |csrf| {
            context! { base => &self.base_path, csrf => csrf, req => req,
            client_name => &client.name, patients => &patients, searchable => searchable,
            searched => searched, q => q.unwrap_or_default() }
        })
    }

    /// Patients matching a picker search: the id exactly, a name, a birth date or an
    /// identifier (at most 20 of each).
    pub(super) async fn search_patients(
        &self,
        q: &str,
    ) -> Result<Vec<Value>, fhirgate_store::StoreError> {
        let escaped = q
            .replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace('|', "\\|");
        let mut queries = vec![("name", escaped.clone()), ("identifier", escaped.clone())];
        if fhirgate_fhir::is_valid_id(q) {
            queries.push(("_id", q.to_string()));
        }
        if q.len() >= 4 && q.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            queries.push(("birthdate", q.to_string()));
        }
        let mut out: Vec<Value> = Vec::new();
        for (param, value) in queries {
            let mut query =
                fhirgate_store::SearchQuery::new("Patient").filter(param, None, &[value.as_str()]);
            query.count = Some(20);
            // a value the store cannot take as this parameter simply matches nothing
            let Ok(found) = self.store.search(&query).await else {
                continue;
            };
            for p in found.matches {
                if !out.iter().any(|o| o["id"] == p["id"]) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// How the pages name the patient with id `id`: [`patient_label`] of the stored Patient,
    /// or the bare id when there is none to read.
    pub(super) async fn patient_named(&self, id: &str) -> String {
        match self.store.read("Patient", id).await {
            Ok(p) => patient_label(&p),
            Err(_) => format!("id {id}"),
        }
    }
}

/// A Patient as the pages name it: "Amy Shaw (born 1987-02-20; id pt-1)" — the id too, since
/// names repeat.
fn patient_label(p: &Value) -> String {
    let id = p["id"].as_str().unwrap_or_default();
    let name = &p["name"][0];
    let given = name["given"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let family = name["family"].as_str().unwrap_or_default();
    let details = match p["birthDate"].as_str() {
        Some(born) => format!("born {born}; id {id}"),
        None => format!("id {id}"),
    };
    let full = format!("{given} {family}");
    match full.trim() {
        "" => details,
        full => format!("{full} ({details})"),
    }
}

pub async fn picker_submit(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (p, req, mut pending, rec) = match form_request(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let searching = p.get("decision") == Some("search");
    if !searching && p.get("decision") != Some("allow") {
        let _ = s.records.state.remove(PENDING, &req).await;
        return pending_return(&pending).error("access_denied", "the user cancelled");
    }
    if p.has("encounter") && pending.context.patient.is_some() {
        // the encounter choice: one of this patient's encounters, or none
        let chosen = p.get("encounter");
        if let Some(enc) = chosen {
            let patient = pending.context.patient.clone().unwrap_or_default();
            let own = match s.encounters_of(&patient).await {
                Ok(list) => list.iter().any(|e| e["id"] == enc),
                Err(r) => return r,
            };
            if !own {
                return s.pages.error(
                    StatusCode::BAD_REQUEST,
                    "Choose an encounter",
                    "That encounter is not one of this patient's.",
                );
            }
        }
        pending.context.encounter = chosen.map(str::to_string);
        pending.encounter_asked = true;
        if let Err(e) = s.records.set(PENDING, &rec, &pending).await {
            return internal(&s, e);
        }
        return redirect(&with_query(
            &format!("{}/auth/authorize", s.base_path),
            &[("req", &req)],
        ));
    }
    let Some(user_id) = pending.user.clone() else {
        return internal(&s, "picker without a user");
    };
    let standing = match s.store.read("User", &user_id).await {
        Ok(u) => {
            match fhirgate_smart::standing::load(s.store.as_ref(), &u, &s.config.provider_roles)
                .await
            {
                Ok(st) => st,
                Err(e) => return internal(&s, e),
            }
        }
        Err(_) => return pending_return(&pending).error("access_denied", "the user is gone"),
    };
    let Some(patient) = p.get("patient").filter(|_| !searching) else {
        // a search (or a submit without a choice): the same page with what matches
        let client = match s.load_client(&pending.client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return pending_return(&pending).error("unauthorized_client", "the client is gone");
            }
            Err(r) => return r,
        };
        return s
            .picker_with(
                &headers,
                &req,
                &client,
                &standing,
                Some(p.get("q").unwrap_or_default()),
            )
            .await;
    };
    // the chosen patient is checked against the User's standing, not only for existence
    if !standing.may_reach(patient) {
        return s.pages.error(
            StatusCode::FORBIDDEN,
            "Choose a patient",
            "That patient is not one you may choose.",
        );
    }
    match s.store.read("Patient", patient).await {
        Ok(_) => {}
        Err(e) if e.is_client_error() => {
            return s.pages.error(
                StatusCode::BAD_REQUEST,
                "Choose a patient",
                "That patient does not exist.",
            );
        }
        Err(e) => return internal(&s, e),
    }
    pending.context.patient = Some(patient.to_string());
    if let Err(e) = s.records.set(PENDING, &rec, &pending).await {
        return internal(&s, e);
    }
    redirect(&with_query(
        &format!("{}/auth/authorize", s.base_path),
        &[("req", &req)],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_are_named_with_their_id() {
        let p = serde_json::json!({"id": "pt-1", "birthDate": "1987-02-20",
            "name": [{"given": ["Amy", "Lee"], "family": "Shaw"}]});
        assert_eq!(patient_label(&p), "Amy Lee Shaw (born 1987-02-20; id pt-1)");
        let p = serde_json::json!({"id": "pt-2", "name": [{"family": "Shaw"}]});
        assert_eq!(patient_label(&p), "Shaw (id pt-2)");
        assert_eq!(patient_label(&serde_json::json!({"id": "pt-3"})), "id pt-3");
    }
}
