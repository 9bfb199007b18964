//! The node's data directory: where keys, the device certificate and config live.
//!
//! ```text
//! DATA_DIR/
//!   config.toml   name, role, mesh owner (public)
//!   owner.key     the owner key, 0600; only on the device that ran `hearth init`
//!   node.key      this device's key, 0600
//!   device.cap    this device's certificate (a capability chain)
//! ```

use std::path::{Path, PathBuf};

use hearth_protocol::key::{OwnerKey, PublicKey};
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Exit, Result};

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub(crate) struct DataDir {
    root: PathBuf,
}

/// `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// This device's name in the mesh.
    pub(crate) name: String,
    /// Its role.
    pub(crate) role: String,
    /// The mesh owner's public key (hex).
    pub(crate) owner: String,
    /// Mesh addresses to dial at start (the device that invited this one, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) bootstrap: Vec<String>,
    /// Limits of every computation this device runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) compute: Option<ComputeLimits>,
    /// How this device takes part in the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mesh: Option<MeshSection>,
    /// How `hearth node run` runs: the keys of its flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<NodeSection>,
    /// Metrics for Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metrics: Option<MetricsSection>,
    /// The export gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) export: Option<ExportSection>,
}

/// `[export]` in `config.toml`: how the export gateway sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportSection {
    /// PEM files of CAs trusted beside the system's roots (a private CA).
    pub(crate) ca_files: Option<Vec<PathBuf>>,
    /// Send plain http:// to a loopback address named literally (tests). Default off.
    pub(crate) allow_http_loopback: Option<bool>,
    /// An export not delivered this long after it was queued expires, e.g. `7d`.
    pub(crate) expire_after: Option<String>,
    /// The wait before the second attempt, doubling after each failure, e.g. `5s`.
    pub(crate) retry_initial: Option<String>,
    /// The longest wait between attempts, e.g. `1h`.
    pub(crate) retry_max: Option<String>,
    /// The longest one attempt may take, e.g. `30s`.
    pub(crate) timeout: Option<String>,
}

/// `[metrics]` in `config.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsSection {
    /// Serve `GET /v1/metrics` on the local API (with the API key). Default off.
    pub(crate) enabled: Option<bool>,
}

/// `[node]` in `config.toml`: what `hearth node run`'s flags set (a flag given on the
/// command line wins).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSection {
    /// `--api`: the local API's address (loopback only).
    pub(crate) api: Option<String>,
    /// `--backend`: the storage engine for new stores.
    pub(crate) backend: Option<String>,
    /// `--listen`: mesh addresses to listen on.
    pub(crate) listen: Option<Vec<String>>,
    /// `--no-mdns` / `--mdns`: look for devices on the LAN.
    pub(crate) mdns: Option<bool>,
}

/// `[mesh]` in `config.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MeshSection {
    /// Offer a relay to the mesh's devices. Default: on for the cloud role, off
    /// otherwise.
    pub(crate) relay: Option<bool>,
}

/// `[compute]` in `config.toml`: the limits of one run (defaults when absent).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComputeLimits {
    /// Fuel per run (roughly, WebAssembly instructions).
    pub(crate) fuel: Option<u64>,
    /// Linear memory per run, in MiB.
    pub(crate) memory_mb: Option<u64>,
    /// Wall time per run, e.g. `30s`.
    pub(crate) wall_time: Option<String>,
    /// Largest result, in bytes.
    pub(crate) result_bytes: Option<u64>,
}

impl DataDir {
    /// The data dir from `--data-dir`, `$HEARTH_DATA_DIR`, or the platform default.
    pub(crate) fn resolve(explicit: Option<PathBuf>) -> Result<Self> {
        if let Some(root) = explicit {
            return Ok(Self { root });
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".local/share"))
            })
            .ok_or_else(|| {
                CliError::new(Exit::Usage, "no data directory: $HOME is not set")
                    .hint("pass --data-dir DIR or set HEARTH_DATA_DIR")
            })?;
        Ok(Self {
            root: base.join("hearth"),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub(crate) fn owner_key_path(&self) -> PathBuf {
        self.root.join("owner.key")
    }

    pub(crate) fn node_key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    pub(crate) fn device_cert_path(&self) -> PathBuf {
        self.root.join("device.cap")
    }

    /// Has `hearth init` or `hearth join` run here?
    pub(crate) fn is_initialised(&self) -> bool {
        self.node_key_path().exists() || self.config_path().exists()
    }

    fn not_initialised(&self) -> CliError {
        CliError::new(
            Exit::NotFound,
            format!("{} is not a Hearth data directory", self.root.display()),
        )
        .hint("run `hearth init --name NAME` first, or pass the right --data-dir")
    }

    /// Reads `config.toml`.
    pub(crate) fn config(&self) -> Result<Config> {
        let path = self.config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.not_initialised());
            }
            Err(err) => return Err(CliError::read(&path, err, "config file")),
        };
        toml::from_str(&text).map_err(|err| {
            CliError::new(
                Exit::Error,
                format!("{} is not valid: {}", path.display(), err.message().trim()),
            )
            .hint("fix the file by hand or restore it from a backup")
        })
    }

    /// The mesh owner's public key, from the config.
    pub(crate) fn owner_public(&self) -> Result<PublicKey> {
        let config = self.config()?;
        config.owner.parse().map_err(|err| {
            CliError::new(
                Exit::Error,
                format!(
                    "{}: owner is not a public key: {err}",
                    self.config_path().display()
                ),
            )
        })
    }

    /// Reads this device's certificate.
    pub(crate) fn device_cert(&self) -> Result<hearth_protocol::capability::Chain> {
        let path = self.device_cert_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|err| CliError::read(&path, err, "device certificate"))?;
        hearth_protocol::capability::Chain::from_text(&text)
            .map_err(|err| CliError::bad_capability_file(&path, err))
    }

    /// Loads the owner key; only the device that ran `hearth init` has it.
    pub(crate) fn owner_key(&self) -> Result<OwnerKey> {
        if !self.is_initialised() {
            return Err(self.not_initialised());
        }
        let path = self.owner_key_path();
        OwnerKey::read(&path).map_err(|err| {
            CliError::key_file(
                err,
                &path,
                "only the device where the mesh was created holds the owner key; run this there, or restore it with `hearth init --recover`",
            )
        })
    }
}
