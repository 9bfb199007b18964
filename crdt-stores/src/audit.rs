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
//!
//! Beside the log, `audit.head` holds the latest entry written (its number and hash,
//! signed by the node key), rewritten after every append once the entries are on disk:
//! a log cut back, even to a checkpoint, no longer matches its head, and
//! [`verify`] says so. A node that opens a log shorter than its head goes on numbering
//! after the head and records `audit.truncated`, so the gap stays visible for good.
//!
//! Home-role devices keep a [`Mirror`] of every other device's log, fed page by page
//! ([`AuditLog::page_after`]) and checked entry by entry as it arrives: a device whose
//! log was edited, reordered, truncated or rolled back after its entries reached home
//! no longer continues the copy home holds, and [`AuditLog::hashes`] lets home find the
//! first entry that differs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Checks a device's own log: every entry's hash, the chain, sequence numbers, every
/// checkpoint's signature (by `node`) and hash, and the head kept beside it (a log
/// that holds entries and has no head had it removed).
pub fn verify(path: &Path, node: &PublicKey) -> Result<Verification, AuditError> {
    verify_file(path, node, true)
}

/// Checks a home device's copy of another device's log, as [`verify`] does but for
/// the head, which stays with the device.
pub fn verify_copy(path: &Path, node: &PublicKey) -> Result<Verification, AuditError> {
    verify_file(path, node, false)
}

fn verify_file(path: &Path, node: &PublicKey, own: bool) -> Result<Verification, AuditError> {
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
                expected_seq = expected_seq.max(entry.seq.saturating_add(1));
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
    // The head kept beside a device's own log says how far it went.
    if own {
        match read_head(path, node) {
            Ok(Some(head)) if head.seq >= expected_seq => result.findings.push(Finding {
                line: 0,
                problem: format!(
                    "the log ends before entry {expected_seq} but its head says entry {} was \
                     written (cut back)",
                    head.seq
                ),
            }),
            Ok(Some(head)) => {
                let held = usize::try_from(head.seq)
                    .ok()
                    .and_then(|i| hashes.get(i))
                    .cloned()
                    .flatten();
                if held.is_some_and(|h| h != head.hash) {
                    result.findings.push(Finding {
                        line: 0,
                        problem: format!("entry {} differs from what the head signed", head.seq),
                    });
                }
            }
            Ok(None) if result.entries > 0 => result.findings.push(Finding {
                line: 0,
                problem: format!(
                    "{} is missing though the log holds entries (removed: a log cut back \
                     since can no longer be told)",
                    head_path(path).display()
                ),
            }),
            Ok(None) => {}
            Err(reason) => result.findings.push(Finding {
                line: 0,
                problem: reason,
            }),
        }
    }
    result.unsigned_tail = match last_checkpoint {
        Some(last) => expected_seq.saturating_sub(last.saturating_add(1)),
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
    /// Where entries `0, INDEX_EVERY, 2 * INDEX_EVERY, …` start in the file.
    index: Vec<u64>,
    /// The head file, and which of its two slots is written next.
    head: File,
    head_slot: u64,
}

/// Entries between two offsets kept in a log's index.
const INDEX_EVERY: u64 = 256;

/// What one pass over a log file finds.
#[derive(Debug)]
struct Scanned {
    next_seq: u64,
    prev: String,
    since_checkpoint: u64,
    index: Vec<u64>,
    /// Bytes up to the end of the last whole line.
    good_len: u64,
}

/// Reads a log from the start, indexing its entries.
fn scan(file: &File) -> std::io::Result<Scanned> {
    let mut scanned = Scanned {
        next_seq: 0,
        prev: GENESIS.to_owned(),
        since_checkpoint: 0,
        index: Vec::new(),
        good_len: 0,
    };
    let mut offset = 0u64;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Line>(line.trim_end()) {
            // The last number there is cannot be followed: not an entry of a log.
            Ok(Line::Entry(entry)) if entry.seq < u64::MAX => {
                if entry.seq % INDEX_EVERY == 0
                    && entry.seq / INDEX_EVERY == scanned.index.len() as u64
                {
                    scanned.index.push(offset);
                }
                scanned.next_seq = entry.seq + 1;
                scanned.prev = entry.hash;
                scanned.since_checkpoint += 1;
            }
            Ok(Line::Checkpoint(_)) => scanned.since_checkpoint = 0,
            Ok(Line::Entry(_)) | Err(_) => {}
        }
        offset += read as u64;
        scanned.good_len = offset;
    }
    Ok(scanned)
}

/// Where a copy of a log ends: its last entry, and whether the copy also holds the
/// checkpoint that followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The last entry's number.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// Does the copy hold a checkpoint of it?
    pub checkpointed: bool,
}

