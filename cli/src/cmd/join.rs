//! `hearth join TICKET`: a new device joins an existing mesh.

use std::time::Duration;

use hearth_protocol::capability::Role;
use hearth_protocol::key::NodeKey;
use hearth_protocol::mesh::ticket::Ticket;
use serde_json::json;

use super::{random_bytes, write_new_file};
use crate::data_dir::{Config, DataDir};
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// Arguments of `hearth join`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The ticket `hearth invite` printed on a device of the mesh.
    ticket: String,
    /// This device's name in the mesh.
    #[arg(long)]
    name: String,
    /// This device's role.
    #[arg(long, value_enum, default_value = "mobile")]
    role: super::RoleArg,
    /// How long to wait for the inviting device.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    timeout: Duration,
}

pub(crate) fn run(dir: &DataDir, args: Args, out: &mut Output) -> Result<()> {
    if dir.is_initialised() {
        return Err(CliError::new(
            Exit::Error,
            format!("{} already holds a Hearth node", dir.root().display()),
        )
        .hint("join from a fresh data directory (--data-dir DIR)"));
    }
    let ticket = Ticket::from_text(&args.ticket).map_err(|err| {
        CliError::new(Exit::Usage, format!("not a valid ticket: {err}"))
            .hint("copy the whole line `hearth invite` printed")
    })?;
    let role: Role = args
        .role
        .as_str()
        .parse()
        .map_err(|err: String| CliError::new(Exit::Usage, err))?;
    let key = NodeKey::from_seed(random_bytes()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::new(Exit::Error, format!("cannot start the runtime: {err}")))?;
    let certificate = runtime
        .block_on(hearth_node::mesh::join(
            &key,
            &ticket,
            &args.name,
            role,
            args.timeout,
        ))
        .map_err(|err| {
            let text = err.to_string();
            let exit = if text.contains("cannot reach") || text.contains("in time") {
                Exit::Unavailable
            } else {
                Exit::Refused
            };
            CliError::new(exit, text)
                .hint("ask for a new ticket with `hearth invite` on a device of the mesh")
        })?;
    let (name, role) = certificate
        .leaf()
        .capability()
        .device()
        .map(|(n, r)| (n.to_owned(), r))
        .ok_or_else(|| {
            CliError::new(
                Exit::Error,
                "the inviter sent something that is not a device certificate",
            )
        })?;
    super::init::create_dir(dir)?;
    let path = dir.node_key_path();
    key.write_new(&path)
        .map_err(|err| CliError::key_file(err, &path, "check the data directory's permissions"))?;
    write_new_file(
        &dir.device_cert_path(),
        format!("{}\n", certificate.to_text()).as_bytes(),
    )?;
    let config = Config {
        name: name.clone(),
        role: role.to_string(),
        owner: ticket.owner.to_string(),
        // The inviter's addresses: where this device first looks for the mesh.
        bootstrap: ticket.addrs.clone(),
        compute: None,
        mesh: None,
        node: None,
        metrics: None,
        export: None,
    };
    let text =
        toml::to_string(&config).map_err(|err| CliError::new(Exit::Error, err.to_string()))?;
    write_new_file(
        &dir.config_path(),
        format!("# Hearth node configuration.\n{text}").as_bytes(),
    )?;
    let mesh_id = ticket.owner.mesh_id();
    let peer_id = key.public().peer_id();
    out.emit(
        || format!("Joined mesh {mesh_id} as {name} ({role}). Start the node with `hearth node run{}`.", crate::cmd::init::data_dir_flag(dir)),
        || json!({ "mesh_id": mesh_id, "owner": ticket.owner.to_string(), "peer_id": peer_id, "name": name, "role": role.as_str() }),
    );
    Ok(())
}
