//! Manifests: what an app or computation asks for, in TOML, and its plain-words rendering.
//!
//! ```
//! use hearth_protocol::manifest::Manifest;
//!
//! let manifest = Manifest::parse(r#"
//! name = "daily-mean"
//! version = "0.1.0"
//! description = "Mean, min and max per day."
//!
//! [module]
//! path = "daily_mean.wasm"
//!
//! [[grants]]
//! store = "sensors/temperature"
//! fields = ["celsius"]
//! granularity = "aggregate"
//! purpose = "Compute the daily mean temperature."
//! "#)?;
//! assert!(manifest.render_plain().contains("sensors/temperature"));
//! # Ok::<(), hearth_protocol::manifest::ManifestError>(())
//! ```

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::capability::{
    Actions, Caveats, Grant, ModuleHash, Resource, TimeRange, is_valid_destination, is_valid_name,
    is_valid_store_pattern,
};
use crate::key::truncate_for_message;
use crate::time::UnixMillis;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: usize = 64 * 1024;
/// Result size cap used when a manifest's `[limits]` names none: 64 KiB.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 64 * 1024;
/// Longest purpose or description, in characters.
pub const MAX_TEXT_LEN: usize = 1000;

/// Why a manifest was refused: where, which field, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}{}: {message}", field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
pub struct ManifestError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a path like `grants[0].store`, when known.
    pub field: Option<String>,
    /// What was expected and what was found.
    pub message: String,
}

/// Raw TOML, before validation. Spans are kept for error positions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    manifest_version: Option<Spanned<u32>>,
    name: Spanned<String>,
    version: Spanned<String>,
    description: Spanned<String>,
    author: Option<Spanned<String>>,
    module: Spanned<RawModule>,
    #[serde(default)]
    grants: Vec<Spanned<RawGrant>>,
    #[serde(default)]
    outputs: Vec<Spanned<RawOutput>>,
    limits: Option<Spanned<RawLimits>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    path: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    store: Spanned<String>,
    access: Option<Spanned<Vec<Spanned<String>>>>,
    fields: Option<Spanned<Vec<Spanned<String>>>>,
    granularity: Option<Spanned<String>>,
    history: Option<Spanned<String>>,
    since: Option<Spanned<String>>,
    until: Option<Spanned<String>>,
    purpose: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    store: Option<Spanned<String>>,
    destination: Option<Spanned<String>>,
    purpose: Option<Spanned<String>>,
    review: Option<Spanned<bool>>,
    max_per_day: Option<Spanned<u64>>,
    max_bytes_per_day: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_result_bytes: Option<Spanned<u64>>,
    max_runs: Option<Spanned<u64>>,
    devices: Option<Spanned<Vec<Spanned<String>>>>,
    fuel: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    wall_time: Option<Spanned<String>>,
}

/// Where the module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRef {
    /// Path of the `.wasm` file, relative to the manifest.
    pub path: Option<String>,
    /// The module's SHA-256, when the manifest pins it.
    pub hash: Option<ModuleHash>,
}

/// How fine-grained the data a grant reads may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Individual records.
    Raw,
    /// Only aggregates (count, sum, min, max, mean, median, standard deviation).
    Aggregate,
}

/// Which stretch of a store's history a grant reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Everything.
    All,
    /// Records from this long before approval onwards.
    Recent(Duration),
    /// Records in a fixed window; either end may be open.
    Window {
        /// First instant included.
        since: Option<UnixMillis>,
        /// First instant excluded.
        until: Option<UnixMillis>,
    },
}

/// One store the computation wants, with its purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedGrant {
    /// Store name or pattern.
    pub store: String,
    /// Read, write and/or subscribe.
    pub actions: Actions,
    /// Only these fields, or all.
    pub fields: Option<BTreeSet<String>>,
    /// Raw records or aggregates only.
    pub granularity: Granularity,
    /// Which records by time.
    pub history: History,
    /// Why, in the developer's words.
    pub purpose: String,
}

