//! Refusals counted per source and window, so that a flood of refused requests writes
//! a bounded number of audit entries: the first refusal from a source is recorded at
//! once (the first of each kind, up to [`MAX_KINDS`] kinds, with [`Tally::refused_as`]),
//! the rest of its window are counted and recorded as one entry when the window ends
//! ("refused 240 more … in the last minute").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The window refusals from one source are counted over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources counted apart; refusals from any further ones in a window are counted
/// together under [`OTHERS`].
pub const MAX_SOURCES: usize = 1024;
/// The source refusals are counted under once [`MAX_SOURCES`] are being counted.
pub const OTHERS: &str = "other sources";
/// Kinds of refusal recorded apart from one source in one window.
pub const MAX_KINDS: usize = 8;

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// The kinds of refusal recorded in this window.
    kinds: BTreeSet<String>,
    /// Refusals not recorded.
    more: u64,
}

/// Refusals per source, in windows of [`WINDOW`].
#[derive(Debug, Default)]
pub struct Tally {
    windows: BTreeMap<String, Window>,
}

/// A summary due: `count` refusals from `source` not yet recorded, over `over`.
#[derive(Debug, PartialEq, Eq)]
pub struct Due {
    /// Where they came from.
    pub source: String,
    /// How many.
    pub count: u64,
    /// The time they were counted over.
    pub over: Duration,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a refusal from `source` at `now`; `true` when it is the first of its
    /// window and is to be recorded now.
    pub fn refused(&mut self, source: &str, now: Instant) -> bool {
        self.refused_as(source, "", now)
    }

    /// Counts a refusal of `kind` from `source` at `now`; `true` when it is the first
    /// of its kind in the source's window (and the window has recorded fewer than
    /// [`MAX_KINDS`] kinds) and is to be recorded now.
    pub fn refused_as(&mut self, source: &str, kind: &str, now: Instant) -> bool {
        let source = if self.windows.len() >= MAX_SOURCES && !self.windows.contains_key(source) {
            OTHERS
        } else {
            source
        };
        let window = self
            .windows
            .entry(source.to_owned())
            .or_insert_with(|| Window {
                opened: now,
                kinds: BTreeSet::new(),
                more: 0,
            });
        if window.kinds.len() < MAX_KINDS && window.kinds.insert(kind.to_owned()) {
            return true;
        }
        window.more += 1;
        false
    }

    /// Closes the windows that have ended by `now`, returning the refusals they
    /// counted beyond the first.
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let ended: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.opened) >= WINDOW)
            .map(|(source, _)| source.clone())
            .collect();
        let mut out = Vec::new();
        for source in ended {
            if let Some(window) = self.windows.remove(&source)
                && window.more > 0
            {
                out.push(Due {
                    source,
                    count: window.more,
                    over: now.saturating_duration_since(window.opened),
                });
            }
        }
        out
    }

    /// Closes every window (at shutdown).
    pub fn drain(&mut self, now: Instant) -> Vec<Due> {
        std::mem::take(&mut self.windows)
            .into_iter()
            .filter(|(_, w)| w.more > 0)
            .map(|(source, w)| Due {
                source,
                count: w.more,
                over: now.saturating_duration_since(w.opened),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_recorded_once_and_summed_when_its_window_ends() {
        let start = Instant::now();
        let mut tally = Tally::new();
        assert!(tally.refused("10.0.0.1", start));
        for i in 0..240 {
            assert!(!tally.refused("10.0.0.1", start + Duration::from_millis(i)));
        }
        assert!(tally.refused("10.0.0.2", start));
        assert!(tally.due(start + Duration::from_secs(59)).is_empty());
        let due = tally.due(start + WINDOW);
        assert_eq!(
            due,
            vec![Due {
                source: "10.0.0.1".into(),
                count: 240,
                over: WINDOW
            }]
        );
        // A new window opens with the next refusal.
        assert!(tally.refused("10.0.0.1", start + WINDOW));
    }

    #[test]
    fn sources_beyond_the_limit_are_counted_together() {
        let now = Instant::now();
        let mut tally = Tally::new();
        for i in 0..MAX_SOURCES {
            assert!(tally.refused(&i.to_string(), now));
        }
        assert!(tally.refused("one more", now));
        assert!(!tally.refused("and another", now));
        assert!(!tally.refused("one more", now));
        let due = tally.drain(now);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].source, OTHERS);
        assert_eq!(due[0].count, 2);
    }

    #[test]
    fn each_kind_is_recorded_once_a_window_up_to_a_limit() {
        let now = Instant::now();
        let mut tally = Tally::new();
        assert!(tally.refused_as("10.0.0.1", "expired ticket", now));
        assert!(tally.refused_as("10.0.0.1", "wrong ticket secret", now));
        assert!(!tally.refused_as("10.0.0.1", "wrong ticket secret", now));
        for i in 0..20 {
            tally.refused_as("10.0.0.1", &format!("reason {i}"), now);
        }
        let due = tally.due(now + WINDOW);
        assert_eq!(due.len(), 1);
        // Two kinds, six more up to the limit, recorded; the rest counted.
        assert_eq!(due[0].count, 1 + 20 - 6);
    }
}
