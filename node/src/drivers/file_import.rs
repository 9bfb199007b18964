//! file-import: a CSV file (with a header row) or a JSON-lines file into a timeseries
//! store.
//!
//! - The timestamp comes from the column (CSV) or field (JSON) named by `ts_column`,
//!   else the first of `ts`, `timestamp`, `time`: integer milliseconds, seconds (values
//!   below 10^11), fractional seconds, or RFC 3339 text. The other columns make the
//!   value: numbers as numbers, `true`/`false` as booleans, empty as null, the rest as
//!   text. A JSON line `{ts, value}` is that record; any other object is the value
//!   without its timestamp field.
//! - Malformed lines: `on_error = "refuse"` (the default) checks the whole file first
//!   and imports nothing if any line is malformed, naming the first; `"skip"` imports
//!   the rest and reports the malformed lines by number.
//! - Idempotent and resumable: progress is kept per store and file content (SHA-256) in
//!   `DATA_DIR/imports.json` after every batch. Importing the same file again adds
//!   nothing; an interrupted import continues where it stopped, and the batch in flight
//!   when it stopped is compared with the store so nothing is added twice.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::{Context, Outcome};
use hearth_stores::Reading;
use hearth_stores::query::Selection;

/// Readings per append.
const BATCH: usize = 10_000;
/// The progress file.
pub const IMPORTS_FILE: &str = "imports.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    file: PathBuf,
    /// Data records read (imported, skipped or already there).
    done: u64,
    imported: u64,
    skipped: u64,
    complete: bool,
}

type Imports = BTreeMap<String, Progress>;

/// What the import progress state file's header calls it.
const IMPORTS_KIND: &str = "imports";
/// The largest import progress file read.
const MAX_IMPORTS_BYTES: u64 = 16 << 20;

/// The progress of every import. One that cannot be read stops the import (an import
/// started again from the first line would add every reading twice).
fn load_imports(path: &Path) -> Result<Imports, String> {
    let state = hearth_protocol::statefile::read_state(path, IMPORTS_KIND, MAX_IMPORTS_BYTES)
        .map_err(|err| {
            format!("{err}; restore it, or delete it to import every file again from its start")
        })?;
    match state {
        Some(state) => serde_json::from_slice(&state.payload)
            .map_err(|err| format!("{} is damaged: {err}", path.display())),
        None => Ok(Imports::default()),
    }
}

fn save_imports(path: &Path, imports: &Imports) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(imports).map_err(|err| err.to_string())?;
    hearth_protocol::statefile::write_state(path, IMPORTS_KIND, 1, &bytes)
        .map_err(|err| format!("{}: {err}", path.display()))
}

/// The file's SHA-256 (hex) and its number of lines.
fn fingerprint(path: &Path) -> Result<(String, u64), String> {
    let file = std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut lines = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|err| format!("{}: {err}", path.display()))?;
        let Some(chunk) = buf.get(..n) else { break };
        if chunk.is_empty() {
            break;
        }
        hasher.update(chunk);
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok((hex::encode(hasher.finalize()), lines))
}

/// A timestamp in milliseconds from a field.
pub fn parse_ts(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                Some(if i < 100_000_000_000 { i * 1000 } else { i })
            } else {
                let f = n.as_f64()?;
                if !(0.0..1e15).contains(&f) {
                    return None;
                }
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let ms = if f < 1e11 {
                    (f * 1000.0).round()
                } else {
                    f.round()
                } as u64;
                Some(ms)
            }
        }
        Value::String(text) => {
            let text = text.trim();
            if let Ok(n) = text.parse::<u64>() {
                return parse_ts(&Value::from(n));
            }
            if let Ok(f) = text.parse::<f64>() {
                return serde_json::Number::from_f64(f).and_then(|n| parse_ts(&Value::Number(n)));
            }
            let time = humantime::parse_rfc3339_weak(text).ok()?;
            Some(hearth_protocol::time::UnixMillis::from_system_time(time).0)
        }
        _ => None,
    }
}

fn cell(text: &str) -> Value {
    let text = text.trim();
    if text.is_empty() {
        return Value::Null;
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text.to_owned()),
    }
}

const TS_NAMES: [&str; 3] = ["ts", "timestamp", "time"];

fn ts_key<'a>(
    wanted: Option<&'a str>,
    keys: impl Iterator<Item = &'a str> + Clone,
) -> Option<&'a str> {
    match wanted {
        Some(name) => keys.clone().find(|k| *k == name),
        None => TS_NAMES.iter().find_map(|n| keys.clone().find(|k| k == n)),
    }
}

/// One data record: its line number and what it gave.
type Parsed = (u64, Result<Reading, String>);