/// The lines of `file` after `after` (from the start when `None`), checkpoints
/// included, about `max_bytes` of them but at least one when there is one; and the
/// entry `after` names as the log holds it (`None` when it holds no such entry).
fn read_lines_after(
    file: &File,
    index: &[u64],
    len: u64,
    after: Option<&Position>,
    max_bytes: usize,
) -> std::io::Result<(Option<Entry>, Vec<String>)> {
    let from = after.map_or(0, |p| p.seq);
    let start = index_before(index, from);
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(start))?;
    let mut lines = Vec::new();
    let mut bytes = 0usize;
    let mut offset = start;
    let mut line = String::new();
    let mut found = false;
    let mut named = None;
    let mut skip_checkpoints = false;
    while offset < len {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        offset += read as u64;
        let parsed = serde_json::from_str::<Line>(line.trim_end());
        if !found {
            match parsed {
                Ok(Line::Entry(entry)) if entry.seq >= from => {
                    found = true;
                    if let Some(after) = after {
                        if entry.seq == after.seq {
                            skip_checkpoints = after.checkpointed;
                            named = Some(entry);
                        }
                        // The entry the copy ends with, or one past it (then the log
                        // does not hold it): not sent again.
                        continue;
                    }
                }
                _ => continue,
            }
        } else if skip_checkpoints {
            if matches!(parsed, Ok(Line::Checkpoint(_))) {
                continue;
            }
            skip_checkpoints = false;
        }
        if !lines.is_empty() && bytes + read > max_bytes {
            break;
        }
        bytes += read;
        lines.push(line.trim_end().to_owned());
    }
    Ok((named, lines))
}

/// The head: the number and hash of the latest entry written, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The latest entry's number.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
}

/// The head file of the log at `log`.
pub fn head_path(log: &Path) -> PathBuf {
    log.with_extension("head")
}

const HEAD_MAGIC: &[u8; 4] = b"HAH1";
const HEAD_SLOT: usize = 128;

fn head_message(seq: u64, hash: &[u8]) -> Vec<u8> {
    let mut m = b"hearth/v1/audit-head".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

fn encode_head(key: &NodeKey, seq: u64, hash_hex: &str) -> Vec<u8> {
    let hash = hex::decode(hash_hex).unwrap_or_default();
    let mut out = HEAD_MAGIC.to_vec();
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(&key.secret().sign(&head_message(seq, &hash)).to_bytes());
    let check = Sha256::digest(&out);
    out.extend(check.iter().take(8));
    out.resize(HEAD_SLOT, 0);
    out
}

fn decode_head(slot: &[u8], node: &PublicKey) -> Option<Head> {
    let rest = slot.strip_prefix(HEAD_MAGIC.as_slice())?;
    let (seq, rest) = rest.split_first_chunk::<8>()?;
    let (hash, rest) = rest.split_first_chunk::<32>()?;
    let (sig, rest) = rest.split_first_chunk::<64>()?;
    let (check, _) = rest.split_first_chunk::<8>()?;
    let body = slot.get(..4 + 8 + 32 + 64)?;
    if Sha256::digest(body).get(..8)? != check.as_slice() {
        return None;
    }
    let seq = u64::from_be_bytes(*seq);
    node.verify(&head_message(seq, hash), &Signature::from_bytes(*sig))
        .then(|| Head {
            seq,
            hash: hex::encode(hash),
        })
}

/// Reads the head kept beside the log at `log`: `Ok(None)` when there is none (a log
/// written before heads were kept, or never written to), `Err` when the file is there
/// but neither slot holds a head signed by `node`.
pub fn read_head(log: &Path, node: &PublicKey) -> Result<Option<Head>, String> {
    let path = head_path(log);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("{}: {err}", path.display())),
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    bytes
        .chunks(HEAD_SLOT)
        .take(2)
        .filter_map(|slot| decode_head(slot, node))
        .max_by_key(|head| head.seq)
        .map(Some)
        .ok_or_else(|| format!("{} is damaged or not signed by this node", path.display()))
}

