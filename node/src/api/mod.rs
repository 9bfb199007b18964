//! The local HTTP API (JSON; server-sent events for `tail`). Every request needs
//! `Authorization: Bearer <DATA_DIR/api.key>`. Store names go in one path segment, with
//! `/` written as `%2F`.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/status` | this node |
//! | `GET /v1/stores` · `POST /v1/stores` · `DELETE /v1/stores/{name}` | list, create, remove |
//! | `GET /v1/stores/{name}/keys` · `GET`/`PUT`/`PATCH`/`DELETE /v1/stores/{name}/keys/{key}` | kv and doc |
//! | `POST /v1/stores/{name}/records` · `GET /v1/stores/{name}/records` | append, read |
//! | `GET /v1/stores/{name}/aggregate` | aggregates |
//! | `GET /v1/stores/{name}/tail` | changes, as server-sent events |
//! | `GET /v1/audit` · `GET /v1/audit/verify` | the audit log |
//! | `POST /v1/jobs?wait_ms=N` | run a job (body: an encoded job); the result and receipt |
//! | `GET /v1/apps` · `DELETE /v1/apps/{name}` | continuous apps: list, stop |

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use hearth_stores::audit::{AuditError, Event};
use hearth_stores::query::{Aggregate, Filter, Selection};
use hearth_stores::{Kind, Reading, StoreError};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;

use crate::node::Node;

pub mod types;

use types::*;

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// An API error: an HTTP status, a machine-readable code and a sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// What went wrong, in a sentence.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn no_key(store: &str, key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("store {store:?} has no key {key:?}"),
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let (status, code) = match &err {
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            StoreError::WrongKind { .. } | StoreError::Invalid(_) => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            StoreError::DiskFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            StoreError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
            StoreError::Locked { .. } => (StatusCode::SERVICE_UNAVAILABLE, "locked"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
        };
        Self::new(status, code, err.to_string())
    }
}

impl From<AuditError> for ApiError {
    fn from(err: AuditError) -> Self {
        let (status, code) = match err {
            AuditError::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "audit"),
        };
        Self::new(status, code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
                code: self.code.to_owned(),
            }),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::invalid(format!(
            "the request body is not acceptable: {}",
            rejection.body_text()
        ))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(format!(
            "the query is not acceptable: {}",
            rejection.body_text()
        ))
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The API's routes over a node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/stores", get(list_stores).post(create_store))
        .route("/v1/stores/{name}", axum::routing::delete(remove_store))
        .route("/v1/stores/{name}/policy", axum::routing::post(set_policy))
        .route(
            "/v1/stores/{name}/delete",
            axum::routing::post(delete_readings),
        )
        .route("/v1/stores/{name}/keys", get(keys))
        .route(
            "/v1/stores/{name}/keys/{key}",
            get(get_key)
                .put(put_key)
                .patch(patch_key)
                .delete(delete_key),
        )
        .route(
            "/v1/stores/{name}/records",
            get(read_records).post(append_records),
        )
        .route("/v1/stores/{name}/aggregate", get(aggregate))
        .route("/v1/stores/{name}/tail", get(tail))
        .route("/v1/drivers", get(list_drivers).post(add_driver))
        .route("/v1/drivers/{name}", get(get_driver).delete(remove_driver))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/invite", axum::routing::post(invite))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{name}/revoke", axum::routing::post(revoke))
        .route("/v1/restore", get(restore_status).post(restore))
        .route("/v1/devices/{name}/approve", axum::routing::post(approve))
        .route(
            "/v1/devices/{name}/allow-admit",
            axum::routing::post(allow_admit),
        )
        .route(
            "/v1/caps/{id}/revoke",
            axum::routing::post(revoke_capability),
        )
        .route("/v1/jobs", axum::routing::post(submit_job))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{name}", axum::routing::delete(stop_app))
        .route("/v1/metrics", get(metrics))
        .route("/v1/exports", get(list_exports))
        .route("/v1/exports/pause", axum::routing::post(pause_exports))
        .route("/v1/exports/resume", axum::routing::post(resume_exports))
        .route("/v1/exports/{id}", get(show_export))
        .route(
            "/v1/exports/{id}/release",
            axum::routing::post(release_export),
        )
        .route("/v1/exports/{id}/drop", axum::routing::post(drop_export))
        .route("/v1/dashboard/link", axum::routing::post(dashboard_link))
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node.clone())
        .merge(crate::dashboard::router(node))
}

async fn dashboard_link(State(node): State<Arc<Node>>) -> ApiResult<DashboardLink> {
    let addr = node.api_addr.get().copied().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the API is not listening yet",
        )
    })?;
    let (token, expires_at) = node
        .dashboard
        .new_link(crate::dashboard::LINK_TTL)
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", err))?;
    record(
        &node,
        "dashboard.link",
        &node.config.name,
        "allowed: a one-time login link",
        0,
    )?;
    Ok(Json(DashboardLink {
        url: format!(
            "http://{addr}{}/login?token={token}",
            node.dashboard.base_path()
        ),
        expires_at,
    }))
}

/// Are `presented` and `expected` equal? Compared in constant time.
fn same_key(presented: &str, expected: &str) -> bool {
    presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Refuses every request without the bearer key; `GET /v1/metrics` also takes the
/// metrics key, which opens nothing else.
async fn authenticate(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let scrape =
        request.method() == axum::http::Method::GET && request.uri().path() == "/v1/metrics";
    let equal = same_key(presented, &node.api_key)
        || (scrape
            && node
                .metrics_key
                .as_deref()
                .is_some_and(|key| same_key(presented, key)));
    if !equal {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (see DATA_DIR/api.key)",
        )
        .into_response();
    }
    next.run(request).await
}

/// Runs blocking store or audit work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            err.to_string(),
        )
    })?
}

