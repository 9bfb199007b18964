//! Approvals and capabilities. The owner pastes an app's manifest (or uploads its
//! file, or picks one from `DATA_DIR/manifests/`), reads the same
//! plain-words review as `hearth app review` (every destination outside the mesh in
//! capitals), and approves it for a holder key and a module hash; the capability is
//! signed with the owner key (on the device that holds it), kept in `DATA_DIR/caps/`
//! like the CLI's, audited, and shown to copy into a file. The capabilities page lists
//! every capability this device signed, with its grants, runs used and expiry, and
//! revokes one.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use hearth_protocol::capability::{CapId, Chain, ModuleHash};
use hearth_protocol::key::PublicKey;
use hearth_protocol::manifest::Manifest;
use serde::Deserialize;

use super::page::{Page, esc, segment};
use super::{Ctx, when};
use crate::node::Node;

/// Where signed capabilities are kept (as the CLI keeps them).
const CAPS_DIR: &str = "caps";
/// The capabilities revoked from here, one id a line.
const REVOKED_FILE: &str = "revoked.txt";
/// The longest manifest taken.
const MAX_MANIFEST: usize = 64 * 1024;

/// The folder of this device's data directory a developer or the owner drops
/// manifests into, to pick from on the approvals page.
pub(super) const MANIFESTS_DIR: &str = "manifests";
/// Most manifests listed from it.
const MAX_LISTED: usize = 200;

/// The manifests in `DATA_DIR/manifests/` (`*.toml`, by name; at most
/// [`MAX_LISTED`]).
fn listed(node: &Node) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(node.config.data_dir.join(MANIFESTS_DIR)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    names.truncate(MAX_LISTED);
    names
}

/// The text of the listed manifest `name`, read with its size bounded.
fn read_listed(node: &Node, name: &str) -> Result<String, String> {
    if !listed(node).iter().any(|n| n == name) {
        return Err(format!(
            "{name:?} is not a manifest in this device's {MANIFESTS_DIR} folder"
        ));
    }
    let path = node.config.data_dir.join(MANIFESTS_DIR).join(name);
    let file = std::fs::File::open(&path).map_err(|err| format!("{name}: {err}"))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_MANIFEST as u64 + 1),
        &mut text,
    )
    .map_err(|err| format!("{name}: {err}"))?;
    Ok(text)
}

/// `GET approvals`.
pub(super) async fn form(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut page = Page::new("Approvals", &ctx);
    let csrf = page.csrf_field();
    page.push(&format!(
        "<p>Paste an app's manifest, or upload its file, to read what it asks for, in plain \
         words, before you approve it.</p><form class=\"stack\" method=\"post\" action=\"approvals/review\">{csrf}\
         <label>Manifest file (its text goes into the box below)<input type=\"file\" accept=\".toml,text/plain\" data-into=\"manifest\"></label>\
         <label>Manifest (TOML)<textarea name=\"manifest\" rows=\"16\" cols=\"80\"></textarea></label>\
         <button type=\"submit\">Review</button></form>"
    ));
    let names = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || listed(&node))
            .await
            .unwrap_or_default()
    };
    let folder = node.config.data_dir.join(MANIFESTS_DIR);
    if names.is_empty() {
        let _ = write!(
            page.body_mut(),
            "<p class=\"muted\">Manifests put in <code>{}</code> are listed here to pick from.</p>",
            esc(&folder.display().to_string())
        );
    } else {
        let _ = write!(
            page.body_mut(),
            "<h2>Manifests on this device</h2><p class=\"muted\">In <code>{}</code>.</p><ul class=\"manifests\">",
            esc(&folder.display().to_string())
        );
        for name in &names {
            let _ = write!(
                page.body_mut(),
                "<li><form method=\"post\" action=\"approvals/review\">{csrf}<input type=\"hidden\" name=\"file\" value=\"{name}\">\
                 <button type=\"submit\">Review {name}</button></form></li>",
                name = esc(name)
            );
        }
        page.push("</ul>");
    }
    page.into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct ReviewForm {
    #[serde(default)]
    manifest: String,
    /// A manifest of the manifests folder, by name, instead of `manifest`.
    #[serde(default)]
    file: String,
}

fn parse(text: &str) -> Result<Manifest, String> {
    if text.len() > MAX_MANIFEST {
        return Err(format!("a manifest is at most {MAX_MANIFEST} bytes"));
    }
    // Browsers send a text area's line ends as CR LF.
    Manifest::parse(&text.replace("\r\n", "\n"))
        .map_err(|err| format!("the manifest does not read: {err}"))
}

