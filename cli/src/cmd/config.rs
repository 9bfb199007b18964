//! `hearth config show`, and the one place that decides what `hearth node run` runs
//! with: built-in defaults, then `config.toml`, then the command line's flags.

use std::net::SocketAddr;

use hearth_node::compute::runtime::Limits;
use hearth_node::mesh::{Address, MeshConfig};
use hearth_stores::backend::BackendKind;
use serde::Serialize;

use crate::data_dir::{Config, DataDir};
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// The flags of `hearth node run` (and of `hearth config show`, to see what they
/// would change). Each one has a key in `config.toml`; a flag given here wins.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct NodeFlags {
    /// Address of the local API (loopback only; port 0 lets the system choose)
    /// [config: node.api; default: 127.0.0.1:0].
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// Storage engine for new stores [config: node.backend; default: redb].
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Mesh address to listen on (repeatable) [config: node.listen; default: QUIC and
    /// TCP on 0.0.0.0, ports chosen by the system].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Address to dial at start and after losing it (repeatable), e.g. a cloud node;
    /// added to config.toml's `bootstrap`.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Do not look for devices on the LAN with mDNS [config: node.mdns = false].
    #[arg(long, conflicts_with = "mdns")]
    no_mdns: bool,
    /// Look for devices on the LAN with mDNS (the default) [config: node.mdns = true].
    #[arg(long)]
    mdns: bool,
    /// Serve metrics for Prometheus at /v1/metrics on the local API, with the API key
    /// [config: metrics.enabled; default: off].
    #[arg(long)]
    metrics: bool,
}

/// The storage engines `--backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// redb: the default, chosen by measurement.
    Redb,
    /// sled 0.34 (only in builds with the `sled` feature).
    Sled,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Source {
    /// Built in.
    Default,
    /// `config.toml`.
    ConfigFile,
    /// The command line.
    Flag,
    /// `config.toml` and the command line together (bootstrap addresses).
    ConfigFileAndFlag,
    /// An environment variable.
    Environment,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::ConfigFile => "config.toml",
            Source::Flag => "flag",
            Source::ConfigFileAndFlag => "config.toml + flag",
            Source::Environment => "environment",
        }
    }
}

/// One setting as shown by `hearth config show`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Setting {
    /// Its key in `config.toml` (dotted).
    pub(crate) key: &'static str,
    /// Its effective value.
    pub(crate) value: serde_json::Value,
    /// Where that value came from.
    pub(crate) source: Source,
}

/// What `hearth node run` runs with.
#[derive(Debug)]
pub(crate) struct Effective {
    /// The local API's address.
    pub(crate) api: SocketAddr,
    /// The storage engine for new stores.
    pub(crate) backend: BackendKind,
    /// The mesh: listen and bootstrap addresses, mDNS, relay.
    pub(crate) mesh: MeshConfig,
    /// Limits of every computation.
    pub(crate) limits: Limits,
    /// Serve `/v1/metrics`.
    pub(crate) metrics: bool,
    /// The export gateway.
    pub(crate) exports: hearth_node::export::ExportConfig,
    /// Every setting, its value and source.
    pub(crate) settings: Vec<Setting>,
}

/// `value` from the flag if given, else from the file, else `default`, with its source.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> (T, Source) {
    match (flag, file) {
        (Some(v), _) => (v, Source::Flag),
        (None, Some(v)) => (v, Source::ConfigFile),
        (None, None) => (default, Source::Default),
    }
}

fn multiaddrs(values: &[String], what: &str) -> Result<Vec<Address>> {
    values
        .iter()
        .map(|v| {
            v.parse().map_err(|err| {
                CliError::new(
                    Exit::Usage,
                    format!("{what} {v:?} is not a multiaddr: {err}"),
                )
                .hint("write it like /ip4/192.0.2.1/udp/4001/quic-v1")
            })
        })
        .collect()
}

/// A problem with a value of `config.toml`.
fn bad_file(dir: &DataDir, message: String) -> CliError {
    CliError::new(
        Exit::Error,
        format!("{}: {message}", dir.config_path().display()),
    )
    .hint("fix config.toml in the data directory (`hearth config show` prints what it holds)")
}

