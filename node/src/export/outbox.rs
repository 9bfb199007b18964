//! The export outbox: every export the node has accepted, kept in an append-only
//! journal (`DATA_DIR/exports/outbox.log`) that is synced before an export is
//! acknowledged. Each frame is `len(u32 LE) · sha256(len)[..4] · sha256(payload)[..8] ·
//! payload`, the payload a JSON array of the records of one commit, applied together
//! or not at all; the state is the replay of the frames. A commit is checked, written,
//! synced and only then applied, under one lock: nothing takes effect (is sent, or
//! counted) before it is on disk. A torn frame at the end (a crash mid-write, never
//! acknowledged) is cut off when the journal opens; damage anywhere else, the length of
//! a frame included, stops the node, which will not guess which exports were sent. A
//! failed write or sync leaves the outbox refusing everything (and the gateway sending
//! nothing) until the node restarts and reads the journal back.
//!
//! Finished exports stay listed for [`KEEP_FINISHED`] (the daily limits count them);
//! the journal is rewritten without older ones when it has grown.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hearth_protocol::export::ExportId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The journal's file name inside the exports directory.
pub(crate) const JOURNAL: &str = "outbox.log";
/// How long a finished export stays listed (and counted for daily limits).
pub(crate) const KEEP_FINISHED: u64 = 2 * DAY_MS;
/// A UTC day in milliseconds.
pub(crate) const DAY_MS: u64 = 24 * 3600 * 1000;
/// Largest record read back.
const MAX_RECORD: u32 = 8 << 20;
/// The journal is rewritten when it is this much larger than what it holds.
const COMPACT_SLACK: u64 = 16 << 20;

/// Where an export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Waiting for the owner's release.
    Held,
    /// To be sent (or being retried).
    Queued,
    /// The destination answered 2xx.
    Delivered,
    /// The destination refused it, or it can never be sent.
    Failed,
    /// The owner dropped it.
    Dropped,
    /// It was not delivered in time.
    Expired,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Held => "held",
            State::Queued => "queued",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Dropped => "dropped",
            State::Expired => "expired",
        }
    }

    /// Is the export done with, one way or another?
    pub(crate) fn is_final(self) -> bool {
        !matches!(self, State::Held | State::Queued)
    }
}

/// What the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    Json,
    Text,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Text => "text/plain; charset=utf-8",
        }
    }
}

/// One export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Its id (and the idempotency key the destination sees), 32 hex digits.
    pub id: String,
    pub destination: String,
    pub format: Format,
    pub body: String,
    /// SHA-256 of the body, hex.
    pub sha256: String,
    /// `job:<id>` or `app:<name>@<deployed>#<run>`.
    pub source: String,
    /// The capability it was made under (the chain's leaf).
    pub cap_id: String,
    /// Every link of the chain: the daily limits count under each.
    pub links: Vec<String>,
    /// The capability chain in text form, checked for revocation before each attempt.
    pub chain: String,
    pub queued_at: u64,
    pub expires_at: u64,
    /// Needed the owner's release.
    pub review: bool,
    pub state: State,
    pub attempts: u32,
    /// When the next attempt is due (ms).
    pub next_at: u64,
    pub last_error: Option<String>,
    /// The status of the last answer.
    pub status: Option<u16>,
    pub finished_at: Option<u64>,
    pub released_at: Option<u64>,
}

impl Entry {
    pub(crate) fn size(&self) -> u64 {
        self.body.len() as u64
    }
}

/// One journal record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Record {
    /// An export accepted (ignored when an export of that id is already listed).
    Queue { entry: Box<Entry> },
    /// An attempt that did not deliver; the next is due at `next_at`.
    Retry {
        id: String,
        attempts: u32,
        next_at: u64,
        error: String,
        status: Option<u16>,
    },
    /// The owner released a held export.
    Release { id: String, at: u64 },
    /// The export's end.
    Finish {
        id: String,
        state: State,
        at: u64,
        error: Option<String>,
        status: Option<u16>,
    },
    /// Sending paused or resumed.
    Pause { paused: bool },
}

/// The outbox's state, as the journal says.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub entries: BTreeMap<String, Entry>,
    pub paused: bool,
}