/// `POST approvals/review`.
pub(super) async fn review(
    State(node): State<Arc<Node>>,
    super::Posted(ctx, mut form): super::Posted<ReviewForm>,
) -> Response {
    let mut page = Page::new("Approvals", &ctx);
    if !form.file.is_empty() {
        let (node, name) = (node.clone(), form.file.clone());
        match super::blocking(move || read_listed(&node, &name)).await {
            Ok(text) => form.manifest = text,
            Err(err) => {
                page.error(&err);
                return page.into_response();
            }
        }
    }
    if form.manifest.trim().is_empty() {
        page.error("Paste a manifest, upload its file or pick one: the box was empty.");
        return page.into_response();
    }
    let manifest = match parse(&form.manifest) {
        Ok(m) => m,
        Err(err) => {
            page.error(&err);
            return page.into_response();
        }
    };
    let pinned = manifest
        .module
        .hash
        .map(|h| h.to_string())
        .unwrap_or_default();
    let csrf = page.csrf_field();
    page.push(&format!(
        "<h2>What it asks for</h2><pre id=\"review\">{review}</pre>\
         <form class=\"stack\" method=\"post\" action=\"approvals/approve\">{csrf}\
         <label>The manifest you are approving<textarea name=\"manifest\" rows=\"8\" readonly>\n{manifest}</textarea></label>\
         <label>The developer's public key (holder)<input name=\"holder\" required size=\"66\"></label>\
         <label>The module's SHA-256 (<code>sha256:…</code>, from <code>hearth app review</code>)\
         <input name=\"module\" value=\"{pinned}\" required size=\"72\"></label>\
         <label>Valid for (days)<input name=\"days\" type=\"number\" min=\"1\" max=\"3650\" value=\"30\"></label>\
         <button type=\"submit\">Approve</button> <a href=\"approvals\">Decline</a></form>",
        review = esc(&manifest.render_plain()),
        // Exactly as given: what comes back to be signed is what was reviewed.
        manifest = super::page::esc_exact(&form.manifest),
        pinned = esc(&pinned),
    ));
    page.into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct ApproveForm {
    manifest: String,
    holder: String,
    module: String,
    #[serde(default)]
    days: Option<u64>,
}

/// `POST approvals/approve`.
pub(super) async fn approve(
    State(node): State<Arc<Node>>,
    super::Posted(ctx, form): super::Posted<ApproveForm>,
) -> Response {
    let mut page = Page::new("Approvals", &ctx);
    let signed = (|| -> Result<(Manifest, Chain), String> {
        let manifest = parse(&form.manifest)?;
        let holder: PublicKey = form.holder.trim().parse().map_err(|_| {
            "the holder is a public key of 64 hex digits (`hearth key new` prints it)".to_owned()
        })?;
        let module: ModuleHash = form.module.trim().parse()?;
        if manifest.module.hash.is_some_and(|pinned| pinned != module) {
            return Err("the module hash differs from the one the manifest pins".into());
        }
        let owner = node
            .config
            .mesh
            .as_ref()
            .and_then(|m| m.owner_key.as_ref())
            .ok_or("this device does not hold the owner key: approve on the device that does")?;
        if holder == owner.public() {
            return Err("the holder is the owner key itself; use a developer's key".into());
        }
        let days = form.days.unwrap_or(30).clamp(1, 3650);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|err| err.to_string())?;
        let chain = manifest
            .approve(
                owner.secret(),
                holder,
                module,
                crate::clock::now(),
                Duration::from_secs(days * 86_400),
                nonce,
                &node.config.name,
            )
            .map_err(|err| format!("cannot sign the capability: {err}"))?;
        Ok((manifest, chain))
    })();
    let (manifest, chain) = match signed {
        Ok(signed) => signed,
        Err(err) => {
            page.error(&err);
            return page.into_response();
        }
    };
    let id = chain.leaf().id();
    let caps = node.config.data_dir.join(CAPS_DIR);
    let path = caps.join(format!("{id}.cap"));
    let kept = std::fs::create_dir_all(&caps).and_then(|()| {
        hearth_protocol::statefile::write_durable(
            &path,
            format!("{}\n", chain.to_text()).as_bytes(),
        )
    });
    if let Err(err) = kept {
        page.error(&format!("{}: {err}", path.display()));
        return page.into_response();
    }
    let _ = node.audit.record(hearth_stores::audit::Event {
        actor: "local".into(),
        action: "app.approve".into(),
        object: format!("{} {}", manifest.name, manifest.version),
        cap_id: Some(id.to_string()),
        outcome: format!(
            "allowed: for holder {}, until {}",
            chain.leaf().capability().audience,
            chain.leaf().capability().expires
        ),
        bytes: 0,
    });
    let cap_file = format!(
        "# Hearth capability {}: {} {}\n{}",
        id.short(),
        manifest.name,
        manifest.version,
        chain.to_text()
    );
    page.push(&format!(
        "<p class=\"ok\" role=\"status\">Approved {name} {version}: capability {short}, until {until}.</p>\
         <p>Give the developer this text as a file (e.g. <code>{file}.cap</code>); without their \
         key it cannot be used.</p><pre id=\"capability\">{shown}</pre>\
         <p><a id=\"download\" download=\"{file}.cap\" href=\"data:text/plain;charset=utf-8,{encoded}\">Download {file}.cap</a></p>",
        name = esc(&manifest.name),
        version = esc(&manifest.version),
        short = esc(&id.short()),
        until = esc(&chain.leaf().capability().expires.to_string()),
        file = esc(&manifest.name),
        shown = esc(&cap_file),
        encoded = segment(&cap_file),
    ));
    page.into_response()
}

