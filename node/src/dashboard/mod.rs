//! The owner's dashboard, served by the node on its loopback API address under
//! `/ui/<secret>/`, from HTML made here, and a style sheet and one small script
//! compiled into the binary (no CDN, nothing fetched at build or run time).
//!
//! Who may see it: `hearth dashboard` asks the node (with the API key) for a one-time
//! login link; opening it exchanges the link's token for a session cookie (HttpOnly,
//! SameSite=Strict, 12 hours) and the token is spent. The `<secret>` is 128 random
//! bits drawn when the node starts; the cookie's `Path` is scoped to it. Browsers send
//! a cookie of `127.0.0.1` to every port of that address, so without the secret path
//! any other local web server (a development server, another program's UI) would be
//! handed the session; with it, they are not, and a page they serve cannot name a
//! dashboard URL either. Every request under the secret is checked before anything
//! else: its `Host` must name this node's loopback address (a page of another site
//! that rebinds a name to 127.0.0.1 gets nothing), it must carry a live session (only
//! the login exchange does not), and a request that changes anything must be a form
//! `POST` carrying the session's CSRF token. Every answer carries a strict
//! Content-Security-Policy. The bearer-key API under `/v1/` is unchanged.
//!
//! The pages, one module each: devices (revoke; invite with a QR code), stores (a
//! chart of a timeseries store's readings, kv entries, sync state) and a store's
//! placement (previewed, then changed), approvals (review a manifest in plain words,
//! approve it) and capabilities (signed here; revoke), computations (apps, jobs and
//! their receipts), the audit (filters, pages, verification), drivers (add; progress),
//! exports (release, drop). `live` streams what changes to the open pages. Every
//! action calls the code behind the API (`crate::api`), never a copy of it.

mod approvals;
mod audit;
mod computations;
mod devices;
mod drivers;
mod live;
mod page;
mod placement;
mod stores;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::node::Node;
use page::{Page, esc};

/// How long a login link works.
pub const LINK_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
const COOKIE: &str = "hearth_session";
/// The largest form the pages take (a manifest is at most 64 KiB).
const MAX_FORM_BYTES: usize = 256 * 1024;
/// Most live event streams open at once.
pub(super) const MAX_STREAMS: usize = 16;
/// Most login links and sessions kept at once (the oldest go first).
const MAX_KEPT: usize = 64;
/// What every dashboard answer may load: its own style sheet, script and event
/// stream, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'self'";

fn now_ms() -> u64 {
    crate::clock::now().0
}

fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| format!("no randomness: {err}"))?;
    Ok(hex::encode(bytes))
}

/// Tokens are kept by their hash: a memory dump does not hand out live sessions.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// One session.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires: u64,
}

/// Login links and sessions, in memory: a node restart logs everyone out.
#[derive(Debug)]
pub struct Sessions {
    /// The secret path segment every dashboard URL of this run starts with.
    prefix: String,
    links: Mutex<HashMap<[u8; 32], u64>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Live event streams open now.
    pub(super) streams: std::sync::atomic::AtomicUsize,
}

/// Keeps at most [`MAX_KEPT`] entries, dropping the expired and then the oldest.
fn prune<V>(map: &mut HashMap<[u8; 32], V>, now: u64, expires: impl Fn(&V) -> u64) {
    map.retain(|_, v| expires(v) > now);
    while map.len() >= MAX_KEPT {
        let Some(oldest) = map.iter().min_by_key(|(_, v)| expires(v)).map(|(k, _)| *k) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    /// No links or sessions yet, under a fresh secret path.
    pub fn new() -> Result<Self, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|err| format!("no randomness: {err}"))?;
        Ok(Self {
            prefix: hex::encode(bytes),
            links: Mutex::default(),
            sessions: Mutex::default(),
            streams: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The path every dashboard URL of this run starts with, `/ui/<secret>`.
    pub fn base_path(&self) -> String {
        format!("/ui/{}", self.prefix)
    }

    /// A new one-time login token, working for `ttl`.
    pub fn new_link(&self, ttl: Duration) -> Result<(String, u64), String> {
        let token = random_token()?;
        let now = now_ms();
        let expires = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut links, now, |e| *e);
        links.insert(digest(&token), expires);
        Ok((token, expires))
    }

    /// Spends a login token: a session id and its CSRF token, or `None` when the token
    /// is unknown, spent or expired.
    fn exchange(&self, token: &str) -> Option<(String, Session)> {
        let now = now_ms();
        let expires = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest(token))?;
        if expires <= now {
            return None;
        }
        let id = random_token().ok()?;
        let session = Session {
            csrf: random_token().ok()?,
            expires: now.saturating_add(u64::try_from(SESSION_TTL.as_millis()).unwrap_or(0)),
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut sessions, now, |s| s.expires);
        sessions.insert(digest(&id), session.clone());
        Some((id, session))
    }

    /// Is the session with this digest still live?
    pub(super) fn live(&self, digest_of_id: &[u8; 32]) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest_of_id)
            .is_some_and(|s| s.expires > now_ms())
    }

    fn session(&self, id: &str) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&digest(id))
            .filter(|s| s.expires > now_ms())
            .cloned()
    }

    fn end(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest(id));
    }
}