impl Book {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Queue { entry } => {
                self.entries.entry(entry.id.clone()).or_insert(*entry);
            }
            Record::Retry {
                id,
                attempts,
                next_at,
                error,
                status,
            } => {
                if let Some(e) = self.entries.get_mut(&id)
                    && !e.state.is_final()
                {
                    e.attempts = attempts;
                    e.next_at = next_at;
                    e.last_error = Some(error);
                    e.status = status;
                }
            }
            Record::Release { id, at } => {
                if let Some(e) = self.entries.get_mut(&id)
                    && e.state == State::Held
                {
                    e.state = State::Queued;
                    e.released_at = Some(at);
                }
            }
            Record::Finish {
                id,
                state,
                at,
                error,
                status,
            } => {
                if let Some(e) = self.entries.get_mut(&id)
                    && !e.state.is_final()
                {
                    e.state = state;
                    e.finished_at = Some(at);
                    if error.is_some() {
                        e.last_error = error;
                    }
                    if status.is_some() {
                        e.status = status;
                    }
                }
            }
            Record::Pause { paused } => self.paused = paused,
        }
    }

    /// Exports and bytes queued under capability link `link` on the UTC day of `now`.
    pub(crate) fn used_today(&self, link: &str, now: u64) -> (u64, u64) {
        let day = now / DAY_MS;
        self.entries
            .values()
            .filter(|e| e.queued_at / DAY_MS == day && e.links.iter().any(|l| l == link))
            .fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.size()))
    }
}

/// The journal file and the book it keeps.
#[derive(Debug)]
pub(crate) struct Outbox {
    path: PathBuf,
    /// The book and the journal's write end.
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    book: Book,
    file: File,
    /// Bytes in the journal.
    len: u64,
    /// Set when a write failed: nothing more is accepted until the node restarts
    /// (the journal's end is not known to be whole).
    broken: Option<String>,
}

/// Why the outbox cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboxError {
    #[error("{0}")]
    Io(String),
    #[error("{path} is damaged at byte {offset}: {reason}")]
    Damaged {
        path: String,
        offset: u64,
        reason: String,
    },
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Bytes before a frame's payload.
const HEADER: usize = 16;

fn frame(records: &[Record]) -> Vec<u8> {
    let payload = serde_json::to_vec(records).unwrap_or_default();
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + HEADER);
    out.extend_from_slice(&len);
    out.extend_from_slice(sha(&len).get(..4).unwrap_or(&[0; 4]));
    out.extend_from_slice(sha(&payload).get(..8).unwrap_or(&[0; 8]));
    out.extend_from_slice(&payload);
    out
}

/// Replays `bytes`; returns the book and the length of the whole frames. A torn last
/// frame is left out; damage before it (or in a frame's header) is an error.
fn replay(bytes: &[u8], path: &Path) -> Result<(Book, u64), OutboxError> {
    let mut book = Book::default();
    let mut at = 0usize;
    let torn = |at: usize| {
        tracing::warn!(path = %path.display(), offset = at, "cutting a torn frame off the export journal");
    };
    loop {
        let rest = bytes.get(at..).unwrap_or(&[]);
        if rest.is_empty() {
            break;
        }
        let damaged = |reason: &str| OutboxError::Damaged {
            path: path.display().to_string(),
            offset: at as u64,
            reason: reason.to_owned(),
        };
        let Some(header) = rest.get(..HEADER) else {
            torn(at);
            break;
        };
        let len_bytes = header.get(..4).unwrap_or(&[]);
        if sha(len_bytes).get(..4) != header.get(4..8) {
            return Err(damaged("a frame's length does not match its check"));
        }
        let len = <[u8; 4]>::try_from(len_bytes).map_or(u32::MAX, u32::from_le_bytes);
        if len > MAX_RECORD {
            return Err(damaged(
                "a frame claims to be larger than any the node writes",
            ));
        }
        let end = HEADER + len as usize;
        let Some(payload) = rest.get(HEADER..end) else {
            torn(at);
            break;
        };
        if sha(payload).get(..8) != header.get(8..16) {
            if at + end == bytes.len() {
                torn(at);
                break;
            }
            return Err(damaged("a frame's checksum does not match"));
        }
        let records: Vec<Record> = serde_json::from_slice(payload)
            .map_err(|err| damaged(&format!("a frame does not read: {err}")))?;
        for record in records {
            book.apply(record);
        }
        at += end;
    }
    Ok((book, at as u64))
}

