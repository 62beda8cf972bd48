//! The user-access Brand Bundle (SMART App Launch 2.2, "User-access Brands and Endpoints"):
//! `GET /brands.json`, public and readable cross-origin, advertised as
//! `user_access_brand_bundle` in every `.well-known/smart-configuration`.
//!
//! The Bundle (`type: collection`) holds every Organization in the store that declares itself a
//! brand — the `organization-portal` or `organization-brand` extension, or the
//! `user-access-brand` profile — and every Endpoint those Organizations list in `endpoint`.
//! `Bundle.timestamp` is the latest `meta.lastUpdated` among them; the weak `ETag` is a digest of
//! the content, so `If-None-Match` gets `304 Not Modified` until a brand or endpoint changes.
//! Brands are public by design (apps list them before any sign-in): this is a publication of
//! what operators tagged as brands, not a data path, so it reads the store directly.
//!
//! ```
//! use serde_json::json;
//! let org = json!({"resourceType": "Organization", "id": "o",
//!     "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/organization-portal"}]});
//! assert!(fhirgate::brands::is_brand(&org));
//! assert!(!fhirgate::brands::is_brand(&json!({"resourceType": "Organization", "id": "p"})));
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fhirgate_router::outcome;
use fhirgate_store::{SearchQuery, Store, StoreError};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

/// Where fhirgate serves the Bundle.
pub const PATH: &str = fhirgate_smart::discovery::BRANDS_PATH;

const PORTAL: &str = "http://hl7.org/fhir/StructureDefinition/organization-portal";
const BRAND: &str = "http://hl7.org/fhir/StructureDefinition/organization-brand";
const PROFILE: &str = "http://hl7.org/fhir/smart-app-launch/StructureDefinition/user-access-brand";

/// Whether an Organization declares itself a user-access brand.
pub fn is_brand(org: &Value) -> bool {
    let extension = org["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["url"] == PORTAL || e["url"] == BRAND);
    let profile = org["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|p| p.split('|').next() == Some(PROFILE));
    extension || profile
}

/// The route, on `store`; `base_url` names the resources (`fullUrl`). Readable from any
/// origin, preflight included, with its `ETag` exposed to scripts.
pub fn routes(store: Arc<dyn Store>, base_url: &str) -> axum::Router {
    use tower_http::cors::{Any, CorsLayer};
    let state = Arc::new((store, base_url.to_string()));
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([http::Method::GET, http::Method::HEAD])
        .expose_headers([header::ETAG]);
    axum::Router::new().route(PATH, get(bundle).with_state(state).layer(cors))
}

/// Every live resource of `resource_type`, page by page.
async fn all_of(store: &dyn Store, resource_type: &str) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    let mut q = SearchQuery::new(resource_type);
    q.count = Some(fhirgate_store::MAX_COUNT);
    loop {
        let page = store.search(&q).await?;
        out.extend(page.matches);
        match page.next_offset {
            Some(next) => q.offset = next,
            None => return Ok(out),
        }
    }
}

/// The Bundle's resources: the brands, then the Endpoints they reference, each sorted by id.
async fn contents(store: &dyn Store) -> Result<Vec<Value>, StoreError> {
    let mut brands: Vec<Value> = all_of(store, "Organization")
        .await?
        .into_iter()
        .filter(is_brand)
        .collect();
    brands.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let endpoint_ids: BTreeSet<String> = brands
        .iter()
        .flat_map(|o| o["endpoint"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| {
            r["reference"]
                .as_str()?
                .strip_prefix("Endpoint/")
                .map(str::to_string)
        })
        .collect();
    let mut out = brands;
    for id in endpoint_ids {
        if !fhirgate_fhir::is_valid_id(&id) {
            continue;
        }
        match store.read_raw("Endpoint", &id).await {
            Ok(raw) => out.push(raw.parse()?),
            // a brand that points at a missing Endpoint is published without it
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn bundle(
    State(state): State<Arc<(Arc<dyn Store>, String)>>,
    headers: HeaderMap,
) -> Response {
    let (store, base_url) = &*state;
    let resources = match contents(store.as_ref()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("brands: {e}");
            return outcome::response(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the brand bundle cannot be read now",
            );
        }
    };
    let timestamp = resources
        .iter()
        .filter_map(|r| r["meta"]["lastUpdated"].as_str())
        .max()
        .map(str::to_string)
        .unwrap_or_else(fhirgate_smart::discovery::now_datetime);
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let full_url = format!(
                "{base_url}/{}/{}",
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            json!({"fullUrl": full_url, "resource": r})
        })
        .collect();
    let mut b = json!({"resourceType": "Bundle", "type": "collection", "timestamp": timestamp});
    if !entry.is_empty() {
        b["entry"] = Value::Array(entry);
    }
    let body = b.to_string();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let etag = format!("W/\"{hex}\"");
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    let h = resp.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // revalidate each time: the ETag makes that cheap
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
