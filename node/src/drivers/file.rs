//! The drivers file, `DATA_DIR/drivers.toml`: the node's configuration of its drivers,
//! one `[[driver]]` table each.
//!
//! The file is read entry by entry, so that one bad entry (a typo in a field name, an
//! unknown kind, broken TOML syntax) affects only itself: the other entries load and
//! run, and the bad one is kept aside as a [`Broken`] entry that `hearth driver ls`
//! shows as `failed` with the reason. When the node rewrites the file (`driver add`,
//! `driver rm`, an http-ingest keeping its port) a broken entry's text is written back
//! as it was, so a hand edit is never lost; `driver rm NAME` removes it.
//!
//! A fault outside the entries (an unknown top-level key such as `[[drivers]]`, a file
//! that cannot be read) cannot be kept aside that way: it is shown as one broken entry
//! named `drivers.toml`, and the node refuses to rewrite the file until it is fixed by
//! hand.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::Spec;

/// The drivers file in the data directory.
pub const DRIVERS_FILE: &str = "drivers.toml";

/// What the node writes at the top of the file.
const HEADER: &str = "\
# The drivers of this node, one [[driver]] table each. `hearth driver add` and
# `hearth driver rm` edit this file; edit it by hand while the node is stopped.
";

/// The name shown for a fault of the file as a whole.
const FILE_ENTRY: &str = "drivers.toml";

/// An entry of the drivers file that is not a usable driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// Its name when it has a usable one, else `drivers.toml[N]` (its place in the
    /// file, from 1) or `drivers.toml` for a fault of the whole file.
    pub name: String,
    /// Its `kind` as written, if any.
    pub kind: String,
    /// Its `store` as written, if any.
    pub store: String,
    /// Why it cannot be used, with the line where it starts when known.
    pub error: String,
    /// Its text, written back when the node rewrites the file; `None` for a fault of
    /// the file as a whole, which stops the node from rewriting it.
    raw: Option<String>,
}

impl Broken {
    fn whole_file(error: String) -> Self {
        Broken {
            name: FILE_ENTRY.into(),
            kind: String::new(),
            store: String::new(),
            error,
            raw: None,
        }
    }

    /// Is this a fault of the file as a whole rather than of one entry?
    pub fn is_whole_file(&self) -> bool {
        self.raw.is_none()
    }

    /// Does this entry stand for the same text as `other` (the same entry of the
    /// file, read at another time)?
    pub fn same_entry(&self, other: &Broken) -> bool {
        self.raw.is_some() && self.raw == other.raw
    }
}

/// The drivers file as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The entries that are drivers, in file order.
    pub specs: Vec<Spec>,
    /// The entries that are not.
    pub broken: Vec<Broken>,
}

/// Reads the drivers file (none: no drivers). Never fails: what cannot be read is
/// reported as [`Broken`] entries.
pub fn load(data_dir: &Path) -> Loaded {
    let path = data_dir.join(DRIVERS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Loaded::default(),
        Err(err) => Loaded {
            specs: Vec::new(),
            broken: vec![Broken::whole_file(format!("{}: {err}", path.display()))],
        },
    }
}

/// Writes the drivers file: the specs, then the broken entries' text as it was.
/// Refused while the file has a fault outside its entries.
pub fn save(data_dir: &Path, loaded: &Loaded) -> Result<(), String> {
    let path = data_dir.join(DRIVERS_FILE);
    if let Some(fault) = loaded.broken.iter().find(|b| b.raw.is_none()) {
        return Err(format!(
            "{} cannot be rewritten until it is fixed by hand (stop the node, edit it, start \
             the node): {}",
            path.display(),
            fault.error
        ));
    }
    let text = render(loaded)?;
    hearth_protocol::statefile::write_durable(&path, text.as_bytes())
        .map_err(|err| format!("{}: {err}", path.display()))
}

#[derive(Serialize)]
struct SpecsOut<'a> {
    driver: &'a [Spec],
}

#[derive(Serialize)]
struct EntryOut<'a> {
    driver: [&'a toml::Table; 1],
}