impl Outbox {
    /// Opens (or makes) the journal in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, OutboxError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |err: std::io::Error| OutboxError::Io(format!("{path}: {err}"))
        };
        hearth_protocol::statefile::create_private_dir(dir).map_err(io(dir))?;
        let path = dir.join(JOURNAL);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(io(&path))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(&path)(err)),
        }
        let (book, whole) = replay(&bytes, &path)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if whole < bytes.len() as u64 {
            file.set_len(whole).map_err(io(&path))?;
            file.sync_data().map_err(io(&path))?;
        }
        hearth_protocol::statefile::sync_parent(&path).map_err(io(&path))?;
        let mut file = file;
        // Appends go at the end (the file is not opened in append mode, so that a
        // rewrite can replace it).
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(io(&path))?;
        let outbox = Self {
            path,
            inner: Mutex::new(Inner {
                book,
                file,
                len: whole,
                broken: None,
            }),
        };
        Ok(outbox)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the book.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Book) -> T) -> T {
        f(&self.lock().book)
    }

    /// Has a write failed (nothing more is accepted until the node restarts)?
    pub(crate) fn is_broken(&self) -> bool {
        self.lock().broken.is_some()
    }

    /// Checks against the book with `check`, which returns the records to add; writes
    /// them as one frame, syncs the journal and only then applies them. `Err` from
    /// `check` writes nothing; a failed write or sync applies nothing and leaves the
    /// outbox refusing every later commit.
    pub(crate) fn commit<E: From<OutboxError>>(
        &self,
        check: impl FnOnce(&Book) -> Result<Vec<Record>, E>,
    ) -> Result<Vec<Record>, E> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.broken {
            return Err(OutboxError::Io(format!(
                "the export journal could not be written ({reason}); restart the node"
            ))
            .into());
        }
        let records = check(&inner.book)?;
        if records.is_empty() {
            return Ok(records);
        }
        let bytes = frame(&records);
        let written = inner
            .file
            .write_all(&bytes)
            .and_then(|()| inner.file.sync_data());
        if let Err(err) = written {
            let reason = format!("{}: {err}", self.path.display());
            tracing::error!(%reason, "the export journal cannot be written; the gateway stops until the node restarts");
            inner.broken = Some(reason.clone());
            return Err(OutboxError::Io(reason).into());
        }
        inner.len += bytes.len() as u64;
        for record in &records {
            inner.book.apply(record.clone());
        }
        Ok(records)
    }

    /// Rewrites the journal without exports finished before `now - KEEP_FINISHED`,
    /// when it has grown well past what it holds.
    pub(crate) fn compact(&self, now: u64) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        if inner.len < COMPACT_SLACK || inner.broken.is_some() {
            return Ok(());
        }
        let keep = |e: &Entry| {
            !e.state.is_final() || e.finished_at.unwrap_or(0).saturating_add(KEEP_FINISHED) > now
        };
        let live: Vec<Record> = inner
            .book
            .entries
            .values()
            .filter(|e| keep(e))
            .map(|e| Record::Queue {
                entry: Box::new(e.clone()),
            })
            .chain(std::iter::once(Record::Pause {
                paused: inner.book.paused,
            }))
            .collect();
        let bytes = frame(&live);
        if inner.len < bytes.len() as u64 + COMPACT_SLACK {
            return Ok(());
        }
        let rewritten = hearth_protocol::statefile::write_durable(&self.path, &bytes)
            .and_then(|()| OpenOptions::new().write(true).open(&self.path))
            .and_then(|mut file| {
                std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map(|_| file)
            });
        match rewritten {
            Ok(file) => {
                inner.file = file;
                inner.len = bytes.len() as u64;
                inner.book.entries.retain(|_, e| keep(e));
                Ok(())
            }
            Err(err) => {
                // Which file later writes would reach is not known: nothing more is
                // written until the node restarts and reads the journal back.
                let reason = format!("{}: {err}", self.path.display());
                inner.broken = Some(reason.clone());
                Err(OutboxError::Io(reason))
            }
        }
    }
}

