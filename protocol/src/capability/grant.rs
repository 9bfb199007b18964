//! Grants: what a capability allows (a resource, actions, caveats), the subset rule
//! used for attenuation, and the check of one access against a grant.

use std::collections::BTreeSet;
use std::fmt;

use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::truncate_for_message;
use crate::time::UnixMillis;

/// Longest store name, pattern, device name or field name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest export destination, in bytes.
pub const MAX_DESTINATION_LEN: usize = 512;
/// Most entries in a `fields` or `devices` caveat.
pub const MAX_SET_LEN: usize = 64;

/// The role a device plays in its mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// An always-on device at home: holds the owner's data by default.
    Home,
    /// A phone or laptop that comes and goes.
    Mobile,
    /// A rented server: holds a store only when the owner's policy names it.
    Cloud,
}

impl Role {
    /// The role's name as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Home => "home",
            Role::Mobile => "mobile",
            Role::Cloud => "cloud",
        }
    }

    fn bit(self) -> u8 {
        1 << (self.tag() - 1)
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            Role::Home => 1,
            Role::Mobile => 2,
            Role::Cloud => 3,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Role::Home),
            2 => Ok(Role::Mobile),
            3 => Ok(Role::Cloud),
            tag => Err(DecodeError::UnknownTag { what: "role", tag }),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "home" => Ok(Role::Home),
            "mobile" => Ok(Role::Mobile),
            "cloud" => Ok(Role::Cloud),
            other => Err(format!(
                "unknown role {:?}; expected home, mobile or cloud",
                truncate_for_message(other)
            )),
        }
    }
}

/// A set of roles, as a `devices:admit` grant names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);

    /// The set of these roles.
    pub fn of(roles: impl IntoIterator<Item = Role>) -> Self {
        Roles(roles.into_iter().fold(0, |bits, role| bits | role.bit()))
    }

    /// Does the set hold `role`?
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Is every role of `self` in `parent`?
    pub fn within(self, parent: Roles) -> bool {
        self.0 & !parent.0 == 0
    }

    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn is_valid(self) -> bool {
        self.0 & !0b111 == 0
    }

    /// The roles in the set, home first.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        [Role::Home, Role::Mobile, Role::Cloud]
            .into_iter()
            .filter(move |role| self.contains(*role))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        if names.is_empty() {
            f.write_str("no roles")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

impl std::str::FromStr for Roles {
    type Err = String;

    /// A comma-separated list of roles, e.g. `mobile,cloud`.
    fn from_str(text: &str) -> Result<Self, String> {
        let roles = text
            .split(',')
            .map(|part| part.trim().parse::<Role>().map_err(|err| err.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Roles::of(roles))
    }
}

/// A name of a store, device or field: 1 to 128 bytes of `A-Z a-z 0-9 . _ - /`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Does `pattern` (an exact value, or a prefix followed by `*`) match `value`?
fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// Is every value `child` matches also matched by `parent`?
fn pattern_within(child: &str, parent: &str) -> bool {
    match (child.strip_suffix('*'), parent.strip_suffix('*')) {
        (_, None) => child == parent,
        (Some(child_prefix), Some(parent_prefix)) => child_prefix.starts_with(parent_prefix),
        (None, Some(parent_prefix)) => child.starts_with(parent_prefix),
    }
}

/// A store name or pattern: `name`, `prefix*` or `*`.
pub fn is_valid_store_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => is_valid_name(prefix),
        None => is_valid_name(pattern),
    }
}

/// An export destination: an `https://` URL (or `http://` for tests), optionally ending
/// in `*` to allow every URL with that prefix.
pub fn is_valid_destination(destination: &str) -> bool {
    let body = destination.strip_suffix('*').unwrap_or(destination);
    let rest = body
        .strip_prefix("https://")
        .or_else(|| body.strip_prefix("http://"));
    matches!(rest, Some(host) if !host.is_empty())
        && destination.len() <= MAX_DESTINATION_LEN
        && body.bytes().all(|b| b.is_ascii_graphic() && b != b'*')
}

/// What a grant is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A store, or every store whose name matches a pattern.
    Store(String),
    /// Running computations.
    Compute,
    /// Sending data to a destination outside the mesh through the export gateway.
    Export(String),
    /// Issuing device certificates (admitting new devices) of these roles, under
    /// names matching a pattern (`name`, `prefix*` or `*`). A grant of an earlier
    /// format (resource tag `04`, no value) decodes with no roles and admits nothing.
    DevicesAdmit {
        /// The roles it may admit.
        roles: Roles,
        /// The names it may give.
        names: String,
    },
    /// The statement "the audience key is my device `name` with this role": a device
    /// certificate. It carries no actions and no caveats.
    Device {
        /// The device's name in the mesh.
        name: String,
        /// The device's role.
        role: Role,
    },
}

