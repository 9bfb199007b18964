//! Live updates: one server-sent event stream per open page (`events`). Every
//! half second the node looks at its devices and its audit log and sends what changed:
//! `devices` (each device's name, online, revoked) when any of that changed, `drivers`
//! (each driver's state, records, progress, last error) likewise, and one `audit`
//! event per new entry of this device's log; on the stores page (`events?with=sync`),
//! `sync` (each store held here and, in words, where it is in sync) when it changed. `app.js` applies them to the page
//! (text only, never markup). The stream ends when the node stops or the session
//! ends (logout, expiry); at most [`super::MAX_STREAMS`] are open at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;

use crate::node::Node;

/// How often the stream looks for changes.
const EVERY: Duration = Duration::from_millis(500);
/// Most audit entries sent in one look (a burst beyond it arrives over the next looks).
const MAX_ENTRIES: usize = 200;

/// What one look found.
struct Look {
    node: Arc<Node>,
    session: [u8; 32],
    _slot: Slot,
    devices: Option<String>,
    drivers: Option<String>,
    /// Each store's sync state, when the page asked for it.
    sync: Option<Option<String>>,
    next_seq: u64,
    stopping: tokio::sync::watch::Receiver<bool>,
    first: bool,
}

async fn devices_json(node: &Node) -> Option<String> {
    let mesh = node.mesh.get()?;
    let devices = mesh.devices().await.ok()?;
    let list: Vec<_> = devices
        .iter()
        .map(|d| json!({"peer": d.peer_id, "name": d.name, "online": d.online, "revoked": d.revoked}))
        .collect();
    Some(serde_json::Value::Array(list).to_string())
}

async fn sync_json(node: &Arc<Node>) -> Option<String> {
    let sync = crate::api::sync_status(node).await.ok()?;
    let list: Vec<_> = sync
        .iter()
        .map(|s| json!({"name": s.name, "text": super::stores::sync_text(s)}))
        .collect();
    Some(serde_json::Value::Array(list).to_string())
}

fn drivers_json(node: &Node) -> String {
    let list: Vec<_> = node
        .drivers
        .list()
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "state": d.state,
                "class": super::drivers::state_class(&d.state),
                "records": d.records,
                "progress": d.progress,
                "progress_text": super::drivers::progress_text(d),
                "last_error": d.last_error.as_deref().unwrap_or("-"),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

async fn look(mut state: Look) -> Option<(Vec<Event>, Look)> {
    if !state.first {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            _ = state.stopping.wait_for(|stop| *stop) => return None,
        }
    }
    if *state.stopping.borrow() || !state.node.dashboard.live(&state.session) {
        return None;
    }
    state.first = false;
    let mut events = Vec::new();
    let devices = devices_json(&state.node).await;
    if devices.is_some() && devices != state.devices {
        if let Some(data) = &devices {
            events.push(Event::default().event("devices").data(data.clone()));
        }
        state.devices = devices;
    }
    let drivers = drivers_json(&state.node);
    if state.drivers.as_ref() != Some(&drivers) {
        events.push(Event::default().event("drivers").data(drivers.clone()));
        state.drivers = Some(drivers);
    }
    if let Some(last) = &state.sync {
        let now = sync_json(&state.node).await;
        if now.is_some() && now != *last {
            if let Some(data) = &now {
                events.push(Event::default().event("sync").data(data.clone()));
            }
            state.sync = Some(now);
        }
    }
    let node = state.node.clone();
    let from = state.next_seq;
    let read = tokio::task::spawn_blocking(move || node.audit.entries_from(from, MAX_ENTRIES))
        .await
        .ok()
        .and_then(Result::ok);
    if let Some((entries, _)) = read {
        for entry in &entries {
            events.push(
                Event::default().event("audit").data(
                    json!({
                        "seq": entry.seq,
                        "time": hearth_protocol::time::UnixMillis(entry.time).to_string(),
                        "device": entry.device,
                        "actor": entry.actor,
                        "action": entry.action,
                        "object": entry.object,
                        "outcome": entry.outcome,
                        "class": hearth_stores::audit::outcome_class(&entry.outcome),
                        "bytes": entry.bytes,
                    })
                    .to_string(),
                ),
            );
        }
        state.next_seq = entries.last().map_or(from, |e| e.seq + 1);
    }
    Some((events, state))
}

/// A place among the open streams, given back when the stream ends.
struct Slot(Arc<Node>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .dashboard
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a page asks its stream for beyond the usual.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct With {
    #[serde(default)]
    with: Option<String>,
}

/// `GET events`.
pub(super) async fn events(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<super::Ctx>,
    query: Result<axum::extract::Query<With>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    let with_sync = query.is_ok_and(|q| q.0.with.as_deref() == Some("sync"));
    use axum::response::IntoResponse as _;
    let open = node
        .dashboard
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let slot = Slot(node.clone());
    if open >= super::MAX_STREAMS {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many live pages are open; close some",
        )
            .into_response();
    }
    stream(node, ctx.session, slot, with_sync)
        .await
        .into_response()
}

async fn stream(
    node: Arc<Node>,
    session: [u8; 32],
    slot: Slot,
    with_sync: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let next_seq = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.audit.entries_from(u64::MAX, 0))
            .await
            .ok()
            .and_then(Result::ok)
            .map_or(0, |(_, next)| next)
    };
    let state = Look {
        stopping: node.stopping.subscribe(),
        session,
        _slot: slot,
        node,
        devices: None,
        drivers: None,
        sync: with_sync.then_some(None),
        next_seq,
        first: true,
    };
    let stream = futures_util::stream::unfold(state, look);
    let stream = futures_util::StreamExt::flat_map(stream, |events| {
        futures_util::stream::iter(events.into_iter().map(Ok))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