/// Records an audit entry for a local request; a failure to audit fails the request.
fn record(
    node: &Node,
    action: &str,
    object: &str,
    outcome: &str,
    bytes: u64,
) -> Result<(), ApiError> {
    node.audit.record(Event {
        actor: "local".into(),
        action: action.into(),
        object: object.into(),
        cap_id: None,
        outcome: outcome.into(),
        bytes,
    })?;
    Ok(())
}

async fn status(State(node): State<Arc<Node>>) -> ApiResult<Status> {
    let c = &node.config;
    let mesh = match node.mesh.get() {
        Some(handle) => Some(handle.status().await.map_err(|err| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mesh", err.to_string())
        })?),
        None => None,
    };
    let stores = sync_status(&node).await?;
    let (listen, peers) = mesh.map(|m| (m.listen, m.peers)).unwrap_or_default();
    Ok(Json(Status {
        peer_id: c.node_key.public().peer_id(),
        name: c.name.clone(),
        role: c.role.clone(),
        listen,
        peers,
        stores,
    }))
}

/// [`store_status`] now: each store held here and where it is in sync.
pub(crate) async fn sync_status(node: &Arc<Node>) -> Result<Vec<StoreSync>, ApiError> {
    let devices = match node.mesh.get() {
        Some(handle) => handle.devices().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let sync = match node.replication.get() {
        Some(handle) => handle.status().await.unwrap_or_default(),
        None => Vec::new(),
    };
    // Listing reads the catalogue and store sizes: off the async threads.
    let node = node.clone();
    blocking(move || Ok(store_status(&node, &node.stores.list(), &devices, &sync))).await
}

/// Each store held here, and for every device its policy places it on, whether that
/// replica is in sync: this device always is; another is only when, connected, it
/// confirmed a digest equal to ours. `lag` is how many records it lacks, when known.
pub(crate) fn store_status(
    node: &Node,
    listed: &[hearth_stores::StoreInfo],
    devices: &[crate::mesh::DeviceStatus],
    sync: &[crate::replication::StoreSync],
) -> Vec<StoreSync> {
    let listing = node
        .catalogue
        .as_ref()
        .and_then(|c| c.read().ok())
        .unwrap_or_default();
    let sync: std::collections::HashMap<&str, &crate::replication::StoreSync> =
        sync.iter().map(|x| (x.id.as_str(), x)).collect();
    listed
        .iter()
        .filter(|s| s.name != crate::catalogue::NAME)
        .map(|s| {
            let mine = sync.get(s.id.as_str()).copied();
            let mut replicas = vec![ReplicaSync {
                device: node.config.name.clone(),
                in_sync: s.error.is_none(),
                lag: Some(0),
                online: None,
                sealed: None,
            }];
            if let Some(entry) = listing.stores.get(&s.id) {
                let policy = entry.policy();
                for d in devices {
                    let Ok(role) = d.role.parse() else { continue };
                    if d.name == node.config.name
                        || d.revoked
                        || !policy.holds(&d.name, role, &entry.origin)
                    {
                        continue;
                    }
                    let confirmed = mine
                        .and_then(|m| m.peers.iter().find(|(name, _)| *name == d.name))
                        .and_then(|(_, c)| *c);
                    let in_sync = match (mine, confirmed) {
                        (Some(m), Some((digest, _))) => digest == m.digest,
                        _ => false,
                    };
                    let lag = match (mine, confirmed) {
                        (Some(m), Some((_, records))) => Some(m.records.saturating_sub(records)),
                        _ => None,
                    };
                    replicas.push(ReplicaSync {
                        device: d.name.clone(),
                        in_sync,
                        lag,
                        online: Some(d.online),
                        sealed: None,
                    });
                }
                for d in devices {
                    let Ok(role) = d.role.parse() else { continue };
                    if d.revoked || !policy.seals(&d.name, role, &entry.origin) {
                        continue;
                    }
                    let stored = mine
                        .and_then(|m| m.sealed.iter().find(|(name, _)| *name == d.name))
                        .is_some_and(|(_, done)| *done);
                    replicas.push(ReplicaSync {
                        device: d.name.clone(),
                        in_sync: stored,
                        lag: None,
                        online: Some(d.online),
                        sealed: Some(true),
                    });
                }
            }
            StoreSync {
                name: s.name.clone(),
                replicas,
            }
        })
        .collect()
}

/// Every store of the mesh: those held here with their local figures, and those the
/// catalogue lists elsewhere.
pub(crate) fn store_list(node: &Node) -> Vec<StoreInfo> {
    let listing = node
        .catalogue
        .as_ref()
        .and_then(|c| c.read().ok())
        .unwrap_or_default();
    let local = node.stores.list();
    let erasures = |id: &str| listing.erasures.get(id).map_or(0, |e| e.len() as u64);
    let mut out: Vec<StoreInfo> = local
        .iter()
        .filter(|s| s.name != crate::catalogue::NAME)
        .map(|s| {
            let entry = listing.stores.get(&s.id);
            StoreInfo {
                name: s.name.clone(),
                id: s.id.clone(),
                kind: s.kind,
                origin: entry.map_or_else(|| node.config.name.clone(), |e| e.origin.clone()),
                replicas: entry.map_or_else(
                    || hearth_protocol::sync::placement::DEFAULT_POLICY.to_owned(),
                    |e| e.replicas.clone(),
                ),
                held_by: held_by(&listing, &s.id, &node.config.name),
                here: true,
                records: s.records,
                bytes: Some(s.bytes),
                error: s.error.clone(),
                source: entry.and_then(|e| e.source.clone()),
                unit: entry.and_then(|e| e.unit.clone()),
                description: entry.and_then(|e| e.description.clone()),
                heads: listing.replicas.get(&s.id).cloned(),
                keep_ms: entry.and_then(|e| e.keep_ms),
                erasures: erasures(&s.id),
            }
        })
        .collect();
    for (id, e) in &listing.stores {
        if local.iter().any(|s| s.id == *id) {
            continue;
        }
        let stats = listing.replicas.get(id);
        // A kind this version does not know (a newer device's) is left out.
        let Ok(kind) = e.kind.parse::<Kind>() else {
            continue;
        };
        out.push(StoreInfo {
            name: e.name.clone(),
            id: id.clone(),
            kind,
            origin: e.origin.clone(),
            replicas: e.replicas.clone(),
            held_by: held_by(&listing, id, ""),
            here: false,
            records: stats.and_then(|r| r.values().map(|s| s.records).max()),
            bytes: stats.and_then(|r| r.values().map(|s| s.bytes).max()),
            error: None,
            source: e.source.clone(),
            unit: e.unit.clone(),
            description: e.description.clone(),
            heads: stats.cloned(),
            keep_ms: e.keep_ms,
            erasures: erasures(id),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The devices that report holding a store (this one included when it does).
fn held_by(listing: &crate::catalogue::Listing, id: &str, me: &str) -> Vec<String> {
    let mut devices: Vec<String> = listing
        .replicas
        .get(id)
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    if !me.is_empty() && !devices.iter().any(|d| d == me) {
        devices.push(me.to_owned());
    }
    devices.sort();
    devices
}

async fn list_stores(
    State(node): State<Arc<Node>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    match query.format.as_deref() {
        None => {}
        Some("hypercat") => {
            return blocking(move || {
                let listing = node
                    .catalogue
                    .as_ref()
                    .map(|c| c.read())
                    .transpose()?
                    .unwrap_or_default();
                let base = node
                    .api_addr
                    .get()
                    .map_or_else(String::new, |a| format!("http://{a}"));
                Ok(Json(crate::catalogue::hypercat(&listing, &base)).into_response())
            })
            .await;
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unknown listing format {other:?}; the one format is hypercat"
            )));
        }
    }
    let list = blocking({
        let node = node.clone();
        move || Ok(store_list(&node))
    })
    .await?;
    Ok(Json(Stores { stores: list }).into_response())
}

/// The capability a request names as its authority, if any.
fn authority_of(
    text: Option<&str>,
) -> Result<Option<hearth_protocol::capability::Chain>, ApiError> {
    text.map(|t| {
        hearth_protocol::capability::Chain::from_text(t)
            .map_err(|err| ApiError::invalid(format!("the authority capability: {err}")))
    })
    .transpose()
}

impl From<crate::catalogue::CatalogueError> for ApiError {
    fn from(err: crate::catalogue::CatalogueError) -> Self {
        use crate::catalogue::CatalogueError as E;
        match err {
            E::Refused(message) => ApiError::new(StatusCode::FORBIDDEN, "refused", message),
            E::NotFound(name) => StoreError::NotFound(name).into(),
            E::Exists(name) => StoreError::Exists(name).into(),
            E::Invalid(message) => ApiError::invalid(message),
            E::Store(err) => err.into(),
            err @ E::File { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                err.to_string(),
            ),
        }
    }
}

/// Audits a placement change refused for lack of authority, and passes the error on.
fn audit_refusal(
    node: &Node,
    action: &str,
    name: &str,
    err: crate::catalogue::CatalogueError,
) -> ApiError {
    if let crate::catalogue::CatalogueError::Refused(reason) = &err {
        let _ = record(node, action, name, &format!("refused: {reason}"), 0);
    }
    err.into()
}

/// Refuses changes by hand to the stores Hearth manages itself.
fn user_store(name: &str) -> Result<(), ApiError> {
    if name == crate::catalogue::NAME {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "refused",
            "the catalogue is kept by Hearth itself; use `hearth store policy` to change placement",
        ));
    }
    Ok(())
}

