//! The time security checks use: the wall clock, never earlier than the latest time
//! this node has seen.
//!
//! Expiry of certificates, capabilities, grants and invocations is decided against
//! [`now`]: the wall clock, raised to a high-water mark that only moves forward. The
//! mark is kept in the data directory ([`TIME_FILE`], a state file) and saved at least
//! every [`SAVE_EVERY`], so a clock rolled back, even across a restart, does not make
//! anything valid again that had expired by then (give or take one save interval),
//! and invocations stay refused as stale however the clock moves. A wall clock behind
//! the mark by more than [`SKEW`] is logged and audited.
//!
//! The cost of a clock that ran far ahead once: everything looks expired until the
//! real time catches up with the mark. The fix (stop the node, delete the file) is in
//! the log message and docs/user-guide.md.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hearth_protocol::statefile;
use hearth_protocol::time::UnixMillis;

/// The file in a data directory that keeps the high-water mark.
pub const TIME_FILE: &str = "time.hwm";
/// What its state file header calls it.
const TIME_KIND: &str = "time";
/// How often the mark is saved while the node runs.
pub const SAVE_EVERY: Duration = Duration::from_secs(60);
/// How far behind the mark the wall clock may be before it is reported as rolled back
/// (clocks that are stepped by NTP move by less).
pub const SKEW: Duration = Duration::from_secs(300);

/// The high-water mark of this process, in milliseconds since 1970: the latest time
/// any node in it has seen. Nodes in one process share the wall clock, so they share
/// the mark.
static MARK: AtomicU64 = AtomicU64::new(0);

/// The wall clock's reading.
fn wall() -> UnixMillis {
    UnixMillis::from_system_time(SystemTime::now())
}

/// The time security checks use: the wall clock, or the high-water mark when the wall
/// clock is behind it. Never goes back.
pub fn now() -> UnixMillis {
    let wall = wall().0;
    let before = MARK.fetch_max(wall, Ordering::AcqRel);
    UnixMillis(before.max(wall))
}

/// How far the wall clock is behind the mark, when it is behind by more than
/// [`SKEW`].
pub fn rolled_back() -> Option<Duration> {
    let behind = MARK.load(Ordering::Acquire).saturating_sub(wall().0);
    (Duration::from_millis(behind) > SKEW).then(|| Duration::from_millis(behind))
}

/// Raises the mark to what `data_dir` kept. A file that cannot be read stops the node:
/// starting without it would let a rolled-back clock re-validate what had expired.
pub fn load(data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join(TIME_FILE);
    let state = statefile::read_state(&path, TIME_KIND, 64).map_err(|err| {
        format!(
            "{err}. The node will not start without the latest time it has seen (it keeps \
             a clock set back from re-validating what had expired). Restore the file, or \
             delete it knowing the clock is right"
        )
    })?;
    if let Some(state) = state {
        let mark = std::str::from_utf8(&state.payload)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("{} is damaged: not a time", path.display()))?;
        MARK.fetch_max(mark, Ordering::AcqRel);
    }
    Ok(())
}

/// Keeps the mark in `data_dir`.
pub fn save(data_dir: &Path) -> std::io::Result<()> {
    let mark = now().0;
    statefile::write_state(
        &data_dir.join(TIME_FILE),
        TIME_KIND,
        1,
        mark.to_string().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    // Raises this process's mark an hour ahead: nextest runs it in a process of its own.
    fn the_mark_never_goes_back_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = now();
        assert!(now() >= first);
        save(dir.path()).unwrap();
        // A mark from the future (as a clock set back after it was kept would see it).
        let ahead = wall().0 + 3_600_000;
        statefile::write_state(
            &dir.path().join(TIME_FILE),
            TIME_KIND,
            1,
            ahead.to_string().as_bytes(),
        )
        .unwrap();
        load(dir.path()).unwrap();
        assert!(now().0 >= ahead);
        assert!(rolled_back().unwrap() > SKEW);
        // A damaged mark stops the node, naming the file.
        std::fs::write(dir.path().join(TIME_FILE), b"12").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains(TIME_FILE), "{err}");
    }
}
