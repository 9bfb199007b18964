//! The audit log: append-only, one per node, each entry hashed over the previous one,
//! with checkpoints signed by the node key.
//!
//! The log is a text file of JSON lines, so that it can be read with ordinary tools:
//!
//! ```text
//! {"seq":0,"time":…,"device":"home","actor":"local","action":"store.put","object":"notes",
//!  "cap_id":null,"outcome":"allowed","bytes":17,"prev":"00…00","hash":"9f…"}
//! {"checkpoint":0,"hash":"9f…","time":…,"node":"<public key>","signature":"…"}
//! ```
//!
//! `hash = SHA-256("hearth/v1/audit" || prev || JSON of the entry without prev and hash)`.
//! A checkpoint signs `"hearth/v1/audit-checkpoint" || seq (8 bytes BE) || hash` with the
//! node key, every [`CHECKPOINT_EVERY`] entries, after [`CHECKPOINT_INTERVAL_MS`], and when
//! the log is closed. Appends are durable (fdatasync) before they return, and concurrent
//! appends share one flush.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hearth_protocol::key::{NodeKey, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::pipeline::GroupCommit;
use crate::store::Clock;

/// Entries between two signed checkpoints.
pub const CHECKPOINT_EVERY: u64 = 100;
/// Longest time between a checkpoint and the next entry that triggers one (ms).
pub const CHECKPOINT_INTERVAL_MS: u64 = 60_000;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records, before the log numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Who acted: `local` for the device's own user, or a holder's public key.
    pub actor: String,
    /// What was done, e.g. `store.put`, `store.read`, `cap.check`.
    pub action: String,
    /// What it was done to, e.g. a store name.
    pub object: String,
    /// The capability used, if any.
    pub cap_id: Option<String>,
    /// `allowed`, or `refused: <reason>`.
    pub outcome: String,
    /// Bytes of data that moved.
    pub bytes: u64,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// When (ms since the epoch).
    pub time: u64,
    /// The device that wrote it.
    pub device: String,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To what.
    pub object: String,
    /// With which capability.
    pub cap_id: Option<String>,
    /// Allowed or refused, and why.
    pub outcome: String,
    /// Bytes moved.
    pub bytes: u64,
    /// The previous entry's hash.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: u64,
    device: &'a str,
    actor: &'a str,
    action: &'a str,
    object: &'a str,
    cap_id: &'a Option<String>,
    outcome: &'a str,
    bytes: u64,
}

impl Entry {
    /// The hash this entry should carry, given its fields and `prev`.
    pub fn compute_hash(&self) -> String {
        let body = serde_json::to_vec(&Hashed {
            seq: self.seq,
            time: self.time,
            device: &self.device,
            actor: &self.actor,
            action: &self.action,
            object: &self.object,
            cap_id: &self.cap_id,
            outcome: &self.outcome,
            bytes: self.bytes,
        })
        .unwrap_or_default();
        let mut hasher = Sha256::new();
        hasher.update(b"hearth/v1/audit");
        hasher.update(self.prev.as_bytes());
        hasher.update(&body);
        hex::encode(hasher.finalize())
    }
}

/// A signed checkpoint line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The entry it covers (and all before it).
    pub checkpoint: u64,
    /// That entry's hash.
    pub hash: String,
    /// When it was signed.
    pub time: u64,
    /// The node key that signed it.
    pub node: String,
    /// The signature (hex).
    pub signature: String,
}

fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    let mut m = b"hearth/v1/audit-checkpoint".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Line {
    Checkpoint(Checkpoint),
    Entry(Entry),
}

/// Why the audit log could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The disk is full; the entry was not written.
    #[error("the audit log cannot grow: the disk is full")]
    DiskFull,
    /// Reading or writing the file failed.
    #[error("audit log {path}: {detail}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        detail: String,
    },
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// 1-based line of the file.
    pub line: usize,
    /// What is wrong, in words.
    pub problem: String,
}

/// The result of checking a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Entries read.
    pub entries: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: u64,
    /// Entries after the last checkpoint (protected by the hash chain only).
    pub unsigned_tail: u64,
    /// Everything wrong, in file order. Empty when the log is intact.
    pub findings: Vec<Finding>,
}