impl Resource {
    fn tag(&self) -> u8 {
        match self {
            Resource::Store(_) => 1,
            Resource::Compute => 2,
            Resource::Export(_) => 3,
            Resource::DevicesAdmit { roles, .. } if roles.is_empty() => 4,
            Resource::DevicesAdmit { .. } => 6,
            Resource::Device { .. } => 5,
        }
    }

    /// The actions that make sense on this resource.
    pub fn allowed_actions(&self) -> Actions {
        match self {
            Resource::Store(_) => {
                Actions::READ
                    | Actions::WRITE
                    | Actions::SUBSCRIBE
                    | Actions::PLACE
                    | Actions::REMOVE
            }
            Resource::Compute => Actions::RUN,
            Resource::Export(_) => Actions::EXPORT,
            Resource::DevicesAdmit { .. } => Actions::ADMIT,
            Resource::Device { .. } => Actions::NONE,
        }
    }

    /// Does this `devices:admit` resource cover a device of this name and role?
    pub fn admits(&self, name: &str, role: Role) -> bool {
        matches!(self, Resource::DevicesAdmit { roles, names }
            if roles.contains(role) && pattern_matches(names, name))
    }

    /// Is every concrete resource `self` names also named by `parent`?
    pub fn within(&self, parent: &Resource) -> bool {
        match (self, parent) {
            (Resource::Store(child), Resource::Store(parent)) => pattern_within(child, parent),
            (Resource::Export(child), Resource::Export(parent)) => pattern_within(child, parent),
            (Resource::Compute, Resource::Compute) => true,
            (
                Resource::DevicesAdmit { roles, names },
                Resource::DevicesAdmit {
                    roles: parent_roles,
                    names: parent_names,
                },
            ) => roles.within(*parent_roles) && pattern_within(names, parent_names),
            (Resource::Device { .. }, Resource::Device { .. }) => self == parent,
            _ => false,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Store(pattern) => write!(f, "store:{pattern}"),
            Resource::Compute => f.write_str("compute"),
            Resource::Export(destination) => write!(f, "export:{destination}"),
            Resource::DevicesAdmit { roles, names } => {
                write!(f, "devices:admit({roles}; names {names})")
            }
            Resource::Device { name, role } => write!(f, "device:{name} ({role})"),
        }
    }
}

/// A set of actions.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    /// No action.
    pub const NONE: Actions = Actions(0);
    /// Read records or keys.
    pub const READ: Actions = Actions(1);
    /// Write records or keys.
    pub const WRITE: Actions = Actions(1 << 1);
    /// Follow changes.
    pub const SUBSCRIBE: Actions = Actions(1 << 2);
    /// Run a computation.
    pub const RUN: Actions = Actions(1 << 3);
    /// Send data out through the export gateway.
    pub const EXPORT: Actions = Actions(1 << 4);
    /// Admit a device (issue a device certificate).
    pub const ADMIT: Actions = Actions(1 << 5);
    /// Create a store or change which devices hold it (sign its placement).
    pub const PLACE: Actions = Actions(1 << 6);
    /// Remove a store from every device of the mesh.
    pub const REMOVE: Actions = Actions(1 << 7);

    const ALL: [(Actions, &'static str); 8] = [
        (Actions::READ, "read"),
        (Actions::WRITE, "write"),
        (Actions::SUBSCRIBE, "subscribe"),
        (Actions::RUN, "run"),
        (Actions::EXPORT, "export"),
        (Actions::ADMIT, "admit"),
        (Actions::PLACE, "place"),
        (Actions::REMOVE, "remove"),
    ];

    /// Does this set contain every action of `other`?
    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The actions in both sets.
    pub fn intersection(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The names of the actions in the set, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|(action, _)| self.contains(*action))
            .map(|(_, name)| *name)
            .collect()
    }

    /// Parses one action name.
    pub fn parse_one(name: &str) -> Option<Actions> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(action, _)| *action)
    }
}

impl std::ops::BitOr for Actions {
    type Output = Actions;

    fn bitor(self, rhs: Actions) -> Actions {
        Actions(self.0 | rhs.0)
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actions({})", self.names().join("|"))
    }
}

/// A closed-open range of data timestamps, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeRange {
    /// First instant included.
    pub start: UnixMillis,
    /// First instant excluded.
    pub end: UnixMillis,
}

impl TimeRange {
    /// Is `self` inside `other`?
    pub fn within(&self, other: &TimeRange) -> bool {
        self.start >= other.start && self.end <= other.end
    }
}

