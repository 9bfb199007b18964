//! `hearth doctor`: is this node healthy? One line per check (pass, warn or fail) with
//! the fix in a sentence; exit code 1 when any check fails.

use std::time::Duration;

use hearth_node::api::types as api;
use hearth_node::layout;
use serde::Serialize;

use crate::client::Client;
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    /// Healthy.
    Pass,
    /// Works, but worth a look.
    Warn,
    /// Broken: the fix says what to do.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// What was checked.
    pub(crate) check: &'static str,
    /// How it came out.
    pub(crate) verdict: Verdict,
    /// What was found.
    pub(crate) detail: String,
    /// What to do about it (empty on a pass).
    pub(crate) fix: String,
}

fn pass(check: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        verdict: Verdict::Pass,
        detail: detail.into(),
        fix: String::new(),
    }
}

fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check,
        verdict: Verdict::Warn,
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check,
        verdict: Verdict::Fail,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// Free space below this fails: a full disk stops every write.
const DISK_FAIL_BYTES: u64 = 256 * 1024 * 1024;
/// Free space below this warns.
const DISK_WARN_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// A peer's clock this far from ours is worth a warning: certificates and
/// capabilities are checked against clocks, with two minutes of allowance.
const CLOCK_WARN: Duration = Duration::from_secs(60);

fn permissions(dir: &DataDir) -> Check {
    const NAME: &str = "permissions";
    let mut exposed = Vec::new();
    if let Err(e) = hearth_protocol::statefile::check_private(dir.root()) {
        exposed.push(e.to_string());
    }
    for name in layout::PRIVATE {
        if let Err(e) = hearth_protocol::statefile::check_private(&dir.root().join(name)) {
            exposed.push(e.to_string());
        }
    }
    if exposed.is_empty() {
        pass(
            NAME,
            "the data directory and its key files are readable by this user only",
        )
    } else {
        fail(
            NAME,
            exposed.join("; "),
            format!(
                "run `chmod 700 {}` and `chmod 600` on each key file named; the node does not \
                 start while others may read its keys",
                dir.root().display()
            ),
        )
    }
}

fn config(dir: &DataDir) -> (Check, Option<crate::data_dir::Config>) {
    const NAME: &str = "config";
    match dir
        .config()
        .and_then(|c| super::config::effective(dir, &c, &Default::default()).map(|_| c))
    {
        Ok(config) => (
            pass(NAME, format!("{} is valid", dir.config_path().display())),
            Some(config),
        ),
        Err(err) => (
            fail(
                NAME,
                err.to_string(),
                "fix config.toml (`hearth config show` names what it reads)",
            ),
            None,
        ),
    }
}

fn disk(dir: &DataDir) -> Check {
    const NAME: &str = "disk space";
    match rustix::fs::statvfs(dir.root()) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            let text = format!("{} free where the data directory is", size(free));
            if free < DISK_FAIL_BYTES {
                fail(
                    NAME,
                    text,
                    "free space on that disk: with it full, every write is refused",
                )
            } else if free < DISK_WARN_BYTES {
                warn(
                    NAME,
                    text,
                    "free space on that disk before stores and logs fill it",
                )
            } else {
                pass(NAME, text)
            }
        }
        Err(err) => warn(
            NAME,
            format!("cannot read the free space: {err}"),
            "check the disk by hand (`df -h`)",
        ),
    }
}

fn size(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let gib = bytes as f64 / (1024.0 * 1024.0 * 1024.0);
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{} MiB", bytes / (1024 * 1024))
    }
}

/// The node's status, when it runs and answers.
fn running(dir: &DataDir) -> (Check, Option<(Client, api::Status)>) {
    const NAME: &str = "node";
    let client = match Client::connect(dir) {
        Ok(client) => client,
        Err(err) => {
            return (
                fail(
                    NAME,
                    err.to_string(),
                    format!(
                        "start it: `hearth node run{}`, or `hearth service install` to run it \
                         as a service",
                        super::init::data_dir_flag(dir)
                    ),
                ),
                None,
            );
        }
    };
    match client.get::<api::Status>("/v1/status", &()) {
        Ok(status) => (
            pass(
                NAME,
                format!(
                    "{} ({}) runs and answers on its local API",
                    status.name, status.role
                ),
            ),
            Some((client, status)),
        ),
        Err(err) => (
            fail(
                NAME,
                err.to_string(),
                "restart the node; if it will not start, run `hearth node run` in a terminal \
                 to read why",
            ),
            None,
        ),
    }
}