async fn create_store(
    State(node): State<Arc<Node>>,
    body: Result<Json<CreateStore>, JsonRejection>,
) -> Result<(StatusCode, Json<StoreInfo>), ApiError> {
    let Json(body) = body?;
    let kind: Kind = body.kind.parse().map_err(ApiError::invalid)?;
    user_store(&body.name)?;
    let policy = match &body.replicas {
        Some(spec) => hearth_protocol::sync::placement::Policy::parse(spec)
            .map_err(|err| ApiError::invalid(err.to_string()))?,
        None => hearth_protocol::sync::placement::Policy::default_policy(),
    };
    let grant = authority_of(body.authority.as_deref())?;
    let info = blocking({
        let node = node.clone();
        move || {
            if let Some(catalogue) = &node.catalogue {
                if catalogue.read()?.id_of(&body.name).is_some() {
                    return Err(StoreError::Exists(body.name.clone()).into());
                }
                // Checked before the store is made, so a refusal leaves nothing behind.
                if let Some(keep) = body.keep_ms {
                    if kind != Kind::Timeseries {
                        return Err(ApiError::invalid(
                            "only a timeseries store keeps readings for a time (--keep)",
                        ));
                    }
                    let window = body.window_ms.unwrap_or(hearth_stores::DEFAULT_WINDOW_MS);
                    if keep < window {
                        return Err(ApiError::invalid(format!(
                            "a retention of {keep} ms is shorter than the store's chunk window \
                             ({window} ms)"
                        )));
                    }
                    if grant.is_none() && !catalogue.is_owner_device() {
                        let err = crate::catalogue::CatalogueError::Refused(format!(
                            "a retention for {:?} deletes readings on every holder: it needs the \
                             owner's authority: run it on the device that holds the owner key, \
                             or pass --cap with a capability for this device that allows it",
                            body.name
                        ));
                        return Err(audit_refusal(&node, "store.create", &body.name, err));
                    }
                }
                if grant.is_none()
                    && !catalogue.is_owner_device()
                    && !hearth_protocol::sync::authority::within_default(&policy)
                {
                    let err = crate::catalogue::CatalogueError::Refused(format!(
                        "placing {:?} on {policy} needs the owner's authority (a device alone may \
                         only place its own stores on itself and the home devices): run it on \
                         the device that holds the owner key, or pass --cap with a capability \
                         for this device that allows it",
                        body.name
                    ));
                    return Err(audit_refusal(&node, "store.create", &body.name, err));
                }
            }
            let store = node.stores.create_with_text(
                &body.name,
                kind,
                body.window_ms,
                body.text.clone(),
            )?;
            if let Some(catalogue) = &node.catalogue {
                let about = crate::catalogue::About {
                    description: body.description.clone(),
                    source: None,
                    unit: None,
                    keep_ms: body.keep_ms,
                };
                if let Err(err) = catalogue.list_new(store.meta(), &policy, about, grant) {
                    drop(store);
                    let _ = node.stores.remove(&body.name);
                    return Err(audit_refusal(&node, "store.create", &body.name, err));
                }
            }
            record(&node, "store.create", &body.name, "allowed", 0)?;
            store_list(&node)
                .into_iter()
                .find(|s| s.name == body.name)
                .ok_or_else(|| StoreError::NotFound(body.name.clone()).into())
        }
    })
    .await?;
    if let Some(replication) = node.replication.get() {
        replication.catalogue_changed();
    }
    Ok((StatusCode::CREATED, Json(info)))
}