/// The SHA-256 of a WebAssembly module's bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    /// Hashes module bytes.
    pub fn of(module: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(module).into())
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({}..)", hex::encode(&self.0[..6]))
    }
}

impl std::str::FromStr for ModuleHash {
    type Err = String;

    /// Parses `sha256:<64 hex>` or the bare 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| "a module hash is `sha256:` followed by 64 hex digits".to_owned())?;
        Ok(Self(out))
    }
}

/// Conditions that narrow a grant. An absent caveat places no limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Caveats {
    /// Only these fields of a record may be read (dotted paths into the value).
    pub fields: Option<BTreeSet<String>>,
    /// Only records whose timestamps fall in this range may be read.
    pub time_range: Option<TimeRange>,
    /// Only aggregates (count, sum, mean, ...) may be computed; no raw records returned.
    pub aggregate_only: bool,
    /// A result may be at most this many bytes.
    pub max_result_bytes: Option<u64>,
    /// Only the module with this hash may run.
    pub module_hash: Option<ModuleHash>,
    /// The computation may run only on these devices (by name).
    pub devices: Option<BTreeSet<String>>,
    /// The capability may be used for at most this many runs.
    pub max_runs: Option<u64>,
    /// The device (by name) that counts the runs of `max_runs`, for the whole mesh:
    /// a run anywhere is counted there before it starts.
    pub counter: Option<String>,
    /// Each export waits in the outbox until the owner releases it (export grants).
    pub review: bool,
    /// At most this many exports per UTC day, counted by the device that sends them
    /// (export grants).
    pub max_exports_per_day: Option<u64>,
    /// At most this many bytes of exports per UTC day, counted by the device that
    /// sends them (export grants).
    pub max_export_bytes_per_day: Option<u64>,
}

const CAVEAT_FIELDS: u8 = 1;
const CAVEAT_TIME_RANGE: u8 = 1 << 1;
const CAVEAT_AGGREGATE_ONLY: u8 = 1 << 2;
const CAVEAT_MAX_RESULT_BYTES: u8 = 1 << 3;
const CAVEAT_MODULE_HASH: u8 = 1 << 4;
const CAVEAT_DEVICES: u8 = 1 << 5;
const CAVEAT_MAX_RUNS: u8 = 1 << 6;
/// More caveats: a second flag byte follows.
const CAVEAT_MORE: u8 = 1 << 7;
const CAVEAT2_COUNTER: u8 = 1;
const CAVEAT2_REVIEW: u8 = 1 << 1;
const CAVEAT2_EXPORTS_PER_DAY: u8 = 1 << 2;
const CAVEAT2_EXPORT_BYTES_PER_DAY: u8 = 1 << 3;
const CAVEAT2_KNOWN: u8 =
    CAVEAT2_COUNTER | CAVEAT2_REVIEW | CAVEAT2_EXPORTS_PER_DAY | CAVEAT2_EXPORT_BYTES_PER_DAY;

fn set_within(child: &Option<BTreeSet<String>>, parent: &Option<BTreeSet<String>>) -> bool {
    match (child, parent) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(child), Some(parent)) => child.is_subset(parent),
    }
}

fn limit_within<T: PartialOrd>(child: Option<T>, parent: Option<T>) -> bool {
    match (child, parent) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(child), Some(parent)) => child <= parent,
    }
}

