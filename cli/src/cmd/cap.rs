//! `hearth cap show` and `hearth cap delegate`: read a capability and hand a narrower
//! one on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_protocol::capability::{
    Actions, Capability, Chain, ChainError, Grant, Resource, RevocationSet, TimeRange, Verifier,
    VerifierConfig, is_valid_name, is_valid_store_pattern,
};
use hearth_protocol::key::{HolderKey, PublicKey};
use hearth_protocol::time::UnixMillis;
use serde_json::{Value, json};

use super::{
    ensure_absent, now, parse_duration, parse_instant, parse_public_key, random_bytes,
    write_new_file,
};
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// Capability commands.
// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Render a capability file: every link, its grants in words, and whether it is
    /// valid now.
    Show {
        /// The capability file.
        capfile: PathBuf,
    },
    /// Hand a narrower copy of a capability you hold to another holder.
    Delegate(DelegateArgs),
    /// Every capability signed or delegated with this data directory, and its state.
    Ls,
    /// Revoke a capability, and every capability delegated from it, on every device
    /// (needs a running node holding the owner key).
    Revoke {
        /// The capability's id (64 hex digits, as `cap show` prints), or a capability
        /// file whose last link to revoke.
        id: String,
    },
}

/// Arguments of `hearth cap delegate`. Every narrowing flag can only take away.
#[derive(Debug, clap::Args)]
pub(crate) struct DelegateArgs {
    /// The capability you hold.
    capfile: PathBuf,
    /// The new holder's public key.
    #[arg(long, value_parser = parse_public_key)]
    holder: PublicKey,
    /// Your holder key file (the audience of CAPFILE).
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// Where to write the delegated capability (never overwritten).
    #[arg(long, value_name = "CAPFILE2")]
    out: PathBuf,
    /// Expire after this long (at the latest when CAPFILE expires).
    #[arg(long, value_parser = parse_duration)]
    expires: Option<Duration>,
    /// Keep only store grants within these store names or patterns (repeatable).
    #[arg(long = "store", value_name = "PATTERN")]
    stores: Vec<String>,
    /// Keep only these actions (comma-separated: read, write, subscribe, run, export, admit).
    #[arg(long, value_delimiter = ',')]
    actions: Vec<String>,
    /// Only these fields (comma-separated).
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Only aggregates, no raw records.
    #[arg(long)]
    aggregate_only: bool,
    /// Drop every export grant: nothing may leave the mesh under the delegation.
    #[arg(long)]
    no_export: bool,
    /// Results of at most N bytes.
    #[arg(long, value_name = "N")]
    max_result_bytes: Option<u64>,
    /// At most N runs in the whole mesh.
    #[arg(long, value_name = "N")]
    max_runs: Option<u64>,
    /// The device that counts the runs of --max-runs for the whole mesh (when the
    /// capability does not name one already): a run anywhere is counted there first.
    #[arg(long, value_name = "DEVICE")]
    counted_by: Option<String>,
    /// Only on these devices (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Only data from this instant (RFC 3339 or milliseconds).
    #[arg(long, value_parser = parse_instant)]
    since: Option<UnixMillis>,
    /// Only data before this instant (RFC 3339 or milliseconds).
    #[arg(long, value_parser = parse_instant)]
    until: Option<UnixMillis>,
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    match command {
        Command::Show { capfile } => show(dir, &capfile, out),
        Command::Delegate(args) => delegate(dir, args, out),
        Command::Revoke { id } => revoke(dir, &id, out),
        Command::Ls => list(dir, out),
    }
}

pub(crate) fn read_chain(path: &Path) -> Result<Chain> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| CliError::read(path, err, "capability file"))?;
    Chain::from_text(&text).map_err(|err| CliError::bad_capability_file(path, err))
}

/// The owner to verify against: this data dir's mesh, else the chain's own root issuer.
fn owner_for(dir: &DataDir, chain: &Chain) -> (PublicKey, bool) {
    match dir.owner_public() {
        Ok(owner) => (owner, true),
        Err(_) => (chain.root_link().capability().issuer, false),
    }
}