fn render(loaded: &Loaded) -> Result<String, String> {
    let mut text = HEADER.to_owned();
    if !loaded.specs.is_empty() {
        text.push('\n');
        text.push_str(
            &toml::to_string(&SpecsOut {
                driver: &loaded.specs,
            })
            .map_err(|err| err.to_string())?,
        );
    }
    for raw in loaded.broken.iter().filter_map(|b| b.raw.as_deref()) {
        text.push('\n');
        text.push_str(raw.trim_end_matches(['\n', '\r']));
        text.push('\n');
    }
    Ok(text)
}

/// Reads the text of a drivers file.
pub fn parse(text: &str) -> Loaded {
    let mut entries = Vec::new();
    let mut faults = Vec::new();
    match toml::from_str::<toml::Table>(text) {
        Ok(mut table) => {
            let lines = header_lines(text);
            match table.remove("driver") {
                None => {}
                Some(toml::Value::Array(items)) => {
                    let same_count = lines.len() == items.len();
                    for (i, item) in items.into_iter().enumerate() {
                        let line = if same_count {
                            lines.get(i).copied()
                        } else {
                            None
                        };
                        match item {
                            toml::Value::Table(t) => entries.push(Entry::Table { t, line }),
                            other => faults.push(format!(
                                "driver entry {} is a {}, not a table",
                                i + 1,
                                other.type_str()
                            )),
                        }
                    }
                }
                Some(other) => faults.push(format!(
                    "`driver` is a {}; each driver is a [[driver]] table",
                    other.type_str()
                )),
            }
            faults.extend(unknown_keys(&table));
        }
        Err(_) => {
            // Broken syntax somewhere: read each [[driver]] table on its own, so that
            // the fault stays with its entry.
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            let starts = header_lines(text);
            let first = starts.first().map_or(lines.len(), |l| l - 1);
            let preamble: String = lines.iter().take(first).copied().collect();
            match toml::from_str::<toml::Table>(&preamble) {
                Ok(mut table) => {
                    // `driver = []`, as an emptied file was once written, followed by
                    // tables added by hand: the tables are what counts.
                    if table
                        .get("driver")
                        .and_then(toml::Value::as_array)
                        .is_some_and(Vec::is_empty)
                    {
                        table.remove("driver");
                    }
                    faults.extend(unknown_keys(&table));
                }
                Err(err) => faults.push(toml_error(&err, &preamble, 1)),
            }
            for (i, start) in starts.iter().enumerate() {
                let end = starts.get(i + 1).map_or(lines.len(), |l| l - 1);
                let chunk: String = lines
                    .iter()
                    .skip(start - 1)
                    .take(end.saturating_sub(start - 1))
                    .copied()
                    .collect();
                entries.push(chunk_entry(chunk, *start));
            }
        }
    }
    let mut loaded = Loaded::default();
    for fault in faults {
        loaded
            .broken
            .push(Broken::whole_file(format!("{FILE_ENTRY}: {fault}")));
    }
    let mut names = BTreeSet::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let place = format!("{FILE_ENTRY}[{}]", i + 1);
        match entry.into_spec() {
            Ok(spec) if names.insert(spec.name.clone()) => loaded.specs.push(spec),
            Ok(spec) => loaded.broken.push(Broken {
                error: format!(
                    "a driver named {:?} comes earlier in {FILE_ENTRY}; names are unique",
                    spec.name
                ),
                raw: entry_text(&spec),
                name: place,
                kind: spec.kind.as_str().to_owned(),
                store: spec.store,
            }),
            Err(mut broken) => {
                if broken.name.is_empty() || !names.insert(broken.name.clone()) {
                    broken.name = place;
                }
                loaded.broken.push(broken);
            }
        }
    }
    loaded
}

/// One `[[driver]]` entry, read or not.
enum Entry {
    /// Read as TOML.
    Table {
        t: toml::Table,
        /// The line of its `[[driver]]` header, when known.
        line: Option<usize>,
    },
    /// Not TOML.
    Unreadable(Broken),
}

