//! Every device's audit log, copied to the home-role devices.
//!
//! A home device asks each other device it is connected to, every
//! [`ROUND_EVERY`], for the lines after where its copy ends
//! (`AUDIT_PROTOCOL`, one request at a time, pages of at most [`PAGE_BYTES`], at most
//! [`PAGES_PER_ROUND`] pages per device per round). The copies live in
//! `audit/<peer id>.log` and take only lines that continue them ([`Mirror`]). A device
//! that no longer holds the entry a copy ends with, as copied, has had its log edited,
//! reordered, cut back or rolled back: home finds the first entry that differs (by
//! comparing entry hashes), records `audit.parted` naming the device and the entry,
//! keeps its copy as it was (the evidence) and stops copying that device
//! (`audit/<peer id>.parted`).
//!
//! Only a home-role device is answered: the cloud and the phone cannot read other
//! devices' logs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_stores::audit::{Event, Mirror, Page, Position};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::mesh::{InboundAudit, MeshHandle};
use crate::node::Node;
use crate::tally::Tally;

/// How often a home device asks the others for their new entries.
pub const ROUND_EVERY: Duration = Duration::from_secs(5);
/// The most log bytes in one answer.
pub const PAGE_BYTES: usize = 1024 * 1024;
/// Pages asked of one device per round.
pub const PAGES_PER_ROUND: usize = 64;
/// Hashes asked for at once while looking for where a log and its copy part.
const HASHES_PER_ASK: usize = 16 * 1024;
/// The directory of the copies, in the data directory.
pub const COPIES_DIR: &str = "audit";

/// Where home keeps its copy of the log of the device with peer id `peer`.
pub fn copy_path(data_dir: &Path, peer: &str) -> PathBuf {
    data_dir.join(COPIES_DIR).join(format!("{peer}.log"))
}

/// What home found when a device's log parted from its copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parted {
    /// The device's name.
    pub device: String,
    /// The first entry whose hash differs from the copy's, or that the log no longer
    /// holds.
    pub first_entry: u64,
    /// When home found it (ms).
    pub detected_at: u64,
}

const PARTED_KIND: &str = "audit-parted";

/// The finding recorded for the copy at `copy`, if its device's log parted from it.
pub fn parted(copy: &Path) -> Option<Parted> {
    let state = hearth_protocol::statefile::read_state(
        &copy.with_extension("parted"),
        PARTED_KIND,
        1 << 16,
    );
    match state {
        Ok(Some(state)) => serde_json::from_slice(&state.payload).ok(),
        Ok(None) => None,
        // A finding that cannot be read is still a finding.
        Err(err) => Some(Parted {
            device: err.to_string(),
            first_entry: 0,
            detected_at: 0,
        }),
    }
}

/// Answers other devices' audit requests from this device's log: home-role devices
/// only. A refusal is recorded before it is answered; a device that keeps asking has
/// its refusals counted and recorded once a minute ([`crate::tally`]).
pub(crate) async fn serve(node: Arc<Node>, mesh: MeshHandle) {
    let (sender, mut requests) = mpsc::channel::<InboundAudit>(8);
    if mesh.serve_audit(sender).await.is_err() {
        return;
    }
    let mut refusals = Tally::new();
    let mut tick = tokio::time::interval(crate::tally::WINDOW / 4);
    loop {
        let request = tokio::select! {
            request = requests.recv() => match request {
                Some(request) => request,
                None => break,
            },
            _ = tick.tick() => {
                record_due(&node, refusals.due(Instant::now())).await;
                continue;
            }
        };
        if request.role != "home" {
            if refusals.refused(&request.from, Instant::now()) {
                tracing::info!(device = %request.from, "refused a request for the audit log from a device that is not home");
                // Audited before the answer goes, so that the asker never sees the
                // refusal before the record of it exists.
                let node = node.clone();
                let from = request.from.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    record(&node, "audit.copy", &from, REFUSED_NOT_HOME);
                })
                .await;
            }
            let _ = request.reply.send(vec![b"refused".to_vec()]);
            continue;
        }
        let node = node.clone();
        let answer = tokio::task::spawn_blocking(move || answer(&node, &request.frames))
            .await
            .unwrap_or_default();
        let _ = request.reply.send(answer);
    }
    record_due(&node, refusals.drain(Instant::now())).await;
}

const REFUSED_NOT_HOME: &str = "refused: only home devices copy other devices' audit logs";

