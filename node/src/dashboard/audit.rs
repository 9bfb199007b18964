//! The audit page: this device's entries (and, on a home device, the copies of the
//! other devices' logs), newest first, fifty to a page, filtered by device, action,
//! outcome and time (a filtered page is one pass over the log that keeps at most a
//! page of entries); new entries appear live on the first page; the verification of every
//! chain with its result per device.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::page::{Page, esc};
use super::{Ctx, when};
use crate::node::Node;

/// Entries to a page.
const PER_PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub(super) struct Filter {
    /// A device name; this device when absent.
    #[serde(default)]
    device: Option<String>,
    /// An exact action, or a prefix ending in `.`.
    #[serde(default)]
    action: Option<String>,
    /// `allowed`, `refused`, `failed` or `other`.
    #[serde(default)]
    outcome: Option<String>,
    /// Entries at or after this time (RFC 3339, UTC, e.g. `2026-12-07T10:00`).
    #[serde(default)]
    from: Option<String>,
    /// Entries before this time.
    #[serde(default)]
    to: Option<String>,
    /// Entries before this number (the next page).
    #[serde(default)]
    before: Option<u64>,
}

/// Most characters of one field an audit row shows (a copied log's entries may be
/// far longer; `hearth audit` shows them whole).
const MAX_SHOWN: usize = 1024;

fn shown_field(text: &str) -> std::borrow::Cow<'_, str> {
    let kept = crate::compute::cut(text, MAX_SHOWN);
    if kept.len() == text.len() {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(format!("{kept}… ({} bytes in all)", text.len()))
    }
}

/// A time typed into the filter: RFC 3339 in UTC, the seconds and the `Z` optional.
fn time_of(text: &str) -> Option<u64> {
    let text = text.trim();
    let full = match text.len() {
        10 => format!("{text}T00:00:00Z"),
        16 => format!("{text}:00Z"),
        19 => format!("{text}Z"),
        _ => text.to_owned(),
    };
    hearth_protocol::time::UnixMillis::parse(&full).map(|t| t.0)
}

fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn matches(
    entry: &hearth_stores::audit::Fields<'_>,
    action: Option<&str>,
    outcome: Option<&str>,
) -> bool {
    let action_ok = match action {
        None => true,
        Some(a) if a.ends_with('.') => entry.action.starts_with(a),
        Some(a) => entry.action == a,
    };
    action_ok && outcome.is_none_or(|o| hearth_stores::audit::outcome_class(&entry.outcome) == o)
}

