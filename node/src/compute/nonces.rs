//! The invocations this device has run, kept on disk until they expire: a job
//! captured on its way and sent again after a restart is refused as a replay.
//!
//! `compute/nonces.log` is a magic number and then one 64-byte record per accepted
//! invocation (timestamp, holder, nonce, and the first 8 bytes of the SHA-256 of the
//! other 56), appended and synced before the job runs. On start the records still
//! inside the acceptance window are read back and the file is rewritten with only
//! those. A torn last record (a crash while appending, before the job was
//! acknowledged) is dropped. Any other damage fails closed: the node starts, and
//! refuses every invocation signed before it started (its holder signs again). That
//! refusal is itself kept in the journal (a marker record: holder all `0xff`, nonce all
//! zero, timestamp the start) until everything it refuses has expired, so the restart
//! after next does not forget it.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hearth_protocol::capability::{Accepted, InvocationVerifier};
use hearth_protocol::statefile;
use hearth_protocol::time::UnixMillis;
use sha2::{Digest as _, Sha256};

/// The journal's file name, in the compute directory.
pub(crate) const FILE: &str = "nonces.log";
const MAGIC: &[u8; 8] = b"HNONCE\x00\x01";
const RECORD: usize = 64;
/// The most records read (more than the replay cache holds, with room for expired
/// ones not yet compacted away).
const MAX_RECORDS: usize = 1 << 20;
/// Appends after which the file is rewritten with the live records only.
const COMPACT_AFTER: usize = 1 << 16;
/// The holder of a marker record: invocations signed before its timestamp are refused.
const MARKER_HOLDER: [u8; 32] = [0xff; 32];

fn marker(not_before: UnixMillis) -> Accepted {
    Accepted {
        timestamp: not_before,
        holder: MARKER_HOLDER,
        nonce: [0; 16],
    }
}

/// The journal of accepted invocations.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    appended: usize,
    /// Invocations signed before this are refused (set when the journal was damaged).
    pub(crate) not_before: Option<UnixMillis>,
}

fn encode(record: &Accepted) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD);
    out.extend_from_slice(&record.timestamp.0.to_be_bytes());
    out.extend_from_slice(&record.holder);
    out.extend_from_slice(&record.nonce);
    let check = Sha256::digest(&out);
    out.extend(check.iter().take(RECORD - 56));
    out
}

fn decode(bytes: &[u8]) -> Option<Accepted> {
    let (body, check) = bytes.split_at_checked(56)?;
    if Sha256::digest(body).get(..8)? != check {
        return None;
    }
    Some(Accepted {
        timestamp: UnixMillis(u64::from_be_bytes(body.get(..8)?.try_into().ok()?)),
        holder: body.get(8..40)?.try_into().ok()?,
        nonce: body.get(40..56)?.try_into().ok()?,
    })
}

impl Journal {
    /// Opens the journal in `dir`, teaching `verifier` every invocation it still
    /// holds, and compacts it.
    pub(crate) fn open(
        dir: &Path,
        verifier: &mut InvocationVerifier,
        now: UnixMillis,
    ) -> Result<Self, String> {
        let path = dir.join(FILE);
        let mut not_before = None;
        let mut damage = None;
        let mut damaged = |why: &'static str| damage = Some(why);
        let bytes = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > (MAGIC.len() + MAX_RECORDS * RECORD) as u64 => {
                damaged("the journal of accepted invocations is too large");
                Vec::new()
            }
            Ok(_) => std::fs::read(&path).map_err(|err| format!("{}: {err}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(format!("{}: {err}", path.display())),
        };
        if !bytes.is_empty() {
            match bytes.strip_prefix(MAGIC.as_slice()) {
                None => damaged("the journal of accepted invocations is damaged"),
                Some(records) => {
                    let chunks: Vec<&[u8]> = records.chunks(RECORD).collect();
                    let last = chunks.len().saturating_sub(1);
                    let oldest = verifier.oldest(now);
                    for (i, chunk) in chunks.into_iter().enumerate() {
                        match decode(chunk) {
                            // A refusal kept from an earlier damage, still needed.
                            Some(record) if record.holder == MARKER_HOLDER => {
                                if record.timestamp >= oldest {
                                    not_before = not_before.max(Some(record.timestamp));
                                }
                            }
                            Some(record) if record.timestamp >= oldest => {
                                verifier.remember(record);
                            }
                            Some(_) => {}
                            // A crash while appending: never acknowledged.
                            None if i == last => {}
                            None => {
                                damaged("the journal of accepted invocations is damaged");
                                break;
                            }
                        }
                    }
                }
            }
        }
        if let Some(why) = damage {
            tracing::error!(
                path = %path.display(),
                "{why}; invocations signed before now are refused (their holders sign again)"
            );
            not_before = Some(now);
        }
        let file = Self::rewrite(&path, verifier, not_before)?;
        Ok(Self {
            path,
            file,
            appended: 0,
            not_before,
        })
    }

    /// Writes the live records durably and opens the file for appending.
    fn rewrite(
        path: &Path,
        verifier: &InvocationVerifier,
        not_before: Option<UnixMillis>,
    ) -> Result<File, String> {
        let mut bytes = MAGIC.to_vec();
        if let Some(at) = not_before {
            bytes.extend_from_slice(&encode(&marker(at)));
        }
        for record in verifier.accepted() {
            bytes.extend_from_slice(&encode(&record));
        }
        let io = |err: std::io::Error| format!("{}: {err}", path.display());
        statefile::write_durable(path, &bytes).map_err(io)?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io)
    }