impl Caveats {
    /// Is every access these caveats allow also allowed by `parent`?
    pub fn within(&self, parent: &Caveats) -> bool {
        set_within(&self.fields, &parent.fields)
            && match (&self.time_range, &parent.time_range) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(child), Some(parent)) => child.within(parent),
            }
            && (self.aggregate_only || !parent.aggregate_only)
            && limit_within(self.max_result_bytes, parent.max_result_bytes)
            && match (&self.module_hash, &parent.module_hash) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(child), Some(parent)) => child == parent,
            }
            && set_within(&self.devices, &parent.devices)
            && limit_within(self.max_runs, parent.max_runs)
            // Runs a parent limits are counted where the parent says, or they would be
            // counted afresh elsewhere.
            && (parent.counter.is_none() || self.counter == parent.counter)
            && (self.review || !parent.review)
            && limit_within(self.max_exports_per_day, parent.max_exports_per_day)
            && limit_within(self.max_export_bytes_per_day, parent.max_export_bytes_per_day)
    }

    /// Are all caveats absent?
    pub fn is_empty(&self) -> bool {
        *self == Caveats::default()
    }

    fn encode(&self, w: &mut Writer) {
        let mut present = 0u8;
        if self.fields.is_some() {
            present |= CAVEAT_FIELDS;
        }
        if self.time_range.is_some() {
            present |= CAVEAT_TIME_RANGE;
        }
        if self.aggregate_only {
            present |= CAVEAT_AGGREGATE_ONLY;
        }
        if self.max_result_bytes.is_some() {
            present |= CAVEAT_MAX_RESULT_BYTES;
        }
        if self.module_hash.is_some() {
            present |= CAVEAT_MODULE_HASH;
        }
        if self.devices.is_some() {
            present |= CAVEAT_DEVICES;
        }
        if self.max_runs.is_some() {
            present |= CAVEAT_MAX_RUNS;
        }
        let mut more = 0u8;
        if self.counter.is_some() {
            more |= CAVEAT2_COUNTER;
        }
        if self.review {
            more |= CAVEAT2_REVIEW;
        }
        if self.max_exports_per_day.is_some() {
            more |= CAVEAT2_EXPORTS_PER_DAY;
        }
        if self.max_export_bytes_per_day.is_some() {
            more |= CAVEAT2_EXPORT_BYTES_PER_DAY;
        }
        if more != 0 {
            present |= CAVEAT_MORE;
        }
        w.u8(present);
        if more != 0 {
            w.u8(more);
        }
        if let Some(fields) = &self.fields {
            encode_set(w, fields);
        }
        if let Some(range) = &self.time_range {
            w.varint(range.start.0);
            w.varint(range.end.0);
        }
        if let Some(max) = self.max_result_bytes {
            w.varint(max);
        }
        if let Some(hash) = &self.module_hash {
            w.raw(&hash.0);
        }
        if let Some(devices) = &self.devices {
            encode_set(w, devices);
        }
        if let Some(max) = self.max_runs {
            w.varint(max);
        }
        if let Some(counter) = &self.counter {
            w.str(counter);
        }
        if let Some(max) = self.max_exports_per_day {
            w.varint(max);
        }
        if let Some(max) = self.max_export_bytes_per_day {
            w.varint(max);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let present = r.u8("caveat flags")?;
        let more = if present & CAVEAT_MORE != 0 {
            let more = r.u8("more caveat flags")?;
            // Unknown caveats, or the second byte where none was needed (one grant has
            // one encoding).
            if more & !CAVEAT2_KNOWN != 0 || more == 0 {
                return Err(DecodeError::UnknownTag {
                    what: "caveat",
                    tag: more,
                });
            }
            more
        } else {
            0
        };
        let mut caveats = Caveats::default();
        if present & CAVEAT_FIELDS != 0 {
            caveats.fields = Some(decode_set(r, "fields caveat")?);
        }
        if present & CAVEAT_TIME_RANGE != 0 {
            let start = UnixMillis(r.varint("time range start")?);
            let end = UnixMillis(r.varint("time range end")?);
            if end < start {
                return Err(invalid("the time range ends before it starts"));
            }
            caveats.time_range = Some(TimeRange { start, end });
        }
        caveats.aggregate_only = present & CAVEAT_AGGREGATE_ONLY != 0;
        if present & CAVEAT_MAX_RESULT_BYTES != 0 {
            caveats.max_result_bytes = Some(r.varint("max result bytes")?);
        }
        if present & CAVEAT_MODULE_HASH != 0 {
            caveats.module_hash = Some(ModuleHash(r.array("module hash")?));
        }
        if present & CAVEAT_DEVICES != 0 {
            caveats.devices = Some(decode_set(r, "devices caveat")?);
        }
        if present & CAVEAT_MAX_RUNS != 0 {
            caveats.max_runs = Some(r.varint("max runs")?);
        }
        if more & CAVEAT2_COUNTER != 0 {
            caveats.counter = Some(r.str(MAX_NAME_LEN, "run counter")?.to_owned());
        }
        caveats.review = more & CAVEAT2_REVIEW != 0;
        if more & CAVEAT2_EXPORTS_PER_DAY != 0 {
            caveats.max_exports_per_day = Some(r.varint("exports per day")?);
        }
        if more & CAVEAT2_EXPORT_BYTES_PER_DAY != 0 {
            caveats.max_export_bytes_per_day = Some(r.varint("export bytes per day")?);
        }
        Ok(caveats)
    }

    /// Checks the rules the encoding cannot express.
    fn validate(&self) -> Result<(), String> {
        for (what, set) in [("fields", &self.fields), ("devices", &self.devices)] {
            if let Some(set) = set {
                if set.len() > MAX_SET_LEN {
                    return Err(format!(
                        "the {what} caveat lists more than {MAX_SET_LEN} names"
                    ));
                }
                if let Some(bad) = set.iter().find(|name| !is_valid_name(name)) {
                    return Err(format!(
                        "{:?} is not a valid name in the {what} caveat",
                        truncate_for_message(bad)
                    ));
                }
            }
        }
        if let Some(range) = &self.time_range
            && range.end < range.start
        {
            return Err("the time range ends before it starts".into());
        }
        if let Some(counter) = &self.counter {
            if !is_valid_name(counter) {
                return Err(format!(
                    "{:?} is not a valid device name for the run counter",
                    truncate_for_message(counter)
                ));
            }
            if self.max_runs.is_none() {
                return Err("a run counter is named but no number of runs".into());
            }
        }
        Ok(())
    }
}