async fn set_policy(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Result<Json<PolicyRequest>, JsonRejection>,
) -> ApiResult<Policy> {
    let Json(body) = body?;
    Ok(Json(policy_changed(&node, name, body).await?))
}

/// Changes a store's placement or retention, as `POST /v1/stores/{name}/policy` and
/// the dashboard do: the same authority check, audit entry and refusals.
pub(crate) async fn policy_changed(
    node: &Arc<Node>,
    name: String,
    body: PolicyRequest,
) -> Result<Policy, ApiError> {
    user_store(&name)?;
    let policy = body
        .replicas
        .as_deref()
        .map(hearth_protocol::sync::placement::Policy::parse)
        .transpose()
        .map_err(|err| ApiError::invalid(err.to_string()))?;
    let keep = body.keep_ms;
    if policy.is_none() && keep.is_none() {
        return Err(ApiError::invalid(
            "name what changes: replicas, keep_ms or both",
        ));
    }
    let grant = authority_of(body.authority.as_deref())?;
    let Some(catalogue) = node.catalogue.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh",
            "this node is not part of a mesh: there is no placement to change",
        ));
    };
    let answer = blocking({
        let node = node.clone();
        move || {
            let (id, entry) = catalogue
                .change(&name, policy.as_ref(), keep, grant)
                .map_err(|err| audit_refusal(&node, "store.policy", &name, err))?;
            let keep_text = entry
                .keep_ms
                .map_or_else(|| "keep everything".to_owned(), |k| format!("keep {k} ms"));
            record(
                &node,
                "store.policy",
                &name,
                &format!("allowed: {}; {keep_text}", entry.replicas),
                0,
            )?;
            Ok(Policy {
                name,
                id,
                replicas: entry.replicas,
                keep_ms: entry.keep_ms,
            })
        }
    })
    .await?;
    if let Some(replication) = node.replication.get() {
        replication.catalogue_changed();
    }
    Ok(answer)
}

async fn delete_readings(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Result<Json<DeleteRequest>, JsonRejection>,
) -> ApiResult<Erased> {
    let Json(body) = body?;
    user_store(&name)?;
    let filter = body
        .filter
        .as_deref()
        .map(hearth_stores::query::Filter::parse)
        .transpose()
        .map_err(ApiError::invalid)?;
    let selector = hearth_protocol::sync::erasure::Selector {
        from: body.from,
        to: body.to,
        filter: filter.as_ref().map(|f| (f.path.clone(), f.value.clone())),
        keys: body.keys.clone(),
    };
    selector.validate().map_err(ApiError::invalid)?;
    let Some(catalogue) = node.catalogue.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh",
            "this node is not part of a mesh: there is no owner to order an erasure",
        ));
    };
    let answer = blocking({
        let node = node.clone();
        move || {
            let local = node.stores.get(&name).ok();
            if let (Some(store), Some(filter)) = (
                local.as_ref().filter(|s| s.meta().kind == Kind::Timeseries),
                &filter,
            ) {
                // A tag no reading in the range has is a mistake, not an erasure of
                // nothing.
                let (from, to) = (selector.from.unwrap_or(0), selector.to.unwrap_or(u64::MAX));
                let readings =
                    store.read(hearth_stores::query::Selection::Range(from, to), None)?;
                if !readings.is_empty() && !readings.iter().any(|r| r.field(&filter.path).is_some())
                {
                    return Err(ApiError::invalid(format!(
                        "no reading of {name:?}{} has a tag {:?}",
                        if selector.from.is_some() || selector.to.is_some() {
                            " in that range"
                        } else {
                            ""
                        },
                        filter.path
                    )));
                }
            }
            let (id, seq) = catalogue
                .erase(&name, selector.clone())
                .map_err(|err| audit_refusal(&node, "store.erase", &name, err))?;
            // The replica here, if it is this store's (two stores may share a name
            // across devices); the replication loop applies it otherwise, as elsewhere.
            let erased = match local.as_ref().filter(|s| s.meta().id == id) {
                Some(store) => Some(store.erase(seq, &selector)?),
                None => None,
            };
            record(
                &node,
                "store.erase",
                &name,
                &format!(
                    "allowed: erasure {seq} ({selector}){}",
                    erased.map_or_else(String::new, |e| if selector.is_keys() {
                        format!("; {} values here", e.keys)
                    } else {
                        format!("; {} readings in {} chunks here", e.readings, e.chunks)
                    })
                ),
                0,
            )?;
            Ok(Erased {
                name,
                id,
                erasure: seq,
                selector: selector.to_string(),
                deleted_here: erased.map(|e| {
                    if selector.is_keys() {
                        e.keys
                    } else {
                        e.readings
                    }
                }),
            })
        }
    })
    .await?;
    if let Some(replication) = node.replication.get() {
        replication.catalogue_changed();
    }
    Ok(Json(answer))
}