/// The id of the `index`th export of run `source` on the node with key `node`: the
/// same run made again (an app re-run after a crash) makes the same ids, so the
/// destination's idempotency key covers it too.
pub(crate) fn export_id(
    node: &hearth_protocol::key::PublicKey,
    source: &str,
    index: usize,
) -> ExportId {
    let mut hasher = Sha256::new();
    hasher.update(b"hearth/v1/export-id");
    hasher.update(node.as_bytes());
    hasher.update((source.len() as u64).to_le_bytes());
    hasher.update(source.as_bytes());
    hasher.update((index as u64).to_le_bytes());
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    ExportId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, queued_at: u64) -> Entry {
        Entry {
            id: id.to_owned(),
            destination: "https://study.example.org/submit".into(),
            format: Format::Json,
            body: "{\"n\":1}".into(),
            sha256: String::new(),
            source: "job:00".into(),
            cap_id: "cap".into(),
            links: vec!["root".into(), "cap".into()],
            chain: String::new(),
            queued_at,
            expires_at: queued_at + DAY_MS,
            review: true,
            state: State::Held,
            attempts: 0,
            next_at: queued_at,
            last_error: None,
            status: None,
            finished_at: None,
            released_at: None,
        }
    }

    fn queue(outbox: &Outbox, e: Entry) {
        outbox
            .commit::<OutboxError>(|_| {
                Ok(vec![Record::Queue {
                    entry: Box::new(e.clone()),
                }])
            })
            .unwrap();
    }

    #[test]
    fn what_was_committed_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        queue(&outbox, entry("a", 1000));
        queue(&outbox, entry("b", 2000));
        outbox
            .commit::<OutboxError>(|_| {
                Ok(vec![
                    Record::Release {
                        id: "a".into(),
                        at: 3000,
                    },
                    Record::Pause { paused: true },
                ])
            })
            .unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.with(|book| {
            assert!(book.paused);
            assert_eq!(book.entries["a"].state, State::Queued);
            assert_eq!(book.entries["a"].released_at, Some(3000));
            assert_eq!(book.entries["b"].state, State::Held);
            assert_eq!(book.used_today("root", 5000), (2, 14));
            assert_eq!(book.used_today("root", DAY_MS + 5), (0, 0));
        });
    }

    #[test]
    fn a_torn_end_is_cut_and_damage_before_it_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        queue(&outbox, entry("a", 1000));
        queue(&outbox, entry("b", 1000));
        drop(outbox);
        let path = dir.path().join(JOURNAL);
        let whole = std::fs::read(&path).unwrap();
        // A crash mid-write: half of a third record.
        let mut torn = whole.clone();
        torn.extend_from_slice(&frame(&[Record::Pause { paused: true }])[..20]);
        std::fs::write(&path, &torn).unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.with(|book| assert_eq!((book.entries.len(), book.paused), (2, false)));
        drop(outbox);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        // A flipped byte in the first frame is damage, not a torn end; so is a length
        // that points past the end of the file.
        let mut damaged = whole.clone();
        damaged[20] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let err = Outbox::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("damaged at byte 0"), "{err}");
        let mut long = whole.clone();
        long[2] = 0x7f;
        std::fs::write(&path, &long).unwrap();
        let err = Outbox::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("length does not match"), "{err}");
    }

    #[test]
    fn a_refused_check_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let refused = outbox.commit::<OutboxError>(|_| Err(OutboxError::Io("no".into())));
        assert!(refused.is_err());
        assert_eq!(
            std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len(),
            0
        );
    }

    #[test]
    fn compaction_keeps_what_is_live_and_recent() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let big = "x".repeat(1 << 20);
        for i in 0..20 {
            let mut e = entry(&format!("old{i}"), 0);
            e.body = big.clone();
            queue(&outbox, e);
            outbox
                .commit::<OutboxError>(|_| {
                    Ok(vec![Record::Finish {
                        id: format!("old{i}"),
                        state: State::Delivered,
                        at: 10,
                        error: None,
                        status: Some(200),
                    }])
                })
                .unwrap();
        }
        queue(&outbox, entry("live", 0));
        outbox.compact(KEEP_FINISHED + 100).unwrap();
        queue(&outbox, entry("after", KEEP_FINISHED + 100));
        drop(outbox);
        assert!(std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len() < 4096);
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.with(|book| {
            let ids: Vec<&str> = book.entries.keys().map(String::as_str).collect();
            assert_eq!(ids, ["after", "live"]);
        });
    }
}