/// `GET audit`.
pub(super) async fn page(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    filter: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut page = Page::new("Audit", &ctx);
    let Query(filter) = filter.unwrap_or_default();
    let devices: Vec<(String, String)> = match node.mesh.get() {
        Some(mesh) => mesh
            .devices()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.name, d.peer_id))
            .collect(),
        None => Vec::new(),
    };
    let me = node.config.name.clone();
    let device = nonempty(&filter.device).unwrap_or(&me).to_owned();
    let action = nonempty(&filter.action).map(str::to_owned);
    let outcome = nonempty(&filter.outcome).map(str::to_owned);
    if outcome
        .as_deref()
        .is_some_and(|o| !["allowed", "refused", "failed", "other"].contains(&o))
    {
        page.error("The outcome is one of allowed, refused, failed or other.");
        return page.into_response();
    }
    let (from_text, to_text) = (
        nonempty(&filter.from).map(str::to_owned),
        nonempty(&filter.to).map(str::to_owned),
    );
    let mut window = (None, None);
    for (text, slot) in [(&from_text, &mut window.0), (&to_text, &mut window.1)] {
        if let Some(text) = text {
            match time_of(text) {
                Some(ms) => *slot = Some(ms),
                None => {
                    page.error(&format!(
                        "{text:?} is not a time: write it as 2026-12-07T10:00 (UTC)."
                    ));
                    return page.into_response();
                }
            }
        }
    }
    let (since, until) = window;
    // The filter form: a GET, so no token; every control labelled.
    let mut options = format!(
        "<option value=\"{0}\"{1}>{0} (this device)</option>",
        esc(&me),
        if device == me { " selected" } else { "" }
    );
    // Other devices by peer id: two devices may carry one name (one revoked).
    for (name, peer) in devices.iter().filter(|(n, _)| *n != me) {
        options.push_str(&format!(
            "<option value=\"{peer}\"{selected}>{name} ({short})</option>",
            peer = esc(peer),
            selected = if *peer == device { " selected" } else { "" },
            name = esc(name),
            short = esc(peer.get(peer.len().saturating_sub(8)..).unwrap_or(peer)),
        ));
    }
    let outcomes: String = ["", "allowed", "refused", "failed", "other"]
        .iter()
        .map(|o| {
            format!(
                "<option value=\"{o}\"{}>{}</option>",
                if outcome.as_deref().unwrap_or("") == *o {
                    " selected"
                } else {
                    ""
                },
                if o.is_empty() { "any" } else { o }
            )
        })
        .collect();
    page.push(&format!(
        "<form method=\"get\" action=\"audit\" class=\"filters\">\
         <label>Device <select name=\"device\">{options}</select></label> \
         <label>Action <input name=\"action\" value=\"{action}\" placeholder=\"e.g. export. or compute.job\"></label> \
         <label>Outcome <select name=\"outcome\">{outcomes}</select></label> \
         <label>From (UTC) <input name=\"from\" value=\"{from}\" placeholder=\"2026-12-07T10:00\" size=\"17\"></label> \
         <label>Until (UTC) <input name=\"to\" value=\"{to}\" placeholder=\"2026-12-07T12:00\" size=\"17\"></label> \
         <button type=\"submit\">Filter</button></form>\
         <form method=\"post\" action=\"audit/verify\">{csrf}<button type=\"submit\">Verify every chain</button></form>",
        action = esc(action.as_deref().unwrap_or("")),
        from = esc(from_text.as_deref().unwrap_or("")),
        to = esc(to_text.as_deref().unwrap_or("")),
        csrf = page.csrf_field(),
    ));
    let copy = if device == me {
        None
    } else {
        match devices.iter().find(|(_, peer)| *peer == device) {
            Some((_, peer)) => Some(crate::audit_copy::copy_path(&node.config.data_dir, peer)),
            None => {
                page.error(&format!(
                    "No device of this mesh has the peer id {device:?}."
                ));
                return page.into_response();
            }
        }
    };
    let shown = devices
        .iter()
        .find(|(_, peer)| *peer == device)
        .map_or(device.clone(), |(name, _)| name.clone());
    let before = filter.before;
    let read = {
        let node = node.clone();
        let (action, outcome) = (action.clone(), outcome.clone());
        super::blocking(
            move || -> Result<Vec<hearth_stores::audit::Entry>, String> {
                let (action, outcome) = (action.as_deref(), outcome.as_deref());
                // Unfiltered, on this device: read only the page, from the log's index.
                if copy.is_none()
                    && action.is_none()
                    && outcome.is_none()
                    && since.is_none()
                    && until.is_none()
                {
                    let (_, next) = node
                        .audit
                        .entries_from(u64::MAX, 0)
                        .map_err(|e| e.to_string())?;
                    let end = before.unwrap_or(next).min(next);
                    let start = end.saturating_sub(PER_PAGE as u64);
                    let (mut entries, _) = node
                        .audit
                        .entries_from(start, PER_PAGE)
                        .map_err(|e| e.to_string())?;
                    entries.retain(|e| e.seq < end);
                    entries.reverse();
                    return Ok(entries);
                }
                // Filtered: one pass over the log, keeping the newest page of matches.
                let keep = |e: &hearth_stores::audit::Fields<'_>| {
                    before.is_none_or(|b| e.seq < b)
                        && since.is_none_or(|t| e.time >= t)
                        && until.is_none_or(|t| e.time < t)
                        && matches(e, action, outcome)
                };
                // What every match holds: lines without it are skipped unread.
                let texts: Vec<&str> = action
                    .into_iter()
                    .chain(outcome.filter(|o| *o != "other"))
                    .collect();
                let hint = hearth_stores::audit::Hint {
                    texts: &texts,
                    from: since,
                    to: until,
                };
                let mut page = match &copy {
                    Some(path) => {
                        hearth_stores::audit::newest_matching_in(path, None, PER_PAGE, &hint, keep)
                    }
                    None => node.audit.newest_matching(PER_PAGE, &hint, keep),
                }
                .map_err(|e| e.to_string())?;
                page.reverse();
                Ok(page)
            },
        )
        .await
    };
    let entries = match read {
        Ok(entries) => entries,
        Err(err) => {
            page.error(&err);
            return page.into_response();
        }
    };
    // New entries appear on the first page of this device's log, filtered the same way.
    let live = before.is_none() && device == me && until.is_none();
    page.push(&format!(
        "<table{live}><caption>{device}'s audit log, newest first</caption><thead><tr>\
         <th scope=\"col\">#</th><th scope=\"col\">Time</th><th scope=\"col\">Device</th>\
         <th scope=\"col\">Actor</th><th scope=\"col\">Action</th><th scope=\"col\">Object</th>\
         <th scope=\"col\">Outcome</th><th scope=\"col\">Bytes</th></tr></thead><tbody>",
        live = if live {
            format!(
                " data-live=\"audit\" data-action=\"{}\" data-outcome=\"{}\"",
                esc(action.as_deref().unwrap_or("")),
                esc(outcome.as_deref().unwrap_or(""))
            )
        } else {
            String::new()
        },
        device = esc(&shown),
    ));
    for e in &entries {
        page.push(&format!(
            "<tr data-seq=\"{seq}\"><td>{seq}</td><td>{time}</td><td>{device}</td><td>{actor}</td>\
             <td>{action}</td><td>{object}</td><td>{outcome}</td><td class=\"num\">{bytes}</td></tr>",
            seq = e.seq,
            time = esc(&when(e.time)),
            device = esc(&e.device),
            actor = esc(&shown_field(&e.actor)),
            action = esc(&shown_field(&e.action)),
            object = esc(&shown_field(&e.object)),
            outcome = esc(&shown_field(&e.outcome)),
            bytes = e.bytes,
        ));
    }
    page.push("</tbody></table>");
    if entries.len() == PER_PAGE
        && let Some(last) = entries.last()
    {
        let mut next = format!(
            "audit?before={}&device={}",
            last.seq,
            super::page::segment(&device)
        );
        if let Some(a) = &action {
            next.push_str(&format!("&action={}", super::page::segment(a)));
        }
        if let Some(o) = &outcome {
            next.push_str(&format!("&outcome={}", super::page::segment(o)));
        }
        for (name, value) in [("from", &from_text), ("to", &to_text)] {
            if let Some(v) = value {
                next.push_str(&format!("&{name}={}", super::page::segment(v)));
            }
        }
        page.push(&format!(
            "<p><a href=\"{}\">Older entries</a></p>",
            esc(&next)
        ));
    }
    page.into_response()
}