fn peers(status: &api::Status) -> Check {
    const NAME: &str = "peers";
    let others: Vec<&api::PeerStatus> = status.peers.iter().collect();
    if others.is_empty() {
        return pass(NAME, "no other device has joined this mesh yet");
    }
    let mut connected = Vec::new();
    let mut offline = Vec::new();
    for p in &others {
        if p.connected {
            connected.push(format!(
                "{} {}",
                p.name,
                super::devices::reached(p.path.as_deref(), p.via.as_deref(), p.rtt_ms)
            ));
        } else {
            offline.push(p.name.clone());
        }
    }
    let detail = format!(
        "connected: {}{}",
        if connected.is_empty() {
            "none".to_owned()
        } else {
            connected.join("; ")
        },
        if offline.is_empty() {
            String::new()
        } else {
            format!("; offline: {}", offline.join(", "))
        }
    );
    if connected.is_empty() {
        warn(
            NAME,
            detail,
            "bring another device online, or give this one a way to reach the others \
             (`--bootstrap` or node.listen in config.toml, a relay on the cloud device)",
        )
    } else if offline.is_empty() {
        pass(NAME, detail)
    } else {
        warn(
            NAME,
            detail,
            "an offline device catches up when it comes back; revoke one that is lost \
             (`hearth devices revoke NAME`)",
        )
    }
}

/// Compares the times connected peers wrote into the catalogue (by their own clocks,
/// whenever a replica of theirs changed) with this device's clock: a time in the future
/// means that peer's clock is ahead of this one. A time in the past proves nothing (the
/// write may be old), so a clock behind this one is seen from the other side: run the
/// doctor on each device.
fn clock(status: &api::Status, stores: &api::Stores) -> Check {
    const NAME: &str = "clock";
    let now = super::now().0;
    let margin = u64::try_from(CLOCK_WARN.as_millis()).unwrap_or(u64::MAX);
    let mut ahead = Vec::new();
    let mut compared = 0;
    for peer in status.peers.iter().filter(|p| p.connected) {
        let newest = stores
            .stores
            .iter()
            .filter_map(|s| s.heads.as_ref()?.get(&peer.name))
            .map(|h| h.updated)
            .max();
        let Some(newest) = newest else { continue };
        compared += 1;
        if newest > now.saturating_add(margin) {
            ahead.push(format!(
                "{} by at least {} s",
                peer.name,
                (newest - now) / 1000
            ));
        }
    }
    if ahead.is_empty() {
        return pass(
            NAME,
            if compared == 0 {
                "no connected peer has written a time yet to compare with".to_owned()
            } else {
                format!(
                    "no clock of {compared} connected peers is ahead of this one (a clock behind \
                     shows from that device's doctor)"
                )
            },
        );
    }
    warn(
        NAME,
        format!(
            "ahead of this device's clock (or this one is behind): {}",
            ahead.join(", ")
        ),
        "run NTP (systemd-timesyncd or chrony) on every device: certificates, capabilities \
         and retention are judged by clocks",
    )
}

fn audit(dir: &DataDir, client: Option<&Client>) -> Check {
    const NAME: &str = "audit log";
    let verified: std::result::Result<api::AuditVerified, String> = match client {
        Some(client) => client
            .get("/v1/audit/verify", &())
            .map_err(|e| e.to_string()),
        None => verify_offline(dir),
    };
    match verified {
        Ok(v) if v.ok => pass(
            NAME,
            format!(
                "intact: {} entries, {} signed checkpoints{}",
                v.entries,
                v.checkpoints,
                if v.copies.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; the copies of {} other devices' logs intact",
                        v.copies.len()
                    )
                }
            ),
        ),
        Ok(v) => fail(
            NAME,
            format!(
                "{} problems in this device's log, {} copies with problems",
                v.findings.len(),
                v.copies.iter().filter(|c| !c.ok).count()
            ),
            "run `hearth audit verify` to see each problem; keep the damaged log for \
             investigation",
        ),
        Err(err) => warn(NAME, err, "run `hearth audit verify`"),
    }
}