fn verify(owner: PublicKey, chain: &Chain, at: UnixMillis) -> std::result::Result<(), ChainError> {
    let mut verifier = Verifier::new(owner, VerifierConfig::default().with_cache_capacity(0));
    verifier
        .verify(chain, at, &RevocationSet::new(owner))
        .map(|_| ())
}

/// Where a capability stands in time at `now`: the window every link allows, and the
/// clock skew devices allow on either side of it.
struct Window {
    not_before: UnixMillis,
    expires: UnixMillis,
    skew: Duration,
    now: UnixMillis,
}

impl Window {
    fn of(chain: &Chain, now: UnixMillis) -> Self {
        let links = chain.links();
        let not_before = links.iter().map(|l| l.capability().not_before).max();
        let expires = links.iter().map(|l| l.capability().expires).min();
        Self {
            not_before: not_before.unwrap_or(UnixMillis(0)),
            expires: expires.unwrap_or(UnixMillis(0)),
            skew: VerifierConfig::default().clock_skew,
            now,
        }
    }

    fn expired(&self) -> bool {
        self.now >= self.expires
    }

    fn early(&self) -> bool {
        self.now < self.not_before
    }

    /// While outside its window by this clock but inside the skew devices allow: for how
    /// many more milliseconds devices accept it (expired), or since when (not yet valid).
    fn grace_ms(&self) -> Option<u64> {
        if self.expired() {
            let until = self.expires.saturating_add(self.skew);
            (self.now < until).then(|| until.0 - self.now.0)
        } else if self.early() {
            (self.now >= self.not_before.saturating_sub(self.skew))
                .then(|| self.not_before.0 - self.now.0)
        } else {
            None
        }
    }

    fn describe(&self) -> String {
        let ago = |t: UnixMillis| humantime::format_duration(whole(self.now.0.saturating_sub(t.0)));
        let in_ = |t: UnixMillis| humantime::format_duration(whole(t.0.saturating_sub(self.now.0)));
        let skew = humantime::format_duration(self.skew);
        if self.expired() {
            let mut text = format!("Expired at {} ({} ago).", self.expires, ago(self.expires));
            if let Some(grace) = self.grace_ms() {
                text.push_str(&format!(
                    " Devices still accept it for {} more: they allow {skew} of clock skew.",
                    humantime::format_duration(whole(grace))
                ));
            }
            text
        } else if self.early() {
            let mut text = format!(
                "Not valid yet: valid from {} (in {}).",
                self.not_before,
                in_(self.not_before)
            );
            if self.grace_ms().is_some() {
                text.push_str(&format!(
                    " Devices accept it already: they allow {skew} of clock skew."
                ));
            }
            text
        } else {
            format!("Expires at {} (in {}).", self.expires, in_(self.expires))
        }
    }
}

/// Milliseconds as a duration rounded to whole seconds (for people).
fn whole(ms: u64) -> Duration {
    Duration::from_secs(ms.div_ceil(1000))
}