async fn record_due(node: &Arc<Node>, due: Vec<crate::tally::Due>) {
    if due.is_empty() {
        return;
    }
    let node = node.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for d in due {
            record(
                &node,
                "audit.copy",
                &d.source,
                &format!(
                    "{REFUSED_NOT_HOME} ({} more requests in the last {} s)",
                    d.count,
                    d.over.as_secs()
                ),
            );
        }
    })
    .await;
}

fn u64_of(frame: Option<&Vec<u8>>) -> Option<u64> {
    Some(u64::from_be_bytes(frame?.as_slice().try_into().ok()?))
}

fn answer(node: &Node, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    match frames.first().map(Vec::as_slice) {
        Some(b"page") => {
            let after = match (u64_of(frames.get(1)), frames.get(2), frames.get(3)) {
                (Some(seq), Some(hash), Some(checkpointed)) => Some(Position {
                    seq,
                    hash: String::from_utf8_lossy(hash).into_owned(),
                    checkpointed: checkpointed.first() == Some(&1),
                }),
                _ => None,
            };
            match node.audit.page_after(after.as_ref(), PAGE_BYTES) {
                Ok(Page::Lines { lines, next_seq }) => vec![
                    b"lines".to_vec(),
                    next_seq.to_be_bytes().to_vec(),
                    lines.join("\n").into_bytes(),
                ],
                Ok(Page::Parted { next_seq }) => {
                    vec![b"parted".to_vec(), next_seq.to_be_bytes().to_vec()]
                }
                Err(_) => Vec::new(),
            }
        }
        Some(b"hashes") => {
            let from = u64_of(frames.get(1)).unwrap_or(0);
            let count = u64_of(frames.get(2))
                .and_then(|c| usize::try_from(c).ok())
                .unwrap_or(HASHES_PER_ASK)
                .min(HASHES_PER_ASK);
            match node.audit.hashes(from, count) {
                Ok(hashes) => vec![b"hashes".to_vec(), hashes.join("\n").into_bytes()],
                Err(_) => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// A copy being kept up: the open copy, and where the next check of the entries it
/// already holds starts.
struct Copying {
    mirror: Mirror,
    check_from: u64,
}

/// On a home device: copies the other devices' logs, round after round, every device
/// at once and each for at most [`DEVICE_TIME`] a round.
pub(crate) async fn copy_all(
    node: Arc<Node>,
    mesh: MeshHandle,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let dir = node.config.data_dir.join(COPIES_DIR);
    if let Err(err) = hearth_protocol::statefile::create_private_dir(&dir) {
        tracing::error!(dir = %dir.display(), error = %err, "cannot keep copies of the devices' audit logs");
        return;
    }
    let mut tick = tokio::time::interval(ROUND_EVERY);
    let mut refused_copy = std::collections::BTreeSet::new();
    let mut copies: HashMap<String, Copying> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(devices) = mesh.devices().await else {
            return;
        };
        let mut round = tokio::task::JoinSet::new();
        for device in devices {
            if !device.online || device.revoked || device.name == node.config.name {
                continue;
            }
            let Ok(peer) = device.peer_id.parse::<PeerId>() else {
                continue;
            };
            let Some(key) = crate::mesh::peer_key(&peer) else {
                continue;
            };
            let path = copy_path(&node.config.data_dir, &device.peer_id);
            if parted(&path).is_some() {
                copies.remove(&device.peer_id);
                continue;
            }
            let held = copies.remove(&device.peer_id);
            let (node, mesh) = (node.clone(), mesh.clone());
            round.spawn(async move {
                let deadline = tokio::time::Instant::now() + DEVICE_TIME;
                let outcome =
                    copy_one(&node, &mesh, &device.name, peer, key, &path, held, deadline).await;
                (device, outcome)
            });
        }
        while let Some(done) = round.join_next().await {
            let Ok((device, (held, outcome))) = done else {
                continue;
            };
            if let Some(held) = held {
                copies.insert(device.peer_id.clone(), held);
            }
            if let Err(problem) = outcome
                && refused_copy.insert(device.peer_id.clone())
            {
                tracing::warn!(device = %device.name, %problem, "an audit page was refused");
                let node = node.clone();
                let name = device.name.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    record(&node, "audit.copy", &name, &format!("refused: {problem}"));
                })
                .await;
            }
        }
    }
}

/// The longest one device is copied from in a round.
pub const DEVICE_TIME: Duration = Duration::from_secs(4);
/// The longest one request to a device is waited for.
const ASK_TIME: Duration = Duration::from_secs(30);
/// Entries whose hashes are compared again each round, going round the copy.
const CHECK_PER_ROUND: usize = 1024;

fn record(node: &Node, action: &str, object: &str, outcome: &str) {
    let _ = node.audit.record(Event {
        actor: "mesh".into(),
        action: action.into(),
        object: object.into(),
        cap_id: None,
        outcome: outcome.into(),
        bytes: 0,
    });
}

/// Asks `peer` and waits at most [`ASK_TIME`].
async fn ask(mesh: &MeshHandle, peer: PeerId, frames: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
    tokio::time::timeout(ASK_TIME, mesh.audit_request(peer, frames))
        .await
        .ok()?
        .ok()
}

/// Brings one copy up to date, until `deadline`, then checks a window of the entries
/// it already holds against the device's log. Gives back the open copy (none when
/// it could not be opened, or the device parted from it).
#[allow(clippy::too_many_arguments)]
async fn copy_one(
    node: &Arc<Node>,
    mesh: &MeshHandle,
    name: &str,
    peer: PeerId,
    key: hearth_protocol::key::PublicKey,
    path: &Path,
    held: Option<Copying>,
    deadline: tokio::time::Instant,
) -> (Option<Copying>, Result<(), String>) {
    let mut copying = match held {
        Some(held) => held,
        None => {
            let open_path = path.to_owned();
            match tokio::task::spawn_blocking(move || Mirror::open(&open_path, key)).await {
                Ok(Ok(mirror)) => Copying {
                    mirror,
                    check_from: 0,
                },
                Ok(Err(err)) => return (None, Err(err.to_string())),
                Err(err) => return (None, Err(err.to_string())),
            }
        }
    };
    for _ in 0..PAGES_PER_ROUND {
        if tokio::time::Instant::now() >= deadline {
            return (Some(copying), Ok(()));
        }
        let mut frames = vec![b"page".to_vec()];
        if let Some(p) = copying.mirror.last() {
            frames.push(p.seq.to_be_bytes().to_vec());
            frames.push(p.hash.clone().into_bytes());
            frames.push(vec![u8::from(p.checkpointed)]);
        }
        let Some(answer) = ask(mesh, peer, frames).await else {
            return (Some(copying), Ok(()));
        };
        match answer.first().map(Vec::as_slice) {
            Some(b"lines") => {
                let text = answer.get(2).cloned().unwrap_or_default();
                if text.is_empty() {
                    break;
                }
                let lines: Vec<String> = String::from_utf8_lossy(&text)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                let joined = tokio::task::spawn_blocking(move || {
                    let applied = copying.mirror.apply(&lines);
                    (copying, applied)
                })
                .await;
                let Ok((back, applied)) = joined else {
                    return (None, Err("the copy could not be written".into()));
                };
                copying = back;
                if let Err(problem) = applied {
                    return (Some(copying), Err(problem));
                }
            }
            Some(b"parted") => {
                let first = first_difference(mesh, peer, copying.mirror).await;
                let outcome = report_parted(node, name, path, first).await;
                return (None, outcome);
            }
            // Busy, refused (this device is not home to it), or gone: next round.
            _ => return (Some(copying), Ok(())),
        }
    }
    // A window of what the copy already holds, compared again: an entry edited in
    // place on the device (its chain broken there, its last entry untouched) shows.
    let from = copying.check_from;
    let theirs = hashes_of(mesh, peer, from, CHECK_PER_ROUND).await;
    let mirror = copying.mirror;
    let joined =
        tokio::task::spawn_blocking(move || (mirror.hashes(from, CHECK_PER_ROUND), mirror)).await;
    let Ok((ours, mirror)) = joined else {
        return (None, Err("the copy could not be read".into()));
    };
    copying.mirror = mirror;
    let (Some(theirs), Ok(ours)) = (theirs, ours) else {
        return (Some(copying), Ok(()));
    };
    if let Some(first) = first_mismatch(from, &ours, &theirs) {
        let outcome = report_parted(node, name, path, first).await;
        return (None, outcome);
    }
    copying.check_from = if ours.len() < CHECK_PER_ROUND {
        0
    } else {
        from + ours.len() as u64
    };
    (Some(copying), Ok(()))
}

/// The first entry two lists of hashes from entry `from` disagree on, or that the
/// device (`theirs`) no longer holds while the copy (`ours`) does.
fn first_mismatch(from: u64, ours: &[String], theirs: &[String]) -> Option<u64> {
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        return Some(from + i as u64);
    }
    (theirs.len() < ours.len()).then(|| from + theirs.len() as u64)
}

