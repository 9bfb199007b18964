//! `hearth node run` and `hearth status`.

use hearth_node::api::types as api;
use hearth_node::{MeshSetup, Node, NodeConfig};
use hearth_protocol::key::NodeKey;

use crate::client::Client;
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// Node commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Run the node in the foreground until SIGINT or SIGTERM. Every flag has a key in
    /// config.toml; `hearth config show` prints what the node would run with.
    #[command(
        after_help = "Examples:\n  hearth node run\n  hearth node run --listen /ip4/0.0.0.0/udp/4001/quic-v1 --bootstrap /dns4/cloud.example.org/udp/4001/quic-v1\n  hearth node run --api 127.0.0.1:7411 --metrics"
    )]
    Run(super::config::NodeFlags),
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    let Command::Run(flags) = command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::new(Exit::Error, format!("cannot start the runtime: {err}")))?;
    // First of all: from here on a SIGHUP (`systemctl reload`, even while the stores
    // open) asks for a reload and never stops the node.
    let hangup = {
        let _runtime = runtime.enter();
        hangup_signal()
    };
    let config = dir.config()?;
    let effective = super::config::effective(dir, &config, &flags)?;
    let key_path = dir.root().join("node.key");
    let node_key = NodeKey::read(&key_path).map_err(|err| {
        CliError::key_file(
            err,
            &key_path,
            "run `hearth init` to create this device's key",
        )
    })?;
    let owner = dir.owner_public()?;
    let owner_key = if dir.owner_key_path().exists() {
        Some(dir.owner_key()?)
    } else {
        None
    };
    let mesh = MeshSetup {
        certificate: dir.device_cert()?,
        owner,
        owner_key,
        config: effective.mesh,
    };
    let node = Node::open(NodeConfig {
        data_dir: dir.root().to_path_buf(),
        name: config.name.clone(),
        role: config.role.clone(),
        node_key,
        api: effective.api,
        backend: effective.backend,
        mesh: Some(mesh),
        compute_limits: effective.limits,
        metrics: effective.metrics,
        exports: effective.exports,
    })
    .map_err(|err| CliError::new(Exit::Error, err.to_string()))?;
    let name = config.name.clone();
    let json = out.json();
    runtime
        .block_on(async {
            let shutdown = shutdown_signal();
            reload_on_hangup(hangup, dir.clone(), flags.clone(), node.clone());
            node.serve(shutdown, move |addr| {
                tracing::info!(%addr, "node {name} running");
                if !json {
                    let mut stderr = std::io::stderr();
                    let _ = std::io::Write::write_all(
                        &mut stderr,
                        format!(
                            "Node {name} is running; local API on {addr}. Stop it with Ctrl-C.\n"
                        )
                        .as_bytes(),
                    );
                }
            })
            .await
        })
        .map_err(|err| CliError::new(Exit::Error, err.to_string()))?;
    out.note("Node stopped.");
    Ok(())
}

/// SIGHUP, caught (from now on it no longer ends the process).
#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup()).ok()
    }
}

/// On SIGHUP, reads config.toml again and applies what can change while the node runs:
/// computation limits and drivers (`Node::reload`, which passes over a SIGHUP that comes
/// before the drivers started or once the node stops). A config.toml that no longer
/// reads keeps the old settings, and says why.
fn reload_on_hangup(
    hangup: Hangup,
    dir: DataDir,
    flags: super::config::NodeFlags,
    node: std::sync::Arc<hearth_node::Node>,
) {
    #[cfg(unix)]
    {
        let Some(mut hangup) = hangup else {
            return;
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let read = dir
                    .config()
                    .and_then(|config| super::config::effective(&dir, &config, &flags))
                    .map(|e| e.limits)
                    .map_err(|e| e.to_string());
                // Files and an audit write: off the async threads.
                let node = node.clone();
                let _ = tokio::task::spawn_blocking(move || node.reload(read)).await;
            }
        });
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called (in
/// the runtime), not when first polled: a signal that comes as soon as the node says it
/// runs still stops it cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `hearth status`.
pub(crate) fn status(dir: &DataDir, out: &mut Output) -> Result<()> {
    let client = Client::connect(dir)?;
    let status: api::Status = client.get("/v1/status", &())?;
    out.emit_typed(
        || {
            let mut text = format!(
                "{} ({}), peer id {}\n",
                status.name, status.role, status.peer_id
            );
            text.push_str(&format!("Peers: {}\n", status.peers.len()));
            for peer in &status.peers {
                text.push_str(&format!(
                    "  {:<16} {:<7} {:<10} {:<26} {}\n",
                    peer.name,
                    peer.role,
                    if peer.connected {
                        "connected"
                    } else {
                        "offline"
                    },
                    super::devices::reached(peer.path.as_deref(), peer.via.as_deref(), peer.rtt_ms),
                    peer.peer_id,
                ));
            }
            text.push_str("Stores:\n");
            for store in &status.stores {
                let replicas: Vec<String> = store
                    .replicas
                    .iter()
                    .map(|r| match (r.in_sync, r.lag) {
                        (true, _) if r.sealed == Some(true) => {
                            format!("{} sealed, has everything", r.device)
                        }
                        (false, _) if r.sealed == Some(true) => {
                            format!("{} sealed, not sent everything yet", r.device)
                        }
                        (true, _) => format!("{} in sync", r.device),
                        (_, Some(lag)) if lag > 0 => format!("{} {lag} records behind", r.device),
                        _ => format!("{} not in sync", r.device),
                    })
                    .collect();
                text.push_str(&format!("  {:<28} {}\n", store.name, replicas.join(", ")));
            }
            text
        },
        &status,
    );
    Ok(())
}

/// `hearth invite`.
pub(crate) fn invite(
    dir: &DataDir,
    ttl: std::time::Duration,
    role: Option<String>,
    name: Option<String>,
    addrs: Vec<String>,
    out: &mut Output,
) -> Result<()> {
    let client = Client::connect(dir)?;
    let body = api::InviteRequest {
        ttl_ms: Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        role,
        name,
        addrs,
    };
    let answer: api::Invite = client.send("POST", "/v1/invite", &body)?;
    out.emit_typed(
        || {
            format!(
                "{}\nGive this one-time ticket to the new device; it works until {}:\n  hearth join TICKET --name NAME",
                answer.ticket, answer.expires
            )
        },
        &answer,
    );
    Ok(())
}
