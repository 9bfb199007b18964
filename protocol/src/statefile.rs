//! State files: the one way a node writes a file it keeps, and the one way it reads a
//! file only it writes.
//!
//! [`write_durable`] writes a temporary file (mode 0600) beside the target, syncs it,
//! renames it over the target and syncs the directory: after it returns the new
//! contents survive a crash, and before it returns a crash leaves the old contents.
//!
//! Files only the node writes ([`write_state`]) start with one header line,
//!
//! ```text
//! hearth-state KIND VERSION LENGTH SHA256
//! ```
//!
//! naming what the file holds, the version of its format, and the length and SHA-256
//! of the payload after the line. [`read_state`] refuses a file whose header, length
//! or checksum does not match, naming the file: a caller then stops or refuses, and
//! never carries on as if the file were empty. Files the owner may edit by hand
//! (`config.toml`, `drivers.toml`) and self-checking documents (keys, signed
//! certificates) are written with [`write_durable`] and carry no header.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The first word of every state file's header.
const MAGIC: &str = "hearth-state";

/// The longest header line read (magic, kind, version, length and hex checksum).
const MAX_HEADER: usize = 160;

/// A state file that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not what was written: damaged, truncated, from a
    /// newer version, or not a state file at all.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// What does not match.
        reason: String,
    },
}

impl StateError {
    /// The file the error is about.
    pub fn path(&self) -> &str {
        match self {
            Self::Io { path, .. } | Self::Damaged { path, .. } => path,
        }
    }
}

/// A state file's contents, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The version of the payload's format.
    pub version: u32,
    /// What was written.
    pub payload: Vec<u8>,
}

/// Replaces `path` with `bytes` durably (see the module documentation). The file is
/// readable and writable by its owner only.
pub fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_beside(path);
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        // A new file, never one already there (a symbolic link planted at the
        // temporary name is not followed).
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = match options.open(&tmp) {
            // Left by a process that crashed with this process's id (ids come round
            // again, after a reboot especially): this process never uses a name twice.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&tmp)?;
                options.open(&tmp)?
            }
            opened => opened?,
        };
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Syncs the directory holding `path`, so that a file created or renamed there
/// survives a crash.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => std::fs::File::open(".")?.sync_all(),
    }
}

/// A temporary name beside `path`, unique to this process and call, so that two
/// writers of one file never write into each other's temporary file.
fn temporary_beside(path: &Path) -> PathBuf {
    let n = NEXT_TEMPORARY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    temporary_name(path, std::process::id(), n)
}

/// The number of this process's next temporary file.
static NEXT_TEMPORARY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The temporary name beside `path` of process `pid`'s `n`th write.
fn temporary_name(path: &Path, pid: u32, n: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{pid}.{n}.tmp"));
    path.with_file_name(name)
}

/// Writes a state file: the header line for `kind` (one word) and `version`, then
/// `payload`, durably.
pub fn write_state(path: &Path, kind: &str, version: u32, payload: &[u8]) -> std::io::Result<()> {
    write_durable(path, &encode_state(kind, version, payload))
}

/// A state file's bytes: the header line, then the payload.
pub fn encode_state(kind: &str, version: u32, payload: &[u8]) -> Vec<u8> {
    debug_assert!(!kind.is_empty() && !kind.contains(char::is_whitespace));
    let sum = hex::encode(Sha256::digest(payload));
    let mut bytes = format!("{MAGIC} {kind} {version} {} {sum}\n", payload.len()).into_bytes();
    bytes.extend_from_slice(payload);
    bytes
}