async fn remove_store(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> ApiResult<Removed> {
    let Query(query) = query?;
    user_store(&name)?;
    let grant = authority_of(query.authority.as_deref())?;
    let answer = blocking({
        let node = node.clone();
        move || {
            if let Some(catalogue) = &node.catalogue {
                // Removed from the mesh: every holder drops it when the document
                // reaches it (this one included).
                catalogue
                    .remove(&name, grant)
                    .map_err(|err| audit_refusal(&node, "store.remove", &name, err))?;
                match node.stores.remove(&name) {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(err) => return Err(err.into()),
                }
            } else {
                node.stores.remove(&name)?;
            }
            record(&node, "store.remove", &name, "allowed", 0)?;
            Ok(Removed { removed: name })
        }
    })
    .await?;
    if let Some(replication) = node.replication.get() {
        replication.catalogue_changed();
    }
    Ok(Json(answer))
}

async fn keys(State(node): State<Arc<Node>>, Path(name): Path<String>) -> ApiResult<Keys> {
    blocking(move || {
        let keys = node.stores.get(&name)?.keys()?;
        record(&node, "store.keys", &name, "allowed", 0)?;
        Ok(Json(Keys { keys }))
    })
    .await
}

async fn get_key(
    State(node): State<Arc<Node>>,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<KeyValue> {
    blocking(move || {
        let value = node.stores.get(&name)?.get(&key)?;
        let Some(value) = value else {
            return Err(ApiError::no_key(&name, &key));
        };
        record(
            &node,
            "store.get",
            &name,
            "allowed",
            value.to_string().len() as u64,
        )?;
        Ok(Json(KeyValue { key, value }))
    })
    .await
}

async fn put_key(
    State(node): State<Arc<Node>>,
    Path((name, key)): Path<(String, String)>,
    value: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Put> {
    user_store(&name)?;
    let Json(value) = value?;
    blocking(move || {
        let bytes = value.to_string().len() as u64;
        node.stores.get(&name)?.put(&key, value)?;
        record(&node, "store.put", &name, "allowed", bytes)?;
        Ok(Json(Put { key }))
    })
    .await
}

async fn patch_key(
    State(node): State<Arc<Node>>,
    Path((name, key)): Path<(String, String)>,
    patch: Result<Json<Value>, JsonRejection>,
) -> ApiResult<KeyValue> {
    user_store(&name)?;
    let Json(patch) = patch?;
    blocking(move || {
        let bytes = patch.to_string().len() as u64;
        let value = node.stores.get(&name)?.patch(&key, patch)?;
        record(&node, "store.patch", &name, "allowed", bytes)?;
        Ok(Json(KeyValue { key, value }))
    })
    .await
}

async fn delete_key(
    State(node): State<Arc<Node>>,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<DeletedKey> {
    user_store(&name)?;
    blocking(move || {
        let existed = node.stores.get(&name)?.delete(&key)?;
        if !existed {
            return Err(ApiError::no_key(&name, &key));
        }
        record(&node, "store.delete", &name, "allowed", 0)?;
        Ok(Json(DeletedKey { deleted: key }))
    })
    .await
}

async fn append_records(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    records: Result<Json<Vec<Reading>>, JsonRejection>,
) -> ApiResult<Appended> {
    user_store(&name)?;
    let Json(records) = records?;
    blocking(move || {
        let count = records.len() as u64;
        let bytes: u64 = records
            .iter()
            .map(|r| r.value.to_string().len() as u64 + 8)
            .sum();
        node.stores.get(&name)?.append(records)?;
        record(&node, "store.append", &name, "allowed", bytes)?;
        Ok(Json(Appended { appended: count }))
    })
    .await
}

impl ReadQuery {
    fn selection(&self) -> Result<Selection, ApiError> {
        let need = |v: Option<u64>, what: &str| {
            v.ok_or_else(|| ApiError::invalid(format!("this selection needs `{what}`")))
        };
        Ok(match self.select.as_deref().unwrap_or("all") {
            "all" => Selection::All,
            "latest" => Selection::Latest,
            "earliest" => Selection::Earliest,
            "last" => Selection::LastN(
                self.n
                    .ok_or_else(|| ApiError::invalid("`last` needs `n`"))?,
            ),
            "first" => Selection::FirstN(
                self.n
                    .ok_or_else(|| ApiError::invalid("`first` needs `n`"))?,
            ),
            "since" => Selection::Since(need(self.from, "from")?),
            "range" => {
                let (from, to) = (need(self.from, "from")?, need(self.to, "to")?);
                if to < from {
                    return Err(ApiError::invalid("a range ends before it starts"));
                }
                Selection::Range(from, to)
            }
            other => return Err(ApiError::invalid(format!("unknown selection {other:?}"))),
        })
    }

    fn filter(&self) -> Result<Option<Filter>, ApiError> {
        self.filter
            .as_deref()
            .map(Filter::parse)
            .transpose()
            .map_err(ApiError::invalid)
    }
}

async fn read_records(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let selection = q.selection()?;
    let filter = q.filter()?;
    blocking(move || {
        let records = node.stores.get(&name)?.read(selection, filter.as_ref())?;
        // Serialize once: the audit entry records the size of what leaves.
        let body = serde_json::to_vec(&Records { records }).map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                err.to_string(),
            )
        })?;
        record(&node, "store.read", &name, "allowed", body.len() as u64)?;
        Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
    })
    .await
}

async fn aggregate(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    q: Result<Query<AggregateQuery>, QueryRejection>,
) -> ApiResult<Aggregated> {
    let Query(q) = q?;
    let selection = q.read().selection()?;
    let filter = q.read().filter()?;
    let function: Aggregate = q
        .function
        .as_deref()
        .ok_or_else(|| ApiError::invalid("`fn` is required"))?
        .parse()
        .map_err(ApiError::invalid)?;
    blocking(move || {
        let result = node.stores.get(&name)?.aggregate(
            function,
            q.field.as_deref(),
            selection,
            filter.as_ref(),
        )?;
        record(&node, "store.aggregate", &name, "allowed", 8)?;
        // A count is an integer (a whole number of readings, far below 2^53).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let result = match (function, result) {
            (Aggregate::Count, Some(n)) => Some(serde_json::Number::from(n.max(0.0) as u64)),
            (_, other) => other.and_then(serde_json::Number::from_f64),
        };
        Ok(Json(Aggregated { result }))
    })
    .await
}

