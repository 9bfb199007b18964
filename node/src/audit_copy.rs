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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearth_stores::audit::{Event, Mirror, Page, Position};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::mesh::{InboundAudit, MeshHandle};
use crate::node::Node;

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
/// only.
pub(crate) async fn serve(node: Arc<Node>, mesh: MeshHandle) {
    let (sender, mut requests) = mpsc::channel::<InboundAudit>(8);
    if mesh.serve_audit(sender).await.is_err() {
        return;
    }
    while let Some(request) = requests.recv().await {
        if request.role != "home" {
            tracing::info!(device = %request.from, "refused a request for the audit log from a device that is not home");
            // Audited before the answer goes, so that the asker never sees the refusal
            // before the record of it exists.
            let node = node.clone();
            let from = request.from.clone();
            let _ = tokio::task::spawn_blocking(move || {
                record(
                    &node,
                    "audit.copy",
                    &from,
                    "refused: only home devices copy other devices' audit logs",
                );
            })
            .await;
            let _ = request.reply.send(vec![b"refused".to_vec()]);
            continue;
        }
        let node = node.clone();
        let answer = tokio::task::spawn_blocking(move || answer(&node, &request.frames))
            .await
            .unwrap_or_default();
        let _ = request.reply.send(answer);
    }
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
            match node.audit.hashes(from, HASHES_PER_ASK) {
                Ok(hashes) => vec![b"hashes".to_vec(), hashes.join("\n").into_bytes()],
                Err(_) => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// On a home device: copies the other devices' logs, round after round.
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
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(devices) = mesh.devices().await else {
            return;
        };
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
                continue;
            }
            if let Err(problem) = copy_one(&node, &mesh, &device.name, peer, key, &path).await
                && refused_copy.insert(device.peer_id.clone())
            {
                tracing::warn!(device = %device.name, %problem, "an audit page was refused");
                record(
                    &node,
                    "audit.copy",
                    &device.name,
                    &format!("refused: {problem}"),
                );
            }
        }
    }
}

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

async fn copy_one(
    node: &Arc<Node>,
    mesh: &MeshHandle,
    name: &str,
    peer: PeerId,
    key: hearth_protocol::key::PublicKey,
    path: &Path,
) -> Result<(), String> {
    let open_path = path.to_owned();
    let mut mirror = tokio::task::spawn_blocking(move || Mirror::open(&open_path, key))
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| err.to_string())?;
    for _ in 0..PAGES_PER_ROUND {
        let mut ask = vec![b"page".to_vec()];
        if let Some(p) = mirror.last() {
            ask.push(p.seq.to_be_bytes().to_vec());
            ask.push(p.hash.clone().into_bytes());
            ask.push(vec![u8::from(p.checkpointed)]);
        }
        let Ok(answer) = mesh.audit_request(peer, ask).await else {
            return Ok(());
        };
        match answer.first().map(Vec::as_slice) {
            Some(b"lines") => {
                let text = answer.get(2).cloned().unwrap_or_default();
                if text.is_empty() {
                    return Ok(());
                }
                let lines: Vec<String> = String::from_utf8_lossy(&text)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                let (back, applied) = tokio::task::spawn_blocking(move || {
                    let applied = mirror.apply(&lines);
                    (mirror, applied)
                })
                .await
                .map_err(|err| err.to_string())?;
                mirror = back;
                applied?;
            }
            Some(b"parted") => {
                let first = first_difference(mesh, peer, &mirror).await;
                let found = Parted {
                    device: name.to_owned(),
                    first_entry: first,
                    detected_at: crate::clock::now().0,
                };
                tracing::error!(device = %name, entry = first, "a device's audit log no longer matches the copy home holds");
                record(
                    node,
                    "audit.parted",
                    name,
                    &format!(
                        "detected: {name}'s audit log no longer holds entry {first} as it was \
                         copied here (edited, reordered, cut back or rolled back); the copy \
                         is kept as it was"
                    ),
                );
                let bytes = serde_json::to_vec(&found).map_err(|err| err.to_string())?;
                hearth_protocol::statefile::write_state(
                    &path.with_extension("parted"),
                    PARTED_KIND,
                    1,
                    &bytes,
                )
                .map_err(|err| err.to_string())?;
                return Ok(());
            }
            // Busy, refused (this device is not home to it), or gone: next round.
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// The first entry the device's log and the copy disagree on (or that the log no
/// longer holds).
async fn first_difference(mesh: &MeshHandle, peer: PeerId, mirror: &Mirror) -> u64 {
    let mut from = 0u64;
    loop {
        let ours = mirror.hashes(from, HASHES_PER_ASK).unwrap_or_default();
        let theirs: Vec<String> = match mesh
            .audit_request(peer, vec![b"hashes".to_vec(), from.to_be_bytes().to_vec()])
            .await
        {
            Ok(answer) if answer.first().map(Vec::as_slice) == Some(b"hashes") => {
                String::from_utf8_lossy(answer.get(1).map_or(&[][..], Vec::as_slice))
                    .lines()
                    .map(str::to_owned)
                    .collect()
            }
            _ => return from,
        };
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            return from + i as u64;
        }
        if theirs.len() < ours.len() || ours.len() < HASHES_PER_ASK {
            return from + theirs.len().min(ours.len()) as u64;
        }
        from += ours.len() as u64;
    }
}

/// What `hearth audit verify` reports of one copy held here.
#[derive(Debug, Clone, Serialize)]
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
        let result = hearth_stores::audit::verify(&path, &key)?;
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