/// An open audit log that appends.
pub struct AuditLog {
    path: PathBuf,
    device: String,
    key: NodeKey,
    clock: Clock,
    tail: Mutex<Tail>,
    commits: GroupCommit<Event, AuditError>,
    /// Entries written since the log was opened, by action and outcome class.
    written: Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The class of an outcome: its first word, when it is one of the usual ones.
pub fn outcome_class(outcome: &str) -> &'static str {
    let word = outcome
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    match word {
        "allowed" => "allowed",
        "refused" => "refused",
        "failed" => "failed",
        _ => "other",
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
        let scanned = scan(&file).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if scanned.good_len < len {
            tracing::warn!(path = %path.display(), "cutting a torn last line off the audit log");
            file.set_len(scanned.good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let Scanned {
            mut next_seq,
            mut prev,
            since_checkpoint,
            index,
            ..
        } = scanned;
        // The head says how far the log went. A log that ends before it was cut back:
        // numbering goes on after the head, so the gap stays in the chain for good.
        let mut found = None;
        match read_head(path, &key.public()) {
            Ok(Some(head)) if head.seq >= next_seq && head.seq < u64::MAX => {
                found = Some(format!(
                    "entries {next_seq} to {} are missing: the log was cut back after they \
                     were written",
                    head.seq
                ));
                next_seq = head.seq + 1;
                prev = head.hash;
            }
            Ok(Some(_)) => {}
            // Removed (or never written, by a version that kept no head): whatever was
            // cut off before now can no longer be told, and the record says so.
            Ok(None) if next_seq > 0 => {
                found = Some(format!(
                    "{} is missing though the log holds {next_seq} entries: a cut back \
                     before now cannot be told; it is written again",
                    head_path(path).display()
                ));
            }
            Ok(None) => {}
            Err(reason) => found = Some(format!("{reason}; it is written again")),
        }
        let mut head_options = OpenOptions::new();
        head_options
            .read(true)
            .write(true)
            .create(true)
            .truncate(false);
        let head = head_options.open(head_path(path)).map_err(io)?;
        let now = clock();
        let log = Self {
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
                index,
                head,
                head_slot: 0,
            }),
            commits: GroupCommit::new(),
            written: Mutex::new(std::collections::BTreeMap::new()),
        };
        if let Some(outcome) = found {
            tracing::error!(path = %path.display(), "{outcome}");
            log.record(Event {
                actor: "node".into(),
                action: "audit.truncated".into(),
                object: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                cap_id: None,
                outcome: format!("detected: {outcome}"),
                bytes: 0,
            })?;
        }
        Ok(log)
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
        let key = (event.action.clone(), outcome_class(&event.outcome));
        self.commits.submit(event, |events| self.write(events))?;
        *self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default() += 1;
        Ok(())
    }

    /// How many entries were written since the log was opened, by action and outcome
    /// class (`allowed`, `refused`, `failed` or `other`), for metrics.
    pub fn written(&self) -> Vec<(String, &'static str, u64)> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((action, outcome), n)| (action.clone(), *outcome, *n))
            .collect()
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
        if tail.next_seq.checked_add(events.len() as u64).is_none() {
            return Err(AuditError::Io {
                path: self.path.display().to_string(),
                detail: "the log has run out of entry numbers".into(),
            });
        }
        let now = (self.clock)();
        let mut text = String::new();
        let (mut seq, mut prev, mut since) =
            (tail.next_seq, tail.prev.clone(), tail.since_checkpoint);
        let mut checkpoint_time = tail.last_checkpoint_time;
        let start = tail.file.metadata().map_err(io)?.len();
        let mut indexed = Vec::new();
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
            if seq % INDEX_EVERY == 0 {
                indexed.push((seq, start + text.len() as u64));
            }
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
        for (seq, offset) in indexed {
            if seq / INDEX_EVERY == tail.index.len() as u64 {
                tail.index.push(offset);
            }
        }
        // The head, once the entries it names are on disk (so that it is never ahead
        // of them after a crash). Not synced: a crash that loses it leaves it behind
        // the log, which is no alarm.
        let head = encode_head(&self.key, seq - 1, &prev);
        let slot = tail.head_slot;
        if let Err(err) =
            std::os::unix::fs::FileExt::write_all_at(&tail.head, &head, slot * HEAD_SLOT as u64)
        {
            tracing::warn!(error = %err, "cannot write the audit log's head");
        }
        tail.head_slot = (slot + 1) % 2;
        tail.next_seq = seq;
        tail.prev = prev;
        tail.since_checkpoint = since;
        tail.last_checkpoint_time = checkpoint_time;
        Ok(())
    }

    /// The lines (entries and checkpoints) after `after`, where a home device's copy
    /// of this log ends (all of them when `None`), about `max_bytes` of them, provided
    /// this log holds the entry the copy ends with, with the same hash. Otherwise the
    /// copy and this log have parted.
    pub fn page_after(
        &self,
        after: Option<&Position>,
        max_bytes: usize,
    ) -> Result<Page, AuditError> {
        let tail = self.lock();
        let io = |err: std::io::Error| AuditError::Io {
            path: self.path.display().to_string(),
            detail: err.to_string(),
        };
        let len = tail.file.metadata().map_err(io)?.len();
        let file = File::open(&self.path).map_err(io)?;
        let (named, lines) =
            read_lines_after(&file, &tail.index, len, after, max_bytes).map_err(io)?;
        if let Some(after) = after
            && named.is_none_or(|entry| entry.hash != after.hash)
        {
            return Ok(Page::Parted {
                next_seq: tail.next_seq,
            });
        }
        Ok(Page::Lines {
            lines,
            next_seq: tail.next_seq,
        })
    }

    /// The hashes of entries `from..from + count` that this log holds, in order (a
    /// missing entry ends the list).
    pub fn hashes(&self, from: u64, count: usize) -> Result<Vec<String>, AuditError> {
        let tail = self.lock();
        let io = |err: std::io::Error| AuditError::Io {
            path: self.path.display().to_string(),
            detail: err.to_string(),
        };
        let len = tail.file.metadata().map_err(io)?.len();
        let file = File::open(&self.path).map_err(io)?;
        let start = index_before(&tail.index, from);
        drop(tail);
        hashes_in(&file, start, len, from, count).map_err(io)
    }

