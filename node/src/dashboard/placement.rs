//! Changing where a store is held. The owner types a placement (`origin,role:home,vm`);
//! before anything is signed, the page lists which devices will gain the store's data,
//! which will drop it and which keep it, under the policy now in force and the one
//! typed. Confirming changes it by the same code as `hearth store policy` (the same
//! authority check: the owner key on this device, or a pasted `place` capability; the
//! same audit entry and refusals).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use hearth_protocol::sync::placement::Policy;
use serde::Deserialize;

use super::page::{Page, esc, segment};
use super::{Ctx, Posted};
use crate::api::types::PolicyRequest;
use crate::node::Node;

/// Who gains, drops and keeps a store when its policy changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Change {
    pub(super) gain: Vec<String>,
    pub(super) lose: Vec<String>,
    pub(super) keep: Vec<String>,
}

/// The change from `old` to `new` over `devices` (name, role; revoked ones left out
/// by the caller) for a store made on `origin`.
pub(super) fn change(
    old: &Policy,
    new: &Policy,
    origin: &str,
    devices: &[(String, hearth_protocol::capability::Role)],
) -> Change {
    let mut out = Change::default();
    for (name, role) in devices {
        match (
            old.holds(name, *role, origin),
            new.holds(name, *role, origin),
        ) {
            (false, true) => out.gain.push(name.clone()),
            (true, false) => out.lose.push(name.clone()),
            (true, true) => out.keep.push(name.clone()),
            (false, false) => {}
        }
    }
    out
}

/// The store's origin and placement now, from the catalogue.
fn current(node: &Node, name: &str) -> Result<(String, String), String> {
    let catalogue = node
        .catalogue
        .as_ref()
        .ok_or("This node is not part of a mesh: there is no placement to change.")?;
    let listing = catalogue.read().map_err(|err| err.to_string())?;
    let entry = listing
        .id_of(name)
        .and_then(|id| listing.stores.get(id))
        .ok_or_else(|| format!("The mesh has no store named {name:?}."))?;
    Ok((entry.origin.clone(), entry.replicas.clone()))
}

/// The mesh's devices that are not revoked, with their roles.
async fn devices(node: &Node) -> Result<Vec<(String, hearth_protocol::capability::Role)>, String> {
    let mesh = node.mesh.get().ok_or("This node is not part of a mesh.")?;
    let list = mesh.devices().await.map_err(|err| err.to_string())?;
    Ok(list
        .into_iter()
        .filter(|d| !d.revoked)
        .filter_map(|d| Some((d.name, d.role.parse().ok()?)))
        .collect())
}

fn form(page: &mut Page, name: &str, replicas: &str) {
    let csrf = page.csrf_field();
    let _ = write!(
        page.body_mut(),
        "<form class=\"stack\" method=\"post\" action=\"stores/{seg}/placement\">{csrf}\
         <label>Where it is held (<code>origin</code>, <code>role:home</code>, \
         <code>role:mobile</code>, <code>role:cloud</code>, a device's name, or <code>all</code>, \
         separated by commas)<input name=\"replicas\" value=\"{replicas}\" required size=\"48\"></label>\
         <button type=\"submit\">Show what changes</button></form>",
        seg = segment(name),
        replicas = esc(replicas),
    );
}