/// `POST audit/verify`: every chain this device holds, checked now (a `POST`, with
/// the form's token: it costs a signature check of every chain).
pub(super) async fn verify(
    State(node): State<Arc<Node>>,
    super::Posted(ctx, super::Nothing {}): super::Posted<super::Nothing>,
) -> Response {
    let mut page = Page::new("Audit", &ctx);
    let checked = tokio::task::spawn_blocking(move || {
        let own = hearth_stores::audit::verify(node.audit.path(), &node.config.node_key.public())
            .map_err(|e| e.to_string())?;
        let copies =
            crate::audit_copy::verify_copies(&node.config.data_dir).map_err(|e| e.to_string())?;
        Ok::<_, String>((
            node.config.name.clone(),
            crate::api::types::AuditVerified::of(own, copies),
        ))
    })
    .await;
    let (me, verified) = match checked {
        Ok(Ok(v)) => v,
        Ok(Err(err)) => {
            page.error(&err);
            return page.into_response();
        }
        Err(err) => {
            page.error(&err.to_string());
            return page.into_response();
        }
    };
    page.push("<table><caption>Every chain, verified now</caption><thead><tr><th scope=\"col\">Log</th><th scope=\"col\">Result</th><th scope=\"col\">Entries</th></tr></thead><tbody>");
    let result = |ok: bool| {
        if ok {
            "<td class=\"ok\">intact</td>"
        } else {
            "<td class=\"error\">DAMAGED</td>"
        }
    };
    page.push(&format!(
        "<tr data-log=\"{me}\"><th scope=\"row\">{me} (this device)</th>{}<td class=\"num\">{}</td></tr>",
        result(verified.ok && verified.findings.is_empty()),
        verified.entries,
        me = esc(&me),
    ));
    for copy in &verified.copies {
        page.push(&format!(
            "<tr data-log=\"{name}\"><th scope=\"row\">{name} (copy)</th>{}<td class=\"num\">{entries}</td></tr>",
            result(copy.ok),
            name = esc(&copy.device),
            entries = copy.entries,
        ));
        for finding in &copy.findings {
            page.error(&format!("{}: {finding}", copy.device));
        }
    }
    page.push("</tbody></table>");
    for finding in &verified.findings {
        let text = serde_json::to_string(finding).unwrap_or_default();
        page.error(&text);
    }
    page.into_response()
}