    /// Up to `count` entries from number `from` on, in order, read from the index's
    /// nearest point (not the whole log), and one more than the last entry's number.
    pub fn entries_from(&self, from: u64, count: usize) -> Result<(Vec<Entry>, u64), AuditError> {
        let tail = self.lock();
        let io = |err: std::io::Error| AuditError::Io {
            path: self.path.display().to_string(),
            detail: err.to_string(),
        };
        let next_seq = tail.next_seq;
        if from >= next_seq || count == 0 {
            return Ok((Vec::new(), next_seq));
        }
        let len = tail.file.metadata().map_err(io)?.len();
        let file = File::open(&self.path).map_err(io)?;
        let start = index_before(&tail.index, from);
        drop(tail);
        let mut out = Vec::new();
        let mut reader = BufReader::new(&file);
        reader.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut offset = start;
        let mut line = String::new();
        while offset < len && out.len() < count {
            line.clear();
            let read = reader.read_line(&mut line).map_err(io)?;
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            offset += read as u64;
            if let Ok(Line::Entry(entry)) = serde_json::from_str::<Line>(line.trim_end())
                && entry.seq >= from
            {
                out.push(entry);
            }
        }
        Ok((out, next_seq))
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
        entries_in(&self.path, since, device, action)
    }

    /// The newest `count` entries that `keep` accepts, oldest first (see
    /// [`newest_matching_in`], also for `hint`); the log stays open for writing
    /// meanwhile (the pass reads up to where the log ended when it began).
    pub fn newest_matching(
        &self,
        count: usize,
        hint: &Hint<'_>,
        keep: impl FnMut(&Fields<'_>) -> bool,
    ) -> Result<Vec<Entry>, AuditError> {
        let len = {
            let tail = self.lock();
            tail.file
                .metadata()
                .map_err(|err| AuditError::Io {
                    path: self.path.display().to_string(),
                    detail: err.to_string(),
                })?
                .len()
        };
        newest_matching_in(&self.path, Some(len), count, hint, keep)
    }
}

/// The offset an index says to start reading at for entry `seq`.
fn index_before(index: &[u64], seq: u64) -> u64 {
    usize::try_from(seq / INDEX_EVERY)
        .ok()
        .and_then(|i| index.get(i))
        .copied()
        .unwrap_or(0)
}

/// The hashes of entries `from..from + count` in a log file (reading from `start`),
/// in order, each computed from the entry's contents as the file holds them (so an
/// entry edited in place shows, whatever hash it carries); the first missing or
/// out-of-order entry ends the list.
fn hashes_in(
    file: &File,
    start: u64,
    len: u64,
    from: u64,
    count: usize,
) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(start))?;
    let mut offset = start;
    let mut line = String::new();
    while offset < len && out.len() < count {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        offset += read as u64;
        if let Ok(Line::Entry(entry)) = serde_json::from_str::<Line>(line.trim_end()) {
            if entry.seq < from {
                continue;
            }
            if entry.seq != from + out.len() as u64 {
                break;
            }
            out.push(entry.compute_hash());
        }
    }
    Ok(out)
}

/// What a device answers a home device asking for more of its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The next lines, and how many entries the log holds.
    Lines {
        /// Entries and checkpoints, as written.
        lines: Vec<String>,
        /// One more than the last entry's number.
        next_seq: u64,
    },
    /// The log does not hold the entry the copy ends with (cut back) or holds another
    /// (rewritten).
    Parted {
        /// One more than the last entry's number.
        next_seq: u64,
    },
}

/// The most a home device keeps of one other device's log.
pub const MAX_MIRROR_BYTES: u64 = 512 * 1024 * 1024;

/// A home device's copy of another device's log: the same lines, taken only when
/// they continue the copy (each entry's hash, each checkpoint's signature by that
/// device's key), so that what the copy holds is what the device wrote.
#[derive(Debug)]
pub struct Mirror {
    path: PathBuf,
    node: PublicKey,
    file: File,
    len: u64,
    /// Where the copy ends.
    last: Option<Position>,
    /// Where entries `0, INDEX_EVERY, …` start in the copy.
    index: Vec<u64>,
}