fn encode_set(w: &mut Writer, set: &BTreeSet<String>) {
    w.varint(set.len() as u64);
    for name in set {
        w.str(name);
    }
}

fn decode_set(r: &mut Reader<'_>, what: &'static str) -> Result<BTreeSet<String>, DecodeError> {
    let count = r.len(MAX_SET_LEN, what)?;
    let mut set = BTreeSet::new();
    for _ in 0..count {
        set.insert(r.str(MAX_NAME_LEN, what)?.to_owned());
    }
    Ok(set)
}

fn invalid(reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        what: "capability",
        reason: reason.into(),
    }
}

/// One permission: a resource, the actions allowed on it and the caveats that narrow it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// What the grant is about.
    pub resource: Resource,
    /// What may be done with it.
    pub actions: Actions,
    /// The conditions that narrow it.
    pub caveats: Caveats,
}

impl Grant {
    /// A grant with no caveats.
    pub fn new(resource: Resource, actions: Actions) -> Self {
        Self {
            resource,
            actions,
            caveats: Caveats::default(),
        }
    }

    /// Is every access this grant allows also allowed by `parent`?
    ///
    /// A device certificate (`Resource::Device`) is within a `devices:admit` grant with
    /// the `admit` action: that is how a delegated admitter issues certificates.
    pub fn within(&self, parent: &Grant) -> bool {
        if let (Resource::Device { name, role }, Resource::DevicesAdmit { roles, names }) =
            (&self.resource, &parent.resource)
        {
            return parent.actions.contains(Actions::ADMIT)
                && roles.contains(*role)
                && pattern_matches(names, name);
        }
        self.resource.within(&parent.resource)
            && parent.actions.contains(self.actions)
            && self.caveats.within(&parent.caveats)
    }