/// A reading the store will take, or why not.
fn fits(parsed: Result<Reading, String>) -> Result<Reading, String> {
    let reading = parsed?;
    let size = reading.value.to_string().len();
    if size > hearth_stores::MAX_READING_BYTES {
        return Err(format!(
            "the value is {size} bytes; a reading holds at most {}",
            hearth_stores::MAX_READING_BYTES
        ));
    }
    Ok(reading)
}

/// Reads every data record of the file, in order, calling `each` until it returns false.
fn records(
    path: &Path,
    ts_column: Option<&str>,
    each: impl FnMut(Parsed) -> bool,
) -> Result<(), String> {
    let mut each = each;
    read_records(path, ts_column, |(line, parsed)| each((line, fits(parsed))))
}

fn read_records(
    path: &Path,
    ts_column: Option<&str>,
    mut each: impl FnMut(Parsed) -> bool,
) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let json = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson" | "json")
    );
    if json {
        for (n, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
            let line = line.map_err(|err| format!("{}: {err}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let number = n as u64 + 1;
            if !each((number, json_record(&line, ts_column))) {
                break;
            }
        }
        return Ok(());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(BufReader::with_capacity(1 << 20, file));
    let headers = reader
        .headers()
        .map_err(|err| format!("{}: the header row: {err}", path.display()))?
        .clone();
    let names: Vec<&str> = headers.iter().collect();
    let Some(ts_name) = ts_key(ts_column, names.iter().copied()) else {
        return Err(match ts_column {
            Some(name) => format!("the header has no column {name:?}"),
            None => {
                "the header has no ts, timestamp or time column; name one with --ts-column".into()
            }
        });
    };
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line() + 1;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, csv::Position::line);
                let mut value = Map::new();
                let mut ts = None;
                for (name, field) in names.iter().zip(record.iter()) {
                    if *name == ts_name {
                        ts = Some(field);
                    } else {
                        value.insert((*name).to_owned(), cell(field));
                    }
                }
                let parsed = match ts.and_then(|t| parse_ts(&Value::String(t.to_owned()))) {
                    Some(ts) => Ok(Reading::new(ts, Value::Object(value))),
                    None => Err(format!(
                        "{ts_name} {:?} is not a time",
                        ts.unwrap_or_default()
                    )),
                };
                if !each((line, parsed)) {
                    break;
                }
            }
            Err(err) => {
                let line = err.position().map_or(line, csv::Position::line);
                let reason = match err.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("{len} fields where the header has {expected_len}"),
                    _ => err.to_string(),
                };
                if !each((line, Err(reason))) {
                    break;
                }
                // A record with the wrong number of fields: go on with the next.
                if !matches!(err.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn json_record(line: &str, ts_column: Option<&str>) -> Result<Reading, String> {
    let value: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
    let Value::Object(mut map) = value else {
        return Err("not a JSON object".into());
    };
    if map.len() == 2
        && let (Some(ts), Some(value)) = (map.get("ts").and_then(parse_ts_ref), map.get("value"))
    {
        return Ok(Reading::new(ts, value.clone()));
    }
    let name = ts_key(ts_column, map.keys().map(String::as_str))
        .map(str::to_owned)
        .ok_or("no timestamp field")?;
    let ts = map
        .remove(&name)
        .as_ref()
        .and_then(parse_ts)
        .ok_or_else(|| format!("{name} is not a time"))?;
    Ok(Reading::new(ts, Value::Object(map)))
}

fn parse_ts_ref(value: &Value) -> Option<u64> {
    parse_ts(value)
}

/// Runs the import to its end.
pub async fn run(ctx: Context) -> Result<Outcome, String> {
    tokio::task::spawn_blocking(move || import(&ctx))
        .await
        .map_err(|err| err.to_string())?
}

fn import(ctx: &Context) -> Result<Outcome, String> {
    let path = ctx.spec.file.clone().ok_or("no file to import")?;
    let ts_column = ctx.spec.ts_column.clone();
    let skip = ctx.spec.on_error.as_deref() == Some("skip");
    let (hash, lines) = fingerprint(&path)?;
    let imports_path = ctx.node.config.data_dir.join(IMPORTS_FILE);
    let key = format!("{}:{hash}", ctx.store.meta().id);
    let mut imports = load_imports(&imports_path)?;
    let mut progress = imports.get(&key).cloned().unwrap_or_else(|| Progress {
        file: path.clone(),
        ..Progress::default()
    });
    let total = lines.saturating_sub(u64::from(!matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson" | "json")
    )));
    if progress.complete {
        return Ok(Outcome::Done(format!(
            "{} was imported before ({} records): nothing added",
            path.display(),
            progress.imported
        )));
    }
    ctx.running(None);
    ctx.set(|s| s.progress = Some((progress.done, total)));
    if !skip && progress.done == 0 {
        // Refuse: look at every line before writing any.
        let mut first_error = None;
        records(&path, ts_column.as_deref(), |(line, parsed)| match parsed {
            Ok(_) => !*ctx.stop.borrow(),
            Err(reason) => {
                first_error = Some(format!("line {line}: {reason}"));
                false
            }
        })?;
        if let Some(error) = first_error {
            return Ok(Outcome::Refused(format!(
                "{error}; nothing was imported (use --on-error skip to import the other lines)"
            )));
        }
    }
    let mut batch: Vec<Reading> = Vec::with_capacity(BATCH);
    let mut seen = 0u64;
    let mut errors: Vec<String> = Vec::new();
    let mut failure = None;
    let mut resumed = progress.done > 0;
    let mut flush = |batch: &mut Vec<Reading>,
                     progress: &mut Progress,
                     seen: u64,
                     resumed: &mut bool|
     -> Result<(), String> {
        let mut already = 0;
        if *resumed {
            // The batch in flight when the last run stopped may be stored already:
            // those readings were imported then, and are not added again.
            already = dedupe_against_store(ctx, batch)?;
            // More than one batch may be stored beyond the saved progress (a kill
            // between a write and the progress file's update, after an earlier one
            // was rolled back): keep checking until a batch is new.
            *resumed = already > 0;
        }
        let count = batch.len() as u64;
        if count > 0 {
            ctx.store
                .append(std::mem::take(batch))
                .map_err(|err| format!("cannot write: {err}"))?;
            ctx.wrote(count);
        }
        progress.imported += count + already;
        progress.done = seen;
        imports.insert(key.clone(), progress.clone());
        save_imports(&imports_path, &imports)?;
        ctx.set(|s| s.progress = Some((seen, total)));
        Ok(())
    };
    let start_at = progress.done;
    records(&path, ts_column.as_deref(), |(line, parsed)| {
        seen += 1;
        if seen <= start_at {
            return true;
        }
        match parsed {
            Ok(reading) => batch.push(reading),
            Err(reason) => {
                progress.skipped += 1;
                if errors.len() < 5 {
                    errors.push(format!("line {line}: {reason}"));
                }
            }
        }
        if batch.len() >= BATCH {
            if let Err(err) = flush(&mut batch, &mut progress, seen, &mut resumed) {
                failure = Some(err);
                return false;
            }
            if *ctx.stop.borrow() {
                return false;
            }
        }
        true
    })?;
    if let Some(err) = failure {
        return Err(err);
    }
    if *ctx.stop.borrow() {
        return Ok(Outcome::Stopped);
    }
    flush(&mut batch, &mut progress, seen, &mut resumed)?;
    progress.complete = true;
    imports.insert(key, progress.clone());
    save_imports(&imports_path, &imports)?;
    let mut detail = format!(
        "imported {} records from {}",
        progress.imported,
        path.display()
    );
    if progress.skipped > 0 {
        detail.push_str(&format!(
            "; skipped {} malformed lines ({})",
            progress.skipped,
            errors.join("; ")
        ));
    }
    Ok(Outcome::Done(detail))
}

/// Drops from `batch` the readings the store already holds; returns how many.
fn dedupe_against_store(ctx: &Context, batch: &mut Vec<Reading>) -> Result<u64, String> {
    let (Some(min), Some(max)) = (
        batch.iter().map(|r| r.ts).min(),
        batch.iter().map(|r| r.ts).max(),
    ) else {
        return Ok(0);
    };
    let before = batch.len();
    let existing = ctx
        .store
        .read(Selection::Range(min, max.saturating_add(1)), None)
        .map_err(|err| err.to_string())?;
    let mut have: BTreeMap<u64, Vec<std::sync::Arc<Value>>> = BTreeMap::new();
    for r in existing {
        have.entry(r.ts).or_default().push(r.value);
    }
    batch.retain(|r| {
        let Some(values) = have.get_mut(&r.ts) else {
            return true;
        };
        match values.iter().position(|v| **v == *r.value) {
            Some(i) => {
                values.swap_remove(i);
                false
            }
            None => true,
        }
    });
    Ok((before - batch.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_and_cells() {
        assert_eq!(parse_ts(&json!(1_700_000_000)), Some(1_700_000_000_000));
        assert_eq!(
            parse_ts(&json!(1_700_000_000_123u64)),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_ts(&json!(1_700_000_000.5)), Some(1_700_000_000_500));
        assert_eq!(
            parse_ts(&json!("2023-11-14T22:13:20Z")),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_ts(&json!("yesterday")), None);
        assert_eq!(cell("21.5"), json!(21.5));
        assert_eq!(cell("7"), json!(7));
        assert_eq!(cell(""), Value::Null);
        assert_eq!(cell("kitchen"), json!("kitchen"));
    }
}
