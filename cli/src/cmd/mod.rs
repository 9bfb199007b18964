//! One module per subcommand, plus the helpers they share.

pub(crate) mod app;
pub(crate) mod audit;
pub(crate) mod cap;
pub(crate) mod compute;
pub(crate) mod config;
pub(crate) mod dashboard;
pub(crate) mod demo;
pub(crate) mod devices;
pub(crate) mod doctor;
pub(crate) mod driver;
pub(crate) mod export;
pub(crate) mod init;
pub(crate) mod join;
pub(crate) mod key;
pub(crate) mod node;
pub(crate) mod restore;
pub(crate) mod service;
pub(crate) mod store;

use std::path::Path;
use std::time::{Duration, SystemTime};

use hearth_protocol::key::PublicKey;
use hearth_protocol::time::UnixMillis;

use crate::error::{CliError, Exit, Result};

/// The wall clock, read in one place.
pub(crate) fn now() -> UnixMillis {
    UnixMillis::from_system_time(SystemTime::now())
}

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|err| {
        CliError::new(
            Exit::Error,
            format!("the operating system gave no randomness: {err}"),
        )
    })?;
    Ok(bytes)
}

/// Clap value parser for durations such as `10m`, `30d`.
pub(crate) fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("the duration must be above zero".into()),
        Err(err) => Err(format!("{err} (expected something like 10m, 12h or 30d)")),
    }
}

/// Clap value parser for public keys (64 hex digits).
pub(crate) fn parse_public_key(text: &str) -> std::result::Result<PublicKey, String> {
    text.parse::<PublicKey>()
        .map_err(|err| format!("{err}; `hearth key new` prints a holder's public key"))
}

/// Clap value parser for instants: RFC 3339 or milliseconds since the epoch.
pub(crate) fn parse_instant(text: &str) -> std::result::Result<UnixMillis, String> {
    UnixMillis::parse(text).ok_or_else(|| {
        "expected a date like 2026-01-31T00:00:00Z or milliseconds since 1970".into()
    })
}

/// Creates `path` (which must not exist) with `contents`, synced to disk.
pub(crate) fn write_new_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|err| CliError::write(path, err))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| hearth_protocol::statefile::sync_parent(path))
        .map_err(|err| {
            let _ = std::fs::remove_file(path);
            CliError::write(path, err)
        })
}

/// Refuses early when an output path is taken, before any work or prompt.
pub(crate) fn ensure_absent(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(CliError::write(
            path,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    Ok(())
}

/// A device role, as the command line takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RoleArg {
    /// An always-on device at home: holds the owner's stores by default.
    Home,
    /// A phone or laptop.
    Mobile,
    /// A cloud VM: holds no personal store unless placed there.
    Cloud,
}

impl RoleArg {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RoleArg::Home => "home",
            RoleArg::Mobile => "mobile",
            RoleArg::Cloud => "cloud",
        }
    }
}