/// The dashboard's routes, under `/ui/<secret>/`. Nothing else under `/ui/` answers
/// (but with a bare 404).
pub fn router(node: Arc<Node>) -> Router {
    let base = node.dashboard.base_path();
    let at = |path: &str| format!("{base}{path}");
    let guarded = Router::new()
        .route(&at(""), get(home))
        .route(&at("/"), get(home))
        .route(&at("/app.css"), get(style))
        .route(&at("/app.js"), get(script))
        .route(&at("/events"), get(live::events))
        .route(&at("/audit"), get(audit::page))
        .route(&at("/audit/verify"), post(audit::verify))
        .route(&at("/approvals"), get(approvals::form))
        .route(&at("/approvals/review"), post(approvals::review))
        .route(&at("/approvals/approve"), post(approvals::approve))
        .route(&at("/computations"), get(computations::page))
        .route(&at("/computations/verify"), post(computations::verify))
        .route(&at("/drivers"), get(drivers::page))
        .route(&at("/drivers/add"), post(drivers::add))
        .route(&at("/capabilities"), get(approvals::list))
        .route(&at("/capabilities/{id}/revoke"), post(approvals::revoke))
        .route(&at("/stores"), get(stores::list))
        .route(&at("/stores/{name}"), get(stores::show))
        .route(
            &at("/stores/{name}/placement"),
            get(placement::show).post(placement::preview),
        )
        .route(
            &at("/stores/{name}/placement/apply"),
            post(placement::apply),
        )
        .route(&at("/devices"), get(devices::page))
        .route(&at("/devices/invite"), post(devices::invite))
        .route(
            &at("/devices/{peer}/revoke"),
            get(devices::confirm_revoke).post(devices::revoke),
        )
        .route(&at("/exports"), get(exports))
        .route(&at("/exports/{id}"), get(export))
        .route(&at("/exports/{id}/release"), post(release))
        .route(&at("/exports/{id}/drop"), post(drop_export))
        .route(&at("/logout"), post(logout))
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            require_session,
        ));
    Router::new()
        .route(&at("/login"), get(login))
        .merge(guarded)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn_with_state(node.clone(), check_host))
        .layer(middleware::from_fn(headers))
        .with_state(node)
}

async fn home(axum::Extension(ctx): axum::Extension<Ctx>) -> Response {
    Redirect::to(&ctx.url("devices")).into_response()
}

/// The security headers of every dashboard answer.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        // `no-referrer` would make browsers send `Origin: null` on the pages' own forms.
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `Host` values this node answers to: its loopback address and port, and
/// `localhost` with that port.
fn host_allowed(node: &Node, host: &str) -> bool {
    let Some(addr) = node.api_addr.get() else {
        return false;
    };
    let port = addr.port();
    let mut allowed = vec![addr.to_string(), format!("localhost:{port}")];
    if addr.ip().is_ipv4() {
        allowed.push(format!("[::1]:{port}"));
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(host))
}

async fn check_host(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(&node, host) {
        return refusal(
            StatusCode::MISDIRECTED_REQUEST,
            "This dashboard answers only at its own loopback address; open the link \
             `hearth dashboard` prints.",
        );
    }
    next.run(request).await
}

fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// What a guarded handler knows about its session.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    csrf: String,
    /// The session's id, hashed: a live stream checks it is still logged in.
    pub(super) session: [u8; 32],
    /// `/ui/<secret>/`, which every page's links are relative to.
    base: Arc<str>,
}

impl Ctx {
    pub(super) fn csrf(&self) -> &str {
        &self.csrf
    }

    /// The absolute path of `relative` (a page's path without the secret prefix).
    pub(super) fn url(&self, relative: &str) -> String {
        format!("{}{relative}", self.base)
    }
}

/// A form `POST` whose CSRF token matched its session: the session and the form. Any
/// other body (no token, a wrong one, not a form) is refused before the handler runs.
pub(super) struct Posted<T>(pub(super) Ctx, pub(super) T);

/// A form with nothing but its CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct Nothing {}

#[derive(Debug, Deserialize)]
struct CsrfOnly {
    csrf: String,
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let ctx = request
            .extensions()
            .get::<Ctx>()
            .cloned()
            .ok_or_else(forged)?;
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(forged());
        }
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|_| forged())?;
        let token: CsrfOnly = serde_urlencoded::from_bytes(&body).map_err(|_| forged())?;
        if !csrf_ok(&ctx, &token.csrf) {
            return Err(forged());
        }
        let form = serde_urlencoded::from_bytes(&body).map_err(|err| {
            refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("This form was not filled in as expected ({err}); nothing was done."),
            )
        })?;
        Ok(Self(ctx, form))
    }
}