impl Entry {
    fn into_spec(self) -> Result<Spec, Broken> {
        let (t, line) = match self {
            Entry::Table { t, line } => (t, line),
            Entry::Unreadable(broken) => return Err(broken),
        };
        let text = |key: &str| {
            t.get(key)
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (name, kind, store) = (text("name"), text("kind"), text("store"));
        let raw = toml::to_string(&EntryOut { driver: [&t] }).ok();
        toml::Value::Table(t)
            .try_into::<Spec>()
            .map_err(|err| Broken {
                error: match line {
                    Some(line) => format!("{FILE_ENTRY} line {line}: {}", err.message()),
                    None => format!("{FILE_ENTRY}: {}", err.message()),
                },
                name,
                kind,
                store,
                raw,
            })
    }
}

/// An entry from its own text (which starts at `line` in the file).
fn chunk_entry(chunk: String, line: usize) -> Entry {
    match toml::from_str::<toml::Table>(&chunk) {
        Ok(mut table) => match table.remove("driver") {
            Some(toml::Value::Array(mut items)) if items.len() == 1 && table.is_empty() => {
                match items.pop() {
                    Some(toml::Value::Table(t)) => Entry::Table {
                        t,
                        line: Some(line),
                    },
                    _ => Entry::Unreadable(unreadable(
                        format!("{FILE_ENTRY} line {line}: not a driver table"),
                        chunk,
                    )),
                }
            }
            _ => Entry::Unreadable(unreadable(
                format!("{FILE_ENTRY} line {line}: not a driver table"),
                chunk,
            )),
        },
        Err(err) => {
            let error = toml_error(&err, &chunk, line);
            Entry::Unreadable(unreadable(error, chunk))
        }
    }
}

/// A broken entry whose text is not TOML: its name, kind and store recovered from the
/// lines that still read as `key = "value"`.
fn unreadable(error: String, chunk: String) -> Broken {
    let found = |key: &str| {
        chunk
            .lines()
            .filter_map(|l| toml::from_str::<toml::Table>(l).ok())
            .find_map(|t| t.get(key).and_then(toml::Value::as_str).map(str::to_owned))
            .unwrap_or_default()
    };
    Broken {
        name: found("name"),
        kind: found("kind"),
        store: found("store"),
        error,
        raw: Some(format!("{}\n", chunk.trim_end_matches(['\n', '\r']))),
    }
}

fn entry_text(spec: &Spec) -> Option<String> {
    toml::to_string(&SpecsOut {
        driver: std::slice::from_ref(spec),
    })
    .ok()
}

/// The lines (from 1) of the `[[driver]]` headers.
fn header_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.trim()
                .strip_prefix("[[driver]]")
                .is_some_and(|rest| rest.trim().is_empty() || rest.trim().starts_with('#'))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

fn unknown_keys(table: &toml::Table) -> impl Iterator<Item = String> + '_ {
    table.keys().map(|key| {
        format!("unknown key {key:?} at the top level; each driver is a [[driver]] table")
    })
}

