//! `hearth store …`: kv, doc and timeseries stores on the running node.

use std::io::BufRead as _;

use hearth_node::api::types as api;
use hearth_protocol::time::UnixMillis;
use serde_json::Value;

use super::now;
use crate::client::{Client, segment};
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// Which readings (at most one of these; all readings when none is given).
#[derive(Debug, Clone, clap::Args)]
#[group(multiple = false)]
pub(crate) struct SelectArgs {
    /// The newest reading.
    #[arg(long)]
    latest: bool,
    /// The oldest reading.
    #[arg(long)]
    earliest: bool,
    /// The newest N readings.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// The oldest N readings.
    #[arg(long, value_name = "N")]
    first: Option<usize>,
    /// Readings from T on (RFC 3339, milliseconds, or a duration such as 1h meaning that long ago).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    since: Option<u64>,
    /// Readings with T1 <= ts < T2.
    #[arg(long, num_args = 2, value_names = ["T1", "T2"], value_parser = parse_time)]
    range: Option<Vec<u64>>,
}

impl SelectArgs {
    fn query(&self) -> api::ReadQuery {
        let mut q = api::ReadQuery::default();
        let select = |name: &str| Some(name.to_owned());
        if self.latest {
            q.select = select("latest");
        } else if self.earliest {
            q.select = select("earliest");
        } else if let Some(n) = self.last {
            q.select = select("last");
            q.n = Some(n);
        } else if let Some(n) = self.first {
            q.select = select("first");
            q.n = Some(n);
        } else if let Some(t) = self.since {
            q.select = select("since");
            q.from = Some(t);
        } else if let Some(range) = &self.range {
            q.select = select("range");
            q.from = range.first().copied();
            q.to = range.get(1).copied();
        }
        q
    }
}

fn parse_time(text: &str) -> std::result::Result<u64, String> {
    if let Some(t) = UnixMillis::parse(text) {
        return Ok(t.0);
    }
    humantime::parse_duration(text)
        .map(|d| now().saturating_sub(d).0)
        .map_err(|_| {
            "expected RFC 3339 (2026-11-22T10:00:00Z), milliseconds, or a duration such as 1h"
                .into()
        })
}

/// A retention: a duration, or none.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keep {
    /// Keep readings this long.
    For(std::time::Duration),
    /// Keep every reading.
    Everything,
}

fn parse_keep(text: &str) -> std::result::Result<Keep, String> {
    if text == "none" {
        return Ok(Keep::Everything);
    }
    crate::cmd::parse_duration(text).map(Keep::For)
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A retention in ms, in words (`90days`, `-` for none).
fn keep_text(keep: Option<u64>) -> String {
    keep.map_or_else(
        || "-".to_owned(),
        |ms| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string(),
    )
}

fn parse_filter(text: &str) -> std::result::Result<String, String> {
    hearth_stores::query::Filter::parse(text).map(|_| text.to_owned())
}

/// A store kind, as the command line takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KindArg {
    /// Keys and JSON values; a key's value is replaced whole.
    Kv,
    /// Timestamped readings, kept in chunks of a time window.
    Timeseries,
    /// JSON documents under keys, merged field by field.
    Doc,
}

impl KindArg {
    fn as_str(self) -> &'static str {
        match self {
            KindArg::Kv => "kv",
            KindArg::Timeseries => "timeseries",
            KindArg::Doc => "doc",
        }
    }
}

/// An aggregate function, as the command line takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AggArg {
    /// How many readings.
    Count,
    /// Their sum.
    Sum,
    /// The smallest.
    Min,
    /// The largest.
    Max,
    /// The mean.
    Mean,
    /// The median.
    Median,
    /// The standard deviation.
    Sd,
}

impl AggArg {
    fn as_str(self) -> &'static str {
        match self {
            AggArg::Count => "count",
            AggArg::Sum => "sum",
            AggArg::Min => "min",
            AggArg::Max => "max",
            AggArg::Mean => "mean",
            AggArg::Median => "median",
            AggArg::Sd => "sd",
        }
    }
}

