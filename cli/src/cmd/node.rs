//! `hearth node run` and `hearth status`.

use std::net::SocketAddr;

use hearth_node::mesh::MeshConfig;
use hearth_node::{MeshSetup, Node, NodeConfig};
use hearth_protocol::key::NodeKey;
use hearth_stores::backend::BackendKind;

use crate::client::Client;
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// Arguments of `hearth node run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Address of the local API (loopback only; port 0 lets the system choose).
    #[arg(long, default_value = "127.0.0.1:0")]
    api: SocketAddr,
    /// Storage engine for new stores.
    #[arg(long, default_value = "redb", value_parser = ["redb", "sled"])]
    backend: String,
    /// Mesh address to listen on (repeatable) [default: QUIC and TCP on 0.0.0.0, ports chosen by the system].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Address to dial at start and after losing it (repeatable), e.g. a cloud node.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Do not look for devices on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
}

fn multiaddrs(values: &[String], flag: &str) -> Result<Vec<hearth_node::mesh::Address>> {
    values
        .iter()
        .map(|v| {
            v.parse().map_err(|err| {
                CliError::new(
                    Exit::Usage,
                    format!("--{flag} {v:?} is not a multiaddr: {err}"),
                )
                .hint("write it like /ip4/192.0.2.1/udp/4001/quic-v1")
            })
        })
        .collect()
}

/// Node commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Run the node in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    let Command::Run(args) = command;
    let config = dir.config()?;
    let key_path = dir.root().join("node.key");
    let node_key = NodeKey::read(&key_path).map_err(|err| {
        CliError::key_file(
            err,
            &key_path,
            "run `hearth init` to create this device's key",
        )
    })?;
    let backend: BackendKind = args
        .backend
        .parse()
        .map_err(|err: String| CliError::new(Exit::Usage, err))?;
    let mut mesh_config = MeshConfig::default();
    if !args.listen.is_empty() {
        mesh_config.listen = multiaddrs(&args.listen, "listen")?;
    }
    let mut bootstrap = config.bootstrap.clone();
    bootstrap.extend(args.bootstrap.iter().cloned());
    mesh_config.bootstrap = multiaddrs(&bootstrap, "bootstrap")?;
    mesh_config.mdns = !args.no_mdns;
    // The cloud is the device with a public address: it relays unless told not to.
    mesh_config.relay = config
        .mesh
        .as_ref()
        .and_then(|mesh| mesh.relay)
        .unwrap_or(config.role == "cloud");
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
        config: mesh_config,
    };
    let node = Node::open(NodeConfig {
        data_dir: dir.root().to_path_buf(),
        name: config.name.clone(),
        role: config.role.clone(),
        node_key,
        api: args.api,
        backend,
        mesh: Some(mesh),
        compute_limits: compute_limits(&config)?,
    })
    .map_err(|err| CliError::new(Exit::Error, err.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::new(Exit::Error, format!("cannot start the runtime: {err}")))?;
    let name = config.name.clone();
    let json = out.json();
    runtime
        .block_on(async {
            let shutdown = shutdown_signal();
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
    let status = client.get("/v1/status", &[])?;
    out.emit(
        || {
            let mut text = format!(
                "{} ({}), peer id {}\n",
                status["name"].as_str().unwrap_or("?"),
                status["role"].as_str().unwrap_or("?"),
                status["peer_id"].as_str().unwrap_or("?")
            );
            let peers = status["peers"].as_array().map(Vec::len).unwrap_or(0);
            text.push_str(&format!("Peers: {peers}\n"));
            for peer in status["peers"].as_array().into_iter().flatten() {
                text.push_str(&format!(
                    "  {:<16} {:<7} {:<10} {:<26} {}\n",
                    peer["name"].as_str().unwrap_or("?"),
                    peer["role"].as_str().unwrap_or("?"),
                    if peer["connected"].as_bool().unwrap_or(false) {
                        "connected"
                    } else {
                        "offline"
                    },
                    super::devices::reached(peer),
                    peer["peer_id"].as_str().unwrap_or("?"),
                ));
            }
            text.push_str("Stores:\n");
            for store in status["stores"].as_array().into_iter().flatten() {
                let replicas: Vec<String> = store["replicas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let device = r["device"].as_str().unwrap_or("?");
                        match (r["in_sync"].as_bool(), r["lag"].as_u64()) {
                            (Some(true), _) => format!("{device} in sync"),
                            (_, Some(lag)) if lag > 0 => format!("{device} {lag} records behind"),
                            _ => format!("{device} not in sync"),
                        }
                    })
                    .collect();
                text.push_str(&format!(
                    "  {:<28} {}\n",
                    store["name"].as_str().unwrap_or("?"),
                    replicas.join(", ")
                ));
            }
            text
        },
        || status.clone(),
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
    let body = serde_json::json!({
        "ttl_ms": u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        "role": role,
        "name": name,
        "addrs": addrs,
    });
    let answer = client.send("POST", "/v1/invite", &body)?;
    out.emit(
        || {
            format!(
                "{}\nGive this one-time ticket to the new device; it works until {}:\n  hearth join TICKET --name NAME",
                answer["ticket"].as_str().unwrap_or(""),
                answer["expires"].as_str().unwrap_or("?")
            )
        },
        || answer.clone(),
    );
    Ok(())
}

/// The `[compute]` limits of `config.toml`, over the defaults.
fn compute_limits(
    config: &crate::data_dir::Config,
) -> Result<hearth_node::compute::runtime::Limits> {
    use hearth_node::compute::runtime::{Limits, MAX_MEMORY_BYTES};
    let mut limits = Limits::default();
    let Some(c) = &config.compute else {
        return Ok(limits);
    };
    let bad = |what: String| {
        CliError::new(Exit::Error, format!("config.toml [compute]: {what}"))
            .hint("fix config.toml in the data directory")
    };
    if let Some(fuel) = c.fuel {
        if fuel == 0 {
            return Err(bad("fuel must be above zero".into()));
        }
        limits.fuel = fuel;
    }
    if let Some(mb) = c.memory_mb {
        let bytes = usize::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        if mb == 0 || bytes > MAX_MEMORY_BYTES {
            return Err(bad(format!(
                "memory_mb must be between 1 and {}",
                MAX_MEMORY_BYTES / (1024 * 1024)
            )));
        }
        limits.memory_bytes = bytes;
    }
    if let Some(text) = &c.wall_time {
        limits.wall_time = humantime::parse_duration(text)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| bad(format!("wall_time {text:?} is not a duration such as 30s")))?;
    }
    if let Some(bytes) = c.result_bytes {
        limits.result_bytes = usize::try_from(bytes)
            .ok()
            .filter(|b| (1..=hearth_protocol::compute::MAX_RESULT_BYTES).contains(b))
            .ok_or_else(|| {
                bad(format!(
                    "result_bytes must be between 1 and {}",
                    hearth_protocol::compute::MAX_RESULT_BYTES
                ))
            })?;
    }
    Ok(limits)
}