fn show(dir: &DataDir, path: &Path, out: &mut Output) -> Result<()> {
    let chain = read_chain(path)?;
    let (owner, from_mesh) = owner_for(dir, &chain);
    let at = now();
    let status = verify(owner, &chain, at);
    let window = Window::of(&chain, at);
    let scope = if from_mesh {
        "against this mesh's owner"
    } else {
        "against its own root issuer (no mesh here)"
    };
    out.emit(
        || {
            let links = chain.links();
            let mut text = format!(
                "Capability {} ({} link{}), held by {}\n",
                chain.leaf().id().short(),
                links.len(),
                if links.len() == 1 { "" } else { "s" },
                chain.leaf().capability().audience,
            );
            for (index, link) in links.iter().enumerate() {
                let c = link.capability();
                let issuer = if c.issuer == owner {
                    format!("the mesh owner ({})", c.issuer.short())
                } else {
                    c.issuer.short()
                };
                let verb = if index == 0 { "issued" } else { "delegated" };
                text.push_str(&format!(
                    "[{index}] {id}: {verb} by {issuer} to {audience}\n    valid from {nb} until {exp}\n",
                    id = link.id().short(),
                    audience = c.audience.short(),
                    nb = c.not_before,
                    exp = c.expires,
                ));
                for grant in &c.grants {
                    text.push_str(&format!("    - {}\n", grant.describe()));
                }
            }
            text.push_str(&window.describe());
            text.push('\n');
            match &status {
                Ok(()) => text.push_str(&format!("Valid now, checked {scope}.\n")),
                Err(err) => text.push_str(&format!("NOT VALID, checked {scope}: {err}.\n")),
            }
            text
        },
        || {
            json!({
                "cap_id": chain.leaf().id().to_string(),
                "holder": chain.leaf().capability().audience.to_string(),
                "valid": status.is_ok(),
                "error": status.as_ref().err().map(ToString::to_string),
                "expired": window.expired(),
                "not_yet_valid": window.early(),
                "not_before": window.not_before.0,
                "expires": window.expires.0,
                "skew_allowance_ms": window.grace_ms(),
                "checked_against_mesh": from_mesh,
                "capability": chain_json(&chain),
            })
        },
    );
    // Rendered either way; a capability that does not verify is a refusal for scripts.
    status.map_err(CliError::refused)
}

fn delegate(dir: &DataDir, args: DelegateArgs, out: &mut Output) -> Result<()> {
    ensure_absent(&args.out)?;
    let chain = read_chain(&args.capfile)?;
    if chain.leaf().capability().device().is_some() {
        return Err(CliError::new(
            Exit::Refused,
            format!(
                "{} is a device certificate, which cannot be delegated: passed to another key \
                 it would make a second device of the same name",
                args.capfile.display()
            ),
        )
        .hint("a new device joins with its own certificate: run `hearth invite` on a device of the mesh and `hearth join` on the new one"));
    }
    let key = HolderKey::read(&args.key).map_err(|err| {
        CliError::key_file(err, &args.key, "pass the holder key file (made by `hearth key new`) whose public key the capability names")
    })?;
    let leaf = chain.leaf().capability();
    if key.public() != leaf.audience {
        return Err(CliError::new(
            Exit::Refused,
            format!(
                "{} does not hold this capability: it is held by {}",
                args.key.display(),
                leaf.audience.short()
            ),
        )
        .hint("pass the key whose public key the capability was approved for"));
    }
    let (owner, _) = owner_for(dir, &chain);
    let issued = now();
    verify(owner, &chain, issued).map_err(CliError::refused)?;

    let grants = narrow(&leaf.grants, &args)?;
    let expires = match args.expires {
        None => leaf.expires,
        Some(d) => {
            let wanted = issued.saturating_add(d);
            if wanted > leaf.expires {
                return Err(CliError::new(
                    Exit::Refused,
                    format!(
                        "a delegation cannot outlive its parent, which expires at {}",
                        leaf.expires
                    ),
                )
                .hint("pass a shorter --expires, or leave it out to keep the parent's expiry"));
            }
            wanted
        }
    };
    let child = Capability {
        issuer: key.public(),
        audience: args.holder,
        parent: Some(chain.leaf().id()),
        grants,
        not_before: issued.max(leaf.not_before),
        expires,
        nonce: random_bytes()?,
    };
    if !child.within(leaf) {
        return Err(CliError::new(
            Exit::Refused,
            "the narrowed capability would grant more than its parent",
        ));
    }
    let signed = child
        .sign(key.secret())
        .map_err(|err| CliError::new(Exit::Usage, format!("cannot sign the delegation: {err}")))?;
    let delegated = chain
        .extend(signed)
        .map_err(|err| CliError::new(Exit::Refused, format!("cannot delegate further: {err}")))?;
    verify(owner, &delegated, issued).map_err(CliError::refused)?;

    let leaf = delegated.leaf();
    let header = format!(
        "# Hearth capability {id}: delegated by {from} to {to}, until {until}.\n",
        id = leaf.id().short(),
        from = key.public().short(),
        to = args.holder.short(),
        until = leaf.capability().expires,
    );
    write_new_file(
        &args.out,
        format!("{header}{}\n", delegated.to_text()).as_bytes(),
    )?;
    remember(dir, &delegated);
    let id = leaf.id();
    let until = leaf.capability().expires;
    out.emit(
        || {
            format!(
                "Delegated capability {} to {} until {until}; written to {}.",
                id.short(),
                args.holder.short(),
                args.out.display()
            )
        },
        || {
            json!({
                "cap_id": id.to_string(),
                "file": args.out.display().to_string(),
                "holder": args.holder.to_string(),
                "expires": until.to_string(),
                "depth": delegated.links().len(),
                "capability": chain_json(&delegated),
            })
        },
    );
    Ok(())
}