fn verify_offline(dir: &DataDir) -> std::result::Result<api::AuditVerified, String> {
    let key_path = dir.root().join(layout::NODE_KEY_FILE);
    let key = hearth_protocol::key::NodeKey::read(&key_path).map_err(|e| e.to_string())?;
    let path = dir.root().join(layout::AUDIT_FILE);
    if !path.exists() {
        return Err("there is no audit log yet: it starts when the node first runs".into());
    }
    let result = hearth_stores::audit::verify(&path, &key.public()).map_err(|e| e.to_string())?;
    let copies = hearth_node::audit_copy::verify_copies(dir.root()).map_err(|e| e.to_string())?;
    Ok(api::AuditVerified::of(result, copies))
}

/// The stores this device holds, as the running node reads them (or, with the node
/// stopped, as opening them here reads them).
fn stores(dir: &DataDir, listing: Option<&api::Stores>) -> Check {
    const NAME: &str = "stores";
    let broken: Vec<String>;
    let held;
    match listing {
        Some(listing) => {
            let here: Vec<&api::StoreInfo> = listing.stores.iter().filter(|s| s.here).collect();
            held = here.len();
            broken = here
                .iter()
                .filter_map(|s| Some(format!("{}: {}", s.name, s.error.as_ref()?)))
                .collect();
        }
        None => {
            let root = dir.root().join(layout::STORES_DIR);
            if !root.exists() {
                return pass(NAME, "no stores yet");
            }
            // Opened as the node opens them at start (which writes to them), so only
            // as the user they belong to: files made by another user would keep the
            // node out of them.
            use std::os::unix::fs::MetadataExt as _;
            let owner = std::fs::metadata(&root).map(|m| m.uid()).ok();
            if owner != Some(rustix::process::geteuid().as_raw()) {
                return warn(
                    NAME,
                    "not checked: the stores belong to another user",
                    "run `hearth doctor` as the user the node runs as",
                );
            }
            // Under the node's lock, so that no node starts meanwhile (no lock file: no
            // node ever ran here).
            let lock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.root().join(layout::LOCK_FILE))
                .ok();
            if lock.as_ref().is_some_and(|l| l.try_lock().is_err()) {
                return warn(
                    NAME,
                    "a node holds the stores but does not answer on its API",
                    "restart the node",
                );
            }
            let actor = match hearth_protocol::key::NodeKey::read(&dir.node_key_path()) {
                Ok(key) => hearth_protocol::sync::authority::actor_of(&key.public()),
                Err(err) => return fail(NAME, err.to_string(), "restore node.key from a backup"),
            };
            let config = hearth_stores::StoresConfig {
                root,
                backend: hearth_stores::backend::BackendKind::default(),
                actor,
                clock: std::sync::Arc::new(|| super::now().0),
            };
            match hearth_stores::Stores::open(config) {
                Ok(stores) => {
                    let list = stores.list();
                    held = list.len();
                    broken = list
                        .iter()
                        .filter_map(|s| Some(format!("{}: {}", s.name, s.error.as_ref()?)))
                        .collect();
                }
                Err(err) => {
                    return fail(
                        NAME,
                        format!("the stores cannot be opened: {err}"),
                        "restore the data directory from a backup, or let the other holders \
                         send the stores again after removing the damaged ones",
                    );
                }
            }
        }
    }
    if broken.is_empty() {
        pass(NAME, format!("{held} stores held here, every one readable"))
    } else {
        fail(
            NAME,
            format!("unreadable: {}", broken.join("; ")),
            "if the reason is a full disk, free space; otherwise stop the node, keep a copy of \
             the damaged store's directory, and restore it from a backup",
        )
    }
}

