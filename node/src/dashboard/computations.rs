//! The computations page: the mesh's apps (where each runs, its state, runs, how far
//! it has read, the stores it derives), the jobs this device ran since it started,
//! each receipt checked here against the owner key, and a form that checks a saved
//! answer (`hearth run --json`'s output) as `hearth receipt verify` does.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::page::{Page, esc};
use super::{Ctx, when};
use crate::compute::receipt::{self, ReceiptProblem};
use crate::node::Node;

/// The longest saved answer the verify form takes.
const MAX_ANSWER: usize = 128 * 1024;

fn short(hex: &str) -> &str {
    crate::compute::cut(hex, 12)
}

/// `GET computations`.
pub(super) async fn page(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut page = Page::new("Computations", &ctx);
    let listed = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            (
                crate::compute::apps::list_all(&node),
                crate::api::store_list(&node),
            )
        })
        .await
    };
    let Ok((apps, stores)) = listed else {
        page.error("The apps could not be listed.");
        return page.into_response();
    };
    apps_table(&mut page, &apps, &stores);
    jobs_table(&mut page, &node);
    verify_form(&mut page, "");
    page.into_response()
}

fn apps_table(
    page: &mut Page,
    apps: &[crate::api::types::AppInfo],
    stores: &[crate::api::types::StoreInfo],
) {
    if apps.is_empty() {
        page.push("<h2>Apps</h2><p>No app is deployed in your mesh.</p>");
        return;
    }
    page.push("<table data-table=\"apps\"><caption>Apps of your mesh</caption><thead><tr><th scope=\"col\">App</th><th scope=\"col\">Runs on</th><th scope=\"col\">State</th><th scope=\"col\">Runs</th><th scope=\"col\">Read up to</th><th scope=\"col\">Follows</th><th scope=\"col\">Writes</th><th scope=\"col\">Module</th></tr></thead><tbody>");
    for app in apps {
        let source = format!("app:{}", app.name);
        let derived: Vec<&str> = stores
            .iter()
            .filter(|s| s.source.as_deref() == Some(&source))
            .map(|s| s.name.as_str())
            .collect();
        let state = match &app.last_error {
            Some(error) if app.state == "running" => format!("running (last run failed: {error})"),
            _ => app.state.clone(),
        };
        let _ = write!(
            page.body_mut(),
            "<tr data-app=\"{name}\"><th scope=\"row\">{name}</th><td>{device}</td><td class=\"{class}\">{state}</td><td class=\"num\">{runs}</td><td>{position}</td><td>{store}</td><td>{derived}</td><td><code>{module}</code></td></tr>",
            name = esc(&app.name),
            device = esc(app.device.as_deref().unwrap_or("-")),
            class = if app.state == "running" && app.last_error.is_none() {
                "ok"
            } else {
                "error"
            },
            state = esc(&state),
            runs = app.runs.map_or("-".to_owned(), |n| n.to_string()),
            position = esc(&app.position.map_or("-".to_owned(), when)),
            store = esc(app.store.as_deref().unwrap_or("-")),
            derived = esc(&if derived.is_empty() {
                "-".to_owned()
            } else {
                derived.join(", ")
            }),
            module = esc(short(app.module_hash.as_deref().unwrap_or("-"))),
        );
    }
    page.push("</tbody></table>");
}