impl Mirror {
    /// Opens (or creates) the copy at `path` of the log of the device with key `node`.
    pub fn open(path: &Path, node: PublicKey) -> Result<Self, AuditError> {
        let io = |err: std::io::Error| AuditError::Io {
            path: path.display().to_string(),
            detail: err.to_string(),
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let scanned = scan(&file).map_err(io)?;
        if scanned.good_len < file.metadata().map_err(io)?.len() {
            file.set_len(scanned.good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(Self {
            path: path.to_owned(),
            node,
            file,
            len: scanned.good_len,
            last: (scanned.next_seq > 0).then(|| Position {
                seq: scanned.next_seq - 1,
                hash: scanned.prev,
                checkpointed: scanned.since_checkpoint == 0,
            }),
            index: scanned.index,
        })
    }

    /// The device whose log this is.
    pub fn node(&self) -> &PublicKey {
        &self.node
    }

    /// Where the copy ends (what to ask the device for more after).
    pub fn last(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    /// Adds `lines` from the device, all or nothing: each entry must carry the hash of
    /// its contents and follow the one before (a gap in numbering is taken, and shows
    /// as missing entries when the copy is verified); each checkpoint must be signed by
    /// the device and cover the entry just before it. Returns the entries added.
    pub fn apply(&mut self, lines: &[String]) -> Result<u64, String> {
        let mut last = self.last.clone();
        let mut text = String::new();
        let mut added = 0u64;
        let mut indexed = Vec::new();
        for line in lines {
            match serde_json::from_str::<Line>(line) {
                Ok(Line::Entry(entry)) => {
                    if entry.compute_hash() != entry.hash {
                        return Err(format!(
                            "entry {} does not carry the hash of its contents",
                            entry.seq
                        ));
                    }
                    if entry.seq == u64::MAX {
                        return Err("an entry carries the last number there is".into());
                    }
                    match &last {
                        Some(p) if entry.seq == p.seq + 1 && entry.prev != p.hash => {
                            return Err(format!(
                                "entry {} does not follow entry {}",
                                entry.seq, p.seq
                            ));
                        }
                        Some(p) if entry.seq <= p.seq => {
                            return Err(format!("entry {} comes after entry {}", entry.seq, p.seq));
                        }
                        None if entry.seq == 0 && entry.prev != GENESIS => {
                            return Err("entry 0 does not start a log".into());
                        }
                        _ => {}
                    }
                    if entry.seq % INDEX_EVERY == 0 {
                        indexed.push((entry.seq, self.len + text.len() as u64));
                    }
                    last = Some(Position {
                        seq: entry.seq,
                        hash: entry.hash,
                        checkpointed: false,
                    });
                    added += 1;
                }
                Ok(Line::Checkpoint(cp)) => {
                    let signed = cp.node == self.node.to_string()
                        && <[u8; 64]>::try_from(hex::decode(&cp.signature).unwrap_or_default())
                            .map(|sig| {
                                self.node.verify(
                                    &checkpoint_message(cp.checkpoint, &cp.hash),
                                    &Signature::from_bytes(sig),
                                )
                            })
                            .unwrap_or(false);
                    if !signed {
                        return Err(format!(
                            "checkpoint {} is not signed by the device",
                            cp.checkpoint
                        ));
                    }
                    match &mut last {
                        Some(p) if p.seq == cp.checkpoint && p.hash == cp.hash => {
                            p.checkpointed = true;
                        }
                        _ => {
                            return Err(format!(
                                "checkpoint {} does not cover the entry before it",
                                cp.checkpoint
                            ));
                        }
                    }
                }
                Err(_) => return Err("a line is not an audit entry or checkpoint".into()),
            }
            text.push_str(line);
            text.push('\n');
        }
        if self.len + text.len() as u64 > MAX_MIRROR_BYTES {
            return Err(format!(
                "the copy would outgrow its limit of {} MiB",
                MAX_MIRROR_BYTES >> 20
            ));
        }
        let io = |err: std::io::Error| format!("{}: {err}", self.path.display());
        let written = self
            .file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            let _ = self.file.set_len(self.len);
            return Err(io(err));
        }
        self.len += text.len() as u64;
        self.last = last;
        for (seq, offset) in indexed {
            if seq / INDEX_EVERY == self.index.len() as u64 {
                self.index.push(offset);
            }
        }
        Ok(added)
    }

    /// The hashes of entries `from..from + count` the copy holds.
    pub fn hashes(&self, from: u64, count: usize) -> Result<Vec<String>, AuditError> {
        let io = |err: std::io::Error| AuditError::Io {
            path: self.path.display().to_string(),
            detail: err.to_string(),
        };
        let file = File::open(&self.path).map_err(io)?;
        hashes_in(
            &file,
            index_before(&self.index, from),
            self.len,
            from,
            count,
        )
        .map_err(io)
    }
}

/// What a filter of the audit log needs, to skip lines that cannot match without
/// parsing them. A line with an escape (`\\`) is always parsed, since its bytes need
/// not spell what it decodes to (`\\u0061` is `a`); any other line is skipped when
/// it lacks one of `texts`, or when it starts as this log writes entries
/// (`{"seq":N,"time":T,`) with `T` outside `from..to`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hint<'a> {
    /// Words every entry kept holds somewhere in its fields (an action, the first
    /// word of an outcome).
    pub texts: &'a [&'a str],
    /// Every entry kept has `time >= from`.
    pub from: Option<u64>,
    /// Every entry kept has `time < to`.
    pub to: Option<u64>,
}

/// The time of a line written as this log writes entries: `{"seq":N,"time":T,…`.
/// (Another `time` later in the line would make the entry fail to parse at all.)
fn canonical_time(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest.get(digits..)?.strip_prefix(b",\"time\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
}

/// The fields of an entry a filter looks at, borrowed from its line where they need
/// no unescaping: filtering a log reads these, and only the entries kept in full.
#[derive(Debug, Deserialize)]
pub struct Fields<'a> {
    /// Position in the log.
    pub seq: u64,
    /// When (ms since the epoch).
    pub time: u64,
    /// Who acted.
    #[serde(borrow)]
    pub actor: std::borrow::Cow<'a, str>,
    /// What was done.
    #[serde(borrow)]
    pub action: std::borrow::Cow<'a, str>,
    /// Allowed or refused, and why.
    #[serde(borrow)]
    pub outcome: std::borrow::Cow<'a, str>,
}

/// The newest `count` entries of any log file (a device's own or a copy) that `keep`
/// accepts, oldest first. The file is read backwards from `len` (its end when
/// `None`) in blocks, and reading stops once `count` entries are found: a page of
/// recent matches costs what lies between them and the end, a filter that matches
/// nothing one pass over the file. At most `count` entries are held.
///
/// `hint` says what `keep` needs, so that lines that cannot match are skipped
/// unparsed (see [`Hint`]).
pub fn newest_matching_in(
    path: &Path,
    len: Option<u64>,
    count: usize,
    hint: &Hint<'_>,
    mut keep: impl FnMut(&Fields<'_>) -> bool,
) -> Result<Vec<Entry>, AuditError> {
    let finders: Vec<memchr::memmem::Finder<'_>> = hint
        .texts
        .iter()
        .map(|t| memchr::memmem::Finder::new(t.as_bytes()))
        .collect();
    let may_match = |line: &[u8]| {
        if memchr::memchr(b'\\', line).is_some() {
            return true;
        }
        let in_window = canonical_time(line)
            .is_none_or(|t| hint.from.is_none_or(|f| t >= f) && hint.to.is_none_or(|u| t < u));
        in_window && finders.iter().all(|f| f.find(line).is_some())
    };
    const BLOCK: u64 = 1 << 18;
    let io = |err: std::io::Error| AuditError::Io {
        path: path.display().to_string(),
        detail: err.to_string(),
    };
    let mut file = File::open(path).map_err(io)?;
    let end = match len {
        Some(len) => len,
        None => file.metadata().map_err(io)?.len(),
    };
    // Newest first while reading.
    let mut out = Vec::with_capacity(count.min(1024));
    // The bytes of the line that starts before the block being read and ends in a
    // block already read.
    let mut carry: Vec<u8> = Vec::new();
    let mut pos = end;
    while pos > 0 && out.len() < count {
        let start = pos.saturating_sub(BLOCK);
        let mut buf = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        buf.extend_from_slice(&carry);
        pos = start;
        // Unless the block starts the file, its first line may have begun earlier.
        let whole = if start == 0 {
            0
        } else {
            match buf.iter().position(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => {
                    carry = buf;
                    continue;
                }
            }
        };
        for line in buf.get(whole..).unwrap_or_default().rsplit(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            // A checkpoint line does not parse as an entry.
            if may_match(line)
                && let Ok(fields) = serde_json::from_slice::<Fields<'_>>(line)
                && keep(&fields)
                && let Ok(entry) = serde_json::from_slice::<Entry>(line)
            {
                out.push(entry);
                if out.len() == count {
                    break;
                }
            }
        }
        buf.truncate(whole.saturating_sub(1));
        carry = buf;
    }
    out.reverse();
    Ok(out)
}

/// The entries of any log file (a device's own or a copy) matching the filters,
/// oldest first: `since` (ms), `device`, `action` (an exact action or a prefix ending
/// in `.`).
pub fn entries_in(
    path: &Path,
    since: Option<u64>,
    device: Option<&str>,
    action: Option<&str>,
) -> Result<Vec<Entry>, AuditError> {
    let file = File::open(path).map_err(|err| AuditError::Io {
        path: path.display().to_string(),
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
    fn a_page_of_entries_is_read_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log =
            AuditLog::open(&path, "home", NodeKey::from_seed([4; 32]), Arc::new(|| 5)).unwrap();
        for i in 0..3000 {
            log.record(event(i)).unwrap();
        }
        let (page, next) = log.entries_from(2_950, 20).unwrap();
        assert_eq!(next, 3000);
        let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (2_950..2_970).collect::<Vec<_>>());
        let (tail, _) = log.entries_from(2_990, 50).unwrap();
        assert_eq!(tail.len(), 10);
        assert!(log.entries_from(3_000, 5).unwrap().0.is_empty());
    }

    fn hint<'a>(texts: &'a [&'a str]) -> Hint<'a> {
        Hint {
            texts,
            ..Hint::default()
        }
    }

    #[test]
    fn a_line_that_spells_its_action_with_escapes_is_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log =
            AuditLog::open(&path, "home", NodeKey::from_seed([4; 32]), Arc::new(|| 5)).unwrap();
        for i in 0..20 {
            log.record(event(i)).unwrap();
        }
        drop(log);
        // A copy of another device's log may spell a word any way JSON allows.
        let text = std::fs::read_to_string(&path).unwrap();
        let copy = dir.path().join("copy.log");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[3] = lines[3].replace(
            "\"action\":\"store.put\"",
            "\"action\":\"st\\u006fre.drop\"",
        );
        lines[7] = lines[7].replace("\"action\":\"store.put\"", "\"action\":\"store.drop\"");
        std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
        let found = newest_matching_in(&copy, None, 10, &hint(&["store.drop"]), |f| {
            f.action == "store.drop"
        })
        .unwrap();
        let seqs: Vec<u64> = found.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 7]);
        assert!(
            newest_matching_in(&copy, None, 10, &hint(&["nothing.here"]), |_| true)
                .unwrap()
                .iter()
                .all(|e| e.seq == 3),
            "only the escaped line is parsed, and it passes the filter given"
        );
    }

