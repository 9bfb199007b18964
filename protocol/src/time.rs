//! Wall-clock instants as plain data. This crate never reads a clock: callers pass `now`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The instant `SystemTime` names (clamped at the epoch).
    pub fn from_system_time(time: SystemTime) -> Self {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self(ms)
    }

    /// The same instant as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_millis(self.0))
            .unwrap_or(UNIX_EPOCH)
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Parses RFC 3339 (`2026-11-22T10:00:00Z`) or a bare integer of milliseconds.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(ms) = text.parse::<u64>() {
            return Some(Self(ms));
        }
        humantime::parse_rfc3339_weak(text)
            .ok()
            .map(Self::from_system_time)
    }
}

impl fmt::Display for UnixMillis {
    /// RFC 3339 in UTC with seconds, e.g. `2026-11-22T10:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = UNIX_EPOCH.checked_add(Duration::from_secs(self.0 / 1000));
        match secs {
            Some(t) if self.0 < 253_402_300_800_000 => {
                write!(f, "{}", humantime::format_rfc3339_seconds(t))
            }
            _ => write!(f, "{}ms", self.0),
        }
    }
}