/// Defaults, then `config.toml`, then the flags.
pub(crate) fn effective(dir: &DataDir, config: &Config, flags: &NodeFlags) -> Result<Effective> {
    let node = config.node.clone().unwrap_or_default();
    let mut settings = Vec::new();
    let mut show = |key, value: serde_json::Value, source| {
        settings.push(Setting { key, value, source });
    };
    show("name", config.name.clone().into(), Source::ConfigFile);
    show("role", config.role.clone().into(), Source::ConfigFile);
    show("owner", config.owner.clone().into(), Source::ConfigFile);

    let file_api = node
        .api
        .as_deref()
        .map(|text| {
            text.parse::<SocketAddr>()
                .map_err(|err| bad_file(dir, format!("node.api {text:?}: {err}")))
        })
        .transpose()?;
    let (api, source) = pick(flags.api, file_api, SocketAddr::from(([127, 0, 0, 1], 0)));
    if !api.ip().is_loopback() {
        let message = format!(
            "the local API listens only on a loopback address, not {api} (other devices \
             reach this node through the mesh)"
        );
        return Err(match source {
            Source::ConfigFile => bad_file(dir, format!("node.api: {message}")),
            _ => CliError::new(Exit::Usage, message),
        });
    }
    show("node.api", api.to_string().into(), source);

    let file_backend = node
        .backend
        .as_deref()
        .map(|text| {
            text.parse::<BackendKind>()
                .map_err(|err| bad_file(dir, format!("node.backend: {err}")))
        })
        .transpose()?;
    let flag_backend = flags
        .backend
        .map(|b| match b {
            Backend::Redb => "redb".parse::<BackendKind>(),
            Backend::Sled => "sled".parse::<BackendKind>(),
        })
        .transpose()
        .map_err(|err| CliError::new(Exit::Usage, err))?;
    let (backend, source) = pick(flag_backend, file_backend, BackendKind::default());
    if backend == BackendKind::Memory {
        return Err(bad_file(
            dir,
            "node.backend: memory keeps nothing across restarts; use redb or sled".into(),
        ));
    }
    show("node.backend", backend.as_str().into(), source);

    let mut mesh = MeshConfig::default();
    let default_listen: Vec<String> = mesh.listen.iter().map(ToString::to_string).collect();
    let (listen, source) = pick(
        (!flags.listen.is_empty()).then(|| flags.listen.clone()),
        node.listen.clone(),
        default_listen,
    );
    let what = match source {
        Source::Flag => "--listen",
        _ => "node.listen",
    };
    mesh.listen = multiaddrs(&listen, what)?;
    show("node.listen", listen.into(), source);

    let mut bootstrap = config.bootstrap.clone();
    bootstrap.extend(flags.bootstrap.iter().cloned());
    mesh.bootstrap = multiaddrs(&bootstrap, "bootstrap address")?;
    let source = match (config.bootstrap.is_empty(), flags.bootstrap.is_empty()) {
        (true, true) => Source::Default,
        (false, true) => Source::ConfigFile,
        (true, false) => Source::Flag,
        (false, false) => Source::ConfigFileAndFlag,
    };
    show("bootstrap", bootstrap.into(), source);

    let flag_mdns = if flags.no_mdns {
        Some(false)
    } else if flags.mdns {
        Some(true)
    } else {
        None
    };
    let (mdns, source) = pick(flag_mdns, node.mdns, true);
    mesh.mdns = mdns;
    show("node.mdns", mdns.into(), source);

    // The cloud is the device with a public address: it relays unless told not to.
    let (relay, source) = pick(
        None,
        config.mesh.as_ref().and_then(|m| m.relay),
        config.role == "cloud",
    );
    mesh.relay = relay;
    show("mesh.relay", relay.into(), source);

    let (metrics, source) = pick(
        flags.metrics.then_some(true),
        config.metrics.as_ref().and_then(|m| m.enabled),
        false,
    );
    show("metrics.enabled", metrics.into(), source);

    let limits = compute_limits(dir, config)?;
    let c = config.compute.clone();
    let from = |set: bool| {
        if set {
            Source::ConfigFile
        } else {
            Source::Default
        }
    };
    show(
        "compute.fuel",
        limits.fuel.into(),
        from(c.as_ref().is_some_and(|c| c.fuel.is_some())),
    );
    show(
        "compute.memory_mb",
        (limits.memory_bytes / (1024 * 1024)).into(),
        from(c.as_ref().is_some_and(|c| c.memory_mb.is_some())),
    );
    show(
        "compute.wall_time",
        humantime::format_duration(limits.wall_time)
            .to_string()
            .into(),
        from(c.as_ref().is_some_and(|c| c.wall_time.is_some())),
    );
    show(
        "compute.result_bytes",
        limits.result_bytes.into(),
        from(c.as_ref().is_some_and(|c| c.result_bytes.is_some())),
    );
    let exports = export_config(dir, config)?;
    let e = config.export.clone().unwrap_or_default();
    let duration = |d: std::time::Duration| -> serde_json::Value {
        humantime::format_duration(d).to_string().into()
    };
    show(
        "export.ca_files",
        exports
            .ca_files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .into(),
        from(e.ca_files.is_some()),
    );
    show(
        "export.allow_http_loopback",
        exports.allow_http_loopback.into(),
        from(e.allow_http_loopback.is_some()),
    );
    show(
        "export.expire_after",
        duration(exports.expire_after),
        from(e.expire_after.is_some()),
    );
    show(
        "export.retry_initial",
        duration(exports.retry_initial),
        from(e.retry_initial.is_some()),
    );
    show(
        "export.retry_max",
        duration(exports.retry_max),
        from(e.retry_max.is_some()),
    );
    show(
        "export.timeout",
        duration(exports.timeout),
        from(e.timeout.is_some()),
    );
    Ok(Effective {
        api,
        backend,
        mesh,
        limits,
        metrics,
        exports,
        settings,
    })
}