async fn tail(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let store = node.stores.get(&name)?;
    let receiver = store.subscribe();
    blocking({
        let node = node.clone();
        move || record(&node, "store.tail", &name, "allowed", 0)
    })
    .await?;
    let mut stopping = node.stopping.subscribe();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let stream = BroadcastStream::new(receiver).map(|item| {
        let data = match item {
            Ok(change) => serde_json::to_string(&change).unwrap_or_default(),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                json!({ "change": "lagged", "missed": n }).to_string()
            }
        };
        Ok(SseEvent::default().data(data))
    });
    let stream = futures_util::StreamExt::take_until(stream, Box::pin(stopped));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn audit(
    State(node): State<Arc<Node>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<AuditEntries> {
    let Query(q) = q?;
    // Another device's entries come from the copy of its log kept here.
    let copy = match q.device.as_deref() {
        Some(device) if device != node.config.name => {
            let devices = match node.mesh.get() {
                Some(mesh) => mesh.devices().await.unwrap_or_default(),
                None => Vec::new(),
            };
            let Some(found) = devices.iter().find(|d| d.name == device) else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no device is named {device:?}"),
                ));
            };
            let path = crate::audit_copy::copy_path(&node.config.data_dir, &found.peer_id);
            if !path.exists() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "this device holds no copy of {device}'s audit log (home-role devices \
                         copy every device's log)"
                    ),
                ));
            }
            Some(path)
        }
        _ => None,
    };
    blocking(move || {
        let entries = match copy {
            Some(path) => hearth_stores::audit::entries_in(
                &path,
                q.since,
                q.device.as_deref(),
                q.action.as_deref(),
            )?,
            None => node
                .audit
                .entries(q.since, q.device.as_deref(), q.action.as_deref())?,
        };
        Ok(Json(AuditEntries { entries }))
    })
    .await
}

async fn audit_verify(State(node): State<Arc<Node>>) -> ApiResult<AuditVerified> {
    blocking(move || {
        let result =
            hearth_stores::audit::verify(node.audit.path(), &node.config.node_key.public())?;
        let copies = crate::audit_copy::verify_copies(&node.config.data_dir)?;
        Ok(Json(AuditVerified::of(result, copies)))
    })
    .await
}

async fn invite(
    State(node): State<Arc<Node>>,
    body: Result<Json<InviteRequest>, JsonRejection>,
) -> ApiResult<Invite> {
    let Json(body) = body?;
    let Some(mesh) = node.mesh.get() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh",
            "this node runs without the mesh",
        ));
    };
    let role = body
        .role
        .as_deref()
        .map(str::parse::<hearth_protocol::capability::Role>)
        .transpose()
        .map_err(ApiError::invalid)?;
    let ttl = std::time::Duration::from_millis(body.ttl_ms.unwrap_or(600_000));
    let ticket = mesh
        .invite(ttl, body.name, role, body.addrs)
        .await
        .map_err(mesh_error)?;
    let expires = hearth_protocol::time::UnixMillis::from_system_time(std::time::SystemTime::now())
        .saturating_add(ttl);
    Ok(Json(Invite {
        ticket,
        expires: expires.to_string(),
    }))
}

fn mesh_of(node: &Node) -> Result<&crate::mesh::MeshHandle, ApiError> {
    node.mesh.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh",
            "this node runs without the mesh",
        )
    })
}

async fn devices(State(node): State<Arc<Node>>) -> ApiResult<Devices> {
    let list = mesh_of(&node)?
        .devices()
        .await
        .map_err(|err| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mesh", err.to_string()))?;
    Ok(Json(Devices { devices: list }))
}

/// A mesh command's failure as an API error: unknown device 404, not allowed 403, a
/// certificate that no longer holds 409.
fn mesh_error(err: crate::mesh::MeshError) -> ApiError {
    match err {
        crate::mesh::MeshError::NoSuchDevice(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", err.to_string())
        }
        crate::mesh::MeshError::BadScope(_) | crate::mesh::MeshError::BadAddress(_) => {
            ApiError::invalid(err.to_string())
        }
        crate::mesh::MeshError::NotApprovable(..) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string())
        }
        crate::mesh::MeshError::NotOwner(_)
        | crate::mesh::MeshError::CannotAdmit
        | crate::mesh::MeshError::NameTaken(_)
        | crate::mesh::MeshError::Ambiguous { .. }
        | crate::mesh::MeshError::RevokeSelf(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "refused", err.to_string())
        }
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mesh", other.to_string()),
    }
}

