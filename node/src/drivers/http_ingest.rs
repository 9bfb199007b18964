//! http-ingest: an HTTP endpoint for devices that push readings into one store.
//!
//! - `POST /owntracks`: the OwnTracks app in HTTP mode. Its JSON message
//!   (`_type: location` with `lat`, `lon`, `tst`, `acc`, `batt`, …) becomes a reading at
//!   `tst` whose value is the message without `_type` (and with `user` and `device` from
//!   the `X-Limit-U` / `X-Limit-D` headers when the app sends them). Other message types
//!   (`transition`, `waypoint`, `lwt`, …) and the empty body the app posts when a friend
//!   is removed are acknowledged and not stored; an `encrypted` message is refused with
//!   a 400 saying why. The answer is what OwnTracks expects: `200` with a JSON array
//!   (empty: nothing to deliver back).
//! - `POST /readings`: generic JSON readings: one object, a JSON array, or JSON lines.
//!   An object with exactly `ts` (ms) and `value` is a record; anything else is a value
//!   stamped with the time of arrival.
//!
//! Every request needs the driver's credentials, as HTTP basic auth (what OwnTracks
//! sends) or `Authorization: Bearer PASSWORD`; they are scoped to this driver's store.
//! They are checked before anything of the body is read: a request without them gets
//! `401` and its body is never taken in. A body that is not acceptable gets a 4xx
//! with a message and writes nothing. The endpoint listens on 127.0.0.1 unless the
//! driver names another address; on loopback it speaks plain HTTP, anywhere else HTTPS
//! only, with the certificate `driver add` made for the driver (see `tls`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Context, Outcome};
use hearth_stores::Reading;

pub(crate) mod tls;

/// Largest request body.
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Clone)]
struct Ingest {
    ctx: Context,
    credentials: Arc<(String, String)>,
}

fn reply(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn authorized(ingest: &Ingest, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (user, password) = &*ingest.credentials;
    let presented = if let Some(token) = value.strip_prefix("Bearer ") {
        token.as_bytes().to_vec()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let expected_user = format!("{user}:");
        match decoded.strip_prefix(expected_user.as_bytes()) {
            Some(rest) => rest.to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    let expected = password.as_bytes();
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"hearth\"")],
        Json(json!({ "error": "missing or wrong credentials for this ingest endpoint" })),
    )
        .into_response()
}

async fn store(ingest: &Ingest, readings: Vec<Reading>) -> Response {
    let count = readings.len() as u64;
    if readings.is_empty() {
        return (StatusCode::OK, Json(json!({ "appended": 0 }))).into_response();
    }
    let store = ingest.ctx.store.clone();
    match tokio::task::spawn_blocking(move || store.append(readings)).await {
        Ok(Ok(())) => {
            ingest.ctx.wrote(count);
            (StatusCode::OK, Json(json!({ "appended": count }))).into_response()
        }
        Ok(Err(hearth_stores::StoreError::Invalid(message))) => {
            reply(StatusCode::UNPROCESSABLE_ENTITY, message)
        }
        Ok(Err(err)) => reply(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        Err(err) => reply(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// An OwnTracks message as a reading, or why it is not acceptable; `None` for a message
/// type that is acknowledged but not stored.
pub fn owntracks_reading(body: &[u8], headers: &HeaderMap) -> Result<Option<Reading>, String> {
    // The app posts an empty body when a friend is removed from it (what MQTT mode
    // publishes as an empty retained message): nothing to store.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|err| format!("the body is not JSON: {err}"))?;
    let Value::Object(mut message) = value else {
        return Err("an OwnTracks message is a JSON object".into());
    };
    let kind = message
        .remove("_type")
        .and_then(|t| t.as_str().map(str::to_owned))
        .ok_or("the message has no _type")?;
    match kind.as_str() {
        "location" => {}
        "encrypted" => {
            return Err(
                "the message is encrypted (the app has an encryption key set); this \
                 endpoint stores plain locations: clear the key in the app's settings"
                    .into(),
            );
        }
        // transition, waypoint(s), lwt, card, status, steps, …: acknowledged only.
        _ => return Ok(None),
    }
    let coordinate = |name: &str, limit: f64| -> Result<f64, String> {
        let v = message
            .get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("a location needs a numeric {name}"))?;
        if v.abs() > limit {
            return Err(format!("{name} {v} is out of range"));
        }
        Ok(v)
    };
    coordinate("lat", 90.0)?;
    coordinate("lon", 180.0)?;
    let tst = message
        .get("tst")
        .and_then(Value::as_u64)
        .ok_or("a location needs tst, the time in seconds since the epoch")?;
    let ts = tst.checked_mul(1000).ok_or("tst is out of range")?;
    for (name, header) in [("user", "x-limit-u"), ("device", "x-limit-d")] {
        if let Some(v) = headers.get(header).and_then(|v| v.to_str().ok()) {
            message
                .entry(name)
                .or_insert_with(|| Value::String(v.to_owned()));
        }
    }
    Ok(Some(Reading::new(ts, Value::Object(message))))
}

async fn owntracks(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    match owntracks_reading(&body, &headers) {
        Ok(Some(reading)) => {
            let stored = store(&ingest, vec![reading]).await;
            if stored.status() != StatusCode::OK {
                return stored;
            }
            // OwnTracks reads the answer as a list of messages to deliver to the phone.
            (StatusCode::OK, Json(json!([]))).into_response()
        }
        Ok(None) => (StatusCode::OK, Json(json!([]))).into_response(),
        Err(message) => {
            // The app does not show the answer to a post prominently: say it here too.
            ingest.ctx.set(|s| {
                s.last_error = Some(format!("refused an OwnTracks message: {message}"));
            });
            reply(StatusCode::BAD_REQUEST, message)
        }
    }
}

/// Generic readings from a body: one JSON value, a JSON array, or JSON lines.
pub fn json_readings(body: &[u8], now: u64) -> Result<Vec<Reading>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let items: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items,
        Ok(item) => vec![item],
        Err(_) => {
            let mut items = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                items.push(
                    serde_json::from_str(line)
                        .map_err(|err| format!("line {}: not JSON: {err}", n + 1))?,
                );
            }
            items
        }
    };
    if items.len() > hearth_stores::MAX_BATCH {
        return Err(format!(
            "{} readings in one request; the limit is {}",
            items.len(),
            hearth_stores::MAX_BATCH
        ));
    }
    Ok(items
        .into_iter()
        .map(|item| super::to_reading(item, now))
        .collect())
}