impl Verification {
    /// Is the log intact?
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks a log file: every entry's hash, the chain, sequence numbers, and every
/// checkpoint's signature (by `node`) and hash.
pub fn verify(path: &Path, node: &PublicKey) -> Result<Verification, AuditError> {
    let io = |err: std::io::Error| AuditError::Io {
        path: path.display().to_string(),
        detail: err.to_string(),
    };
    let file = File::open(path).map_err(io)?;
    let mut result = Verification {
        entries: 0,
        checkpoints: 0,
        unsigned_tail: 0,
        findings: Vec::new(),
    };
    let mut hashes: Vec<Option<String>> = Vec::new();
    let mut prev_hash = GENESIS.to_owned();
    let mut expected_seq = 0u64;
    let mut last_checkpoint: Option<u64> = None;
    let find = |line: usize, problem: String| Finding { line, problem };
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Err(_) => result.findings.push(find(
                number,
                "the line is not an audit entry or checkpoint".into(),
            )),
            Ok(Line::Entry(entry)) => {
                result.entries += 1;
                if entry.seq > expected_seq {
                    result.findings.push(find(
                        number,
                        format!(
                            "entries {expected_seq} to {} are missing (removed)",
                            entry.seq - 1
                        ),
                    ));
                } else if entry.seq < expected_seq {
                    result.findings.push(find(
                        number,
                        format!(
                            "entry {} appears after entry {} (reordered or inserted)",
                            entry.seq,
                            expected_seq - 1
                        ),
                    ));
                }
                if entry.compute_hash() != entry.hash {
                    result.findings.push(find(
                        number,
                        format!(
                            "entry {} was changed: its hash does not match its contents",
                            entry.seq
                        ),
                    ));
                } else if entry.prev != prev_hash && entry.seq == expected_seq {
                    result.findings.push(find(
                        number,
                        format!(
                            "entry {} does not follow the entry before it (the chain is broken)",
                            entry.seq
                        ),
                    ));
                }
                let slot = usize::try_from(entry.seq).unwrap_or(usize::MAX);
                if slot < 10_000_000 {
                    if hashes.len() <= slot {
                        hashes.resize(slot + 1, None);
                    }
                    if let Some(h) = hashes.get_mut(slot) {
                        *h = Some(entry.hash.clone());
                    }
                }
                prev_hash = entry.hash;
                expected_seq = expected_seq.max(entry.seq + 1);
            }
            Ok(Line::Checkpoint(cp)) => {
                let signed = cp.node == node.to_string()
                    && <[u8; 64]>::try_from(hex::decode(&cp.signature).unwrap_or_default())
                        .map(|sig| {
                            node.verify(
                                &checkpoint_message(cp.checkpoint, &cp.hash),
                                &Signature::from_bytes(sig),
                            )
                        })
                        .unwrap_or(false);
                if !signed {
                    result.findings.push(find(
                        number,
                        format!(
                            "checkpoint {} is not signed by this node's key",
                            cp.checkpoint
                        ),
                    ));
                    continue;
                }
                result.checkpoints += 1;
                let covered = usize::try_from(cp.checkpoint)
                    .ok()
                    .and_then(|i| hashes.get(i))
                    .cloned()
                    .flatten();
                match covered {
                    Some(hash) if hash == cp.hash => {}
                    Some(_) => result.findings.push(find(
                        number,
                        format!(
                            "entry {} differs from what checkpoint {} signed",
                            cp.checkpoint, cp.checkpoint
                        ),
                    )),
                    None => result.findings.push(find(
                        number,
                        format!(
                            "checkpoint {} covers entry {} which is missing",
                            cp.checkpoint, cp.checkpoint
                        ),
                    )),
                }
                last_checkpoint =
                    Some(last_checkpoint.map_or(cp.checkpoint, |l| l.max(cp.checkpoint)));
            }
        }
    }
    if let Some(last) = last_checkpoint
        && last >= expected_seq
    {
        result.findings.push(Finding {
            line: 0,
            problem: format!(
                "the log ends at entry {expected_seq} but was signed up to entry {last} (truncated)"
            ),
        });
    }
    result.unsigned_tail = match last_checkpoint {
        Some(last) => expected_seq.saturating_sub(last + 1),
        None => expected_seq,
    };
    Ok(result)
}

