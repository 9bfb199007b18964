//! Read access to stores: readings of timeseries stores, aggregates the node computes,
//! kv stores and doc stores.
//!
//! The node checks every call against the computation's capability: a store it does
//! not grant is refused, a window is narrowed to the time range it grants, and a
//! capability that grants only aggregates refuses [`read`]. Refusals come back as the
//! `Err` message, which a computation usually returns as its own error with `?`.
//!
//! ```no_run
//! use hearth_sdk::{Window, stores};
//!
//! # fn f() -> Result<(), String> {
//! let mut total = 0.0;
//! for reading in stores::read("os-monitor", Some(&["load1"]), Window::since(1_700_000_000_000))? {
//!     total += reading?.value["load1"].as_f64().unwrap_or(0.0);
//! }
//! # Ok(())
//! # }
//! ```

use serde_json::Value;

use crate::bindings::hearth::compute::stores as host;

/// How many readings [`Readings`] asks the node for at a time.
pub const BATCH: u32 = 256;

/// A time window in milliseconds since the Unix epoch: `start` inclusive, `end`
/// exclusive, `None` unbounded.
///
/// ```
/// use hearth_sdk::Window;
///
/// let day = Window::between(86_400_000, 2 * 86_400_000);
/// assert!(day.contains(86_400_000) && !day.contains(2 * 86_400_000));
/// assert_eq!(Window::since(10).intersect(Window::until(20)), Window::between(10, 20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Window {
    /// First instant included, or unbounded.
    pub start: Option<u64>,
    /// First instant excluded, or unbounded.
    pub end: Option<u64>,
}

impl Window {
    /// Every reading the capability lets the computation see.
    pub const fn all() -> Self {
        Self::new(None, None)
    }

    /// Readings with `start <= ts < end`.
    pub const fn between(start: u64, end: u64) -> Self {
        Self::new(Some(start), Some(end))
    }

    /// Readings with `start <= ts`.
    pub const fn since(start: u64) -> Self {
        Self::new(Some(start), None)
    }

    /// Readings with `ts < end`.
    pub const fn until(end: u64) -> Self {
        Self::new(None, Some(end))
    }

    /// The window from optional bounds, as parameters often give them.
    pub const fn new(start: Option<u64>, end: Option<u64>) -> Self {
        Self { start, end }
    }

    /// Whether `ts` lies in the window.
    pub fn contains(&self, ts: u64) -> bool {
        self.start.is_none_or(|s| s <= ts) && self.end.is_none_or(|e| ts < e)
    }

    /// Whether no instant lies in the window.
    pub fn is_empty(&self) -> bool {
        match (self.start, self.end) {
            (_, Some(0)) => true,
            (Some(s), Some(e)) => s >= e,
            _ => false,
        }
    }

    /// The instants in both windows.
    pub fn intersect(self, other: Window) -> Window {
        let start = match (self.start, other.start) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let end = match (self.end, other.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Window { start, end }
    }
}

impl From<Window> for host::Window {
    fn from(w: Window) -> Self {
        host::Window {
            start: w.start,
            end: w.end,
        }
    }
}

/// An aggregate the node evaluates over a numeric field of the readings in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    /// How many readings have a number in the field.
    Count,
    /// Their sum.
    Sum,
    /// The smallest.
    Min,
    /// The largest.
    Max,
    /// The arithmetic mean.
    Mean,
    /// The median.
    Median,
    /// The standard deviation.
    Sd,
}

impl From<Aggregate> for host::AggregateOp {
    fn from(op: Aggregate) -> Self {
        match op {
            Aggregate::Count => host::AggregateOp::Count,
            Aggregate::Sum => host::AggregateOp::Sum,
            Aggregate::Min => host::AggregateOp::Min,
            Aggregate::Max => host::AggregateOp::Max,
            Aggregate::Mean => host::AggregateOp::Mean,
            Aggregate::Median => host::AggregateOp::Median,
            Aggregate::Sd => host::AggregateOp::Sd,
        }
    }
}

/// One reading of a timeseries store.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// Its value, keeping only the fields asked for.
    pub value: Value,
}