    /// The grant in plain words, e.g. `read the store "location" (only fields lat, lon;
    /// aggregates only; at most 10 runs)`.
    pub fn describe(&self) -> String {
        let what = match &self.resource {
            Resource::Store(p) if p == "*" => "every store".to_owned(),
            Resource::Store(p) if p.ends_with('*') => {
                format!(
                    "every store whose name starts with \"{}\"",
                    p.trim_end_matches('*')
                )
            }
            Resource::Store(p) => format!("the store \"{p}\""),
            Resource::Compute => "computations".to_owned(),
            Resource::Export(d) if d.ends_with('*') => {
                format!(
                    "data to any URL starting with {} (outside the mesh)",
                    d.trim_end_matches('*')
                )
            }
            Resource::Export(d) => format!("data to {d} (outside the mesh)"),
            Resource::DevicesAdmit { roles, .. } if roles.is_empty() => {
                "no new devices (a grant of an earlier format; issue a new one)".to_owned()
            }
            Resource::DevicesAdmit { roles, names } if names == "*" => {
                format!("new {roles} devices into the mesh")
            }
            Resource::DevicesAdmit { roles, names } => match names.strip_suffix('*') {
                Some(prefix) => {
                    format!("new {roles} devices whose name starts with \"{prefix}\" into the mesh")
                }
                None => format!("a new {roles} device named \"{names}\" into the mesh"),
            },
            Resource::Device { name, role } => {
                return format!("is the mesh's device \"{name}\" with role {role}");
            }
        };
        let verbs = self.actions.names().join(" and ");
        let c = &self.caveats;
        let mut limits: Vec<String> = Vec::new();
        if let Some(fields) = &c.fields {
            limits.push(format!(
                "only field{} {}",
                if fields.len() == 1 { "" } else { "s" },
                fields.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if c.aggregate_only {
            limits.push("aggregates only".into());
        }
        if let Some(r) = &c.time_range {
            limits.push(match (r.start.0, r.end.0) {
                (0, u64::MAX) => "data of any time".into(),
                (_, u64::MAX) => format!("data from {} on", r.start),
                (0, _) => format!("data before {}", r.end),
                _ => format!("data from {} until {}", r.start, r.end),
            });
        }
        if let Some(max) = c.max_result_bytes {
            limits.push(format!("results of at most {max} bytes"));
        }
        if let Some(hash) = &c.module_hash {
            limits.push(format!("only module sha256:{}…", hex::encode(&hash.0[..6])));
        }
        if let Some(devices) = &c.devices {
            limits.push(format!(
                "only on {}",
                devices.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(max) = c.max_runs {
            limits.push(format!(
                "at most {max} run{}{}",
                if max == 1 { "" } else { "s" },
                c.counter
                    .as_ref()
                    .map(|d| format!(" in the mesh, counted on {d}"))
                    .unwrap_or_default()
            ));
        }
        if c.review {
            limits.push("each export released by the owner".into());
        }
        if let Some(max) = c.max_exports_per_day {
            limits.push(format!(
                "at most {max} export{} a day",
                if max == 1 { "" } else { "s" }
            ));
        }
        if let Some(max) = c.max_export_bytes_per_day {
            limits.push(format!("at most {max} bytes of exports a day"));
        }
        if limits.is_empty() {
            format!("{verbs} {what}")
        } else {
            format!("{verbs} {what} ({})", limits.join("; "))
        }
    }

    /// Does this grant allow `access`?
    pub fn allows(&self, access: &Access<'_>) -> bool {
        let resource_ok = match (&self.resource, access.resource) {
            (Resource::Store(pattern), Resource::Store(name)) => pattern_matches(pattern, name),
            (Resource::Export(pattern), Resource::Export(destination)) => {
                pattern_matches(pattern, destination)
            }
            (granted, asked) => granted == asked,
        };
        if !resource_ok || access.action.is_empty() || !self.actions.contains(access.action) {
            return false;
        }
        let c = &self.caveats;
        let fields_ok = match (&c.fields, access.fields) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(allowed), Some(asked)) => asked.is_subset(allowed),
        };
        let time_ok = match (&c.time_range, &access.time_range) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(allowed), Some(asked)) => asked.within(allowed),
        };
        let aggregate_ok = !c.aggregate_only || access.aggregate;
        let size_ok = c
            .max_result_bytes
            .is_none_or(|max| access.result_bytes <= max);
        let module_ok = match (&c.module_hash, &access.module_hash) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(allowed), Some(asked)) => allowed == asked,
        };
        let device_ok = match (&c.devices, access.device) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(allowed), Some(device)) => allowed.contains(device),
        };
        let runs_ok = c.max_runs.is_none_or(|max| access.run_number <= max);
        fields_ok && time_ok && aggregate_ok && size_ok && module_ok && device_ok && runs_ok
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(self.resource.tag());
        match &self.resource {
            Resource::Store(pattern) => w.str(pattern),
            Resource::Export(destination) => w.str(destination),
            Resource::Device { name, role } => {
                w.str(name);
                w.u8(role.tag());
            }
            Resource::DevicesAdmit { roles, names } => {
                if !roles.is_empty() {
                    w.u8(roles.0);
                    w.str(names);
                }
            }
            Resource::Compute => {}
        }
        w.u8(self.actions.0);
        self.caveats.encode(w);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8("resource")?;
        let resource = match tag {
            1 => Resource::Store(r.str(MAX_NAME_LEN + 1, "store pattern")?.to_owned()),
            2 => Resource::Compute,
            3 => Resource::Export(r.str(MAX_DESTINATION_LEN, "export destination")?.to_owned()),
            4 => Resource::DevicesAdmit {
                roles: Roles::NONE,
                names: String::new(),
            },
            6 => {
                let roles = Roles(r.u8("admitted roles")?);
                if roles.is_empty() {
                    return Err(invalid("a devices:admit grant names at least one role"));
                }
                let names = r.str(MAX_NAME_LEN + 1, "admitted names")?.to_owned();
                Resource::DevicesAdmit { roles, names }
            }
            5 => {
                let name = r.str(MAX_NAME_LEN, "device name")?.to_owned();
                let role = Role::from_tag(r.u8("role")?)?;
                Resource::Device { name, role }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "resource",
                    tag,
                });
            }
        };
        let actions = Actions(r.u8("actions")?);
        let caveats = Caveats::decode(r)?;
        let grant = Grant {
            resource,
            actions,
            caveats,
        };
        grant.validate().map_err(invalid)?;
        Ok(grant)
    }

    /// Checks the rules of a well-formed grant; the reason is a sentence fragment.
    pub fn validate(&self) -> Result<(), String> {
        match &self.resource {
            Resource::Store(pattern) if !is_valid_store_pattern(pattern) => {
                return Err(format!(
                    "{:?} is not a valid store name or pattern",
                    truncate_for_message(pattern)
                ));
            }
            Resource::Export(destination) if !is_valid_destination(destination) => {
                return Err(format!(
                    "{:?} is not a valid export destination (an https:// URL)",
                    truncate_for_message(destination)
                ));
            }
            Resource::DevicesAdmit { roles, names }
                if !roles.is_empty() && (!roles.is_valid() || !is_valid_store_pattern(names)) =>
            {
                return Err(format!(
                    "a devices:admit grant names one to three roles and a valid name pattern, \
                     not {:#04x} and {:?}",
                    roles.0,
                    truncate_for_message(names)
                ));
            }
            Resource::Device { name, .. } => {
                if !is_valid_name(name) {
                    return Err(format!(
                        "{:?} is not a valid device name",
                        truncate_for_message(name)
                    ));
                }
                if !self.actions.is_empty() || !self.caveats.is_empty() {
                    return Err("a device certificate grant carries no actions or caveats".into());
                }
                return Ok(());
            }
            _ => {}
        }
        let allowed = self.resource.allowed_actions();
        if self.actions.is_empty() {
            return Err(format!("the grant on {} allows no action", self.resource));
        }
        if !allowed.contains(self.actions) {
            return Err(format!(
                "the grant on {} names actions ({}) that do not apply to it",
                self.resource,
                self.actions.names().join(", ")
            ));
        }
        self.caveats.validate()
    }
}