async fn revoke(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<DeviceRevoked> {
    let peer = mesh_of(&node)?.revoke(&name).await.map_err(mesh_error)?;
    Ok(Json(DeviceRevoked {
        revoked: name,
        peer_id: peer,
    }))
}

/// Starts fetching every sealed store from the sealed holder at `from`: dials it, and
/// places each sealed store this device can open (the owner key opens them all) on
/// this device too. Needs the owner key here.
async fn restore(
    State(node): State<Arc<Node>>,
    body: Result<Json<RestoreRequest>, JsonRejection>,
) -> ApiResult<Restore> {
    let Json(body) = body?;
    let owner = node.catalogue.as_ref().is_some_and(|c| c.is_owner_device());
    if !owner {
        record(
            &node,
            "sealed.restore",
            &body.from,
            "refused: the owner key is not on this device",
            0,
        )?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "refused",
            "restoring sealed stores needs the owner key on this device (hearth init --recover)",
        ));
    }
    let addr: libp2p::Multiaddr = body
        .from
        .parse()
        .map_err(|err| ApiError::invalid(format!("{:?} is not a multiaddr: {err}", body.from)))?;
    let replication = node.replication.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh",
            "this node does not replicate (no mesh)",
        )
    })?;
    record(
        &node,
        "sealed.restore",
        &body.from,
        "allowed: fetching sealed stores",
        0,
    )?;
    mesh_of(&node)?.bootstrap(addr).await.map_err(mesh_error)?;
    replication.restore();
    restore_status(State(node)).await
}

async fn restore_status(State(node): State<Arc<Node>>) -> ApiResult<Restore> {
    let status = match node.replication.get() {
        Some(handle) => handle.sealed().await,
        None => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh",
            "this node does not replicate (no mesh)",
        )
    })?;
    let stores: Vec<RestoreStore> = status
        .stores
        .into_iter()
        .map(|p| RestoreStore {
            name: p.store,
            holder: p.holder,
            online: p.online,
            fetched: p.fetched,
            kept: p.kept,
            refused: p.refused,
            records: p.records,
        })
        .collect();
    let done = !status.catalogue_from.is_empty()
        && stores
            .iter()
            .filter(|s| s.online)
            .all(|s| s.kept.is_some_and(|k| s.fetched >= k));
    Ok(Json(Restore {
        catalogue_from: status.catalogue_from,
        stores,
        done,
    }))
}

async fn allow_admit(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Result<Json<AllowAdmitRequest>, JsonRejection>,
) -> ApiResult<AdmitGrant> {
    let Json(body) = body?;
    let ttl = std::time::Duration::from_millis(body.ttl_ms.unwrap_or(30 * 24 * 3600 * 1000));
    let roles: hearth_protocol::capability::Roles = body
        .roles
        .as_deref()
        .unwrap_or("mobile")
        .parse()
        .map_err(ApiError::invalid)?;
    let scope = crate::mesh::AdmitScope {
        roles,
        names: body.names.unwrap_or_else(|| "*".into()),
    };
    let names = scope.names.clone();
    let id = mesh_of(&node)?
        .allow_admit(&name, ttl, scope)
        .await
        .map_err(mesh_error)?;
    let expires = hearth_protocol::time::UnixMillis::from_system_time(std::time::SystemTime::now())
        .saturating_add(ttl);
    Ok(Json(AdmitGrant {
        device: name,
        cap_id: id.to_string(),
        expires: expires.to_string(),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        names,
    }))
}

async fn approve(State(node): State<Arc<Node>>, Path(name): Path<String>) -> ApiResult<Approved> {
    let changed = mesh_of(&node)?.approve(&name).await.map_err(mesh_error)?;
    Ok(Json(Approved {
        device: name,
        approved: true,
        changed,
    }))
}

async fn revoke_capability(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<CapRevoked> {
    let cap: hearth_protocol::capability::CapId =
        id.parse()
            .map_err(|err: hearth_protocol::encoding::DecodeError| {
                ApiError::invalid(err.to_string())
            })?;
    mesh_of(&node)?
        .revoke_capability(cap)
        .await
        .map_err(mesh_error)?;
    Ok(Json(CapRevoked {
        revoked: cap.to_string(),
    }))
}

async fn list_drivers(State(node): State<Arc<Node>>) -> ApiResult<Drivers> {
    Ok(Json(Drivers {
        drivers: node.drivers.list(),
    }))
}

async fn get_driver(State(node): State<Arc<Node>>, Path(name): Path<String>) -> ApiResult<Driver> {
    let listed = node
        .drivers
        .list()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no driver is named {name:?}"),
            )
        })?;
    Ok(Json(listed))
}

async fn add_driver(
    State(node): State<Arc<Node>>,
    body: Result<Json<AddDriver>, JsonRejection>,
) -> Result<(StatusCode, Json<Driver>), ApiError> {
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(driver_added(&node, body).await?)))
}

/// Adds the driver `body` describes, as `POST /v1/drivers` and the dashboard do: the
/// same defaults, checks and audit entry.
pub(crate) async fn driver_added(node: &Arc<Node>, body: AddDriver) -> Result<Driver, ApiError> {
    let kind: crate::drivers::Kind = body.kind.parse().map_err(ApiError::invalid)?;
    let name = match body.name {
        Some(name) => name,
        None => {
            let taken: Vec<String> = node.drivers.list().into_iter().map(|d| d.name).collect();
            let base = kind.as_str().to_owned();
            (1..)
                .map(|n| {
                    if n == 1 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    }
                })
                .find(|candidate| !taken.contains(candidate))
                .unwrap_or(base)
        }
    };
    let (user, password) = match (kind, body.user, body.password) {
        (crate::drivers::Kind::HttpIngest, user, password) => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut bytes = [0u8; 18];
                    getrandom::fill(&mut bytes)
                        .map_err(|err| ApiError::invalid(err.to_string()))?;
                    hex::encode(bytes)
                }
            };
            (
                Some(user.unwrap_or_else(|| "hearth".into())),
                Some(password),
            )
        }
        (_, user, password) => (user, password),
    };
    let spec = crate::drivers::Spec {
        store: body
            .store
            .unwrap_or_else(|| kind.default_store().to_owned()),
        name,
        kind,
        interval_secs: body.interval_secs,
        listen: body.listen,
        user,
        password,
        broker: body.broker,
        topic: body.topic,
        actuate: body.actuate,
        file: body.file,
        ts_column: body.ts_column,
        on_error: body.on_error,
        unit: body.unit,
        description: body.description,
    };
    let added = blocking({
        let node = node.clone();
        let spec = spec.clone();
        move || crate::drivers::add(&node, spec).map_err(ApiError::invalid)
    })
    .await?;
    record(
        node,
        "driver.add",
        &added.name,
        &format!("allowed: {}", kind.as_str()),
        0,
    )?;
    let mut answer = added;
    if kind == crate::drivers::Kind::HttpIngest {
        // The listener reports its address once bound.
        let mut url = None;
        for _ in 0..50 {
            url = node
                .drivers
                .list()
                .into_iter()
                .find(|d| d.name == spec.name)
                .and_then(|d| d.detail);
            if url.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        answer.url = url;
        answer.user = spec.user;
        answer.password = spec.password;
    }
    Ok(answer)
}