/// Where results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The result returns to whoever runs the computation.
    Result {
        /// Why.
        purpose: Option<String>,
    },
    /// A continuous app writes a derived store on the owner's devices.
    DerivedStore {
        /// The store written.
        store: String,
        /// Why.
        purpose: Option<String>,
    },
    /// Data leaves the mesh through the export gateway.
    Export {
        /// The destination URL (or URL prefix ending in `*`).
        destination: String,
        /// Why.
        purpose: String,
        /// Each export waits until the owner releases it.
        review: bool,
        /// At most this many exports per day.
        max_per_day: Option<u64>,
        /// At most this many bytes of exports per day.
        max_bytes_per_day: Option<u64>,
    },
}

/// Resource limits per run and over the capability's life.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// Largest result, in bytes ([`DEFAULT_MAX_RESULT_BYTES`] when absent).
    pub max_result_bytes: Option<u64>,
    /// Most runs under the capability.
    pub max_runs: Option<u64>,
    /// Devices (by name) where it may run.
    pub devices: Option<BTreeSet<String>>,
    /// Fuel (roughly, WebAssembly instructions) per run.
    pub fuel: Option<u64>,
    /// Memory per run, in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock time per run.
    pub wall_time: Option<Duration>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Short name of the app or computation.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Who made it.
    pub author: Option<String>,
    /// The module.
    pub module: ModuleRef,
    /// What it reads or writes.
    pub grants: Vec<RequestedGrant>,
    /// Where results go.
    pub outputs: Vec<Output>,
    /// Resource limits.
    pub limits: Limits,
}

/// Turns byte offsets into line and column for error messages.
struct Locator<'a> {
    text: &'a str,
}

