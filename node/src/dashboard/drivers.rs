//! The drivers page: every driver of this device with its state, records, last error
//! and (file-import) progress, kept current by the live stream; and a form per kind
//! to add one, checked as `hearth driver add` checks it and added by the same code as
//! `POST /v1/drivers` (the same defaults, refusals and audit entry).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Ctx;
use super::page::{Page, esc};
use crate::api::types::{AddDriver, Driver};
use crate::node::Node;

/// A driver's progress, as the page and the live stream show it.
pub(super) fn progress_text(driver: &Driver) -> String {
    match driver.progress {
        Some((done, total)) if total > 0 => {
            format!("{done} of {total} lines ({} %)", done * 100 / total)
        }
        Some((done, _)) => format!("{done} lines"),
        None => "-".to_owned(),
    }
}

fn row(driver: &Driver) -> String {
    let meter = match driver.progress {
        Some((done, total)) if total > 0 => format!(
            "<progress max=\"{total}\" value=\"{}\"></progress> ",
            done.min(total)
        ),
        _ => String::new(),
    };
    format!(
        "<tr data-driver=\"{name}\"><th scope=\"row\">{name}</th><td>{kind}</td><td>{store}</td>\
         <td data-field=\"state\" class=\"{class}\">{state}</td><td data-field=\"records\" class=\"num\">{records}</td>\
         <td data-field=\"progress\">{meter}<span>{progress}</span></td><td data-field=\"error\">{error}</td><td>{detail}</td></tr>",
        name = esc(&driver.name),
        kind = esc(&driver.kind),
        store = esc(&driver.store),
        class = state_class(&driver.state),
        state = esc(&driver.state),
        records = driver.records,
        progress = esc(&progress_text(driver)),
        error = esc(driver.last_error.as_deref().unwrap_or("-")),
        detail = esc(driver.detail.as_deref().unwrap_or("")),
    )
}

/// The class a state is shown with.
pub(super) fn state_class(state: &str) -> &'static str {
    match state {
        "running" | "done" => "ok",
        "failed" | "retrying" | "stopped" => "error",
        _ => "muted",
    }
}