/// The capabilities kept in `DATA_DIR/caps/`, and the ids revoked from here.
fn kept(node: &Node) -> (Vec<Chain>, std::collections::BTreeSet<String>) {
    let caps = node.config.data_dir.join(CAPS_DIR);
    let revoked = std::fs::read_to_string(caps.join(REVOKED_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    let mut chains: Vec<Chain> = std::fs::read_dir(&caps)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "cap"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|text| {
                    text.lines()
                        .find(|l| l.starts_with("hcap1:"))
                        .and_then(|l| Chain::from_text(l.trim()).ok())
                })
                .collect()
        })
        .unwrap_or_default();
    chains.sort_by_key(|c| std::cmp::Reverse(c.leaf().capability().not_before));
    (chains, revoked)
}

/// `GET capabilities`.
pub(super) async fn list(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut page = Page::new("Capabilities", &ctx);
    let (chains, revoked) = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || kept(&node))
            .await
            .unwrap_or_default()
    };
    if chains.is_empty() {
        page.push("<p>This device has signed no capability yet (approvals and delegations made here are listed).</p>");
        return page.into_response();
    }
    let now = crate::clock::now();
    page.push("<table><caption>Capabilities signed on this device, newest first</caption><thead><tr><th scope=\"col\">Capability</th><th scope=\"col\">Holder</th><th scope=\"col\">Grants</th><th scope=\"col\">Runs used</th><th scope=\"col\">Expires</th><th scope=\"col\">State</th><th scope=\"col\"><span class=\"hidden\">Action</span></th></tr></thead><tbody>");
    for chain in &chains {
        let leaf = chain.leaf();
        let cap = leaf.capability();
        let id = leaf.id().to_string();
        let grants: String = cap
            .grants
            .iter()
            .map(|g| format!("<li>{}</li>", esc(&g.describe())))
            .collect();
        let runs = node.compute.as_ref().map_or(0, |c| c.runs_so_far(&id));
        let state = if revoked.contains(&id) {
            "revoked"
        } else if cap.expires <= now {
            "expired"
        } else {
            "valid"
        };
        let csrf = page.csrf_field();
        let action = if state == "valid" {
            format!(
                "<form method=\"post\" action=\"capabilities/{seg}/revoke\">{csrf}<button class=\"danger\" type=\"submit\">Revoke</button></form>",
                seg = segment(&id),
            )
        } else {
            String::new()
        };
        let _ = write!(
            page.body_mut(),
            "<tr data-cap=\"{id}\"><th scope=\"row\"><code>{short}</code></th><td><code>{holder}</code></td><td><ul>{grants}</ul></td><td class=\"num\">{runs}</td><td>{expires}</td><td data-field=\"state\">{state}</td><td>{action}</td></tr>",
            id = esc(&id),
            short = esc(&leaf.id().short()),
            holder = esc(&cap.audience.short()),
            expires = esc(&when(cap.expires.0)),
        );
    }
    page.push("</tbody></table>");
    page.into_response()
}

/// `POST capabilities/{id}/revoke`.
pub(super) async fn revoke(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    super::Posted(ctx, super::Nothing {}): super::Posted<super::Nothing>,
) -> Response {
    let mut page = Page::new("Capabilities", &ctx);
    let cap: CapId = match id.parse() {
        Ok(cap) => cap,
        Err(err) => {
            page.error(&format!("{err}"));
            return page.into_response();
        }
    };
    let Some(mesh) = node.mesh.get() else {
        page.error("This node is not part of a mesh.");
        return page.into_response();
    };
    if let Err(err) = mesh.revoke_capability(cap).await {
        page.error(&err.to_string());
        return page.into_response();
    }
    let revoked = node.config.data_dir.join(CAPS_DIR).join(REVOKED_FILE);
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&revoked)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{cap}\n").as_bytes()));
    axum::response::Redirect::to(&ctx.url("capabilities")).into_response()
}