/// One access to check against a set of grants.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// The concrete resource (a store name, not a pattern).
    pub resource: &'a Resource,
    /// The single action performed.
    pub action: Actions,
    /// The fields read, or `None` for whole records.
    pub fields: Option<&'a BTreeSet<String>>,
    /// The data time range read, or `None` for all time.
    pub time_range: Option<TimeRange>,
    /// Is the access an aggregate rather than raw records?
    pub aggregate: bool,
    /// The size of the result in bytes.
    pub result_bytes: u64,
    /// The module that runs, if any.
    pub module_hash: Option<ModuleHash>,
    /// The device the access happens on, if it matters.
    pub device: Option<&'a str>,
    /// The 1-based number of this run under the capability.
    pub run_number: u64,
}

impl<'a> Access<'a> {
    /// The plainest access: `action` on `resource`, everything else unconstrained.
    pub fn new(resource: &'a Resource, action: Actions) -> Self {
        Self {
            resource,
            action,
            fields: None,
            time_range: None,
            aggregate: false,
            result_bytes: 0,
            module_hash: None,
            device: None,
            run_number: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_stay_counted_where_the_parent_counts_them() {
        let counted = |counter: Option<&str>| Caveats {
            max_runs: Some(3),
            counter: counter.map(str::to_owned),
            ..Caveats::default()
        };
        assert!(counted(Some("hub")).within(&counted(Some("hub"))));
        assert!(!counted(Some("home")).within(&counted(Some("hub"))));
        assert!(!counted(None).within(&counted(Some("hub"))));
        assert!(counted(Some("hub")).within(&counted(None)));
        // The counter survives encoding; a second flag byte is taken only with a
        // known caveat in it.
        let mut w = Writer::default();
        counted(Some("hub")).encode(&mut w);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(Caveats::decode(&mut r).unwrap(), counted(Some("hub")));
        for more in [0u8, 0x10, 0x80] {
            let bytes = [CAVEAT_MORE, more];
            assert!(Caveats::decode(&mut Reader::new(&bytes)).is_err());
        }
        // A counter with no number of runs, or not a device name, is not valid.
        let mut lone = counted(Some("hub"));
        lone.max_runs = None;
        assert!(lone.validate().is_err());
        assert!(counted(Some("not a name!")).validate().is_err());
    }

    #[test]
    fn export_consent_and_daily_limits_survive_encoding_and_stay_tight() {
        let consent = |review: bool, per_day: Option<u64>, bytes: Option<u64>| Caveats {
            review,
            max_exports_per_day: per_day,
            max_export_bytes_per_day: bytes,
            ..Caveats::default()
        };
        for caveats in [
            consent(true, None, None),
            consent(false, Some(7), None),
            consent(true, Some(1), Some(4096)),
        ] {
            let mut w = Writer::default();
            caveats.encode(&mut w);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            assert_eq!(Caveats::decode(&mut r).unwrap(), caveats);
        }
        let parent = consent(true, Some(5), Some(1000));
        assert!(consent(true, Some(5), Some(1000)).within(&parent));
        assert!(consent(true, Some(1), Some(10)).within(&parent));
        // A delegation cannot drop the owner's review or raise a limit.
        assert!(!consent(false, Some(5), Some(1000)).within(&parent));
        assert!(!consent(true, Some(6), Some(1000)).within(&parent));
        assert!(!consent(true, None, Some(1000)).within(&parent));
        assert!(!consent(true, Some(5), None).within(&parent));
        assert!(consent(true, None, None).within(&Caveats::default()));
    }

    #[test]
    fn store_patterns_nest() {
        assert!(pattern_within("sensors/kitchen", "sensors/*"));
        assert!(pattern_within("sensors/k*", "sensors/*"));
        assert!(pattern_within("sensors/*", "*"));
        assert!(!pattern_within("sensors/*", "sensors/kitchen"));
        assert!(!pattern_within("*", "sensors/*"));
        assert!(!pattern_within("location", "sensors/*"));
        assert!(is_valid_store_pattern("*"));
        assert!(!is_valid_store_pattern("a*b"));
        assert!(!is_valid_store_pattern("**"));
        assert!(!is_valid_store_pattern(""));
    }

    #[test]
    fn destinations() {
        assert!(is_valid_destination("https://example.org/upload"));
        assert!(is_valid_destination("https://example.org/*"));
        assert!(!is_valid_destination("ftp://example.org"));
        assert!(!is_valid_destination("https://"));
        assert!(!is_valid_destination("https://a b"));
        assert!(!is_valid_destination("https://a*b"));
    }

    #[test]
    fn device_certificate_within_admit() {
        let cert = Grant::new(
            Resource::Device {
                name: "phone".into(),
                role: Role::Mobile,
            },
            Actions::NONE,
        );
        assert!(cert.validate().is_ok());
        let admit = |roles: &str, names: &str| {
            Grant::new(
                Resource::DevicesAdmit {
                    roles: roles.parse().unwrap(),
                    names: names.into(),
                },
                Actions::ADMIT,
            )
        };
        assert!(cert.within(&admit("mobile", "*")));
        assert!(cert.within(&admit("home,mobile", "ph*")));
        assert!(cert.within(&admit("mobile", "phone")));
        // A grant for other roles or names does not cover it.
        assert!(!cert.within(&admit("home,cloud", "*")));
        assert!(!cert.within(&admit("mobile", "tablet*")));
        assert!(!cert.within(&Grant::new(Resource::Compute, Actions::RUN)));
        // A grant of the earlier format (no roles) admits nothing.
        let legacy = Grant::new(
            Resource::DevicesAdmit {
                roles: Roles::NONE,
                names: String::new(),
            },
            Actions::ADMIT,
        );
        assert!(!cert.within(&legacy));
        // Delegating an admit grant narrows it: roles and names within the parent's.
        assert!(admit("mobile", "ph*").within(&admit("home,mobile", "*")));
        assert!(!admit("home", "*").within(&admit("mobile", "*")));
        assert!(!admit("mobile", "*").within(&admit("mobile", "ph*")));
        // Every form round-trips; an empty role set under the new tag is refused.
        for grant in [admit("mobile,cloud", "phone-*"), legacy] {
            let mut w = Writer::with_capacity(64);
            grant.encode(&mut w);
            let bytes = w.into_bytes();
            let back = Grant::decode(&mut Reader::new(&bytes)).unwrap();
            assert_eq!(back, grant);
        }
        let mut w = Writer::with_capacity(64);
        admit("mobile", "*").encode(&mut w);
        let mut bytes = w.into_bytes();
        bytes[1] = 0;
        assert!(Grant::decode(&mut Reader::new(&bytes)).is_err());
        bytes[1] = 0b1000;
        assert!(Grant::decode(&mut Reader::new(&bytes)).is_err());
        assert!("mobile,tv".parse::<Roles>().is_err());
    }

    #[test]
    fn caveats_narrow_access() {
        let fields: BTreeSet<String> = ["lat".to_owned()].into();
        let grant = Grant {
            resource: Resource::Store("location".into()),
            actions: Actions::READ,
            caveats: Caveats {
                fields: Some(fields.clone()),
                aggregate_only: true,
                ..Caveats::default()
            },
        };
        let store = Resource::Store("location".into());
        let mut access = Access::new(&store, Actions::READ);
        assert!(!grant.allows(&access), "whole records are not allowed");
        access.fields = Some(&fields);
        assert!(!grant.allows(&access), "raw reads are not allowed");
        access.aggregate = true;
        assert!(grant.allows(&access));
        access.action = Actions::WRITE;
        assert!(!grant.allows(&access));
    }
}
