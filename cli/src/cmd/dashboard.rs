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
    // The browser is given a file (0600, in the private data directory) that sends it
    // on to the link: a link on a command line is readable by every local user.
    let opened = open && {
        let file = dir.root().join("dashboard-login.html");
        let _ = std::fs::remove_file(&file);
        let page = format!(
            "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" \
                 content=\"0;url={}\"><title>Hearth</title>",
            link.url
        );
        hearth_protocol::key::write_secret_file(&file, page.as_bytes()).is_ok()
            && std::process::Command::new("xdg-open")
                .arg(&file)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    };
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