fn table(page: &mut Page, drivers: &[Driver]) {
    if drivers.is_empty() {
        page.push("<p>This device has no driver.</p>");
        return;
    }
    page.push("<table data-live=\"drivers\"><caption>The drivers of this device</caption><thead><tr><th scope=\"col\">Driver</th><th scope=\"col\">Kind</th><th scope=\"col\">Writes</th><th scope=\"col\">State</th><th scope=\"col\">Records</th><th scope=\"col\">Progress</th><th scope=\"col\">Last error</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
    for driver in drivers {
        page.push(&row(driver));
    }
    page.push("</tbody></table>");
}

/// The forms to add a driver, one per kind (no script needed to pick fields).
fn forms(page: &mut Page) {
    let csrf = page.csrf_field();
    let common = "<label>Name (default: the kind)<input name=\"name\" size=\"24\"></label>\
                  <label>Unit of its readings<input name=\"unit\" size=\"12\"></label>\
                  <label>What its readings are<input name=\"description\" size=\"40\"></label>";
    let store = |default: &str| {
        format!(
            "<label>Store it writes (default: {default})<input name=\"store\" size=\"24\"></label>"
        )
    };
    let _ = write!(
        page.body_mut(),
        "<h2>Add a driver</h2>\
         <details id=\"add-os-monitor\"><summary>os-monitor: this machine's load, memory and disk</summary>\
         <form class=\"stack\" method=\"post\" action=\"drivers/add\">{csrf}<input type=\"hidden\" name=\"kind\" value=\"os-monitor\">\
         <label>Seconds between readings<input name=\"interval_secs\" type=\"number\" min=\"1\" value=\"10\"></label>{os_store}{common}\
         <button type=\"submit\">Add os-monitor</button></form></details>\
         <details id=\"add-http-ingest\"><summary>http-ingest: an endpoint for OwnTracks and JSON readings</summary>\
         <form class=\"stack\" method=\"post\" action=\"drivers/add\">{csrf}<input type=\"hidden\" name=\"kind\" value=\"http-ingest\">\
         <label>Listen on (ADDR:PORT; default 127.0.0.1 and a port kept; beyond loopback it serves HTTPS)<input name=\"listen\" size=\"24\"></label>{http_store}{common}\
         <button type=\"submit\">Add http-ingest</button></form></details>\
         <details id=\"add-mqtt\"><summary>mqtt: subscribe to a broker's topic</summary>\
         <form class=\"stack\" method=\"post\" action=\"drivers/add\">{csrf}<input type=\"hidden\" name=\"kind\" value=\"mqtt\">\
         <label>Broker (HOST:PORT)<input name=\"broker\" required size=\"24\"></label>\
         <label>Topic filter<input name=\"topic\" required size=\"24\"></label>\
         <label>User (with a password, or neither)<input name=\"user\" size=\"16\" autocomplete=\"off\"></label>\
         <label>Password<input name=\"password\" type=\"password\" size=\"16\" autocomplete=\"off\"></label>\
         <label>Publish actuator keys under this prefix<input name=\"actuate\" size=\"24\"></label>{mqtt_store}{common}\
         <button type=\"submit\">Add mqtt</button></form></details>\
         <details id=\"add-file-import\"><summary>file-import: a CSV (with a header) or JSON-lines file</summary>\
         <form class=\"stack\" method=\"post\" action=\"drivers/add\">{csrf}<input type=\"hidden\" name=\"kind\" value=\"file-import\">\
         <label>The file (an absolute path on this device)<input name=\"file\" required size=\"48\"></label>\
         <label>Store to import into<input name=\"store\" required size=\"24\"></label>\
         <label>Time column (default: ts, timestamp or time)<input name=\"ts_column\" size=\"16\"></label>\
         <label>On a malformed line<select name=\"on_error\"><option value=\"refuse\">refuse the whole import</option><option value=\"skip\">skip the line</option></select></label>{common}\
         <button type=\"submit\">Import</button></form></details>",
        os_store = store("os-monitor"),
        http_store = store("location"),
        mqtt_store = store("mqtt"),
    );
}

/// `GET drivers`.
pub(super) async fn page(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut page = Page::new("Drivers", &ctx);
    table(&mut page, &node.drivers.list());
    forms(&mut page);
    page.into_response()
}

/// The add forms' fields; an empty field is an absent one.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AddForm {
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    store: String,
    #[serde(default)]
    interval_secs: String,
    #[serde(default)]
    listen: String,
    #[serde(default)]
    broker: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    actuate: String,
    #[serde(default)]
    file: String,
    #[serde(default)]
    ts_column: String,
    #[serde(default)]
    on_error: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    description: String,
}

