//! The stores page: every store of the mesh (kind, origin, where it is held, size,
//! each holder's last report); a store's page: for a timeseries store held here, a
//! chart of one numeric field over a time window (an SVG drawn here, one point per
//! reading), for a kv or doc store, its entries.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use hearth_stores::Kind;
use serde::Deserialize;

use super::page::{Page, esc, segment};
use super::{Ctx, when};
use crate::node::Node;

/// Most points a chart draws; a longer window shows its newest readings.
const MAX_POINTS: usize = 5_000;
/// Most kv entries a page shows.
const MAX_ENTRIES: usize = 500;

/// `GET stores`.
pub(super) async fn list(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut page = Page::new("Stores", &ctx);
    let stores = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || crate::api::store_list(&node)).await
    };
    let Ok(stores) = stores else {
        page.error("The stores could not be listed.");
        return page.into_response();
    };
    let sync = crate::api::sync_status(&node).await.unwrap_or_default();
    page.live_with("sync");
    page.push("<table><caption>Every store of your mesh</caption><thead><tr><th scope=\"col\">Store</th><th scope=\"col\">Kind</th><th scope=\"col\">Origin</th><th scope=\"col\">Placed on</th><th scope=\"col\">Held by</th><th scope=\"col\">In sync (as seen from here)</th><th scope=\"col\">Records</th><th scope=\"col\">Bytes</th><th scope=\"col\">Last reports</th></tr></thead><tbody>");
    for s in stores.iter().filter(|s| !s.name.starts_with("hearth.")) {
        let reports: Vec<String> = s
            .heads
            .iter()
            .flatten()
            .map(|(device, stats)| {
                format!(
                    "{device}: {} records at {}",
                    stats.records,
                    when(stats.updated)
                )
            })
            .collect();
        let name = if s.here {
            format!(
                "<a href=\"stores/{}\">{}</a>",
                segment(&s.name),
                esc(&s.name)
            )
        } else {
            esc(&s.name)
        };
        let _ = write!(
            page_buf(&mut page),
            "<tr data-store=\"{store}\"><th scope=\"row\">{name}</th><td>{kind}</td><td>{origin}</td><td><a href=\"stores/{seg}/placement\" title=\"Change where it is held\">{replicas}</a></td><td>{held}</td><td data-field=\"sync\">{sync}</td><td class=\"num\">{records}</td><td class=\"num\">{bytes}</td><td>{reports}</td></tr>",
            store = esc(&s.name),
            seg = segment(&s.name),
            kind = esc(s.kind.as_str()),
            origin = esc(&s.origin),
            replicas = esc(&s.replicas),
            sync = esc(&sync
                .iter()
                .find(|x| x.name == s.name)
                .map_or_else(|| "-".to_owned(), sync_text)),
            held = esc(&s.held_by.join(", ")),
            records = s.records.map_or("-".to_owned(), |n| n.to_string()),
            bytes = s.bytes.map_or("-".to_owned(), |n| n.to_string()),
            reports = esc(&reports.join("; ")),
        );
    }
    page.push("</tbody></table><p class=\"muted\">A store's name links to its readings when this device holds it.</p>");
    page.into_response()
}

/// Where a store held here is in sync, in words: each other device its placement
/// names, as that device last confirmed it.
pub(super) fn sync_text(sync: &crate::api::types::StoreSync) -> String {
    let others: Vec<String> = sync
        .replicas
        .iter()
        .skip(1)
        .map(|r| {
            let state = match (r.in_sync, r.lag) {
                (true, _) => "in sync".to_owned(),
                (false, Some(0)) => "catching up".to_owned(),
                (false, Some(lag)) => format!("{lag} records behind"),
                (false, None) => "not confirmed yet".to_owned(),
            };
            let offline = if r.online == Some(false) {
                ", offline"
            } else {
                ""
            };
            format!("{}: {state}{offline}", r.device)
        })
        .collect();
    if others.is_empty() {
        "only here".to_owned()
    } else {
        others.join("; ")
    }
}

/// A page's body, to write into.
fn page_buf(page: &mut Page) -> &mut String {
    page.body_mut()
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ChartQuery {
    /// The numeric field to draw (a dotted path); the first numeric one when absent.
    #[serde(default)]
    field: Option<String>,
    /// The window, in hours back from the newest reading (default 24).
    #[serde(default)]
    hours: Option<u64>,
}

/// The numbers at dotted `path` inside `value`.
fn number_at(value: &serde_json::Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))
        .and_then(serde_json::Value::as_f64)
}

/// The names of the numeric top-level fields of `value`.
fn numeric_fields(value: &serde_json::Value) -> Vec<String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// An SVG line chart of `points` (time ms, value), with its axes' ends labelled.
fn chart(points: &[(u64, f64)], field: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 240.0;
    const PAD: f64 = 40.0;
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::new();
    };
    let (t0, t1) = (first.0 as f64, (last.0 as f64).max(first.0 as f64 + 1.0));
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let x = |t: u64| PAD + (t as f64 - t0) / (t1 - t0) * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - (v - lo) / (hi - lo) * (H - 2.0 * PAD);
    let mut path = String::new();
    let mut dots = String::new();
    for (i, (t, v)) in points.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            x(*t),
            y(*v)
        );
        let _ = write!(
            dots,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\"><title>{}: {v}</title></circle>",
            x(*t),
            y(*v),
            esc(&when(*t))
        );
    }
    format!(
        "<figure><svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{field} over time, {n} readings\" class=\"chart\">\
         <line x1=\"{PAD}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" class=\"axis\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{bottom}\" class=\"axis\"/>\
         <text x=\"{PAD}\" y=\"{PAD}\" dy=\"-8\" class=\"label\">{hi}</text>\
         <text x=\"{PAD}\" y=\"{bottom}\" dy=\"16\" class=\"label\">{lo} · {from}</text>\
         <text x=\"{right}\" y=\"{bottom}\" dy=\"16\" text-anchor=\"end\" class=\"label\">{to}</text>\
         <path d=\"{path}\" class=\"line\"/>{dots}</svg>\
         <figcaption>{field}: {n} readings from {from} to {to}</figcaption></figure>",
        field = esc(field),
        n = points.len(),
        bottom = H - PAD,
        right = W - PAD,
        hi = hi,
        lo = lo,
        from = esc(&when(first.0)),
        to = esc(&when(last.0)),
    )
}