/// The `[export]` settings of `config.toml`, over the defaults. CA files are checked
/// when the node starts (they are read then).
fn export_config(dir: &DataDir, config: &Config) -> Result<hearth_node::export::ExportConfig> {
    let mut out = hearth_node::export::ExportConfig::default();
    let Some(e) = &config.export else {
        return Ok(out);
    };
    let bad = |message: String| bad_file(dir, format!("[export] {message}"));
    let duration = |key: &str, text: &Option<String>, slot: &mut std::time::Duration| {
        if let Some(text) = text {
            *slot = humantime::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad(format!("{key} {text:?} is not a duration such as 30s")))?;
        }
        Ok::<(), CliError>(())
    };
    duration("expire_after", &e.expire_after, &mut out.expire_after)?;
    duration("retry_initial", &e.retry_initial, &mut out.retry_initial)?;
    duration("retry_max", &e.retry_max, &mut out.retry_max)?;
    duration("timeout", &e.timeout, &mut out.timeout)?;
    if out.retry_max < out.retry_initial {
        return Err(bad("retry_max is shorter than retry_initial".into()));
    }
    if let Some(files) = &e.ca_files {
        out.ca_files = files
            .iter()
            .map(|p| {
                if p.is_relative() {
                    dir.root().join(p)
                } else {
                    p.clone()
                }
            })
            .collect();
    }
    out.allow_http_loopback = e.allow_http_loopback.unwrap_or(false);
    Ok(out)
}

/// The `[compute]` limits of `config.toml`, over the defaults.
fn compute_limits(dir: &DataDir, config: &Config) -> Result<Limits> {
    use hearth_node::compute::runtime::MAX_MEMORY_BYTES;
    let mut limits = Limits::default();
    let Some(c) = &config.compute else {
        return Ok(limits);
    };
    let bad = |message: String| bad_file(dir, format!("[compute] {message}"));
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

/// `hearth config` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// The configuration `hearth node run` would use (with these flags), each value with
    /// where it came from: default, config.toml, flag or environment.
    Show(NodeFlags),
}

pub(crate) fn run(
    dir: &DataDir,
    data_dir_source: Source,
    command: Command,
    out: &mut Output,
) -> Result<()> {
    let Command::Show(flags) = command;
    let config = dir.config()?;
    let effective = effective(dir, &config, &flags)?;
    let mut settings = vec![Setting {
        key: "data_dir",
        value: dir.root().display().to_string().into(),
        source: data_dir_source,
    }];
    settings.extend(effective.settings);
    out.emit(
        || {
            let mut text = format!("# {}\n", dir.config_path().display());
            let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
            for s in &settings {
                let value = match &s.value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                text.push_str(&format!(
                    "{:<width$}  {value}  ({})\n",
                    s.key,
                    s.source.as_str()
                ));
            }
            text
        },
        || {
            let map: serde_json::Map<String, serde_json::Value> = settings
                .iter()
                .map(|s| {
                    (
                        s.key.to_owned(),
                        serde_json::json!({ "value": s.value, "source": s.source }),
                    )
                })
                .collect();
            serde_json::Value::Object(map)
        },
    );
    Ok(())
}