fn given(text: String) -> Option<String> {
    let text = text.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// The request the form describes, checked as `hearth driver add` checks its
/// arguments; the node checks the rest as it does for the CLI.
fn request(form: AddForm) -> Result<AddDriver, String> {
    let mut body = AddDriver {
        kind: form.kind.clone(),
        name: given(form.name),
        store: given(form.store),
        unit: given(form.unit),
        description: given(form.description),
        ..AddDriver::default()
    };
    match form.kind.as_str() {
        "os-monitor" => {
            let secs = match given(form.interval_secs) {
                None => 10,
                Some(text) => text
                    .parse::<u64>()
                    .map_err(|_| format!("{text:?} is not a number of seconds"))?,
            };
            body.interval_secs = Some(secs.max(1));
        }
        "http-ingest" => body.listen = given(form.listen),
        "mqtt" => {
            body.broker = Some(given(form.broker).ok_or("mqtt needs a broker, HOST:PORT")?);
            body.topic = Some(given(form.topic).ok_or("mqtt needs a topic filter")?);
            match (given(form.user), given(form.password)) {
                (Some(user), Some(password)) => {
                    body.user = Some(user);
                    body.password = Some(password);
                }
                (None, None) => {}
                _ => return Err("give the broker's user and password together, or neither".into()),
            }
            body.actuate = given(form.actuate);
        }
        "file-import" => {
            let file = PathBuf::from(given(form.file).ok_or("file-import needs the file")?);
            if !file.is_absolute() {
                return Err(format!(
                    "{}: give the file's absolute path (the node reads it)",
                    file.display()
                ));
            }
            let file =
                std::fs::canonicalize(&file).map_err(|err| format!("{}: {err}", file.display()))?;
            if body.store.is_none() {
                return Err("file-import needs a store: the store to import into".into());
            }
            body.file = Some(file);
            body.ts_column = given(form.ts_column);
            body.on_error = Some(match given(form.on_error).as_deref() {
                None | Some("refuse") => "refuse".to_owned(),
                Some("skip") => "skip".to_owned(),
                Some(other) => return Err(format!("{other:?} is not refuse or skip")),
            });
        }
        other => {
            return Err(format!(
                "{other:?} is not a driver kind (os-monitor, http-ingest, mqtt or file-import)"
            ));
        }
    }
    Ok(body)
}

/// `POST drivers/add`.
pub(super) async fn add(
    State(node): State<Arc<Node>>,
    super::Posted(ctx, form): super::Posted<AddForm>,
) -> Response {
    let mut page = Page::new("Drivers", &ctx);
    let added = match super::blocking(move || request(form)).await {
        Ok(body) => crate::api::driver_added(&node, body)
            .await
            .map_err(|err| err.message().to_owned()),
        Err(err) => Err(err),
    };
    match added {
        Ok(driver) => {
            let _ = write!(
                page.body_mut(),
                "<p class=\"ok\" role=\"status\">Driver {} ({}) writes the store {}.</p>",
                esc(&driver.name),
                esc(&driver.kind),
                esc(&driver.store)
            );
            if let Some(url) = &driver.url {
                let _ = write!(
                    page.body_mut(),
                    "<p>Give these to the devices that post readings; the password is shown only now.</p>\
                     <dl><dt>Endpoint</dt><dd><code>{url}</code> (OwnTracks: <code>{url}/owntracks</code>, JSON readings: <code>{url}/readings</code>)</dd>\
                     <dt>User</dt><dd><code>{user}</code></dd><dt>Password</dt><dd><code>{password}</code></dd>{tls}</dl>",
                    url = esc(url),
                    user = esc(driver.user.as_deref().unwrap_or("-")),
                    password = esc(driver.password.as_deref().unwrap_or("-")),
                    tls = driver.tls_fingerprint.as_deref().map_or(String::new(), |f| format!(
                        "<dt>TLS fingerprint (SHA-256)</dt><dd><code>{}</code>: set each device to trust exactly this certificate, never any certificate.</dd>",
                        esc(f)
                    )),
                );
            }
        }
        Err(err) => page.error(&err),
    }
    table(&mut page, &node.drivers.list());
    forms(&mut page);
    page.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(kind: &str) -> AddForm {
        AddForm {
            kind: kind.into(),
            ..AddForm::default()
        }
    }

    #[test]
    fn the_forms_are_checked_as_the_cli_checks_its_arguments() {
        assert!(request(form("mqtt")).unwrap_err().contains("broker"));
        let half = AddForm {
            broker: "127.0.0.1:1883".into(),
            topic: "t/#".into(),
            user: "u".into(),
            ..form("mqtt")
        };
        assert!(request(half).unwrap_err().contains("together"));
        let relative = AddForm {
            file: "readings.csv".into(),
            store: "s".into(),
            ..form("file-import")
        };
        assert!(request(relative).unwrap_err().contains("absolute"));
        let no_store = AddForm {
            file: "/".into(),
            ..form("file-import")
        };
        assert!(request(no_store).unwrap_err().contains("needs a store"));
        assert!(
            request(form("telnet"))
                .unwrap_err()
                .contains("not a driver kind")
        );
        let os = request(AddForm {
            interval_secs: " 5 ".into(),
            name: "  ".into(),
            ..form("os-monitor")
        })
        .unwrap();
        assert_eq!((os.interval_secs, os.name), (Some(5), None));
    }
}