/// Records that `name`'s log parted from the copy at `path` at entry `first`, and
/// keeps the finding beside the copy.
async fn report_parted(
    node: &Arc<Node>,
    name: &str,
    path: &Path,
    first: u64,
) -> Result<(), String> {
    let found = Parted {
        device: name.to_owned(),
        first_entry: first,
        detected_at: crate::clock::now().0,
    };
    tracing::error!(device = %name, entry = first, "a device's audit log no longer matches the copy home holds");
    let (node, name, path) = (node.clone(), name.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        record(
            &node,
            "audit.parted",
            &name,
            &format!(
                "detected: {name}'s audit log no longer holds entry {first} as it was \
                 copied here (edited, reordered, cut back or rolled back); the copy is \
                 kept as it was"
            ),
        );
        let bytes = serde_json::to_vec(&found).map_err(|err| err.to_string())?;
        hearth_protocol::statefile::write_state(
            &path.with_extension("parted"),
            PARTED_KIND,
            1,
            &bytes,
        )
        .map_err(|err| err.to_string())
    })
    .await
    .map_err(|err| err.to_string())?
}

/// The hashes the device gives for its entries from `from`.
async fn hashes_of(
    mesh: &MeshHandle,
    peer: PeerId,
    from: u64,
    count: usize,
) -> Option<Vec<String>> {
    let frames = vec![
        b"hashes".to_vec(),
        from.to_be_bytes().to_vec(),
        (count as u64).to_be_bytes().to_vec(),
    ];
    let answer = ask(mesh, peer, frames).await?;
    (answer.first().map(Vec::as_slice) == Some(b"hashes")).then(|| {
        String::from_utf8_lossy(answer.get(1).map_or(&[][..], Vec::as_slice))
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

/// The first entry the device's log and the copy disagree on (or that the log no
/// longer holds).
async fn first_difference(mesh: &MeshHandle, peer: PeerId, mut mirror: Mirror) -> u64 {
    let mut from = 0u64;
    loop {
        let Some(theirs) = hashes_of(mesh, peer, from, HASHES_PER_ASK).await else {
            return from;
        };
        let joined =
            tokio::task::spawn_blocking(move || (mirror.hashes(from, HASHES_PER_ASK), mirror))
                .await;
        let Ok((ours, back)) = joined else {
            return from;
        };
        mirror = back;
        let ours = ours.unwrap_or_default();
        if let Some(first) = first_mismatch(from, &ours, &theirs) {
            return first;
        }
        if ours.len() < HASHES_PER_ASK || theirs.len() < HASHES_PER_ASK {
            return from + theirs.len().min(ours.len()) as u64;
        }
        from += ours.len() as u64;
    }
}

/// What `hearth audit verify` reports of one copy held here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    /// The device (as its entries name it; its peer id when it wrote none).
    pub device: String,
    /// Its peer id.
    pub peer_id: String,
    /// Entries held.
    pub entries: u64,
    /// Is the copy intact and the device's log still continuing it?
    pub ok: bool,
    /// Everything wrong: problems in the copy, and the device's log parting from it.
    pub findings: Vec<String>,
}

/// Checks every copy of another device's log held in `data_dir`: each copy's chain
/// and checkpoints (signed by that device), and whether its device's log parted from
/// it.
pub fn verify_copies(data_dir: &Path) -> Result<Vec<CopyReport>, hearth_stores::audit::AuditError> {
    let dir = data_dir.join(COPIES_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut reports = Vec::new();
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    for path in paths {
        let peer_id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(key) = peer_id
            .parse::<PeerId>()
            .ok()
            .and_then(|p| crate::mesh::peer_key(&p))
        else {
            continue;
        };
        let result = hearth_stores::audit::verify_copy(&path, &key)?;
        let mut findings: Vec<String> = result
            .findings
            .iter()
            .map(|f| format!("line {} of the copy: {}", f.line, f.problem))
            .collect();
        let device = hearth_stores::audit::entries_in(&path, None, None, None)?
            .first()
            .map_or_else(|| peer_id.clone(), |e| e.device.clone());
        if let Some(found) = parted(&path) {
            findings.push(format!(
                "{device}'s log no longer holds entry {} as it was copied here (edited, \
                 reordered, cut back or rolled back); found at {}",
                found.first_entry,
                hearth_protocol::time::UnixMillis(found.detected_at)
            ));
        }
        reports.push(CopyReport {
            device,
            peer_id,
            entries: result.entries,
            ok: findings.is_empty(),
            findings,
        });
    }
    Ok(reports)
}