    /// Keeps `record` on disk (synced) before its job runs.
    pub(crate) fn append(
        &mut self,
        record: &Accepted,
        verifier: &InvocationVerifier,
    ) -> Result<(), String> {
        let io = |err: std::io::Error| format!("{}: {err}", self.path.display());
        if self.appended >= COMPACT_AFTER {
            // The marker goes once nothing it refuses is still acceptable.
            if self
                .not_before
                .is_some_and(|at| at < verifier.oldest(record.timestamp))
            {
                self.not_before = None;
            }
            self.file = Self::rewrite(&self.path, verifier, self.not_before)?;
            self.appended = 0;
            return Ok(());
        }
        self.file.write_all(&encode(record)).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.appended += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hearth_protocol::capability::InvocationConfig;

    use super::*;

    fn record(i: u8, at: u64) -> Accepted {
        Accepted {
            timestamp: UnixMillis(at),
            holder: [i; 32],
            nonce: [i; 16],
        }
    }

    #[test]
    fn accepted_invocations_outlive_a_restart_and_damage_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let now = UnixMillis(10_000_000);
        let config = InvocationConfig::default();
        let mut verifier = InvocationVerifier::new(config.clone());
        let mut journal = Journal::open(dir.path(), &mut verifier, now).unwrap();
        for i in 0..3 {
            let r = record(i, now.0 - u64::from(i));
            verifier.remember(r);
            journal.append(&r, &verifier).unwrap();
        }
        drop(journal);
        // A torn last record is dropped; the others come back.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[7; 20]);
        std::fs::write(&path, &bytes).unwrap();
        let mut again = InvocationVerifier::new(config.clone());
        let journal = Journal::open(dir.path(), &mut again, now).unwrap();
        assert_eq!(journal.not_before, None);
        assert_eq!(again.accepted().count(), 3);
        drop(journal);
        // Expired records are dropped when the file is rewritten.
        let later = UnixMillis(now.0 + 3_600_000);
        let mut later_verifier = InvocationVerifier::new(config.clone());
        Journal::open(dir.path(), &mut later_verifier, later).unwrap();
        assert_eq!(later_verifier.accepted().count(), 0);
        assert_eq!(std::fs::read(&path).unwrap(), MAGIC.to_vec());
        // A damaged record that is not the last: everything signed before now refused.
        let mut bytes = MAGIC.to_vec();
        let mut first = encode(&record(1, now.0));
        first[3] ^= 1;
        bytes.extend_from_slice(&first);
        bytes.extend_from_slice(&encode(&record(2, now.0)));
        std::fs::write(&path, &bytes).unwrap();
        let mut damaged = InvocationVerifier::new(config.clone());
        let journal = Journal::open(dir.path(), &mut damaged, now).unwrap();
        assert_eq!(journal.not_before, Some(now));
        drop(journal);
        // The restart after that still refuses them, while they could be acceptable…
        let soon = UnixMillis(now.0 + 1_000);
        let mut next = InvocationVerifier::new(config.clone());
        let journal = Journal::open(dir.path(), &mut next, soon).unwrap();
        assert_eq!(journal.not_before, Some(now));
        drop(journal);
        // …and forgets the refusal once everything it refused has expired.
        let mut after = InvocationVerifier::new(config.clone());
        let journal =
            Journal::open(dir.path(), &mut after, UnixMillis(now.0 + 2 * 3_600_000)).unwrap();
        assert_eq!(journal.not_before, None);
        // Not a journal at all: the same.
        std::fs::write(&path, b"junk").unwrap();
        let journal = Journal::open(dir.path(), &mut InvocationVerifier::new(config), now).unwrap();
        assert_eq!(journal.not_before, Some(now));
    }
}
