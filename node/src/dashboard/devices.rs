//! The devices page: every device of the mesh (role, online, how it is reached, last
//! seen, revoked), revoking one after a confirmation that names the consequences, and
//! inviting a new one: the ticket as text and as a QR code for a phone's camera.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::page::{self, Page, esc};
use super::{Ctx, Nothing, Posted, refusal, when};
use crate::node::Node;

pub(super) async fn page(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut page = Page::new("Devices", &ctx);
    let Some(mesh) = node.mesh.get() else {
        page.error("This node is not part of a mesh.");
        return page.into_response();
    };
    let list = match mesh.devices().await {
        Ok(list) => list,
        Err(err) => {
            page.error(&err.to_string());
            return page.into_response();
        }
    };
    page.push("<table><caption>The devices of your mesh</caption><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Role</th><th scope=\"col\">Online</th><th scope=\"col\">Reached</th><th scope=\"col\">Last seen</th><th scope=\"col\">State</th><th scope=\"col\"><span class=\"hidden\">Action</span></th></tr></thead><tbody>");
    for d in &list {
        let state = if d.revoked {
            "revoked"
        } else if d.approved {
            "member"
        } else {
            "member until its admit grant ends"
        };
        let online = if d.name == node.config.name {
            "this device".to_owned()
        } else if d.online {
            "online".to_owned()
        } else {
            "offline".to_owned()
        };
        let reached = match (&d.path, &d.via) {
            (Some(path), Some(via)) => format!("{path} via {via}"),
            (Some(path), None) => path.clone(),
            _ => "-".into(),
        };
        let action = if d.revoked || d.name == node.config.name {
            String::new()
        } else {
            format!(
                "<a class=\"danger\" href=\"devices/{0}/revoke\">Revoke {1}…</a>",
                page::segment(&d.peer_id),
                esc(&d.name)
            )
        };
        page.push(&format!(
            "<tr data-device=\"{name}\" data-peer=\"{peer}\"><th scope=\"row\">{name}</th><td>{role}</td><td data-field=\"online\" data-self=\"{me}\" class=\"{online_class}\">{online}</td><td>{reached}</td><td>{seen}</td><td data-field=\"state\">{state}</td><td>{action}</td></tr>",
            me = d.name == node.config.name,
            peer = esc(&d.peer_id),
            name = esc(&d.name),
            role = esc(&d.role),
            online_class = if d.online { "ok" } else { "muted" },
            online = esc(&online),
            reached = esc(&reached),
            seen = esc(&when(d.last_seen)),
            state = esc(state),
        ));
    }
    page.push("</tbody></table>");
    invite_form(&mut page);
    page.into_response()
}

/// The device with this peer id (devices are named by peer id in the pages: two
/// devices may carry one name, one of them revoked).
async fn device_by_peer(node: &Node, peer: &str) -> Option<crate::mesh::DeviceStatus> {
    let mesh = node.mesh.get()?;
    mesh.devices()
        .await
        .ok()?
        .into_iter()
        .find(|d| d.peer_id == peer)
}

pub(super) async fn confirm_revoke(
    State(node): State<Arc<Node>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(peer): Path<String>,
) -> Response {
    let Some(device) = device_by_peer(&node, &peer).await else {
        let mut page = Page::new("Devices", &ctx);
        page.error(&format!("No device of this mesh has the peer id {peer:?}."));
        return page.into_response();
    };
    let name = device.name;
    let mut page = Page::new(&format!("Revoke {name}?"), &ctx);
    if name == node.config.name {
        page.error("A device cannot revoke itself; revoke it from another device.");
        return page.into_response();
    }
    page.push(&format!(
        "<p>Revoking <strong>{name}</strong> removes it from your mesh for good: every \
         device drops its connections and refuses it from now on, every capability issued \
         to or by its key stops working, and it receives no more data. What it already \
         holds stays on it. To bring it back you would pair it again as a new device.</p>\
         <form method=\"post\" action=\"devices/{seg}/revoke\">{csrf}\
         <button class=\"danger\" type=\"submit\">Revoke {name}</button> \
         <a href=\"devices\">Cancel</a></form>",
        name = esc(&name),
        seg = page::segment(&peer),
        csrf = page.csrf_field(),
    ));
    page.into_response()
}

pub(super) async fn revoke(
    State(node): State<Arc<Node>>,
    Path(peer): Path<String>,
    Posted(ctx, Nothing {}): Posted<Nothing>,
) -> Response {
    let Some(mesh) = node.mesh.get() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "This node is not part of a mesh.",
        );
    };
    match mesh.revoke(&peer).await {
        Ok(_) => Redirect::to(&ctx.url("devices")).into_response(),
        Err(err) => {
            let mut page = Page::new("Devices", &ctx);
            page.error(&err.to_string());
            page.into_response()
        }
    }
}