fn jobs_table(page: &mut Page, node: &Node) {
    let Some(compute) = node.compute.as_ref() else {
        page.push("<h2>Jobs</h2><p>This device does not run computations.</p>");
        return;
    };
    let recent = compute.recent();
    if recent.is_empty() {
        page.push("<h2>Jobs</h2><p>This device has run no job since it started.</p>");
        return;
    }
    let owner = node.config.mesh.as_ref().map(|m| m.owner);
    let _ = write!(
        page.body_mut(),
        "<table data-table=\"jobs\"><caption>Jobs this device ran since it started (the newest {})</caption><thead><tr><th scope=\"col\">Job</th><th scope=\"col\">Ended</th><th scope=\"col\">From</th><th scope=\"col\">Holder</th><th scope=\"col\">Module</th><th scope=\"col\">Outcome</th><th scope=\"col\">Receipt</th></tr></thead><tbody>",
        crate::compute::MAX_RECENT
    );
    for job in &recent {
        let receipt = match (&job.receipt, owner) {
            (Some(signed), Some(owner)) => {
                let verdict = match signed.verify(&owner, None) {
                    Ok(()) => {
                        "<span class=\"ok\">verifies against your owner key</span>".to_owned()
                    }
                    Err(err) => format!(
                        "<span class=\"error\">does not verify: {}</span>",
                        esc(&err.to_string())
                    ),
                };
                let fields = serde_json::to_string_pretty(&crate::api::types::Receipt::of(signed))
                    .unwrap_or_default();
                format!(
                    "{verdict}<details><summary>The receipt</summary><pre>{}</pre></details>",
                    esc(&fields)
                )
            }
            _ => "-".to_owned(),
        };
        let _ = write!(
            page.body_mut(),
            "<tr data-job=\"{id}\"><th scope=\"row\"><code>{short_id}</code></th><td>{ended}</td><td>{from}</td><td><code>{holder}</code>{claimed}</td><td><code>{module}</code></td><td class=\"{class}\">{outcome}</td><td>{receipt}</td></tr>",
            id = esc(&job.id),
            short_id = esc(short(&job.id)),
            ended = esc(&job.finished.to_string()),
            from = esc(&job.from),
            holder = esc(short(&job.holder)),
            claimed = if job.verified {
                ""
            } else {
                " (claimed, not verified)"
            },
            module = esc(short(&job.module_hash)),
            class = if job.receipt.is_some() || job.outcome.starts_with("deployed") {
                "ok"
            } else {
                "error"
            },
            outcome = esc(&job.outcome),
        );
    }
    page.push("</tbody></table>");
}

fn verify_form(page: &mut Page, answer: &str) {
    let csrf = page.csrf_field();
    let _ = write!(
        page.body_mut(),
        "<h2>Check a receipt</h2><p>Paste what <code>hearth run --json</code> printed (or a \
         receipt alone). It is checked here, offline, against your owner key: who ran the job, \
         on which device of your mesh, and that the result is the one the receipt hashes.</p>\
         <form class=\"stack\" method=\"post\" action=\"computations/verify\">{csrf}\
         <label>The saved answer (JSON)<textarea name=\"answer\" rows=\"10\" cols=\"80\" required>{}</textarea></label>\
         <button type=\"submit\">Check</button></form>",
        esc(answer)
    );
}

#[derive(Debug, Deserialize)]
pub(super) struct VerifyForm {
    answer: String,
}

/// `POST computations/verify`: the same check, and the same sentences, as
/// `hearth receipt verify`.
pub(super) async fn verify(
    State(node): State<Arc<Node>>,
    super::Posted(ctx, form): super::Posted<VerifyForm>,
) -> Response {
    let mut page = Page::new("Computations", &ctx);
    let verdict = if form.answer.len() > MAX_ANSWER {
        Err(ReceiptProblem::Unreadable(format!(
            "a saved answer is at most {MAX_ANSWER} bytes"
        )))
    } else if let Some(mesh) = node.config.mesh.as_ref() {
        receipt::check(&form.answer, &mesh.owner)
    } else {
        Err(ReceiptProblem::Unreadable(
            "this device is not part of a mesh: there is no owner key to check against".into(),
        ))
    };
    match verdict {
        Ok(checked) => {
            let r = &checked.signed.receipt;
            let _ = write!(
                page.body_mut(),
                "<p class=\"ok\" role=\"status\" id=\"verdict\">{}</p>",
                esc(&format!(
                    "valid: job {} ran on {} (a device of this mesh) at {}, module {}, {}",
                    r.job,
                    r.ran_on,
                    r.finished,
                    hex::encode(r.module_hash.0).get(..16).unwrap_or(""),
                    if checked.result_checked {
                        "and the result matches"
                    } else {
                        "no result given to compare"
                    }
                ))
            );
        }
        Err(problem) => page.error(&problem.to_string()),
    }
    verify_form(&mut page, &form.answer);
    page.into_response()
}