    #[test]
    fn the_newest_matching_entries_are_kept_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log =
            AuditLog::open(&path, "home", NodeKey::from_seed([4; 32]), Arc::new(|| 5)).unwrap();
        for i in 0..500 {
            log.record(event(i)).unwrap();
        }
        let even = log
            .newest_matching(4, &Hint::default(), |e| e.seq % 2 == 0)
            .unwrap();
        let bytes: Vec<u64> = even.iter().map(|e| e.bytes).collect();
        assert_eq!(bytes, [492, 494, 496, 498]);
        assert!(
            log.newest_matching(0, &Hint::default(), |_| true)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            log.newest_matching(1_000, &Hint::default(), |_| true)
                .unwrap()
                .len(),
            500
        );
        // Over many blocks, lines of every length across their edges, checkpoints
        // between: the same as a forward read.
        for i in 500..6_000 {
            let mut e = event(i);
            e.object = "x".repeat(usize::try_from(i * 37 % 1_500).unwrap());
            log.record(e).unwrap();
            if i % 997 == 0 {
                log.checkpoint().unwrap();
            }
        }
        let all = log.entries(None, None, None).unwrap();
        assert_eq!(all.len(), 6_000);
        // A time window skips by the line's head; the same entries as parsing each.
        let window = Hint {
            from: Some(5),
            to: Some(6),
            ..Hint::default()
        };
        assert_eq!(
            log.newest_matching(10, &window, |_| true).unwrap(),
            all[5_990..].to_vec()
        );
        let empty = Hint {
            to: Some(5),
            ..Hint::default()
        };
        assert!(
            log.newest_matching(10, &empty, |_| true)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            canonical_time(b"{\"seq\":12,\"time\":345,\"device\":\"d\"}"),
            Some(345)
        );
        assert_eq!(canonical_time(b"{\"time\":345,\"seq\":12}"), None);
        for (count, modulus) in [(50, 1), (50, 7), (3, 1_000), (10_000, 3), (5, 100_000)] {
            let expected: Vec<Entry> = all
                .iter()
                .filter(|e| e.seq % modulus == 0)
                .cloned()
                .collect();
            let expected = expected[expected.len().saturating_sub(count)..].to_vec();
            assert_eq!(
                log.newest_matching(count, &Hint::default(), |e| e.seq % modulus == 0)
                    .unwrap(),
                expected,
                "{count} of every {modulus}"
            );
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

    #[test]
    fn a_removed_head_is_reported_and_recorded_when_the_log_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = NodeKey::from_seed([4; 32]);
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 5)).unwrap();
        log.record(event(0)).unwrap();
        drop(log);
        std::fs::remove_file(head_path(&path)).unwrap();
        let v = verify(&path, &key.public()).unwrap();
        assert!(
            v.findings.iter().any(|f| f.problem.contains("is missing")),
            "{:?}",
            v.findings
        );
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 5)).unwrap();
        let noticed = log.entries(None, None, Some("audit.truncated")).unwrap();
        assert_eq!(noticed.len(), 1);
        assert!(noticed[0].outcome.contains("audit.head is missing"));
        // Recorded, and the head written again: the log checks out from here on.
        assert!(verify(&path, &key.public()).unwrap().ok());
    }

    #[test]
    fn the_last_entry_number_is_refused_not_overflowed() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed([4; 32]);
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, "phone", key.clone(), Arc::new(|| 5)).unwrap();
        log.record(event(0)).unwrap();
        let mut last: Entry = log.entries(None, None, None).unwrap().remove(0);
        last.seq = u64::MAX;
        last.hash = last.compute_hash();
        let line = serde_json::to_string(&last).unwrap();
        let mut mirror = Mirror::open(&dir.path().join("copy.log"), key.public()).unwrap();
        assert!(mirror.apply(std::slice::from_ref(&line)).is_err());
        assert!(mirror.last().is_none());
        // In a log file, it is not taken as an entry to number on from.
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
        drop(f);
        let log = AuditLog::open(&path, "phone", key.clone(), Arc::new(|| 5)).unwrap();
        log.record(event(1)).unwrap();
        assert!(!verify(&path, &key.public()).unwrap().ok());
    }

    /// Cuts the log at `path` back to its first `keep` lines.
    fn cut(path: &Path, keep: usize) {
        let text = std::fs::read_to_string(path).unwrap();
        let kept: String = text.lines().take(keep).map(|l| format!("{l}\n")).collect();
        std::fs::write(path, kept).unwrap();
    }

    #[test]
    fn a_log_cut_back_no_longer_matches_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = NodeKey::from_seed([4; 32]);
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 5)).unwrap();
        for i in 0..250 {
            log.record(event(i)).unwrap();
        }
        log.checkpoint().unwrap();
        drop(log);
        assert!(verify(&path, &key.public()).unwrap().ok());
        let whole = std::fs::read(&path).unwrap();
        // Back to the first checkpoint (entry 99 and its checkpoint: 101 lines); then
        // without only the last entry and the final checkpoint.
        for keep in [101, 250] {
            std::fs::write(&path, &whole).unwrap();
            cut(&path, keep);
            let v = verify(&path, &key.public()).unwrap();
            assert!(!v.ok(), "cut to {keep} lines passed");
            assert!(
                v.findings.iter().any(|f| f.problem.contains("cut back")),
                "{:?}",
                v.findings
            );
        }
        // The node opening the cut log says so, and numbers on after the head: the gap
        // stays visible.
        let log = AuditLog::open(&path, "home", key.clone(), Arc::new(|| 7)).unwrap();
        let entries = log.entries(None, None, Some("audit.truncated")).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 250);
        assert!(
            entries[0].outcome.contains("248 to 249"),
            "{}",
            entries[0].outcome
        );
        drop(log);
        let v = verify(&path, &key.public()).unwrap();
        assert!(
            v.findings.iter().any(|f| f.problem.contains("missing")),
            "{:?}",
            v.findings
        );
    }

    /// Copies `log` into `mirror` page by page; returns the final page answer.
    fn copy(log: &AuditLog, mirror: &mut Mirror, page: usize) -> Result<u64, String> {
        let mut added = 0;
        loop {
            let after = mirror.last().cloned();
            match log.page_after(after.as_ref(), page).unwrap() {
                Page::Lines { lines, .. } if lines.is_empty() => return Ok(added),
                Page::Lines { lines, .. } => added += mirror.apply(&lines)?,
                Page::Parted { next_seq } => return Err(format!("parted at {next_seq}")),
            }
        }
    }

    #[test]
    fn a_copy_follows_the_log_and_sees_it_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = NodeKey::from_seed([4; 32]);
        let log = AuditLog::open(&path, "phone", key.clone(), Arc::new(|| 5)).unwrap();
        for i in 0..700 {
            log.record(event(i)).unwrap();
        }
        let copy_path = dir.path().join("copy.log");
        let mut mirror = Mirror::open(&copy_path, key.public()).unwrap();
        assert_eq!(copy(&log, &mut mirror, 4096), Ok(700));
        for i in 700..710 {
            log.record(event(i)).unwrap();
        }
        log.checkpoint().unwrap();
        assert_eq!(copy(&log, &mut mirror, 1), Ok(10));
        assert_eq!(mirror.last().unwrap().seq, 709);
        assert!(verify_copy(&copy_path, &key.public()).unwrap().ok());
        assert_eq!(mirror.hashes(300, 2).unwrap(), log.hashes(300, 2).unwrap());
        // Reopened, the copy goes on where it was.
        drop(mirror);
        let mut mirror = Mirror::open(&copy_path, key.public()).unwrap();
        assert_eq!(copy(&log, &mut mirror, 4096), Ok(0));

        // Another key's checkpoints, edited entries and lines out of order are refused
        // whole.
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let mut stranger = Mirror::open(
            &dir.path().join("s.log"),
            NodeKey::from_seed([9; 32]).public(),
        )
        .unwrap();
        assert!(stranger.apply(&lines).unwrap_err().contains("not signed"));
        let mut edited = Mirror::open(&dir.path().join("e.log"), key.public()).unwrap();
        let mut changed = lines.clone();
        changed[3] = changed[3].replace("\"s3\"", "\"s4\"");
        assert!(edited.apply(&changed).unwrap_err().contains("hash"));
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert!(edited.apply(&swapped).is_err());
        assert!(edited.last().is_none(), "nothing of a refused page is kept");
        drop(log);

        // The phone's log rewritten from about entry 500 on (by its own key): the copy parts,
        // and the hashes say where.
        cut(&path, 500);
        std::fs::remove_file(head_path(&path)).unwrap();
        let kept = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("{\"seq\""))
            .count();
        let log = AuditLog::open(&path, "phone", key.clone(), Arc::new(|| 6)).unwrap();
        for i in 0..300 {
            log.record(event(1000 + i)).unwrap();
        }
        assert!(
            copy(&log, &mut mirror, 4096)
                .unwrap_err()
                .starts_with("parted")
        );
        let theirs = log.hashes(0, 1000).unwrap();
        let ours = mirror.hashes(0, 1000).unwrap();
        let first = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        assert_eq!(first, Some(kept));
    }
}