async fn remove_driver(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Removed> {
    blocking(move || {
        crate::drivers::remove(&node, &name)
            .map_err(|err| ApiError::new(StatusCode::NOT_FOUND, "not_found", err))?;
        record(&node, "driver.remove", &name, "allowed", 0)?;
        Ok(Json(Removed { removed: name }))
    })
    .await
}

async fn submit_job(
    State(node): State<Arc<Node>>,
    query: Result<Query<JobQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> ApiResult<JobAnswer> {
    use hearth_protocol::compute::JobReply;
    let Query(query) = query?;
    let wait = std::time::Duration::from_millis(query.wait_ms).min(crate::compute::MAX_WAIT);
    match crate::compute::submit(&node, body.to_vec(), wait).await {
        JobReply::Done { result, receipt } => {
            let parsed: Value =
                serde_json::from_str(&result).unwrap_or(Value::String(result.clone()));
            Ok(Json(JobAnswer::Done(Box::new(JobDone {
                result: parsed,
                result_text: result,
                receipt: Receipt::of(&receipt),
            }))))
        }
        JobReply::Deployed { app, device } => {
            Ok(Json(JobAnswer::Deployed(Deployed { app, device })))
        }
        JobReply::Refused(reason) => Err(ApiError::new(StatusCode::FORBIDDEN, "refused", reason)),
        JobReply::Unavailable(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            reason,
        )),
        JobReply::Failed(reason) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "failed",
            reason,
        )),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    if !node.config.metrics {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are off: turn them on with `[metrics] enabled = true` in config.toml or \
             `hearth node run --metrics`",
        ));
    }
    let text = crate::metrics::render(&node).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be written",
        )
    })?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn list_apps(State(node): State<Arc<Node>>) -> ApiResult<Apps> {
    let apps = blocking(move || Ok(crate::compute::apps::list_all(&node))).await?;
    Ok(Json(Apps { apps }))
}

async fn stop_app(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<AppStopped> {
    if !crate::compute::apps::valid_name(&name) {
        return Err(ApiError::invalid(format!("{name:?} is not an app name")));
    }
    let stopped = blocking({
        let node = node.clone();
        let name = name.clone();
        move || {
            crate::compute::apps::stop(&node, &name)
                .map_err(|message| ApiError::new(StatusCode::NOT_FOUND, "not_found", message))
        }
    })
    .await?;
    record(
        &node,
        "compute.stop",
        &name,
        &format!("allowed: on {stopped}"),
        0,
    )?;
    Ok(Json(AppStopped {
        name,
        device: stopped,
    }))
}

fn gateway(node: &Node) -> Result<Arc<crate::export::Gateway>, ApiError> {
    node.exports.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node has no export gateway (it is not part of a mesh)",
        )
    })
}

impl From<crate::export::ExportError> for ApiError {
    fn from(err: crate::export::ExportError) -> Self {
        use crate::export::ExportError;
        let (status, code) = match &err {
            ExportError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ExportError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ExportError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
        };
        Self::new(status, code, err.to_string())
    }
}

/// An export id from a path: 32 hex digits.
fn export_id(id: &str) -> Result<String, ApiError> {
    id.parse::<hearth_protocol::export::ExportId>()
        .map(|id| id.to_string())
        .map_err(|_| {
            ApiError::invalid(format!(
                "{:?} is not an export id (32 hex digits)",
                crate::compute::cut(id, 80)
            ))
        })
}

async fn list_exports(State(node): State<Arc<Node>>) -> ApiResult<Exports> {
    let gateway = gateway(&node)?;
    let (paused, exports) = blocking(move || Ok(gateway.list())).await?;
    Ok(Json(Exports { paused, exports }))
}

async fn show_export(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<ExportInfo> {
    let gateway = gateway(&node)?;
    let id = export_id(&id)?;
    Ok(Json(blocking(move || Ok(gateway.show(&id)?)).await?))
}

/// An owner's decision on an export: release or drop.
type Decision =
    fn(&crate::export::Gateway, &Node, &str) -> Result<ExportInfo, crate::export::ExportError>;

async fn decide_export(node: Arc<Node>, id: &str, decide: Decision) -> ApiResult<ExportInfo> {
    let gateway = gateway(&node)?;
    let id = export_id(id)?;
    Ok(Json(
        blocking(move || Ok(decide(&gateway, &node, &id)?)).await?,
    ))
}

async fn release_export(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<ExportInfo> {
    decide_export(node, &id, crate::export::Gateway::release).await
}

async fn drop_export(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<ExportInfo> {
    decide_export(node, &id, crate::export::Gateway::drop_export).await
}

async fn set_exports_paused(node: Arc<Node>, paused: bool) -> ApiResult<ExportsPaused> {
    let gateway = gateway(&node)?;
    let waiting = blocking(move || Ok(gateway.set_paused(&node, paused)?)).await?;
    Ok(Json(ExportsPaused { paused, waiting }))
}

async fn pause_exports(State(node): State<Arc<Node>>) -> ApiResult<ExportsPaused> {
    set_exports_paused(node, true).await
}

async fn resume_exports(State(node): State<Arc<Node>>) -> ApiResult<ExportsPaused> {
    set_exports_paused(node, false).await
}