#[derive(Debug)]
struct Tail {
    file: File,
    next_seq: u64,
    prev: String,
    since_checkpoint: u64,
    last_checkpoint_time: u64,
}

/// An open audit log that appends.
pub struct AuditLog {
    path: PathBuf,
    device: String,
    key: NodeKey,
    clock: Clock,
    tail: Mutex<Tail>,
    commits: GroupCommit<Event, AuditError>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. A torn last line left by a crash (never
    /// acknowledged) is cut off.
    pub fn open(path: &Path, device: &str, key: NodeKey, clock: Clock) -> Result<Self, AuditError> {
        let io = |err: std::io::Error| {
            if crate::backend::is_disk_full(&err) {
                AuditError::DiskFull
            } else {
                AuditError::Io {
                    path: path.display().to_string(),
                    detail: err.to_string(),
                }
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut next_seq = 0;
        let mut prev = GENESIS.to_owned();
        let mut since_checkpoint = 0;
        let mut good_len = 0u64;
        let mut offset = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(io)?;
            if read == 0 {
                break;
            }
            offset += read as u64;
            if !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<Line>(line.trim_end()) {
                Ok(Line::Entry(entry)) => {
                    next_seq = entry.seq + 1;
                    prev = entry.hash;
                    since_checkpoint += 1;
                }
                Ok(Line::Checkpoint(_)) => since_checkpoint = 0,
                Err(_) => {}
            }
            good_len = offset;
        }
        drop(reader);
        let len = file.metadata().map_err(io)?.len();
        if good_len < len {
            tracing::warn!(path = %path.display(), "cutting a torn last line off the audit log");
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let now = clock();
        Ok(Self {
            path: path.to_owned(),
            device: device.to_owned(),
            key,
            clock,
            tail: Mutex::new(Tail {
                file,
                next_seq,
                prev,
                since_checkpoint,
                last_checkpoint_time: now,
            }),
            commits: GroupCommit::new(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends an entry; returns once it is on disk.
    pub fn record(&self, event: Event) -> Result<(), AuditError> {
        self.commits.submit(event, |events| self.write(events))
    }

    fn write(&self, events: Vec<Event>) -> Result<(), AuditError> {
        let io = |err: std::io::Error| {
            if crate::backend::is_disk_full(&err) {
                AuditError::DiskFull
            } else {
                AuditError::Io {
                    path: self.path.display().to_string(),
                    detail: err.to_string(),
                }
            }
        };
        let mut tail = self.lock();
        let now = (self.clock)();
        let mut text = String::new();
        let (mut seq, mut prev, mut since) =
            (tail.next_seq, tail.prev.clone(), tail.since_checkpoint);
        let mut checkpoint_time = tail.last_checkpoint_time;
        for event in events {
            let mut entry = Entry {
                seq,
                time: now,
                device: self.device.clone(),
                actor: event.actor,
                action: event.action,
                object: event.object,
                cap_id: event.cap_id,
                outcome: event.outcome,
                bytes: event.bytes,
                prev: prev.clone(),
                hash: String::new(),
            };
            entry.hash = entry.compute_hash();
            text.push_str(&serde_json::to_string(&entry).unwrap_or_default());
            text.push('\n');
            prev = entry.hash;
            seq += 1;
            since += 1;
            if since >= CHECKPOINT_EVERY
                || now.saturating_sub(checkpoint_time) >= CHECKPOINT_INTERVAL_MS
            {
                text.push_str(&self.checkpoint_line(seq - 1, &prev, now));
                since = 0;
                checkpoint_time = now;
            }
        }
        let start = tail.file.metadata().map_err(io)?.len();
        let written = tail
            .file
            .write_all(text.as_bytes())
            .and_then(|()| tail.file.sync_data());
        if let Err(err) = written {
            // Leave the file as it was: cut off whatever part of the batch got in.
            let _ = tail.file.set_len(start);
            let _ = tail.file.sync_data();
            return Err(io(err));
        }
        tail.next_seq = seq;
        tail.prev = prev;
        tail.since_checkpoint = since;
        tail.last_checkpoint_time = checkpoint_time;
        Ok(())
    }

    fn checkpoint_line(&self, seq: u64, hash: &str, now: u64) -> String {
        let signature = self.key.secret().sign(&checkpoint_message(seq, hash));
        let cp = Checkpoint {
            checkpoint: seq,
            hash: hash.to_owned(),
            time: now,
            node: self.key.public().to_string(),
            signature: hex::encode(signature.to_bytes()),
        };
        let mut line = serde_json::to_string(&cp).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Signs a checkpoint over the last entry now (at clean shutdown), if any entry
    /// is not yet covered.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        let mut tail = self.lock();
        if tail.since_checkpoint == 0 || tail.next_seq == 0 {
            return Ok(());
        }
        let now = (self.clock)();
        let line = self.checkpoint_line(tail.next_seq - 1, &tail.prev.clone(), now);
        let io = |err: std::io::Error| AuditError::Io {
            path: self.path.display().to_string(),
            detail: err.to_string(),
        };
        tail.file.write_all(line.as_bytes()).map_err(io)?;
        tail.file.sync_data().map_err(io)?;
        tail.since_checkpoint = 0;
        tail.last_checkpoint_time = now;
        Ok(())
    }

    /// Entries matching the filters, oldest first: `since` (ms), `device`, `action`
    /// (an exact action or a prefix ending in `.`).
    pub fn entries(
        &self,
        since: Option<u64>,
        device: Option<&str>,
        action: Option<&str>,
    ) -> Result<Vec<Entry>, AuditError> {
        let _guard = self.lock();
        let file = File::open(&self.path).map_err(|err| AuditError::Io {
            path: self.path.display().to_string(),
            detail: err.to_string(),
        })?;
        let mut out = Vec::new();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Ok(Line::Entry(entry)) = serde_json::from_str::<Line>(&line) {
                let keep = since.is_none_or(|t| entry.time >= t)
                    && device.is_none_or(|d| entry.device == d)
                    && action.is_none_or(|a| {
                        entry.action == a || (a.ends_with('.') && entry.action.starts_with(a))
                    });
                if keep {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn event(i: u64) -> Event {
        Event {
            actor: "local".into(),
            action: "store.put".into(),
            object: format!("s{i}"),
            cap_id: None,
            outcome: "allowed".into(),
            bytes: i,
        }
    }

    #[test]
    fn appends_verify_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = NodeKey::from_seed([4; 32]);
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 5)).unwrap();
        for i in 0..250 {
            log.record(event(i)).unwrap();
        }
        log.checkpoint().unwrap();
        drop(log);
        let v = verify(&path, &key.public()).unwrap();
        assert!(v.ok(), "{:?}", v.findings);
        assert_eq!(v.entries, 250);
        assert_eq!(v.checkpoints, 3);
        assert_eq!(v.unsigned_tail, 0);
        // Reopen and continue the chain.
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 6)).unwrap();
        log.record(event(250)).unwrap();
        assert_eq!(log.entries(None, None, Some("store.")).unwrap().len(), 251);
        let v = verify(&path, &key.public()).unwrap();
        assert!(v.ok(), "{:?}", v.findings);
        assert_eq!(v.unsigned_tail, 1);
        // Another key's signatures do not count.
        let other = NodeKey::from_seed([5; 32]).public();
        assert!(!verify(&path, &other).unwrap().ok());
    }

    #[test]
    fn a_torn_last_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = NodeKey::from_seed([4; 32]);
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 5)).unwrap();
        log.record(event(0)).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":1,\"ti").unwrap();
        drop(f);
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 5)).unwrap();
        log.record(event(1)).unwrap();
        let v = verify(&path, &key.public()).unwrap();
        assert!(v.ok(), "{:?}", v.findings);
        assert_eq!(v.entries, 2);
    }
}