/// Reads the state file at `path` written for `kind`: `None` when there is none, the
/// checked contents when it is intact, an error naming the file otherwise. A file
/// larger than `max_bytes` is refused unread.
pub fn read_state(path: &Path, kind: &str, max_bytes: u64) -> Result<Option<State>, StateError> {
    let io = |source: std::io::Error| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io(err)),
    };
    let damaged = |reason: String| StateError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    if len > max_bytes.saturating_add(MAX_HEADER as u64) {
        return Err(damaged(format!(
            "it is {len} bytes, more than such a file may be ({max_bytes})"
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let state = decode_state(&bytes, kind).map_err(damaged)?;
    if state.payload.len() as u64 > max_bytes {
        return Err(damaged(format!(
            "it holds {} bytes, more than such a file may ({max_bytes})",
            state.payload.len()
        )));
    }
    Ok(Some(state))
}

/// Checks a state file's bytes (see [`read_state`]).
pub fn decode_state(bytes: &[u8], kind: &str) -> Result<State, String> {
    let end = bytes
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(|| "it does not start with a state file header".to_owned())?;
    let (header, rest) = bytes.split_at(end);
    let payload = rest.get(1..).unwrap_or_default();
    let header = std::str::from_utf8(header).map_err(|_| "its header is not text".to_owned())?;
    let mut words = header.split(' ');
    let (Some(MAGIC), Some(found), Some(version), Some(length), Some(sum), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err("it does not start with a state file header".into());
    };
    if found != kind {
        return Err(format!("it holds {found:?}, not {kind:?}"));
    }
    let version: u32 = version
        .parse()
        .map_err(|_| format!("its version {version:?} is not a number"))?;
    let length: usize = length
        .parse()
        .map_err(|_| format!("its length {length:?} is not a number"))?;
    if payload.len() != length {
        return Err(format!(
            "it holds {} bytes after its header where {length} were written (truncated or \
             appended to)",
            payload.len()
        ));
    }
    if hex::encode(Sha256::digest(payload)) != sum {
        return Err("its checksum does not match its contents".into());
    }
    Ok(State {
        version,
        payload: payload.to_vec(),
    })
}

/// A data directory or a file in one that others may read: which, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    /// The file or directory.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

impl fmt::Display for Exposed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fix = if self.path.is_dir() { "700" } else { "600" };
        write!(
            f,
            "{} is readable by other users (mode {:o}); fix it with: chmod {fix} {}",
            self.path.display(),
            self.mode & 0o777,
            self.path.display()
        )
    }
}

/// `Err` when `path` (a key file or a data directory) is readable, writable or
/// searchable by anyone but its owner. A file that does not exist is not exposed.
pub fn check_private(path: &Path) -> Result<(), Exposed> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates `dir` (and its parents) if needed and makes it private to its owner
/// (0700).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    /// A process killed mid-write leaves its temporary file; a later process with the
    /// same id reaches the same name: its write replaces the leftover, and succeeds.
    /// (Leftovers are planted at the next 256 names: other tests of this process may
    /// write meanwhile.)
    #[test]
    fn a_temporary_file_left_by_a_crash_does_not_fail_a_write() {
        use std::sync::atomic::Ordering;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.json");
        let plant = |make: &dyn Fn(&Path)| {
            let next = NEXT_TEMPORARY.load(Ordering::Relaxed);
            (next..next + 256)
                .map(|n| temporary_name(&path, std::process::id(), n))
                .inspect(|name| make(name))
                .collect::<Vec<_>>()
        };
        let leftovers = plant(&|name| std::fs::write(name, b"half of an old write").unwrap());
        write_durable(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert!(
            leftovers.iter().any(|name| !name.exists()),
            "one was replaced"
        );
        for name in leftovers {
            let _ = std::fs::remove_file(name);
        }
        // A symbolic link planted there is replaced, not followed.
        #[cfg(unix)]
        {
            let target = dir.path().join("target");
            std::fs::write(&target, b"untouched").unwrap();
            plant(&|name| std::os::unix::fs::symlink(&target, name).unwrap());
            write_durable(&path, b"again").unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
            assert_eq!(std::fs::read(&path).unwrap(), b"again");
        }
    }

    #[test]
    fn a_state_file_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.json");
        assert_eq!(read_state(&path, "runs", 1 << 20).unwrap(), None);
        write_state(&path, "runs", 3, b"{\"a\":1}").unwrap();
        let state = read_state(&path, "runs", 1 << 20).unwrap().unwrap();
        assert_eq!(state.version, 3);
        assert_eq!(state.payload, b"{\"a\":1}");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn every_damage_is_refused_naming_the_file() {
        let good = encode_state("peers", 1, b"[1,2,3]");
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "header"),
            (b"[1,2,3]".to_vec(), "header"),
            (good[..good.len() - 1].to_vec(), "truncated"),
            ([good.as_slice(), b"4"].concat(), "appended"),
            (encode_state("runs", 1, b"[1,2,3]"), "not \"peers\""),
        ];
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        cases.push((flipped, "checksum"));
        // Every truncation of the file is refused.
        for cut in 0..good.len() {
            cases.push((good[..cut].to_vec(), ""));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        for (bytes, why) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = read_state(&path, "peers", 1 << 20).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("peers.json"), "{text}");
            assert!(text.contains(why), "{text} should say {why}");
        }
        std::fs::write(&path, &good).unwrap();
        assert!(
            read_state(&path, "peers", 2).is_err(),
            "over the size limit"
        );
    }

    #[cfg(unix)]
    #[test]
    fn exposure_is_reported_with_its_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node.key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&key).unwrap();
        let data = dir.path().join("data");
        create_private_dir(&data).unwrap();
        check_private(&data).unwrap();
        assert!(check_private(&dir.path().join("missing")).is_ok());
    }
}