/// Lets a request through only with a live session; a `POST` also needs a form body
/// (the handler checks its CSRF token) and, when the browser says where it comes from,
/// this very origin.
async fn require_session(
    State(node): State<Arc<Node>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(session) = cookie_of(request.headers()).and_then(|id| node.dashboard.session(&id))
    else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "You are not logged in, or your session ended. Run `hearth dashboard` on this \
             device and open the link it prints.",
        );
    };
    if request.method() == axum::http::Method::POST {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        let same = |o: &str| {
            o.strip_prefix("http://")
                .is_some_and(|host| host_allowed(&node, host))
        };
        if origin.is_some_and(|o| !same(o)) {
            return refusal(
                StatusCode::FORBIDDEN,
                "This request came from another site and was refused.",
            );
        }
    }
    let id = cookie_of(request.headers()).unwrap_or_default();
    request.extensions_mut().insert(Ctx {
        csrf: session.csrf,
        session: digest(&id),
        base: format!("{}/", node.dashboard.base_path()).into(),
    });
    next.run(request).await
}

/// Does a form's CSRF token match the session's (in constant time)?
pub(super) fn csrf_ok(ctx: &Ctx, presented: &str) -> bool {
    presented.len() == ctx.csrf.len()
        && presented
            .bytes()
            .zip(ctx.csrf.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn refusal(status: StatusCode, message: &str) -> Response {
    let body = Page::bare(
        "Hearth",
        &format!("<p class=\"error\">{}</p>", esc(message)),
    );
    (status, axum::response::Html(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    token: String,
}

async fn login(State(node): State<Arc<Node>>, Query(q): Query<LoginQuery>) -> Response {
    let Some((id, session)) = node.dashboard.exchange(&q.token) else {
        return refusal(
            StatusCode::FORBIDDEN,
            "This login link was used already or has expired. Run `hearth dashboard` for a \
             new one.",
        );
    };
    let max_age = SESSION_TTL.as_secs();
    let base = node.dashboard.base_path();
    let cookie =
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path={base}; Max-Age={max_age}");
    drop(session);
    let mut response = Redirect::to(&format!("{base}/devices")).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    let _ = node.audit.record(hearth_stores::audit::Event {
        actor: "local".into(),
        action: "dashboard.login".into(),
        object: node.config.name.clone(),
        cap_id: None,
        outcome: "allowed: a one-time link".into(),
        bytes: 0,
    });
    response
}

async fn logout(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    Posted(_, Nothing {}): Posted<Nothing>,
) -> Response {
    if let Some(id) = cookie_of(&headers) {
        node.dashboard.end(&id);
    }
    let mut response = refusal(StatusCode::OK, "You are logged out.");
    let expired = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path={}; Max-Age=0",
        node.dashboard.base_path()
    );
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(super) fn forged() -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        "This form's security token does not match your session, so nothing was done. \
         Reload the page and try again.",
    )
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
        .into_response()
}

/// Runs `f` off the async threads; a task that panicked is an error like any other.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|err| Err(err.to_string()))
}

pub(super) fn when(ms: u64) -> String {
    if ms == 0 {
        "never".into()
    } else {
        hearth_protocol::time::UnixMillis(ms).to_string()
    }
}

async fn exports(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut page = Page::new("Exports", &ctx);
    let Some(gateway) = node.exports.clone() else {
        page.error("This node has no export gateway (it is not part of a mesh).");
        return page.into_response();
    };
    let (paused, list) = gateway.list();
    if paused {
        page.push("<p class=\"error\">Sending is paused (<code>hearth export resume</code> starts it again).</p>");
    }
    if list.is_empty() {
        page.push(
            "<p>Nothing waits to leave this device, and nothing left in the last two days.</p>",
        );
        return page.into_response();
    }
    page.push("<table><caption>This device's export outbox</caption><thead><tr><th scope=\"col\">Export</th><th scope=\"col\">State</th><th scope=\"col\">Destination</th><th scope=\"col\">Bytes</th><th scope=\"col\">Queued</th></tr></thead><tbody>");
    for e in &list {
        page.push(&format!(
            "<tr data-export=\"{id}\"><th scope=\"row\"><a href=\"exports/{seg}\">{short}</a></th><td>{state}</td><td>{dest}</td><td class=\"num\">{bytes}</td><td>{queued}</td></tr>",
            id = esc(&e.id),
            seg = page::segment(&e.id),
            short = esc(e.id.get(..12).unwrap_or(&e.id)),
            state = esc(&e.state),
            dest = esc(&e.destination),
            bytes = e.bytes,
            queued = esc(&when(e.queued_at)),
        ));
    }
    page.push("</tbody></table>");
    page.into_response()
}

async fn export(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let mut page = Page::new("Export", &ctx);
    let Some(gateway) = node.exports.clone() else {
        page.error("This node has no export gateway (it is not part of a mesh).");
        return page.into_response();
    };
    let e = match gateway.show(&id) {
        Ok(e) => e,
        Err(err) => {
            page.error(&err.to_string());
            return page.into_response();
        }
    };
    page.push(&format!(
        "<dl><dt>State</dt><dd>{state}</dd><dt>Destination (outside your mesh)</dt><dd><strong>{dest}</strong></dd>\
         <dt>From</dt><dd>{source}</dd><dt>Size</dt><dd>{bytes} bytes of {ctype}</dd><dt>SHA-256</dt><dd><code>{sha}</code></dd>\
         <dt>Queued</dt><dd>{queued}</dd><dt>Expires</dt><dd>{expires}</dd>{error}</dl>\
         <h2>What would leave</h2><pre>{body}</pre>",
        state = esc(&e.state),
        dest = esc(&e.destination),
        source = esc(&e.source),
        bytes = e.bytes,
        ctype = esc(&e.content_type),
        sha = esc(&e.sha256),
        queued = esc(&when(e.queued_at)),
        expires = esc(&when(e.expires_at)),
        error = e
            .last_error
            .as_ref()
            .map(|err| format!("<dt>Last error</dt><dd>{}</dd>", esc(err)))
            .unwrap_or_default(),
        body = esc(e.body.as_deref().unwrap_or("")),
    ));
    let seg = page::segment(&e.id);
    if e.state == "held" {
        page.push(&format!(
            "<form method=\"post\" action=\"exports/{seg}/release\">{csrf}<button type=\"submit\">Release: send it to {dest}</button></form>",
            csrf = page.csrf_field(),
            dest = esc(&e.destination),
        ));
    }
    if e.state == "held" || e.state == "queued" {
        page.push(&format!(
            "<form method=\"post\" action=\"exports/{seg}/drop\">{csrf}<button class=\"danger\" type=\"submit\">Drop: never send it</button></form>",
            csrf = page.csrf_field(),
        ));
    }
    page.into_response()
}

async fn decide(
    node: Arc<Node>,
    ctx: &Ctx,
    id: &str,
    decide: fn(
        &crate::export::Gateway,
        &Node,
        &str,
    ) -> Result<crate::api::types::ExportInfo, crate::export::ExportError>,
) -> Response {
    let Some(gateway) = node.exports.clone() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "This node has no export gateway.",
        );
    };
    let id = id.to_owned();
    let node2 = node.clone();
    let decided = tokio::task::spawn_blocking(move || decide(&gateway, &node2, &id)).await;
    match decided {
        Ok(Ok(e)) => {
            Redirect::to(&ctx.url(&format!("exports/{}", page::segment(&e.id)))).into_response()
        }
        Ok(Err(err)) => {
            let mut page = Page::new("Export", ctx);
            page.error(&err.to_string());
            page.status(StatusCode::CONFLICT).into_response()
        }
        Err(err) => refusal(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

async fn release(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Posted(ctx, Nothing {}): Posted<Nothing>,
) -> Response {
    decide(node, &ctx, &id, crate::export::Gateway::release).await
}

async fn drop_export(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Posted(ctx, Nothing {}): Posted<Nothing>,
) -> Response {
    decide(node, &ctx, &id, crate::export::Gateway::drop_export).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_link_works_once_and_not_after_it_expires() {
        let sessions = Sessions::new().unwrap();
        let (token, _) = sessions.new_link(LINK_TTL).unwrap();
        let (id, session) = sessions.exchange(&token).unwrap();
        assert_eq!(sessions.session(&id).unwrap().csrf, session.csrf);
        assert!(sessions.exchange(&token).is_none(), "spent");
        let (expired, _) = sessions.new_link(Duration::ZERO).unwrap();
        assert!(sessions.exchange(&expired).is_none(), "expired");
        assert!(sessions.exchange("not a token").is_none());
        sessions.end(&id);
        assert!(sessions.session(&id).is_none(), "logged out");
    }

    #[test]
    fn links_and_sessions_are_bounded() {
        let sessions = Sessions::new().unwrap();
        let tokens: Vec<String> = (0..MAX_KEPT * 2)
            .map(|_| sessions.new_link(LINK_TTL).unwrap().0)
            .collect();
        assert!(sessions.links.lock().unwrap().len() <= MAX_KEPT);
        // The newest still work.
        assert!(sessions.exchange(tokens.last().unwrap()).is_some());
    }
}