impl Locator<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map(|nl| before.len() - nl)
            .unwrap_or(before.len() + 1);
        (line, column)
    }

    fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ManifestError {
        let (line, column) = self.position(span.start);
        ManifestError {
            line,
            column,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

fn text_field(
    loc: &Locator<'_>,
    value: &Spanned<String>,
    field: &str,
    allow_empty: bool,
) -> Result<String, ManifestError> {
    let text = value.get_ref().trim();
    if text.is_empty() && !allow_empty {
        return Err(loc.error(
            value.span(),
            field,
            "expected some text, found an empty string",
        ));
    }
    if text.chars().count() > MAX_TEXT_LEN {
        return Err(loc.error(
            value.span(),
            field,
            format!("expected at most {MAX_TEXT_LEN} characters"),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(loc.error(
            value.span(),
            field,
            "expected text without control characters",
        ));
    }
    Ok(text.to_owned())
}

fn name_set(
    loc: &Locator<'_>,
    values: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    what: &str,
) -> Result<BTreeSet<String>, ManifestError> {
    if values.get_ref().is_empty() {
        return Err(loc.error(
            values.span(),
            field,
            format!("expected at least one {what}"),
        ));
    }
    if values.get_ref().len() > crate::capability::MAX_SET_LEN {
        return Err(loc.error(
            values.span(),
            field,
            format!(
                "expected at most {} entries",
                crate::capability::MAX_SET_LEN
            ),
        ));
    }
    let mut set = BTreeSet::new();
    for value in values.get_ref() {
        if !is_valid_name(value.get_ref()) {
            return Err(loc.error(
                value.span(),
                field,
                format!(
                    "expected a {what} (letters, digits, `.`, `_`, `-`, `/`), found {:?}",
                    truncate_for_message(value.get_ref())
                ),
            ));
        }
        set.insert(value.get_ref().clone());
    }
    Ok(set)
}

fn duration_field(
    loc: &Locator<'_>,
    value: &Spanned<String>,
    field: &str,
) -> Result<Duration, ManifestError> {
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(loc.error(
            value.span(),
            field,
            format!(
                "expected a duration such as \"90d\" or \"12h\", found {:?}",
                truncate_for_message(value.get_ref())
            ),
        )),
    }
}

fn instant_field(
    loc: &Locator<'_>,
    value: &Spanned<String>,
    field: &str,
) -> Result<UnixMillis, ManifestError> {
    UnixMillis::parse(value.get_ref()).ok_or_else(|| {
        loc.error(
            value.span(),
            field,
            format!(
                "expected a date such as \"2026-01-31T00:00:00Z\", found {:?}",
                truncate_for_message(value.get_ref())
            ),
        )
    })
}

impl Manifest {
    /// Parses and validates a manifest. Errors give the line, column, field and what
    /// was expected.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError {
                line: 1,
                column: 1,
                field: None,
                message: format!(
                    "the manifest is {} bytes; the limit is {MAX_MANIFEST_LEN}",
                    text.len()
                ),
            });
        }
        let loc = Locator { text };
        let raw: RawManifest = toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| loc.position(span.start))
                .unwrap_or((1, 1));
            ManifestError {
                line,
                column,
                field: None,
                message: err.message().trim().to_owned(),
            }
        })?;
        Self::validate(&loc, raw)
    }

    fn validate(loc: &Locator<'_>, raw: RawManifest) -> Result<Manifest, ManifestError> {
        if let Some(version) = &raw.manifest_version
            && *version.get_ref() != 1
        {
            return Err(loc.error(
                version.span(),
                "manifest_version",
                format!("expected 1, found {}", version.get_ref()),
            ));
        }
        let name = text_field(loc, &raw.name, "name", false)?;
        if !is_valid_name(&name) {
            return Err(loc.error(
                raw.name.span(),
                "name",
                "expected a short name of letters, digits, `.`, `_`, `-`",
            ));
        }
        let version = text_field(loc, &raw.version, "version", false)?;
        let description = text_field(loc, &raw.description, "description", false)?;
        let author = raw
            .author
            .as_ref()
            .map(|a| text_field(loc, a, "author", false))
            .transpose()?;

        let module_span = raw.module.span();
        let raw_module = raw.module.into_inner();
        let path = raw_module
            .path
            .as_ref()
            .map(|p| text_field(loc, p, "module.path", false))
            .transpose()?;
        let hash = raw_module
            .sha256
            .as_ref()
            .map(|h| {
                h.get_ref().parse::<ModuleHash>().map_err(|_| {
                    loc.error(
                        h.span(),
                        "module.sha256",
                        "expected 64 hex digits (optionally after `sha256:`)",
                    )
                })
            })
            .transpose()?;
        if path.is_none() && hash.is_none() {
            return Err(loc.error(
                module_span,
                "module",
                "expected `path` (the .wasm file) or `sha256` (its hash), found neither",
            ));
        }

        let mut grants = Vec::with_capacity(raw.grants.len());
        if raw.grants.len() > crate::capability::MAX_GRANTS / 2 {
            return Err(loc.error(
                0..0,
                "grants",
                format!(
                    "expected at most {} grants",
                    crate::capability::MAX_GRANTS / 2
                ),
            ));
        }
        for (index, spanned) in raw.grants.iter().enumerate() {
            grants.push(validate_grant(loc, index, spanned.get_ref())?);
        }

        let mut outputs = Vec::with_capacity(raw.outputs.len());
        if raw.outputs.len() > crate::capability::MAX_GRANTS / 2 {
            return Err(loc.error(
                0..0,
                "outputs",
                format!(
                    "expected at most {} outputs",
                    crate::capability::MAX_GRANTS / 2
                ),
            ));
        }
        for (index, spanned) in raw.outputs.iter().enumerate() {
            outputs.push(validate_output(loc, index, spanned)?);
        }
        if outputs.is_empty() {
            outputs.push(Output::Result { purpose: None });
        }

        let limits = match &raw.limits {
            None => Limits::default(),
            Some(limits) => validate_limits(loc, limits.get_ref())?,
        };

        Ok(Manifest {
            name,
            version,
            description,
            author,
            module: ModuleRef { path, hash },
            grants,
            outputs,
            limits,
        })
    }

    /// The result size cap a capability approved from this manifest carries.
    pub fn max_result_bytes(&self) -> u64 {
        self.limits
            .max_result_bytes
            .unwrap_or(DEFAULT_MAX_RESULT_BYTES)
    }

    /// The owner's approval of this manifest for `holder`: a root capability signed
    /// with the owner key, its grants bound to `module`, valid from `issued` for
    /// `valid_for`. A run-limited manifest's runs are counted on device `counter`.
    #[allow(clippy::too_many_arguments)]
    pub fn approve(
        &self,
        owner: &crate::key::SecretKey,
        holder: crate::key::PublicKey,
        module: ModuleHash,
        issued: UnixMillis,
        valid_for: Duration,
        nonce: [u8; 16],
        counter: &str,
    ) -> Result<crate::capability::Chain, crate::capability::SignError> {
        let mut grants = self.to_grants(module, issued);
        if self.limits.max_runs.is_some() {
            for grant in &mut grants {
                if grant.caveats.max_runs.is_some() {
                    grant.caveats.counter = Some(counter.to_owned());
                }
            }
        }
        let signed = crate::capability::Capability {
            issuer: owner.public(),
            audience: holder,
            parent: None,
            grants,
            not_before: issued,
            expires: issued.saturating_add(valid_for),
            nonce,
        }
        .sign(owner)?;
        Ok(crate::capability::Chain::root(signed))
    }

    /// The grants an approval of this manifest signs, bound to `module` and resolved
    /// against the approval time `now` (for `history = "90d"` style windows).
    pub fn to_grants(&self, module: ModuleHash, now: UnixMillis) -> Vec<Grant> {
        let base = Caveats {
            module_hash: Some(module),
            devices: self.limits.devices.clone(),
            max_runs: self.limits.max_runs,
            max_result_bytes: Some(self.max_result_bytes()),
            ..Caveats::default()
        };
        let mut grants = vec![Grant {
            resource: Resource::Compute,
            actions: Actions::RUN,
            caveats: base.clone(),
        }];
        for requested in &self.grants {
            let time_range = match requested.history {
                History::All => None,
                History::Recent(d) => Some(TimeRange {
                    start: now.saturating_sub(d),
                    end: UnixMillis(u64::MAX),
                }),
                History::Window { since, until } => Some(TimeRange {
                    start: since.unwrap_or(UnixMillis(0)),
                    end: until.unwrap_or(UnixMillis(u64::MAX)),
                }),
            };
            grants.push(Grant {
                resource: Resource::Store(requested.store.clone()),
                actions: requested.actions,
                caveats: Caveats {
                    fields: requested.fields.clone(),
                    time_range,
                    aggregate_only: requested.granularity == Granularity::Aggregate,
                    ..base.clone()
                },
            });
        }
        for output in &self.outputs {
            match output {
                Output::Result { .. } => {}
                Output::DerivedStore { store, .. } => grants.push(Grant {
                    resource: Resource::Store(store.clone()),
                    actions: Actions::WRITE,
                    caveats: Caveats {
                        max_result_bytes: None,
                        ..base.clone()
                    },
                }),
                Output::Export {
                    destination,
                    review,
                    max_per_day,
                    max_bytes_per_day,
                    ..
                } => grants.push(Grant {
                    resource: Resource::Export(destination.clone()),
                    actions: Actions::EXPORT,
                    caveats: Caveats {
                        review: *review,
                        max_exports_per_day: *max_per_day,
                        max_export_bytes_per_day: *max_bytes_per_day,
                        ..base.clone()
                    },
                }),
            }
        }
        grants
    }

    /// Every permission the manifest asks for, in plain words: stores, fields,
    /// granularity, history, outputs and every destination outside the mesh.
    pub fn render_plain(&self) -> String {
        let mut out = String::new();
        let by = self
            .author
            .as_ref()
            .map(|a| format!(" by {a}"))
            .unwrap_or_default();
        let _ = writeln!(out, "{} {}{by}", self.name, self.version);
        let _ = writeln!(out, "  {}", self.description);
        let module = match (&self.module.path, &self.module.hash) {
            (Some(path), Some(hash)) => format!("{path} ({hash})"),
            (Some(path), None) => format!("{path} (hash computed when you approve)"),
            (None, Some(hash)) => hash.to_string(),
            (None, None) => "an unnamed module".to_owned(),
        };
        let _ = writeln!(
            out,
            "\nIt runs the WebAssembly module {module} on your devices, next to your data."
        );
        if self.grants.is_empty() {
            let _ = writeln!(out, "\nIt asks to read no store.");
        } else {
            let _ = writeln!(out, "\nIt asks to:");
            for g in &self.grants {
                let verbs = g.actions.names().join(" and ");
                let store = if g.store.ends_with('*') {
                    format!(
                        "every store whose name starts with \"{}\"",
                        g.store.trim_end_matches('*')
                    )
                } else {
                    format!("the store \"{}\"", g.store)
                };
                let fields = match &g.fields {
                    None => "all fields".to_owned(),
                    Some(f) => format!(
                        "only the field{} {}",
                        if f.len() == 1 { "" } else { "s" },
                        f.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
                let granularity = match g.granularity {
                    Granularity::Raw => "individual records",
                    Granularity::Aggregate => "aggregates only (no individual records)",
                };
                let history = match g.history {
                    History::All => "all of its history".to_owned(),
                    History::Recent(d) => {
                        format!(
                            "records from the last {} before approval onwards",
                            whole_days(d)
                        )
                    }
                    History::Window { since, until } => match (since, until) {
                        (Some(s), Some(u)) => format!("records from {s} until {u}"),
                        (Some(s), None) => format!("records from {s} onwards"),
                        (None, Some(u)) => format!("records before {u}"),
                        (None, None) => "all of its history".to_owned(),
                    },
                };
                let _ = writeln!(
                    out,
                    "  - {verbs} {store}: {fields}, {granularity}, {history}."
                );
                let _ = writeln!(out, "    Why: {}", g.purpose);
            }
        }
        let _ = writeln!(out, "\nWhere results go:");
        let mut exports = 0;
        for output in &self.outputs {
            match output {
                Output::Result { purpose } => {
                    let _ = writeln!(
                        out,
                        "  - The result returns to whoever runs it with this permission (at most {} bytes).",
                        self.max_result_bytes()
                    );
                    if let Some(p) = purpose {
                        let _ = writeln!(out, "    Why: {p}");
                    }
                }
                Output::DerivedStore { store, purpose } => {
                    let _ = writeln!(out, "  - It writes the store \"{store}\" on your devices.");
                    if let Some(p) = purpose {
                        let _ = writeln!(out, "    Why: {p}");
                    }
                }
                Output::Export {
                    destination,
                    purpose,
                    review,
                    max_per_day,
                    max_bytes_per_day,
                } => {
                    exports += 1;
                    let _ = writeln!(out, "  - It SENDS DATA OUT OF YOUR MESH to {destination}");
                    let _ = writeln!(out, "    Why: {purpose}");
                    if *review {
                        let _ = writeln!(
                            out,
                            "    Each export waits until you release it (`hearth export release`)."
                        );
                    } else {
                        let _ = writeln!(out, "    Exports are sent without asking you each time.");
                    }
                    let mut limits = Vec::new();
                    if let Some(n) = max_per_day {
                        limits.push(format!("{n} export{}", if *n == 1 { "" } else { "s" }));
                    }
                    if let Some(n) = max_bytes_per_day {
                        limits.push(format!("{n} bytes"));
                    }
                    if !limits.is_empty() {
                        let _ = writeln!(out, "    At most {} a day.", limits.join(" and "));
                    }
                }
            }
        }
        if exports == 0 {
            let _ = writeln!(out, "  Nothing is sent outside your mesh.");
        }
        let _ = writeln!(out, "\nLimits:");
        let l = &self.limits;
        match &l.devices {
            Some(devices) => {
                let _ = writeln!(
                    out,
                    "  - Runs only on: {}.",
                    devices.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            None => {
                let _ = writeln!(out, "  - Runs on any of your devices that holds the data.");
            }
        }
        match l.max_runs {
            Some(n) => {
                let _ = writeln!(out, "  - At most {n} runs.");
            }
            None => {
                let _ = writeln!(out, "  - Any number of runs until the permission expires.");
            }
        }
        // Resource needs are the developer's estimate; each device runs computations
        // under its own limits (config.toml [compute]), whatever a manifest says.
        let mut needs = Vec::new();
        if let Some(fuel) = l.fuel {
            needs.push(format!("{fuel} units of fuel"));
        }
        if let Some(mb) = l.memory_mb {
            needs.push(format!("{mb} MiB of memory"));
        }
        if let Some(t) = l.wall_time {
            needs.push(humantime::format_duration(t).to_string());
        }
        if !needs.is_empty() {
            let _ = writeln!(
                out,
                "  - Expects to need at most {} per run (your devices' own limits apply).",
                needs.join(", ")
            );
        }
        out
    }
}

/// `d` in days when it is a whole number of them (`90 days`), else as humantime
/// writes it.
fn whole_days(d: std::time::Duration) -> String {
    const DAY: u64 = 86_400;
    match d.as_secs() {
        secs if secs > 0 && secs % DAY == 0 && d.subsec_nanos() == 0 => {
            let days = secs / DAY;
            format!("{days} day{}", if days == 1 { "" } else { "s" })
        }
        _ => humantime::format_duration(d).to_string(),
    }
}

fn validate_grant(
    loc: &Locator<'_>,
    index: usize,
    g: &RawGrant,
) -> Result<RequestedGrant, ManifestError> {
    let field = |name: &str| format!("grants[{index}].{name}");
    if !is_valid_store_pattern(g.store.get_ref()) {
        return Err(loc.error(
            g.store.span(),
            field("store"),
            format!(
                "expected a store name or a prefix ending in `*`, found {:?}",
                truncate_for_message(g.store.get_ref())
            ),
        ));
    }
    let actions = match &g.access {
        None => Actions::READ,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(loc.error(
                    list.span(),
                    field("access"),
                    "expected at least one of read, write, subscribe",
                ));
            }
            let mut actions = Actions::NONE;
            for a in list.get_ref() {
                let action = match a.get_ref().as_str() {
                    "read" => Actions::READ,
                    "write" => Actions::WRITE,
                    "subscribe" => Actions::SUBSCRIBE,
                    other => {
                        return Err(loc.error(
                            a.span(),
                            field("access"),
                            format!(
                                "expected read, write or subscribe, found {:?}",
                                truncate_for_message(other)
                            ),
                        ));
                    }
                };
                actions = actions | action;
            }
            actions
        }
    };
    let fields = g
        .fields
        .as_ref()
        .map(|f| name_set(loc, f, &field("fields"), "field name"))
        .transpose()?;
    let granularity = match &g.granularity {
        None => Granularity::Raw,
        Some(value) => match value.get_ref().as_str() {
            "raw" => Granularity::Raw,
            "aggregate" => Granularity::Aggregate,
            other => {
                return Err(loc.error(
                    value.span(),
                    field("granularity"),
                    format!(
                        "expected \"raw\" or \"aggregate\", found {:?}",
                        truncate_for_message(other)
                    ),
                ));
            }
        },
    };
    let history = match (&g.history, &g.since, &g.until) {
        (None, None, None) => History::All,
        (Some(h), None, None) => History::Recent(duration_field(loc, h, &field("history"))?),
        (Some(h), _, _) => {
            return Err(loc.error(
                h.span(),
                field("history"),
                "expected either `history` or `since`/`until`, not both",
            ));
        }
        (None, since, until) => {
            let since = since
                .as_ref()
                .map(|s| instant_field(loc, s, &field("since")))
                .transpose()?;
            let until_value = until
                .as_ref()
                .map(|u| instant_field(loc, u, &field("until")))
                .transpose()?;
            if let (Some(s), Some(u), Some(span)) =
                (since, until_value, until.as_ref().map(|u| u.span()))
                && u <= s
            {
                return Err(loc.error(span, field("until"), "expected a date after `since`"));
            }
            History::Window {
                since,
                until: until_value,
            }
        }
    };
    let purpose = text_field(loc, &g.purpose, &field("purpose"), false)?;
    Ok(RequestedGrant {
        store: g.store.get_ref().clone(),
        actions,
        fields,
        granularity,
        history,
        purpose,
    })
}

fn validate_output(
    loc: &Locator<'_>,
    index: usize,
    spanned: &Spanned<RawOutput>,
) -> Result<Output, ManifestError> {
    let o = spanned.get_ref();
    let field = |name: &str| format!("outputs[{index}].{name}");
    let purpose = o
        .purpose
        .as_ref()
        .map(|p| text_field(loc, p, &field("purpose"), false))
        .transpose()?;
    let unexpected =
        |value: &Option<Spanned<String>>, name: &str, kind: &str| -> Result<(), ManifestError> {
            match value {
                Some(v) => Err(loc.error(
                    v.span(),
                    field(name),
                    format!("a `{kind}` output has no `{name}`"),
                )),
                None => Ok(()),
            }
        };
    let export_only = |kind: &str| -> Result<(), ManifestError> {
        let spans = [
            (o.review.as_ref().map(Spanned::span), "review"),
            (o.max_per_day.as_ref().map(Spanned::span), "max_per_day"),
            (
                o.max_bytes_per_day.as_ref().map(Spanned::span),
                "max_bytes_per_day",
            ),
        ];
        match spans
            .into_iter()
            .find_map(|(span, name)| span.map(|s| (s, name)))
        {
            Some((span, name)) => Err(loc.error(
                span,
                field(name),
                format!("a `{kind}` output has no `{name}`; only an `export` output does"),
            )),
            None => Ok(()),
        }
    };
    match o.kind.get_ref().as_str() {
        "result" => {
            unexpected(&o.store, "store", "result")?;
            unexpected(&o.destination, "destination", "result")?;
            export_only("result")?;
            Ok(Output::Result { purpose })
        }
        "derived-store" => {
            unexpected(&o.destination, "destination", "derived-store")?;
            export_only("derived-store")?;
            let store = o.store.as_ref().ok_or_else(|| {
                loc.error(
                    spanned.span(),
                    field("store"),
                    "a `derived-store` output needs `store`, the name of the store it writes",
                )
            })?;
            if !is_valid_name(store.get_ref()) {
                return Err(loc.error(
                    store.span(),
                    field("store"),
                    format!(
                        "expected a store name, found {:?}",
                        truncate_for_message(store.get_ref())
                    ),
                ));
            }
            Ok(Output::DerivedStore {
                store: store.get_ref().clone(),
                purpose,
            })
        }
        "export" => {
            unexpected(&o.store, "store", "export")?;
            let destination = o.destination.as_ref().ok_or_else(|| {
                loc.error(
                    spanned.span(),
                    field("destination"),
                    "an `export` output needs `destination`, the https:// URL data is sent to",
                )
            })?;
            if !is_valid_destination(destination.get_ref()) {
                return Err(loc.error(
                    destination.span(),
                    field("destination"),
                    format!(
                        "expected an https:// URL, found {:?}",
                        truncate_for_message(destination.get_ref())
                    ),
                ));
            }
            let usable = crate::export::check_pattern(destination.get_ref());
            if let Err(err) = usable {
                return Err(loc.error(destination.span(), field("destination"), err.to_string()));
            }
            for (value, name) in [
                (&o.max_per_day, "max_per_day"),
                (&o.max_bytes_per_day, "max_bytes_per_day"),
            ] {
                if let Some(v) = value
                    && *v.get_ref() == 0
                {
                    return Err(loc.error(
                        v.span(),
                        field(name),
                        "a daily limit of 0 allows nothing; leave it out or raise it",
                    ));
                }
            }
            let purpose = purpose.ok_or_else(|| {
                loc.error(
                    spanned.span(),
                    field("purpose"),
                    "an `export` output must say why data leaves the mesh",
                )
            })?;
            Ok(Output::Export {
                destination: destination.get_ref().clone(),
                purpose,
                review: o.review.as_ref().is_some_and(|r| *r.get_ref()),
                max_per_day: o.max_per_day.as_ref().map(|v| *v.get_ref()),
                max_bytes_per_day: o.max_bytes_per_day.as_ref().map(|v| *v.get_ref()),
            })
        }
        other => Err(loc.error(
            o.kind.span(),
            field("type"),
            format!(
                "expected \"result\", \"derived-store\" or \"export\", found {:?}",
                truncate_for_message(other)
            ),
        )),
    }
}

fn validate_limits(loc: &Locator<'_>, l: &RawLimits) -> Result<Limits, ManifestError> {
    let positive =
        |value: &Option<Spanned<u64>>, name: &str| -> Result<Option<u64>, ManifestError> {
            match value {
                Some(v) if *v.get_ref() == 0 => Err(loc.error(
                    v.span(),
                    format!("limits.{name}"),
                    "expected a number above zero",
                )),
                Some(v) => Ok(Some(*v.get_ref())),
                None => Ok(None),
            }
        };
    Ok(Limits {
        max_result_bytes: positive(&l.max_result_bytes, "max_result_bytes")?,
        max_runs: positive(&l.max_runs, "max_runs")?,
        devices: l
            .devices
            .as_ref()
            .map(|d| name_set(loc, d, "limits.devices", "device name"))
            .transpose()?,
        fuel: positive(&l.fuel, "fuel")?,
        memory_mb: positive(&l.memory_mb, "memory_mb")?,
        wall_time: l
            .wall_time
            .as_ref()
            .map(|t| duration_field(loc, t, "limits.wall_time"))
            .transpose()?,
    })
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::Raw => "raw",
            Granularity::Aggregate => "aggregate",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACES: &str = r#"
name = "places"
version = "0.1.0"
description = "The places where you stayed longest."
author = "Dev"

[module]
path = "places.wasm"

[[grants]]
store = "location"
fields = ["lat", "lon", "tst"]
history = "90d"
purpose = "Find where you stay."

[[outputs]]
type = "result"

[[outputs]]
type = "export"
destination = "https://research.example.org/upload"
purpose = "A study of mobility."

[limits]
max_runs = 10
devices = ["home"]
"#;

    #[test]
    fn parses_and_renders_every_destination() {
        let m = Manifest::parse(PLACES).unwrap();
        assert_eq!(m.grants.len(), 1);
        let text = m.render_plain();
        assert!(text.contains("the store \"location\""), "{text}");
        assert!(text.contains("only the fields lat, lon, tst"), "{text}");
        assert!(
            text.contains("SENDS DATA OUT OF YOUR MESH to https://research.example.org/upload"),
            "{text}"
        );
        assert!(text.contains("Runs only on: home."), "{text}");
        let grants = m.to_grants(ModuleHash([1; 32]), UnixMillis(100 * 86_400_000));
        assert_eq!(grants.len(), 3);
        for g in &grants {
            g.validate().unwrap();
            assert_eq!(g.caveats.module_hash, Some(ModuleHash([1; 32])));
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        let bad = PLACES.replace("history = \"90d\"", "history = \"ninety\"");
        let err = Manifest::parse(&bad).unwrap_err();
        assert_eq!(err.line, 13);
        assert_eq!(err.field.as_deref(), Some("grants[0].history"));
        assert!(err.message.contains("expected a duration"), "{err}");

        let err = Manifest::parse(&PLACES.replace("fields", "feilds")).unwrap_err();
        assert_eq!(err.line, 12);
        assert!(err.message.contains("unknown field `feilds`"), "{err}");

        let err =
            Manifest::parse(&PLACES.replace("https://research", "ftp://research")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("outputs[1].destination"));

        let err = Manifest::parse("name = ").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn export_consent_terms_become_caveats_and_bad_ones_are_refused() {
        let held = PLACES.replace(
            "purpose = \"A study of mobility.\"",
            "purpose = \"A study of mobility.\"\nreview = true\nmax_per_day = 2\nmax_bytes_per_day = 900",
        );
        let m = Manifest::parse(&held).unwrap();
        let text = m.render_plain();
        assert!(
            text.contains("Each export waits until you release it"),
            "{text}"
        );
        assert!(
            text.contains("At most 2 exports and 900 bytes a day."),
            "{text}"
        );
        let grants = m.to_grants(ModuleHash([1; 32]), UnixMillis(0));
        let export = grants
            .iter()
            .find(|g| matches!(g.resource, Resource::Export(_)))
            .unwrap();
        assert!(export.caveats.review);
        assert_eq!(export.caveats.max_exports_per_day, Some(2));
        assert_eq!(export.caveats.max_export_bytes_per_day, Some(900));
        assert!(
            Manifest::parse(PLACES)
                .unwrap()
                .render_plain()
                .contains("without asking you")
        );

        for (bad, field, says) in [
            (
                held.replace("max_per_day = 2", "max_per_day = 0"),
                "outputs[1].max_per_day",
                "allows nothing",
            ),
            (
                PLACES.replace("type = \"result\"", "type = \"result\"\nreview = true"),
                "outputs[0].review",
                "only an `export` output",
            ),
            (
                PLACES.replace(
                    "https://research.example.org/upload",
                    "https://research.example.org*",
                ),
                "outputs[1].destination",
                "names the host and the `/`",
            ),
            (
                PLACES.replace(
                    "https://research.example.org/upload",
                    "https://research.example.org/a/../upload",
                ),
                "outputs[1].destination",
                "'..' segments",
            ),
        ] {
            let err = Manifest::parse(&bad).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert!(err.message.contains(says), "{err}");
        }
    }
}