async fn readings(State(ingest): State<Ingest>, body: Bytes) -> Response {
    match json_readings(&body, super::now_ms()) {
        Ok(readings) => store(&ingest, readings).await,
        Err(message) => reply(StatusCode::BAD_REQUEST, message),
    }
}

async fn health() -> Json<Value> {
    Json(json!({ "ok": true }))
}

/// Refuses a request without the driver's credentials before its body is read (the
/// handlers' body extractors run only after this lets the request through).
async fn require_credentials(
    State(ingest): State<Ingest>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if authorized(&ingest, request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

/// Serves until stopped: plain HTTP on loopback, HTTPS anywhere else.
pub async fn run(mut ctx: Context) -> Result<Outcome, String> {
    let listen: SocketAddr = ctx
        .spec
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
        .map_err(|_| "the listen address is not valid".to_owned())?;
    // Beyond loopback: HTTPS with the driver's own certificate, or nothing; a missing
    // or broken certificate stays so until someone acts, so the driver fails.
    let identity = if tls::serves_tls(listen.ip()) {
        match tls::load(&ctx.node.config.data_dir, &ctx.spec.name) {
            Ok(identity) => Some(identity),
            Err(reason) => return Ok(Outcome::Refused(reason)),
        }
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    let bound = listener.local_addr().map_err(|err| err.to_string())?;
    if listen.port() == 0 {
        // Keep the port chosen now, so devices configured with the URL keep working.
        ctx.spec.listen = Some(SocketAddr::new(listen.ip(), bound.port()).to_string());
        super::remember(&ctx.node, &ctx.spec);
    }
    let certificate = identity.as_ref().map(|i| i.certificate.clone());
    ctx.set(|s| {
        s.tls_fingerprint = certificate.as_ref().map(|c| c.fingerprint.clone());
        s.tls_certificate = certificate.map(|c| c.file);
    });
    // The address it really listens on; an unspecified one is every interface.
    let scheme = if identity.is_some() { "https" } else { "http" };
    ctx.running(Some(format!("{scheme}://{bound}")));
    let ingest = Ingest {
        credentials: Arc::new((
            ctx.spec.user.clone().unwrap_or_default(),
            ctx.spec.password.clone().unwrap_or_default(),
        )),
        ctx: ctx.clone(),
    };
    let app = Router::new()
        .route("/", get(health))
        .route("/owntracks", post(owntracks))
        .route("/readings", post(readings))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            ingest.clone(),
            require_credentials,
        ))
        .with_state(ingest);
    let served = match identity {
        Some(identity) => {
            let listener = tls::Listener::new(listener, identity.config)
                .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
            serve(listener, app, ctx).await
        }
        None => serve(listener, app, ctx).await,
    };
    served.map_err(|err| format!("the ingest endpoint failed: {err}"))?;
    Ok(Outcome::Stopped)
}

/// Serves `app` on `listener` until the driver is stopped.
async fn serve<L>(listener: L, app: Router, mut stop: Context) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await
}
