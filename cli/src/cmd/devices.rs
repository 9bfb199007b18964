//! `hearth devices`, `hearth devices revoke NAME`, `hearth devices allow-admit NAME`,
//! `hearth devices approve NAME`.

use hearth_node::api::types as api;
use hearth_protocol::time::UnixMillis;

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
    /// Let a device admit new devices (run `hearth invite` there) for a while, through
    /// a `devices:admit` capability the owner key signs (needs the owner key). The
    /// devices it admits are members until the grant ends, unless the owner approves
    /// them.
    AllowAdmit {
        /// The device's name.
        name: String,
        /// How long the permission lasts.
        #[arg(long, default_value = "30d", value_parser = super::parse_duration)]
        ttl: std::time::Duration,
        /// The roles it may admit, comma-separated (home, mobile, cloud).
        #[arg(long, default_value = "mobile")]
        roles: String,
        /// The names it may give: `name`, `prefix*` or `*`.
        #[arg(long, default_value = "*")]
        names: String,
    },
    /// Approve a device another device admitted under a `devices:admit` grant: the
    /// owner key signs it a certificate of its own, so it stays a member when the
    /// grant ends or is withdrawn (needs the owner key).
    Approve {
        /// The device's name (or peer id).
        name: String,
    },
}

/// How a device is reached, from its `path`, `via` and `rtt_ms`: `direct, 3 ms`,
/// `relayed via cloud, 41 ms`, or `-` when not connected (or this device).
pub(crate) fn reached(path: Option<&str>, via: Option<&str>, rtt_ms: Option<f64>) -> String {
    let rtt = rtt_ms
        .map(|ms| {
            if ms < 10.0 {
                format!(", {ms:.1} ms")
            } else {
                format!(", {ms:.0} ms")
            }
        })
        .unwrap_or_default();
    match (path, via) {
        (Some("relayed"), Some(via)) => format!("relayed via {via}{rtt}"),
        (Some(path), _) => format!("{path}{rtt}"),
        (None, _) => "-".to_owned(),
    }
}

pub(crate) fn run(dir: &DataDir, args: Args, out: &mut Output) -> Result<()> {
    let client = Client::connect(dir)?;
    match args.command.unwrap_or(Command::Ls) {
        Command::Ls => {
            let list: api::Devices = client.get("/v1/devices", &())?;
            out.emit_typed(
                || {
                    let mut rows = Vec::new();
                    for d in &list.devices {
                        let mut state = if d.revoked {
                            "revoked"
                        } else if d.online {
                            "online"
                        } else {
                            "offline"
                        }
                        .to_owned();
                        if !d.approved && !d.revoked {
                            state.push_str(", unapproved");
                        }
                        let seen = Some(d.last_seen)
                            .filter(|t| *t > 0)
                            .map(|t| UnixMillis(t).to_string())
                            .unwrap_or_else(|| "never".into());
                        rows.push(vec![
                            d.name.clone(),
                            d.role.clone(),
                            state,
                            reached(d.path.as_deref(), d.via.as_deref(), d.rtt_ms),
                            seen,
                            d.peer_id.clone(),
                        ]);
                    }
                    crate::output::table(
                        &["NAME", "ROLE", "STATE", "REACHED", "LAST SEEN", "PEER ID"],
                        rows,
                        &[],
                    )
                },
                &list,
            );
        }
        Command::Revoke { name } => {
            let answer: api::DeviceRevoked = client.send(
                "POST",
                &format!("/v1/devices/{}/revoke", segment(&name)),
                &(),
            )?;
            out.emit_typed(
                || format!("Revoked {name}: it is disconnected and refused by every device that hears of it."),
                &answer,
            );
        }
        Command::AllowAdmit {
            name,
            ttl,
            roles,
            names,
        } => {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let body = api::AllowAdmitRequest {
                ttl_ms: Some(ttl_ms),
                roles: Some(roles.clone()),
                names: Some(names.clone()),
            };
            let answer: api::AdmitGrant = client.send(
                "POST",
                &format!("/v1/devices/{}/allow-admit", segment(&name)),
                &body,
            )?;
            out.emit_typed(
                || {
                    format!(
                        "{name} may admit new {roles} devices named {names} until {} (capability {}; withdraw it with `hearth cap revoke`).\n\
                         The devices it admits are members until then; approve one for good with `hearth devices approve NAME`.",
                        answer.expires, answer.cap_id,
                    )
                },
                &answer,
            );
        }
        Command::Approve { name } => {
            let answer: api::Approved = client.send(
                "POST",
                &format!("/v1/devices/{}/approve", segment(&name)),
                &(),
            )?;
            out.emit_typed(
                || {
                    if answer.changed {
                        format!("Approved {name}: it holds a certificate the owner key signed, and stays a member when the grant that admitted it ends.")
                    } else {
                        format!("{name} holds a certificate the owner key signed already.")
                    }
                },
                &answer,
            );
        }
    }
    Ok(())
}