pub(crate) fn run(dir: &DataDir, out: &mut Output) -> Result<()> {
    if !dir.is_initialised() {
        return Err(CliError::new(
            Exit::NotFound,
            format!("{} is not a Hearth data directory", dir.root().display()),
        )
        .hint("run `hearth init --name NAME` first, or pass the right --data-dir"));
    }
    let mut checks = vec![permissions(dir)];
    let (config_check, _) = config(dir);
    checks.push(config_check);
    checks.push(disk(dir));
    let (node_check, live) = running(dir);
    checks.push(node_check);
    let listing = live
        .as_ref()
        .and_then(|(client, _)| client.get::<api::Stores>("/v1/stores", &()).ok());
    if let (Some((_, status)), Some(listing)) = (&live, &listing) {
        checks.push(peers(status));
        checks.push(clock(status, listing));
    }
    checks.push(audit(dir, live.as_ref().map(|(c, _)| c)));
    checks.push(stores(dir, listing.as_ref()));
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    out.emit(
        || {
            let mut text = String::new();
            for c in &checks {
                let mark = match c.verdict {
                    Verdict::Pass => "pass",
                    Verdict::Warn => "WARN",
                    Verdict::Fail => "FAIL",
                };
                text.push_str(&format!("{mark}  {:<12} {}\n", c.check, c.detail));
                if !c.fix.is_empty() {
                    text.push_str(&format!("      {:<12} fix: {}\n", "", c.fix));
                }
            }
            text
        },
        || serde_json::json!({ "ok": failed == 0, "checks": checks }),
    );
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::new(
            Exit::Error,
            format!(
                "{failed} check{} failed",
                if failed == 1 { "" } else { "s" }
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(peers: &[(&str, bool)]) -> api::Status {
        let peers = peers
            .iter()
            .map(|(name, connected)| api::PeerStatus {
                name: (*name).to_owned(),
                role: "mobile".into(),
                peer_id: format!("12D3KooW{name}"),
                connected: *connected,
                last_seen: super::super::now().0,
                path: connected.then(|| "direct".to_owned()),
                via: None,
                rtt_ms: Some(2.0),
            })
            .collect();
        api::Status {
            peer_id: "12D3KooWhome".into(),
            name: "home".into(),
            role: "home".into(),
            listen: Vec::new(),
            peers,
            stores: Vec::new(),
        }
    }

    fn stamped(device: &str, updated: u64) -> api::Stores {
        let heads = [(
            device.to_owned(),
            api::ReplicaStats {
                records: 1,
                bytes: 1,
                digest: "00".into(),
                updated,
            },
        )]
        .into_iter()
        .collect();
        api::Stores {
            stores: vec![api::StoreInfo {
                name: "s".into(),
                id: "i".into(),
                kind: api::Kind::Kv,
                origin: device.into(),
                replicas: "origin".into(),
                held_by: vec![device.into()],
                here: false,
                records: Some(1),
                bytes: Some(1),
                error: None,
                source: None,
                unit: None,
                description: None,
                heads: Some(heads),
                keep_ms: None,
                erasures: 0,
            }],
        }
    }

    #[test]
    fn a_peer_clock_ahead_warns_and_an_old_stamp_does_not() {
        let now = super::super::now().0;
        let ahead = clock(
            &status(&[("phone", true)]),
            &stamped("phone", now + 300_000),
        );
        assert_eq!(ahead.verdict, Verdict::Warn, "{ahead:?}");
        assert!(
            ahead.detail.contains("phone by at least 300 s")
                || ahead.detail.contains("phone by at least 299 s"),
            "{ahead:?}"
        );
        assert!(ahead.fix.contains("NTP"));
        // An hour-old stamp is an old write, not a slow clock.
        let old = clock(
            &status(&[("phone", true)]),
            &stamped("phone", now - 3_600_000),
        );
        assert_eq!(old.verdict, Verdict::Pass, "{old:?}");
        // Within the minute's allowance; and a peer not connected is not judged.
        let close = clock(&status(&[("phone", true)]), &stamped("phone", now + 30_000));
        assert_eq!(close.verdict, Verdict::Pass);
        let away = clock(
            &status(&[("phone", false)]),
            &stamped("phone", now + 300_000),
        );
        assert_eq!(away.verdict, Verdict::Pass);
        assert!(away.detail.contains("no connected peer"));
    }
}