/// `GET stores/{name}`.
pub(super) async fn show(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(name): Path<String>,
    query: Result<Query<ChartQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut page = Page::new(&format!("Store {name}"), &ctx);
    let Query(query) = query.unwrap_or_default();
    let store = match node.stores.get(&name) {
        Ok(store) => store,
        Err(err) => {
            page.error(&format!(
                "{err} (a store's readings are shown on a device that holds it)"
            ));
            return page.into_response();
        }
    };
    let kind = store.meta().kind;
    let read = tokio::task::spawn_blocking(move || -> Result<String, String> {
        match kind {
            Kind::Timeseries => {
                let hours = query.hours.unwrap_or(24).clamp(1, 24 * 366);
                let latest = store
                    .read(hearth_stores::query::Selection::Latest, None)
                    .map_err(|e| e.to_string())?;
                let Some(newest) = latest.first() else {
                    return Ok("<p>This store has no readings yet.</p>".into());
                };
                let end = newest.ts.saturating_add(1);
                let start = end.saturating_sub(hours.saturating_mul(3_600_000));
                // At most the newest MAX_POINTS + 1 readings are read, whatever the
                // window: a year of one-second readings does not come into memory.
                let mut readings = store
                    .read(
                        hearth_stores::query::Selection::LastN(MAX_POINTS + 1),
                        None,
                    )
                    .map_err(|e| e.to_string())?;
                let clipped = readings.len() > MAX_POINTS && readings.first().is_some_and(|r| r.ts >= start);
                readings.retain(|r| r.ts >= start && r.ts < end);
                let fields = numeric_fields(&newest.value);
                let field = query
                    .field
                    .clone()
                    .filter(|f| !f.trim().is_empty())
                    .or_else(|| fields.first().cloned());
                let mut html = format!(
                    "<form method=\"get\" class=\"filters\"><label>Field <input name=\"field\" value=\"{}\" list=\"fields\"></label>\
                     <datalist id=\"fields\">{}</datalist> <label>Hours <input name=\"hours\" type=\"number\" min=\"1\" value=\"{hours}\"></label> \
                     <button type=\"submit\">Draw</button></form>",
                    esc(field.as_deref().unwrap_or("")),
                    fields
                        .iter()
                        .map(|f| format!("<option value=\"{}\">", esc(f)))
                        .collect::<String>(),
                );
                let Some(field) = field else {
                    html.push_str("<p>Its readings have no numeric field to draw; name one (a dotted path).</p>");
                    return Ok(html);
                };
                let mut points: Vec<(u64, f64)> = readings
                    .iter()
                    .filter_map(|r| {
                        if field == "value" && r.value.is_number() {
                            return r.value.as_f64().map(|v| (r.ts, v));
                        }
                        number_at(&r.value, &field).map(|v| (r.ts, v))
                    })
                    .collect();
                if points.len() > MAX_POINTS {
                    points.drain(..points.len() - MAX_POINTS);
                }
                if clipped {
                    let _ = write!(
                        html,
                        "<p class=\"muted\">The window holds more readings than a chart draws: the newest {MAX_POINTS} are drawn.</p>"
                    );
                }
                if points.is_empty() {
                    let _ = write!(
                        html,
                        "<p>No reading of the last {hours} hours has a number at {}.</p>",
                        esc(&field)
                    );
                } else {
                    html.push_str(&chart(&points, &field));
                }
                Ok(html)
            }
            Kind::Kv | Kind::Doc => {
                let keys = store.keys().map_err(|e| e.to_string())?;
                let mut html = format!(
                    "<table><caption>{} keys{}</caption><thead><tr><th scope=\"col\">Key</th><th scope=\"col\">Value</th></tr></thead><tbody>",
                    keys.len(),
                    if keys.len() > MAX_ENTRIES {
                        format!(", the first {MAX_ENTRIES} shown")
                    } else {
                        String::new()
                    }
                );
                for key in keys.iter().take(MAX_ENTRIES) {
                    let value = store.get(key).map_err(|e| e.to_string())?;
                    let _ = write!(
                        html,
                        "<tr><th scope=\"row\">{}</th><td><code>{}</code></td></tr>",
                        esc(key),
                        esc(&value.map(|v| v.to_string()).unwrap_or_default())
                    );
                }
                html.push_str("</tbody></table>");
                Ok(html)
            }
        }
    })
    .await;
    match read {
        Ok(Ok(html)) => page.push(&html),
        Ok(Err(err)) => page.error(&err),
        Err(err) => page.error(&err.to_string()),
    }
    page.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_point_per_reading_and_escapes_its_labels() {
        let points: Vec<(u64, f64)> = (0..7).map(|i| (1_000 * i, i as f64)).collect();
        let svg = chart(&points, "<load>");
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 7);
        assert!(svg.contains("&lt;load&gt;") && !svg.contains("<load>"));
        assert_eq!(chart(&[], "x"), "");
        // One reading, or all equal: the scale does not divide by zero.
        assert!(!chart(&[(5, 1.0)], "x").contains("NaN"));
    }
}
