//! `hearth devices` and `hearth devices revoke NAME`.

use hearth_protocol::time::UnixMillis;
use serde_json::Value;

use crate::client::{Client, segment};
use crate::data_dir::DataDir;
use crate::error::Result;
use crate::output::Output;

/// Arguments of `hearth devices`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Device subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Every device of the mesh (the default).
    Ls,
    /// Revoke a device: it is disconnected everywhere and refused from then on, with
    /// every capability issued by or to it (needs the owner key).
    Revoke {
        /// The device's name.
        name: String,
    },
}

pub(crate) fn run(dir: &DataDir, args: Args, out: &mut Output) -> Result<()> {
    let client = Client::connect(dir)?;
    match args.command.unwrap_or(Command::Ls) {
        Command::Ls => {
            let list = client.get("/v1/devices", &[])?;
            out.emit(
                || {
                    let mut text = format!(
                        "{:<16} {:<7} {:<8} {:<22} {}\n",
                        "NAME", "ROLE", "STATE", "LAST SEEN", "PEER ID"
                    );
                    for d in list["devices"].as_array().into_iter().flatten() {
                        let state = if d["revoked"] == Value::Bool(true) {
                            "revoked"
                        } else if d["online"] == Value::Bool(true) {
                            "online"
                        } else {
                            "offline"
                        };
                        let seen = d["last_seen"]
                            .as_u64()
                            .filter(|t| *t > 0)
                            .map(|t| UnixMillis(t).to_string())
                            .unwrap_or_else(|| "never".into());
                        text.push_str(&format!(
                            "{:<16} {:<7} {:<8} {:<22} {}\n",
                            d["name"].as_str().unwrap_or("?"),
                            d["role"].as_str().unwrap_or("?"),
                            state,
                            seen,
                            d["peer_id"].as_str().unwrap_or("?"),
                        ));
                    }
                    text
                },
                || list.clone(),
            );
        }
        Command::Revoke { name } => {
            let answer = client.send(
                "POST",
                &format!("/v1/devices/{}/revoke", segment(&name)),
                &Value::Null,
            )?;
            out.emit(
                || format!("Revoked {name}: it is disconnected and refused by every device that hears of it."),
                || answer.clone(),
            );
        }
    }
    Ok(())
}