/// Store commands.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a store.
    #[command(
        after_help = "Examples:\n  hearth store create notes --kind kv\n  hearth store create heart-rate --kind timeseries --window 1d --keep 90d\n  hearth store create diary --kind doc --text body --replicas origin,role:home"
    )]
    Create {
        /// Its name.
        name: String,
        /// Its kind.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Timeseries chunk window (default 1h).
        #[arg(long, value_parser = crate::cmd::parse_duration)]
        window: Option<std::time::Duration>,
        /// Which devices hold replicas: comma-separated device names, `role:home`
        /// style entries, `origin`, `all` (default `origin,role:home`).
        #[arg(long, value_name = "SPEC")]
        replicas: Option<String>,
        /// What the store holds, in words (shown in the HyperCat listing).
        #[arg(long)]
        description: Option<String>,
        /// A doc store's fields that hold text, comma-separated dotted paths (`notes`,
        /// `profile.bio`): concurrent edits to different parts of such a string merge
        /// instead of one replacing the other.
        #[arg(long, value_name = "FIELDS", value_delimiter = ',')]
        text: Vec<String>,
        /// A timeseries store's retention, e.g. 90d: every holder drops readings older
        /// than this, a chunk window at a time. Needs the owner's authority.
        #[arg(long, value_name = "DURATION", value_parser = crate::cmd::parse_duration)]
        keep: Option<std::time::Duration>,
        /// A capability for this device's key that allows it (`place`; `remove` for `rm`
        /// or `--keep`), where this device does not hold the owner key.
        #[arg(long, value_name = "CAPFILE")]
        cap: Option<std::path::PathBuf>,
    },
    /// List every store of the mesh (from the catalogue), held here or elsewhere.
    Ls {
        /// Print the catalogue as a HyperCat 3.0 document.
        #[arg(long)]
        hypercat: bool,
    },
    /// Change which devices hold a store (devices it no longer names drop their
    /// replica, devices it newly names receive one) or how long it keeps readings.
    #[command(group = clap::ArgGroup::new("change").required(true).multiple(true))]
    Policy {
        /// The store.
        name: String,
        /// The new placement, e.g. `origin,role:home,phone`.
        #[arg(long, value_name = "SPEC", group = "change")]
        replicas: Option<String>,
        /// The new retention of a timeseries store, e.g. 90d, or `none` to keep every
        /// reading.
        #[arg(long, value_name = "DURATION|none", value_parser = parse_keep, group = "change")]
        keep: Option<Keep>,
        /// A capability for this device's key that allows it (`place`; `remove` for `rm`
        /// or `--keep`), where this device does not hold the owner key.
        #[arg(long, value_name = "CAPFILE")]
        cap: Option<std::path::PathBuf>,
    },
    /// Set a key (kv and doc stores).
    #[command(after_help = "Examples:\n  hearth store put notes today '{\"mood\": \"fine\"}'")]
    Put {
        /// The store.
        name: String,
        /// The key.
        key: String,
        /// The value, as JSON.
        #[arg(value_name = "JSON")]
        value: String,
    },
    /// Change fields of a key's value with a JSON Merge Patch (RFC 7386): `null`
    /// removes a field, an object patches it, anything else replaces it. In a doc store
    /// only the named fields are written, so other devices' edits to other fields
    /// survive.
    Patch {
        /// The store.
        name: String,
        /// The key.
        key: String,
        /// The patch, a JSON object, e.g. '{"city": "Paris", "old": null}'.
        #[arg(value_name = "JSON")]
        patch: String,
    },
    /// Read a key.
    Get {
        /// The store.
        name: String,
        /// The key.
        key: String,
    },
    /// Delete a key.
    Del {
        /// The store.
        name: String,
        /// The key.
        key: String,
    },
    /// List the keys.
    Keys {
        /// The store.
        name: String,
    },
    /// Append readings to a timeseries store.
    Append {
        /// The store.
        name: String,
        /// A reading as JSON, or `-` for JSON lines on stdin. `{"ts": MILLIS, "value": …}`
        /// is a record; any other JSON is the value, stamped with --ts or now.
        #[arg(value_name = "JSON")]
        value: String,
        /// Timestamp for values without one (milliseconds).
        #[arg(long)]
        ts: Option<u64>,
    },
    /// Read readings.
    #[command(
        after_help = "Examples:\n  hearth store read heart-rate --last 10\n  hearth store read location --since 1h --filter tid=ph"
    )]
    Read {
        /// The store.
        name: String,
        #[command(flatten)]
        select: SelectArgs,
        /// Only readings whose TAG equals VALUE.
        #[arg(long, value_name = "TAG=VALUE", value_parser = parse_filter)]
        filter: Option<String>,
    },
    /// An aggregate over readings.
    Agg {
        /// The store.
        name: String,
        /// What to compute.
        #[arg(value_enum)]
        function: AggArg,
        /// Dotted path of the number inside each value.
        #[arg(long)]
        field: Option<String>,
        #[command(flatten)]
        select: SelectArgs,
        /// Only readings whose TAG equals VALUE.
        #[arg(long, value_name = "TAG=VALUE", value_parser = parse_filter)]
        filter: Option<String>,
    },
    /// Follow new records and changes as JSON lines.
    Tail {
        /// The store.
        name: String,
    },
    /// Delete readings of a timeseries store, or keys of a kv or doc store, on every
    /// device that holds it, history included (needs the owner key; cannot be undone).
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
    Delete {
        /// The store.
        name: String,
        /// Readings from T1 (inclusive) to T2 (exclusive): RFC 3339, milliseconds, or a
        /// duration ago such as 2h.
        #[arg(long, num_args = 2, value_names = ["T1", "T2"], value_parser = parse_time, group = "which", conflicts_with = "before")]
        range: Option<Vec<u64>>,
        /// Readings before T (RFC 3339, milliseconds, or a duration ago such as 30d).
        #[arg(long, value_name = "T", value_parser = parse_time, group = "which")]
        before: Option<u64>,
        /// Only readings whose TAG equals VALUE.
        #[arg(long, value_name = "TAG=VALUE", value_parser = parse_filter, group = "which")]
        filter: Option<String>,
        /// A key of a kv or doc store, with every value it ever held (repeatable).
        #[arg(long = "key", value_name = "KEY", group = "which", conflicts_with_all = ["range", "before", "filter"])]
        keys: Vec<String>,
    },
    /// Delete a store and all its data, from every device of the mesh.
    Rm {
        /// The store.
        name: String,
        /// A capability for this device's key that allows it (`place`; `remove` for `rm`
        /// or `--keep`), where this device does not hold the owner key.
        #[arg(long, value_name = "CAPFILE")]
        cap: Option<std::path::PathBuf>,
    },
}

fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|err| {
        CliError::new(Exit::Usage, format!("not valid JSON: {err}"))
            .hint("quote the JSON for the shell, e.g. '{\"celsius\": 21.5}'")
    })
}

/// A record `{ts, value}` or a bare value stamped with `ts`.
fn to_record(value: Value, ts: u64) -> api::Reading {
    if let Value::Object(map) = &value
        && map.len() == 2
        && let (Some(ts), Some(inner)) = (map.get("ts").and_then(Value::as_u64), map.get("value"))
    {
        return api::Reading::new(ts, inner.clone());
    }
    api::Reading::new(ts, value)
}

fn store_path(name: &str) -> String {
    format!("/v1/stores/{}", segment(name))
}

fn print_records(out: &mut Output, records: &api::Records) {
    out.emit_typed(
        || {
            let mut text = String::new();
            for r in &records.records {
                text.push_str(&format!("{}  {}\n", UnixMillis(r.ts), r.value));
            }
            if text.is_empty() {
                text.push_str("(no records)\n");
            }
            text
        },
        records,
    );
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    let client = Client::connect(dir)?;
    match command {
        Command::Create {
            name,
            kind,
            window,
            replicas,
            description,
            text,
            keep,
            cap,
        } => {
            let body = api::CreateStore {
                name: name.clone(),
                kind: kind.as_str().to_owned(),
                window_ms: window.map(millis),
                replicas,
                description,
                text,
                keep_ms: keep.map(millis),
                authority: match cap {
                    Some(path) => Some(crate::cmd::cap::read_chain(&path)?.to_text()),
                    None => None,
                },
            };
            let info: api::StoreInfo = client.send("POST", "/v1/stores", &body)?;
            out.emit_typed(
                || {
                    format!(
                        "Created {} store {name}, held by: {}.",
                        kind.as_str(),
                        info.replicas
                    )
                },
                &info,
            );
        }
        Command::Ls { hypercat: true } => {
            let query = api::ListQuery {
                format: Some("hypercat".to_owned()),
            };
            let doc: Value = client.get("/v1/stores", &query)?;
            out.emit(
                || {
                    format!(
                        "{}\n",
                        serde_json::to_string_pretty(&doc).unwrap_or_default()
                    )
                },
                || doc.clone(),
            );
        }
        Command::Ls { hypercat: false } => {
            let list: api::Stores = client.get("/v1/stores", &())?;
            out.emit_typed(
                || {
                    let rows = list
                        .stores
                        .iter()
                        .map(|s| {
                            let here = if s.here { "" } else { " (not here)" };
                            let error = s
                                .error
                                .as_deref()
                                .map(|e| format!("  ERROR: {e}"))
                                .unwrap_or_default();
                            vec![
                                s.name.clone(),
                                s.kind.as_str().to_owned(),
                                s.records.map_or("-".to_owned(), |r| r.to_string()),
                                s.bytes.unwrap_or(0).to_string(),
                                keep_text(s.keep_ms),
                                s.replicas.clone(),
                                format!("{}{here}{error}", s.held_by.join(",")),
                            ]
                        })
                        .collect();
                    crate::output::table(
                        &[
                            "NAME", "KIND", "RECORDS", "BYTES", "KEEP", "REPLICAS", "HELD BY",
                        ],
                        rows,
                        &[2, 3, 4],
                    )
                },
                &list,
            );
        }
        Command::Policy {
            name,
            replicas,
            keep,
            cap,
        } => {
            let body = api::PolicyRequest {
                replicas: replicas.clone(),
                keep_ms: match keep {
                    Some(Keep::For(d)) => Some(Some(millis(d))),
                    Some(Keep::Everything) => Some(None),
                    None => None,
                },
                authority: match cap {
                    Some(path) => Some(crate::cmd::cap::read_chain(&path)?.to_text()),
                    None => None,
                },
            };
            let answer: api::Policy =
                client.send("POST", &format!("{}/policy", store_path(&name)), &body)?;
            out.emit_typed(
                || {
                    let mut text = Vec::new();
                    if replicas.is_some() {
                        text.push(format!(
                            "{name} is now held by: {}. Devices it no longer names drop their replica once another holder has it all.",
                            answer.replicas
                        ));
                    }
                    if keep.is_some() {
                        text.push(match answer.keep_ms {
                            Some(_) => format!(
                                "{name} keeps readings for {}: every holder drops older ones, a chunk window at a time.",
                                keep_text(answer.keep_ms)
                            ),
                            None => format!("{name} keeps every reading."),
                        });
                    }
                    text.join("\n")
                },
                &answer,
            );
        }
        Command::Delete {
            name,
            range,
            before,
            filter,
            keys,
        } => {
            let mut body = api::DeleteRequest {
                keys: keys.clone(),
                filter,
                ..Default::default()
            };
            if let Some(range) = &range {
                body.from = range.first().copied();
                body.to = range.get(1).copied();
            }
            if let Some(before) = before {
                body.to = Some(before);
            }
            let answer: api::Erased =
                client.send("POST", &format!("{}/delete", store_path(&name)), &body)?;
            out.emit_typed(
                || {
                    let what = if keys.is_empty() { "readings" } else { "values" };
                    let here = answer.deleted_here.map_or_else(
                        || "This device holds no replica.".to_owned(),
                        |n| format!("{n} {what} deleted here."),
                    );
                    format!(
                        "Erasure {} of {name}: {}. {here} Every holder deletes them, history included, when it hears of it.",
                        answer.erasure, answer.selector
                    )
                },
                &answer,
            );
        }
        Command::Put { name, key, value } => {
            let value = parse_json(&value)?;
            let r: api::Put = client.send(
                "PUT",
                &format!("{}/keys/{}", store_path(&name), segment(&key)),
                &value,
            )?;
            out.emit_typed(|| format!("Set {key} in {name}."), &r);
        }
        Command::Patch { name, key, patch } => {
            let patch = parse_json(&patch)?;
            let r: api::KeyValue = client.send(
                "PATCH",
                &format!("{}/keys/{}", store_path(&name), segment(&key)),
                &patch,
            )?;
            out.emit_typed(|| format!("Patched {key} in {name}: {}", r.value), &r);
        }
        Command::Get { name, key } => {
            let r: api::KeyValue = client.get(
                &format!("{}/keys/{}", store_path(&name), segment(&key)),
                &(),
            )?;
            out.emit_typed(|| r.value.to_string(), &r);
        }
        Command::Del { name, key } => {
            let r: api::DeletedKey =
                client.delete(&format!("{}/keys/{}", store_path(&name), segment(&key)))?;
            out.emit_typed(|| format!("Deleted {key} from {name}."), &r);
        }
        Command::Keys { name } => {
            let r: api::Keys = client.get(&format!("{}/keys", store_path(&name)), &())?;
            out.emit_typed(|| r.keys.join("\n"), &r);
        }
        Command::Append {
            name,
            value: json,
            ts,
        } => {
            let stamp = ts.unwrap_or_else(|| now().0);
            let mut records = Vec::new();
            if json == "-" {
                for (index, line) in std::io::stdin().lock().lines().enumerate() {
                    let line = line.map_err(|err| {
                        CliError::new(Exit::Error, format!("cannot read stdin: {err}"))
                    })?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let value = serde_json::from_str(&line).map_err(|err| {
                        CliError::new(
                            Exit::Usage,
                            format!("line {} of stdin is not valid JSON: {err}", index + 1),
                        )
                    })?;
                    records.push(to_record(value, stamp));
                }
            } else {
                records.push(to_record(parse_json(&json)?, stamp));
            }
            let mut appended = 0u64;
            for chunk in records.chunks(hearth_stores::MAX_BATCH.min(10_000)) {
                let r: api::Appended =
                    client.send("POST", &format!("{}/records", store_path(&name)), &chunk)?;
                appended += r.appended;
            }
            out.emit_typed(
                || {
                    format!(
                        "Appended {appended} record{} to {name}.",
                        if appended == 1 { "" } else { "s" }
                    )
                },
                &api::Appended { appended },
            );
        }
        Command::Read {
            name,
            select,
            filter,
        } => {
            let mut q = select.query();
            q.filter = filter;
            let r: api::Records = client.get(&format!("{}/records", store_path(&name)), &q)?;
            print_records(out, &r);
        }
        Command::Agg {
            name,
            function,
            field,
            select,
            filter,
        } => {
            let mut read = select.query();
            read.filter = filter;
            let q = api::AggregateQuery::of(read, function.as_str(), field);
            let r: api::Aggregated = client.get(&format!("{}/aggregate", store_path(&name)), &q)?;
            out.emit_typed(
                || match &r.result {
                    None => format!("no values to compute the {} of", function.as_str()),
                    Some(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), rounded),
                    Some(n) => n.to_string(),
                },
                &r,
            );
        }
        Command::Tail { name } => {
            client.stream(&format!("{}/tail", store_path(&name)), |data| {
                out.line(data);
                true
            })?;
        }
        Command::Rm { name, cap } => {
            let path = match cap {
                Some(file) => format!(
                    "{}?authority={}",
                    store_path(&name),
                    crate::cmd::cap::read_chain(&file)?.to_text()
                ),
                None => store_path(&name),
            };
            let r: api::Removed = client.delete(&path)?;
            out.emit_typed(
                || format!("Removed store {name} and its data, from every device of the mesh."),
                &r,
            );
        }
    }
    Ok(())
}

/// A number for people to read: seven significant digits, without trailing zeros
/// (`21.33333`, `0.0001234568`, `1234568`); `--json` keeps every digit.
fn rounded(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return x.to_string();
    }
    // Digits before the point (for |x| >= 1) or zeros after it (negative).
    #[allow(clippy::cast_possible_truncation)]
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = usize::try_from((6 - magnitude).clamp(0, 17)).unwrap_or(0);
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::rounded;

    #[test]
    fn aggregates_read_well() {
        assert_eq!(rounded(21.333_333_333_333_3), "21.33333");
        assert_eq!(rounded(0.000_123_456_789), "0.0001234568");
        assert_eq!(rounded(1_234_567.891), "1234568");
        assert_eq!(rounded(2.5), "2.5");
        assert_eq!(rounded(-3.0), "-3");
        assert_eq!(rounded(0.0), "0");
    }
}