fn name_set(values: &[String], flag: &str) -> Result<Option<BTreeSet<String>>> {
    if values.is_empty() {
        return Ok(None);
    }
    for value in values {
        if !is_valid_name(value) {
            return Err(CliError::new(
                Exit::Usage,
                format!("{value:?} is not a valid name for --{flag}"),
            )
            .hint("use letters, digits, `.`, `_`, `-` or `/`"));
        }
    }
    Ok(Some(values.iter().cloned().collect()))
}

fn intersect(
    current: &Option<BTreeSet<String>>,
    wanted: Option<BTreeSet<String>>,
) -> Option<BTreeSet<String>> {
    match (current, wanted) {
        (None, w) => w,
        (Some(c), None) => Some(c.clone()),
        (Some(c), Some(w)) => Some(c.intersection(&w).cloned().collect()),
    }
}

fn min_limit(current: Option<u64>, wanted: Option<u64>) -> Option<u64> {
    match (current, wanted) {
        (Some(c), Some(w)) => Some(c.min(w)),
        (c, w) => c.or(w),
    }
}

/// Applies the narrowing flags to the parent's grants.
fn narrow(parent: &[Grant], args: &DelegateArgs) -> Result<Vec<Grant>> {
    for pattern in &args.stores {
        if !is_valid_store_pattern(pattern) {
            return Err(CliError::new(
                Exit::Usage,
                format!("{pattern:?} is not a store name or pattern"),
            )
            .hint("use a name like `location` or a prefix like `sensors/*`"));
        }
    }
    let mut keep_actions = Actions::NONE;
    for name in &args.actions {
        keep_actions = keep_actions
            | Actions::parse_one(name).ok_or_else(|| {
                CliError::new(Exit::Usage, format!("{name:?} is not an action"))
                    .hint("use read, write, subscribe, run, export or admit")
            })?;
    }
    let fields = name_set(&args.fields, "fields")?;
    let devices = name_set(&args.devices, "devices")?;
    if let (Some(since), Some(until)) = (args.since, args.until)
        && until <= since
    {
        return Err(CliError::new(Exit::Usage, "--until must be after --since"));
    }

    let mut out = Vec::new();
    for grant in parent {
        let mut g = grant.clone();
        if let Resource::Store(pattern) = &grant.resource {
            if !args.stores.is_empty() {
                // Keep the narrowest form: the requested pattern where it lies within the
                // parent's, the parent's where it lies within the requested one.
                let narrowed = args.stores.iter().find_map(|wanted| {
                    let wanted_resource = Resource::Store(wanted.clone());
                    if wanted_resource.within(&grant.resource) {
                        Some(wanted_resource)
                    } else if grant.resource.within(&wanted_resource) {
                        Some(Resource::Store(pattern.clone()))
                    } else {
                        None
                    }
                });
                match narrowed {
                    Some(resource) => g.resource = resource,
                    None => continue,
                }
            }
        } else if args.no_export && matches!(grant.resource, Resource::Export(_)) {
            continue;
        }
        if !args.actions.is_empty() {
            let kept = g.actions.intersection(keep_actions);
            if kept.is_empty() && !matches!(g.resource, Resource::Device { .. }) {
                continue;
            }
            g.actions = kept;
        }
        let is_store = matches!(g.resource, Resource::Store(_));
        let c = &mut g.caveats;
        if !matches!(g.resource, Resource::Device { .. }) {
            c.devices = intersect(&c.devices, devices.clone());
            c.max_result_bytes = min_limit(c.max_result_bytes, args.max_result_bytes);
            c.max_runs = min_limit(c.max_runs, args.max_runs);
            if c.max_runs.is_some() {
                match (&c.counter, &args.counted_by) {
                    (None, Some(device)) => c.counter = Some(device.clone()),
                    (None, None) => {
                        return Err(CliError::new(
                            Exit::Usage,
                            "a number of runs needs a device that counts them for the whole mesh",
                        )
                        .hint("pass --counted-by DEVICE: a home device that is usually online"));
                    }
                    (Some(counter), Some(device)) if counter != device => {
                        return Err(CliError::new(
                            Exit::Refused,
                            format!(
                                "the capability's runs are counted on {counter}; a delegation \
                                 cannot count them elsewhere"
                            ),
                        )
                        .hint("leave out --counted-by"));
                    }
                    (Some(_), _) => {}
                }
            }
        }
        // Data caveats narrow what is read, so they apply to store grants.
        if is_store {
            c.fields = intersect(&c.fields, fields.clone());
            c.aggregate_only |= args.aggregate_only;
            if args.since.is_some() || args.until.is_some() {
                let current = c.time_range.unwrap_or(TimeRange {
                    start: UnixMillis(0),
                    end: UnixMillis(u64::MAX),
                });
                let start = current.start.max(args.since.unwrap_or(UnixMillis(0)));
                let end = current.end.min(args.until.unwrap_or(UnixMillis(u64::MAX)));
                c.time_range = Some(TimeRange {
                    start,
                    end: end.max(start),
                });
            }
        }
        out.push(g);
    }
    if out.is_empty() {
        return Err(CliError::new(
            Exit::Refused,
            "the narrowing flags leave nothing of the capability",
        )
        .hint("check --store and --actions against `hearth cap show CAPFILE`"));
    }
    Ok(out)
}