/// A TOML syntax error in `text` (which starts at line `first` of the file), on one
/// line.
fn toml_error(err: &toml::de::Error, text: &str, first: usize) -> String {
    let message = err.message().trim().replace('\n', "; ");
    match err.span().and_then(|span| text.get(..span.start)) {
        Some(before) => {
            let line = first + before.matches('\n').count();
            format!("{FILE_ENTRY} line {line}: {message}")
        }
        None => format!("{FILE_ENTRY}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::drivers::Kind;

    const GOOD: &str = "[[driver]]\nname = \"os-monitor\"\nkind = \"os-monitor\"\nstore = \"os-monitor\"\ninterval_secs = 5\n";

    #[test]
    fn a_good_file_loads_and_renders_back() {
        let loaded = parse(GOOD);
        assert!(loaded.broken.is_empty(), "{loaded:?}");
        assert_eq!(loaded.specs.len(), 1);
        assert_eq!(loaded.specs[0].kind, Kind::OsMonitor);
        assert_eq!(loaded.specs[0].interval_secs, Some(5));
        assert_eq!(parse(&render(&loaded).unwrap()), loaded);
        // No drivers: no `driver = []` that a later [[driver]] table would clash with.
        let empty = render(&Loaded::default()).unwrap();
        assert!(!empty.contains("driver ="), "{empty}");
        assert_eq!(parse(&empty), Loaded::default());
    }

    #[test]
    fn an_emptied_list_followed_by_tables_added_by_hand_loads() {
        let loaded = parse(&format!("driver = []\n\n{GOOD}"));
        assert!(loaded.broken.is_empty(), "{loaded:?}");
        assert_eq!(loaded.specs.len(), 1);
    }

    #[test]
    fn a_bad_entry_affects_only_itself() {
        let text = format!(
            "{GOOD}\n[[driver]]\nname = \"typo\"\nkind = \"mqtt\"\nstore = \"mqtt\"\ncolour = \"red\"\n\n\
             [[driver]]\nkind = \"toaster\"\nstore = \"t\"\nname = \"toast\"\n\n\
             [[driver]]\nkind = \"os-monitor\"\nstore = \"x\"\n\n\
             [[driver]]\nname = \"os-monitor\"\nkind = \"os-monitor\"\nstore = \"y\"\n"
        );
        let loaded = parse(&text);
        assert_eq!(loaded.specs.len(), 1, "{loaded:?}");
        let names: Vec<&str> = loaded.broken.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            ["typo", "toast", "drivers.toml[4]", "drivers.toml[5]"]
        );
        let typo = &loaded.broken[0];
        assert!(typo.error.starts_with("drivers.toml line 7:"), "{typo:?}");
        assert!(typo.error.contains("colour"), "{typo:?}");
        assert_eq!((typo.kind.as_str(), typo.store.as_str()), ("mqtt", "mqtt"));
        assert!(loaded.broken[1].error.contains("toaster"));
        assert!(loaded.broken[2].error.contains("name"));
        assert!(loaded.broken[3].error.contains("comes earlier"));
        // Rewritten, the file keeps every broken entry, and reads the same.
        let again = parse(&render(&loaded).unwrap());
        assert_eq!(again.specs, loaded.specs);
        assert_eq!(again.broken.len(), 4);
        assert!(
            again
                .broken
                .iter()
                .zip(&loaded.broken)
                .all(|(a, b)| a.same_entry(b))
        );
    }

    #[test]
    fn broken_syntax_stays_with_its_entry() {
        let text = format!(
            "# mine\n\n{GOOD}\n[[driver]]\nname = \"half\"\nkind = \"mqtt\"\nbroker = \n\n\
             [[driver]] # the second\nname = \"fine\"\nkind = \"http-ingest\"\nstore = \"location\"\n\
             user = \"u\"\npassword = \"0123456789abcdef\"\n"
        );
        let loaded = parse(&text);
        let names: Vec<&str> = loaded.specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["os-monitor", "fine"]);
        assert_eq!(loaded.broken.len(), 1, "{loaded:?}");
        let half = &loaded.broken[0];
        assert_eq!((half.name.as_str(), half.kind.as_str()), ("half", "mqtt"));
        assert!(half.error.starts_with("drivers.toml line 12:"), "{half:?}");
        assert!(!half.error.contains('\n'));
        // Kept as written when the file is rewritten.
        let rewritten = render(&loaded).unwrap();
        assert!(rewritten.contains("name = \"half\"\nkind = \"mqtt\"\nbroker = \n"));
        let again = parse(&rewritten);
        assert_eq!(again.specs, loaded.specs);
        assert!(again.broken[0].same_entry(half));
    }

    #[test]
    fn a_fault_outside_the_entries_blocks_rewriting() {
        for text in [
            format!("{GOOD}\n[[drivers]]\nname = \"x\"\n"),
            format!("title = \"mine\"\n{GOOD}"),
            format!("title = \n{GOOD}"),
            "driver = 3\n".to_owned(),
        ] {
            let loaded = parse(&text);
            assert!(
                loaded.broken.iter().any(|b| b.name == "drivers.toml"),
                "{text}: {loaded:?}"
            );
            let dir = tempfile::tempdir().unwrap();
            let err = save(dir.path(), &loaded).unwrap_err();
            assert!(err.contains("fixed by hand"), "{err}");
        }
        // The good entry still loads beside a fault outside it.
        assert_eq!(parse(&format!("title = \n{GOOD}")).specs.len(), 1);
    }

    #[test]
    fn an_unreadable_file_is_one_broken_entry() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Loaded::default());
        std::fs::create_dir(dir.path().join(DRIVERS_FILE)).unwrap();
        let loaded = load(dir.path());
        assert_eq!(loaded.broken.len(), 1);
        assert_eq!(loaded.broken[0].name, "drivers.toml");
    }
}