/// The invite form at the foot of the devices page.
pub(super) fn invite_form(page: &mut Page) {
    let csrf = page.csrf_field();
    let _ = write!(
        page.body_mut(),
        "<h2>Invite a device</h2><form class=\"stack\" method=\"post\" action=\"devices/invite\">{csrf}\
         <label>Its name (blank: what it asks for)<input name=\"name\" size=\"24\"></label>\
         <label>Its role<select name=\"role\"><option value=\"\">what it asks for</option>\
         <option value=\"home\">home: an always-on device, holds your stores by default</option>\
         <option value=\"mobile\">mobile: a phone or laptop</option>\
         <option value=\"cloud\">cloud: holds no personal store unless placed there</option></select></label>\
         <label>The ticket works for (minutes)<input name=\"minutes\" type=\"number\" min=\"1\" max=\"1440\" value=\"10\"></label>\
         <button type=\"submit\">Make a ticket</button></form>"
    );
}

#[derive(Debug, Deserialize)]
pub(super) struct InviteForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    minutes: String,
}

/// The ticket as a QR code: an SVG image, as a `data:` URL.
fn qr_data_url(ticket: &str) -> Result<String, String> {
    use base64::Engine as _;
    let code = qrcode::QrCode::with_error_correction_level(ticket, qrcode::EcLevel::M)
        .map_err(|err| format!("the ticket does not fit a QR code: {err}"))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(320, 320)
        .build();
    Ok(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

/// `POST devices/invite`: a one-time ticket, as `hearth invite` makes it.
pub(super) async fn invite(
    State(node): State<Arc<Node>>,
    Posted(ctx, form): Posted<InviteForm>,
) -> Response {
    let mut page = Page::new("Invite a device", &ctx);
    let Some(mesh) = node.mesh.get() else {
        page.error("This node is not part of a mesh.");
        return page.into_response();
    };
    let minutes = match form.minutes.trim() {
        "" => 10,
        text => match text.parse::<u64>() {
            Ok(m) if (1..=1440).contains(&m) => m,
            _ => {
                page.error(&format!(
                    "{text:?} is not a number of minutes from 1 to 1440."
                ));
                invite_form(&mut page);
                return page.into_response();
            }
        },
    };
    let role = match form.role.trim() {
        "" => None,
        text => match text.parse::<hearth_protocol::capability::Role>() {
            Ok(role) => Some(role),
            Err(err) => {
                page.error(&err.to_string());
                invite_form(&mut page);
                return page.into_response();
            }
        },
    };
    let name = Some(form.name.trim().to_owned()).filter(|n| !n.is_empty());
    let ttl = std::time::Duration::from_secs(minutes * 60);
    let ticket = match mesh.invite(ttl, name, role, Vec::new()).await {
        Ok(ticket) => ticket,
        Err(err) => {
            page.error(&err.to_string());
            invite_form(&mut page);
            return page.into_response();
        }
    };
    let expires = hearth_protocol::time::UnixMillis::from_system_time(std::time::SystemTime::now())
        .saturating_add(ttl);
    let qr = match qr_data_url(&ticket) {
        Ok(url) => format!(
            "<img class=\"qr\" src=\"{}\" width=\"320\" height=\"320\" alt=\"The ticket as a QR code\">",
            esc(&url)
        ),
        Err(err) => format!("<p class=\"error\">{}</p>", esc(&err)),
    };
    let _ = write!(
        page.body_mut(),
        "<p>Give this one-time ticket to the new device; it works until {expires}. On the \
         device run <code>hearth join TICKET --name NAME</code>, or scan the code with its \
         camera and paste what it reads.</p>\
         <label>The ticket<textarea id=\"ticket\" readonly rows=\"6\" cols=\"80\">{ticket}</textarea></label>{qr}\
         <p>Anyone who has the ticket before it is used can join as this device: send it only \
         to the device itself. <a href=\"devices\">Back to the devices</a></p>",
        expires = esc(&expires.to_string()),
        ticket = esc(&ticket),
    );
    page.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws the SVG the page serves (qrcode's `M x y h w v h H x V y` rectangles) as
    /// a bitmap, `scale` pixels a module.
    fn raster(svg: &str) -> (usize, Vec<Vec<bool>>) {
        let size: usize = svg
            .split("width=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|w| w.parse().ok())
            .unwrap();
        let mut bitmap = vec![vec![false; size]; size];
        let path = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for rect in path.split('M').filter(|r| !r.is_empty()) {
            let numbers: Vec<usize> = rect
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().unwrap())
                .collect();
            let [x, y, w, h, ..] = numbers[..] else {
                panic!("{rect}")
            };
            for row in bitmap.iter_mut().skip(y).take(h) {
                for cell in row.iter_mut().skip(x).take(w) {
                    *cell = true;
                }
            }
        }
        (size, bitmap)
    }

    #[test]
    fn the_qr_code_reads_back_as_the_ticket() {
        use base64::Engine as _;
        let ticket = format!("hearth1{}", "abcdefghijklmnopqrstuvwxyz234567".repeat(12));
        let url = qr_data_url(&ticket).unwrap();
        let svg = base64::engine::general_purpose::STANDARD
            .decode(url.strip_prefix("data:image/svg+xml;base64,").unwrap())
            .unwrap();
        let (size, bitmap) = raster(std::str::from_utf8(&svg).unwrap());
        let mut image = rqrr::PreparedImage::prepare_from_bitmap(size, size, |x, y| bitmap[y][x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, ticket);
    }
}
