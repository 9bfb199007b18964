//! `hearth dashboard`: a one-time login link to the owner's dashboard, which the node
//! serves on its loopback API address.

use hearth_node::api::types as api;

use crate::client::Client;
use crate::data_dir::DataDir;
use crate::error::Result;
use crate::output::Output;

/// Prints (and with `open`, opens) a one-time login link.
pub(crate) fn run(dir: &DataDir, open: bool, out: &mut Output) -> Result<()> {
    let link: api::DashboardLink =
        Client::connect(dir)?.send("POST", "/v1/dashboard/link", &serde_json::json!({}))?;
    let opened = open
        && std::process::Command::new("xdg-open")
            .arg(&link.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if open && !opened {
        out.note("Could not open a browser (xdg-open); open the link yourself.");
    }
    out.emit_typed(
        || {
            format!(
                "{}\nOpen it in a browser on this device; it works once, for two minutes, and \
                 logs you in for twelve hours.",
                link.url
            )
        },
        &link,
    );
    Ok(())
}