/// A chain as JSON: every link with its grants and caveats.
pub(crate) fn chain_json(chain: &Chain) -> Value {
    let links: Vec<Value> = chain
        .links()
        .iter()
        .map(|link| {
            let c = link.capability();
            json!({
                "id": link.id().to_string(),
                "issuer": c.issuer.to_string(),
                "audience": c.audience.to_string(),
                "parent": c.parent.map(|p| p.to_string()),
                "not_before": c.not_before.to_string(),
                "expires": c.expires.to_string(),
                "grants": c.grants.iter().map(grant_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "links": links, "text": chain.to_text() })
}

fn grant_json(grant: &Grant) -> Value {
    let c = &grant.caveats;
    json!({
        "resource": grant.resource.to_string(),
        "actions": grant.actions.names(),
        "caveats": {
            "fields": c.fields,
            "time_range": c.time_range.map(|r| json!({ "start": r.start.0, "end": r.end.0 })),
            "aggregate_only": c.aggregate_only,
            "max_result_bytes": c.max_result_bytes,
            "module_hash": c.module_hash.map(|h| h.to_string()),
            "devices": c.devices,
            "max_runs": c.max_runs,
            "counted_by": c.counter,
        },
        "description": grant.describe(),
    })
}

fn revoke(dir: &DataDir, id: &str, out: &mut Output) -> Result<()> {
    let id: hearth_protocol::capability::CapId = match id.parse() {
        Ok(id) => id,
        Err(_) if Path::new(id).is_file() => read_chain(Path::new(id))?.leaf().id(),
        Err(_) => {
            return Err(CliError::new(
                Exit::Usage,
                format!("{id:?} is neither a capability id (64 hex digits) nor a capability file"),
            ));
        }
    };
    let client = crate::client::Client::connect(dir)?;
    let answer: hearth_node::api::types::CapRevoked =
        client.send("POST", &format!("/v1/caps/{id}/revoke"), &())?;
    let revoked = dir.root().join(CAPS_DIR).join(REVOKED_FILE);
    if std::fs::create_dir_all(dir.root().join(CAPS_DIR)).is_ok() {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&revoked)
        {
            let _ = writeln!(file, "{id}");
        }
    }
    out.emit_typed(
        || format!("Revoked capability {id}: every device refuses it, and what was delegated from it, once it hears of it."),
        &answer,
    );
    Ok(())
}

/// Where this data directory keeps a copy of every capability signed or delegated
/// with it, for `hearth cap ls`.
const CAPS_DIR: &str = "caps";
/// The ids revoked with this data directory, one per line.
const REVOKED_FILE: &str = "revoked.txt";

/// Keeps a copy of a capability this data directory signed or delegated (best effort:
/// the capability file itself is what matters).
pub(crate) fn remember(dir: &DataDir, chain: &Chain) {
    if !dir.is_initialised() {
        return;
    }
    let caps = dir.root().join(CAPS_DIR);
    let path = caps.join(format!("{}.cap", chain.leaf().id()));
    if std::fs::create_dir_all(&caps).is_ok() && !path.exists() {
        let _ = hearth_protocol::statefile::write_durable(
            &path,
            format!("{}\n", chain.to_text()).as_bytes(),
        );
    }
}

fn list(dir: &DataDir, out: &mut Output) -> Result<()> {
    let caps = dir.root().join(CAPS_DIR);
    let revoked: std::collections::BTreeSet<String> =
        std::fs::read_to_string(caps.join(REVOKED_FILE))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_owned())
            .collect();
    let now = now();
    let mut list: Vec<(Chain, bool)> = std::fs::read_dir(&caps)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "cap"))
                .filter_map(|e| read_chain(&e.path()).ok())
                .map(|chain| {
                    let revoked = chain
                        .links()
                        .iter()
                        .any(|l| revoked.contains(&l.id().to_string()));
                    (chain, revoked)
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort_by_key(|(chain, _)| chain.leaf().capability().not_before);
    let state = |chain: &Chain, revoked: bool| {
        let leaf = chain.leaf().capability();
        if revoked {
            "revoked"
        } else if leaf.expires < now {
            "expired"
        } else if leaf.not_before > now {
            "not yet valid"
        } else {
            "valid"
        }
    };
    out.emit(
        || {
            if list.is_empty() {
                return "No capabilities were signed or delegated with this data directory.".into();
            }
            let mut text = String::new();
            for (chain, revoked) in &list {
                let leaf = chain.leaf().capability();
                let grants: Vec<String> = leaf.grants.iter().map(Grant::describe).collect();
                text.push_str(&format!(
                    "{}  holder {}  {}  until {}{}\n    {}\n",
                    chain.leaf().id().short(),
                    leaf.audience.short(),
                    state(chain, *revoked),
                    leaf.expires,
                    if chain.links().len() > 1 {
                        "  (delegated)"
                    } else {
                        ""
                    },
                    grants.join("\n    ")
                ));
            }
            text
        },
        || {
            json!({
                "caps": list.iter().map(|(chain, revoked)| {
                    let leaf = chain.leaf().capability();
                    json!({
                        "id": chain.leaf().id().to_string(),
                        "holder": leaf.audience.to_string(),
                        "issuer": leaf.issuer.to_string(),
                        "depth": chain.links().len(),
                        "not_before": leaf.not_before.to_string(),
                        "expires": leaf.expires.to_string(),
                        "state": state(chain, *revoked),
                        "grants": leaf.grants.iter().map(grant_json).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
            })
        },
    );
    Ok(())
}