/// The readings of a store in time order, fetched from the node [`BATCH`] at a time.
///
/// Yields `Err` once, and then ends, when the node refuses a batch or a value is not
/// JSON.
#[derive(Debug)]
pub struct Readings {
    cursor: Option<host::Cursor>,
    batch: std::vec::IntoIter<host::Reading>,
}

impl Iterator for Readings {
    type Item = Result<Reading, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(raw) = self.batch.next() {
                let value = serde_json::from_str(&raw.value).map_err(|e| {
                    format!(
                        "the reading at {} is not JSON: {e}",
                        crate::time::format_utc(raw.ts)
                    )
                });
                if value.is_err() {
                    self.cursor = None;
                    self.batch = Vec::new().into_iter();
                }
                return Some(value.map(|value| Reading { ts: raw.ts, value }));
            }
            let cursor = self.cursor.as_ref()?;
            match cursor.next(BATCH) {
                Ok(batch) if !batch.is_empty() => self.batch = batch.into_iter(),
                Ok(_) => {
                    self.cursor = None;
                    return None;
                }
                Err(e) => {
                    self.cursor = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl std::iter::FusedIterator for Readings {}

/// The readings of timeseries store `store` in `window`, in time order. With
/// `fields`, each value keeps only those top-level fields; a capability that limits
/// fields requires naming them. Refused when the capability grants only aggregates.
pub fn read(store: &str, fields: Option<&[&str]>, window: Window) -> Result<Readings, String> {
    let fields: Option<Vec<String>> = fields.map(|f| f.iter().map(|&s| s.to_owned()).collect());
    let cursor = host::read(store, fields.as_deref(), window.into())?;
    Ok(Readings {
        cursor: Some(cursor),
        batch: Vec::new().into_iter(),
    })
}

/// `op` over the number at dotted path `field` inside each value (the value itself
/// when `None`) of the readings of `store` in `window`; `None` when no reading has a
/// number there.
pub fn aggregate(
    store: &str,
    op: Aggregate,
    field: Option<&str>,
    window: Window,
) -> Result<Option<f64>, String> {
    host::aggregate(store, op.into(), field, window.into())
}

/// The timestamps of the earliest and the latest reading of `store` in `window`, if
/// any.
pub fn span(store: &str, window: Window) -> Result<Option<(u64, u64)>, String> {
    host::span(store, window.into())
}

/// The value at `key` of kv store `store`.
pub fn kv_get(store: &str, key: &str) -> Result<Option<Value>, String> {
    host::kv_get(store, key)?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| format!("the value at {key:?} in store {store:?} is not JSON: {e}"))
        })
        .transpose()
}

/// The keys of kv store `store`, sorted.
pub fn kv_keys(store: &str) -> Result<Vec<String>, String> {
    host::kv_keys(store)
}

/// The whole of doc store `store`.
pub fn doc_read(store: &str) -> Result<Value, String> {
    let text = host::doc_read(store)?;
    serde_json::from_str(&text).map_err(|e| format!("the document {store:?} is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn windows_are_half_open() {
        let w = Window::between(10, 20);
        assert!(!w.contains(9));
        assert!(w.contains(10));
        assert!(w.contains(19));
        assert!(!w.contains(20));
        assert!(Window::all().contains(0));
        assert!(Window::all().contains(u64::MAX));
        assert!(Window::since(5).contains(u64::MAX));
        assert!(!Window::until(5).contains(5));
    }

    #[test]
    fn empty_windows() {
        assert!(Window::between(5, 5).is_empty());
        assert!(Window::between(6, 5).is_empty());
        assert!(!Window::between(5, 6).is_empty());
        assert!(!Window::all().is_empty());
        assert!(Window::until(0).is_empty());
        assert!(!Window::until(1).is_empty());
    }

    #[test]
    fn intersection_keeps_the_tighter_bounds() {
        assert_eq!(Window::all().intersect(Window::all()), Window::all());
        assert_eq!(
            Window::between(0, 100).intersect(Window::between(50, 200)),
            Window::between(50, 100)
        );
        assert_eq!(Window::since(7).intersect(Window::all()), Window::since(7));
        assert!(
            Window::between(0, 10)
                .intersect(Window::between(20, 30))
                .is_empty()
        );
    }
}