/// `GET stores/{name}/placement`.
pub(super) async fn show(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let mut page = Page::new(&format!("Store {name}: placement"), &ctx);
    match current(&node, &name) {
        Ok((origin, replicas)) => {
            let _ = write!(
                page.body_mut(),
                "<p>Made on {}; held now where <code>{}</code> says.</p>",
                esc(&origin),
                esc(&replicas)
            );
            form(&mut page, &name, &replicas);
        }
        Err(err) => page.error(&err),
    }
    page.into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct PreviewForm {
    replicas: String,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "<em>no device</em>".to_owned()
    } else {
        names
            .iter()
            .map(|n| format!("<code>{}</code>", esc(n)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `POST stores/{name}/placement`: what the typed placement would change, and the
/// button that makes it so.
pub(super) async fn preview(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Posted(ctx, form_in): Posted<PreviewForm>,
) -> Response {
    let mut page = Page::new(&format!("Store {name}: placement"), &ctx);
    if name.starts_with("hearth.") {
        page.error(&format!(
            "{name:?} is the mesh's own store: where it is held is not yours to change."
        ));
        return page.into_response();
    }
    let replicas = form_in.replicas.trim().to_owned();
    let new = match Policy::parse(&replicas) {
        Ok(policy) => policy,
        Err(err) => {
            page.error(&err.to_string());
            form(&mut page, &name, &replicas);
            return page.into_response();
        }
    };
    let (origin, old_text) = match current(&node, &name) {
        Ok(now) => now,
        Err(err) => {
            page.error(&err);
            return page.into_response();
        }
    };
    let old = Policy::parse(&old_text).unwrap_or_else(|_| Policy::default_policy());
    let devices = match devices(&node).await {
        Ok(d) => d,
        Err(err) => {
            page.error(&err);
            return page.into_response();
        }
    };
    let change = change(&old, &new, &origin, &devices);
    let csrf = page.csrf_field();
    let owner_here = node
        .config
        .mesh
        .as_ref()
        .is_some_and(|m| m.owner_key.is_some());
    let authority = if owner_here {
        "<p>This device holds the owner key: it signs the new placement.</p>".to_owned()
    } else {
        "<label>This device does not hold the owner key: paste a capability for this \
         device's node key that allows <code>place</code> on this store (<code>hcap1:…</code>)\
         <textarea name=\"authority\" rows=\"4\" cols=\"80\"></textarea></label>"
            .to_owned()
    };
    let _ = write!(
        page.body_mut(),
        "<p>From <code>{old}</code> to <code>{new}</code>:</p>\
         <dl id=\"change\"><dt>Will receive the store's data</dt><dd data-field=\"gain\">{gain}</dd>\
         <dt>Will drop their copy (once a device that keeps it has confirmed it holds the same)</dt><dd data-field=\"lose\">{lose}</dd>\
         <dt>Keep holding it</dt><dd data-field=\"keep\">{keep}</dd></dl>\
         <p>Revoked devices receive nothing. A device that drops its copy may already have \
         read it: what it held is not recalled. What is signed is the policy, not this \
         list: a device paired later that it names receives the store too.</p>\
         <form class=\"stack\" method=\"post\" action=\"stores/{seg}/placement/apply\">{csrf}\
         <input type=\"hidden\" name=\"replicas\" value=\"{new_attr}\">\
         <input type=\"hidden\" name=\"previewed\" value=\"{old_attr}\">{authority}\
         <button type=\"submit\">Change where {name_html} is held</button> <a href=\"stores\">Cancel</a></form>",
        old = esc(&old.to_string()),
        new = esc(&new.to_string()),
        gain = list(&change.gain),
        lose = list(&change.lose),
        keep = list(&change.keep),
        seg = segment(&name),
        new_attr = esc(&new.to_string()),
        old_attr = super::page::esc_exact(&old_text),
        name_html = esc(&name),
    );
    page.into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct ApplyForm {
    replicas: String,
    /// The placement the preview was worked out from.
    #[serde(default)]
    previewed: String,
    #[serde(default)]
    authority: String,
}

/// `POST stores/{name}/placement/apply`.
pub(super) async fn apply(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Posted(ctx, form_in): Posted<ApplyForm>,
) -> Response {
    let mut page = Page::new(&format!("Store {name}: placement"), &ctx);
    match current(&node, &name) {
        Ok((_, now)) if now == form_in.previewed => {}
        Ok(_) => {
            page.error(
                "Where this store is held changed since the preview: look at the change again \
                 before you confirm it.",
            );
            form(&mut page, &name, &form_in.replicas);
            return page.into_response();
        }
        Err(err) => {
            page.error(&err);
            return page.into_response();
        }
    }
    let authority = Some(form_in.authority.trim().to_owned()).filter(|a| !a.is_empty());
    let request = PolicyRequest {
        replicas: Some(form_in.replicas),
        keep_ms: None,
        authority,
    };
    match crate::api::policy_changed(&node, name.clone(), request).await {
        Ok(policy) => {
            let _ = write!(
                page.body_mut(),
                "<p class=\"ok\" role=\"status\" id=\"placed\">{} is now held where <code>{}</code> says; \
                 every device applies it at its next exchange.</p><p><a href=\"stores\">Back to the stores</a></p>",
                esc(&policy.name),
                esc(&policy.replicas)
            );
        }
        Err(err) => {
            page.error(err.message());
            form(&mut page, &name, "");
        }
    }
    page.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::capability::Role;

    #[test]
    fn a_preview_names_who_gains_drops_and_keeps() {
        let devices = vec![
            ("home".to_owned(), Role::Home),
            ("phone".to_owned(), Role::Mobile),
            ("vm".to_owned(), Role::Cloud),
        ];
        let old = Policy::parse("origin,role:home").unwrap();
        let new = Policy::parse("origin,vm").unwrap();
        let change = change(&old, &new, "phone", &devices);
        assert_eq!(change.gain, ["vm"]);
        assert_eq!(change.lose, ["home"]);
        assert_eq!(change.keep, ["phone"]);
        assert_eq!(
            super::change(&old, &old, "phone", &devices).gain,
            Vec::<String>::new()
        );
    }
}
