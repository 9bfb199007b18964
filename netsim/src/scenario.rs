//! Scenario files: topology, link classes, workloads, faults and strategy, in TOML,
//! checked field by field. See `docs/netsim.md` for the format.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hearth_protocol::capability::Role;
use hearth_protocol::sync::placement::Policy;
use serde::Deserialize;

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read the scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not TOML of the scenario's shape.
    #[error("the scenario is not valid: {0}")]
    Syntax(String),
    /// A field holds a value the simulator cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// Where, as a dotted path (`links.lan.loss`, `devices[1].role`).
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Where jobs run and where data is replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strategy {
    /// Hearth: each store keeps its policy; a job runs on a holder of its data.
    ComputeToData,
    /// Every store is uploaded to the cloud device; jobs run there.
    DataToCloud,
    /// Every store is replicated to the home devices; jobs run there.
    DataToHome,
    /// As compute-to-data, and every store is also held sealed (ciphertext only) by the
    /// cloud devices, which forward it between the plaintext holders; jobs run only
    /// where the plaintext is.
    DataToSealedCloud,
}

impl Strategy {
    /// Every strategy, in the order of comparisons.
    pub const ALL: [Strategy; 4] = [
        Strategy::ComputeToData,
        Strategy::DataToCloud,
        Strategy::DataToHome,
        Strategy::DataToSealedCloud,
    ];

    /// The name used in scenario files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::ComputeToData => "compute-to-data",
            Strategy::DataToCloud => "data-to-cloud",
            Strategy::DataToHome => "data-to-home",
            Strategy::DataToSealedCloud => "data-to-sealed-cloud",
        }
    }

    /// Every name, for messages: `a, b, c or d`.
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }

    /// Parses a strategy name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text.trim())
    }
}

/// What a lost message means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streams over QUIC or TCP, as the node uses: a lost packet is sent again after a
    /// retransmission timeout (the message arrives late), a duplicate is discarded.
    Reliable,
    /// Every loss and duplicate reaches the protocol machines (a stress model).
    Datagram,
}

/// How a link's one-way latency is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always the same.
    Fixed(Duration),
    /// Uniform in `base × [1 - spread, 1 + spread]`.
    Uniform {
        /// The centre.
        base: Duration,
        /// Relative half-width, in `[0, 1]`.
        spread: f64,
    },
    /// Log-normal with this median and shape `sigma`.
    LogNormal {
        /// The median.
        median: Duration,
        /// The standard deviation of the logarithm.
        sigma: f64,
    },
}

/// A class of link: latency, bandwidth and per-message faults.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkClass {
    /// The class name (`lan`, `cellular`, ...).
    pub name: String,
    /// One-way latency.
    pub latency: Latency,
    /// Bandwidth in bits per second, each direction.
    pub bits_per_second: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back by `reorder_delay` (and so overtaken).
    pub reorder: f64,
    /// Extra delay of a reordered message.
    pub reorder_delay: Duration,
}

/// When a device sits on its household's LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtHome {
    /// Always on the LAN.
    Always,
    /// Never: always on its access link.
    Never,
    /// Every day from the first time of day (ms) until the second.
    Daily(u64, u64),
}

/// The NAT in front of a device, as the mesh's connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nat {
    /// None: the device has a public address and can be dialled.
    #[default]
    None,
    /// Endpoint-independent mapping (a home router, most Wi-Fi): it cannot be dialled
    /// first, but a hole punch with another cone NAT gets through.
    Cone,
    /// Endpoint-dependent, port-randomising mapping (many carrier NATs): no hole punch
    /// gets through; reaching another NATed device takes a relay.
    Symmetric,
}

impl Nat {
    fn parse(field: &str, text: Option<&str>) -> Result<Self, ScenarioError> {
        match text {
            None | Some("none") => Ok(Nat::None),
            Some("cone") => Ok(Nat::Cone),
            Some("symmetric") => Ok(Nat::Symmetric),
            Some(other) => Err(invalid(
                field,
                format!("{other:?} is not a NAT: use none, cone or symmetric"),
            )),
        }
    }
}

/// One device of each household.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Its name in the household's mesh.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The link class it uses when not on the home LAN.
    pub access: String,
    /// When it is on the home LAN.
    pub at_home: AtHome,
    /// The NAT in front of it on its access link (at home, the household's router
    /// is: [`Scenario::home_nat`]).
    pub nat: Nat,
    /// Does it relay for the other devices of its household (a cloud device with a
    /// public address does, unless told not to)?
    pub relay: bool,
}

/// What a stream of readings looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A sensor reading (`{"celsius": ..}`).
    Sensor,
    /// A location fix (`{"lat": .., "lon": .., "acc": ..}`).
    Location,
}

/// A device appending readings to its own store at a rate.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// The store's name.
    pub store: String,
    /// The writing device (the store's origin).
    pub device: String,
    /// What is written.
    pub kind: StreamKind,
    /// Time between writes.
    pub every: Duration,
    /// Readings per write.
    pub batch: u32,
    /// The store's placement policy under compute-to-data (and, with the cloud devices
    /// added as sealed holders, under data-to-sealed-cloud).
    pub policy: Policy,
    /// The timeseries chunk window.
    pub window: Duration,
}

/// Jobs submitted at a rate from one device.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// A name for the outputs.
    pub name: String,
    /// The submitting device.
    pub from: String,
    /// Stores the job reads.
    pub reads: Vec<String>,
    /// Time between submissions.
    pub every: Duration,
    /// First submission.
    pub start: Duration,
    /// Bytes of the request (module reference, capability, parameters).
    pub request_bytes: u64,
    /// Bytes of the result.
    pub result_bytes: u64,
    /// Compute time per record scanned.
    pub per_record: Duration,
    /// Fixed compute time per run.
    pub overhead: Duration,
    /// How long the submitter waits for the result.
    pub timeout: Duration,
}

/// What a partition cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// Every path that leaves a home LAN (the internet is down; LANs stay up).
    Internet,
    /// Every link of the named device, in every household.
    Device(String),
}

/// A partition during a time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Start, from the beginning of the run.
    pub start: Duration,
    /// End.
    pub end: Duration,
    /// What is cut.
    pub cut: Cut,
}

/// Random partitions drawn from the run's seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomPartitions {
    /// How many.
    pub count: u32,
    /// Shortest.
    pub min: Duration,
    /// Longest.
    pub max: Duration,
    /// Every one ends before this.
    pub until: Duration,
}

/// A device's availability over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Churn {
    /// Off the network every day from one time of day (ms) to another; it keeps writing.
    OfflineDaily {
        /// The device.
        device: String,
        /// Time of day it goes offline, ms.
        from: u64,
        /// Time of day it comes back, ms.
        until: u64,
    },
    /// Powered off for `down` every `every`, first at `every`: no writes, no jobs.
    Reboot {
        /// The device.
        device: String,
        /// Period.
        every: Duration,
        /// Time down.
        down: Duration,
    },
    /// Like a reboot, but without warning (a crash, a power cut, `kill -9`): the other
    /// devices notice only after `detect` (a node's ping gives up after about 7 s), and
    /// until then what they send it is lost. If it comes back before that, it is
    /// admitted again on a new connection while theirs to it is still open.
    Crash {
        /// The device.
        device: String,
        /// Period.
        every: Duration,
        /// Time down.
        down: Duration,
        /// How long the others take to notice.
        detect: Duration,
    },
}

/// A checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// The default seed.
    pub seed: u64,
    /// Simulated time.
    pub duration: Duration,
    /// Households (one owner and one mesh each).
    pub households: u32,
    /// The default strategy of `run`.
    pub strategy: Strategy,
    /// What loss and duplication do to messages.
    pub transport: Transport,
    /// Width of the time buckets of the over-time metrics.
    pub bucket: Duration,
    /// Link classes by name.
    pub links: BTreeMap<String, LinkClass>,
    /// The class of links between devices on one home LAN.
    pub lan: String,
    /// The class of each household's internet uplink.
    pub home_uplink: String,
    /// The class of an uplink every household shares, if any (a building).
    pub shared_uplink: Option<String>,
    /// The NAT of each household's router, in front of every device on its LAN.
    pub home_nat: Nat,
    /// The devices of each household.
    pub devices: Vec<DeviceSpec>,
    /// Readings written.
    pub streams: Vec<StreamSpec>,
    /// Jobs submitted.
    pub jobs: Vec<JobSpec>,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Random partitions.
    pub random_partitions: Option<RandomPartitions>,
    /// Churn.
    pub churn: Vec<Churn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: u64,
    duration: String,
    #[serde(default = "one")]
    households: u32,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    transport: Option<String>,
    #[serde(default)]
    bucket: Option<String>,
    lan: String,
    home_uplink: String,
    #[serde(default)]
    shared_uplink: Option<String>,
    #[serde(default)]
    home_nat: Option<String>,
    links: BTreeMap<String, RawLink>,
    devices: Vec<RawDevice>,
    #[serde(default)]
    streams: Vec<RawStream>,
    #[serde(default)]
    jobs: Vec<RawJob>,
    #[serde(default)]
    partitions: Vec<RawPartition>,
    #[serde(default)]
    random_partitions: Option<RawRandom>,
    #[serde(default)]
    churn: Vec<RawChurn>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    latency: String,
    #[serde(default)]
    distribution: Option<String>,
    #[serde(default)]
    spread: f64,
    mbps: f64,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    duplicate: f64,
    #[serde(default)]
    reorder: f64,
    #[serde(default)]
    reorder_delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: String,
    role: String,
    access: String,
    #[serde(default)]
    at_home: Option<String>,
    #[serde(default)]
    nat: Option<String>,
    #[serde(default)]
    relay: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    store: String,
    device: String,
    kind: String,
    every: String,
    #[serde(default = "one")]
    batch: u32,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    from: String,
    reads: Vec<String>,
    every: String,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    request_bytes: Option<u64>,
    #[serde(default)]
    result_bytes: Option<u64>,
    #[serde(default)]
    per_record: Option<String>,
    #[serde(default)]
    overhead: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    start: String,
    end: String,
    cut: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRandom {
    count: u32,
    min: String,
    max: String,
    until: String,
}

/// How long the other devices take to notice a crashed one, by default: a node pings
/// every 2 s and gives up on a connection after 5 s without an answer.
pub const DEFAULT_DETECT: Duration = Duration::from_secs(7);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChurn {
    device: String,
    kind: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    every: Option<String>,
    #[serde(default)]
    down: Option<String>,
    #[serde(default)]
    detect: Option<String>,
}

fn duration(field: &str, text: &str) -> Result<Duration, ScenarioError> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        invalid(
            field,
            format!("{text:?} is not a duration ({err}); write e.g. \"250ms\", \"5m\" or \"6h\""),
        )
    })
}

fn positive(field: &str, text: &str) -> Result<Duration, ScenarioError> {
    let d = duration(field, text)?;
    if d.is_zero() {
        return Err(invalid(field, "must be above zero"));
    }
    Ok(d)
}

fn opt_duration(
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ScenarioError> {
    text.map_or(Ok(default), |t| duration(field, t))
}

fn time_of_day(field: &str, text: &str) -> Result<u64, ScenarioError> {
    let bad = || {
        invalid(
            field,
            format!("{text:?} is not a time of day; write HH:MM, e.g. \"23:30\""),
        )
    };
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let h: u64 = h.parse().map_err(|_| bad())?;
    let m: u64 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h * 60 + m) * 60_000)
}

fn probability(field: &str, p: f64) -> Result<f64, ScenarioError> {
    if !(0.0..=1.0).contains(&p) {
        return Err(invalid(
            field,
            format!("{p} is not a probability between 0 and 1"),
        ));
    }
    Ok(p)
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let raw: Raw = toml::from_str(text)
            .map_err(|err| ScenarioError::Syntax(err.to_string().trim_end().replace('\n', " ")))?;
        Self::check(raw)
    }

    /// Checks a scenario already parsed as TOML (a sweep edits the tree of a scenario
    /// file, then checks each point with this).
    pub fn from_value(value: toml::Value) -> Result<Self, ScenarioError> {
        let raw: Raw = value.try_into().map_err(|err: toml::de::Error| {
            ScenarioError::Syntax(err.to_string().trim_end().replace('\n', " "))
        })?;
        Self::check(raw)
    }

    fn check(raw: Raw) -> Result<Self, ScenarioError> {
        let name = raw.name.trim().to_owned();
        if name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let duration_ = positive("duration", &raw.duration)?;
        if raw.households == 0 || raw.households > 10_000 {
            return Err(invalid("households", "must be between 1 and 10000"));
        }
        let strategy = match raw.strategy.as_deref() {
            None => Strategy::ComputeToData,
            Some(s) => Strategy::parse(s).ok_or_else(|| {
                invalid(
                    "strategy",
                    format!("{s:?} is not a strategy: use {}", Strategy::names()),
                )
            })?,
        };
        let transport = match raw.transport.as_deref() {
            None | Some("reliable") => Transport::Reliable,
            Some("datagram") => Transport::Datagram,
            Some(other) => {
                return Err(invalid(
                    "transport",
                    format!("{other:?} is not a transport: use reliable or datagram"),
                ));
            }
        };
        let bucket = match raw.bucket.as_deref() {
            None => (duration_ / 60).max(Duration::from_secs(1)),
            Some(b) => positive("bucket", b)?,
        };

        let mut links = BTreeMap::new();
        if raw.links.is_empty() {
            return Err(invalid("links", "define at least one link class"));
        }
        for (lname, l) in &raw.links {
            let f = |k: &str| format!("links.{lname}.{k}");
            let base = duration(&f("latency"), &l.latency)?;
            let latency = match l.distribution.as_deref().unwrap_or("fixed") {
                "fixed" => Latency::Fixed(base),
                "uniform" => {
                    if !(0.0..=1.0).contains(&l.spread) {
                        return Err(invalid(f("spread"), "a uniform spread is between 0 and 1"));
                    }
                    Latency::Uniform {
                        base,
                        spread: l.spread,
                    }
                }
                "lognormal" => {
                    if !(0.0..=3.0).contains(&l.spread) {
                        return Err(invalid(f("spread"), "a lognormal sigma is between 0 and 3"));
                    }
                    Latency::LogNormal {
                        median: base,
                        sigma: l.spread,
                    }
                }
                other => {
                    return Err(invalid(
                        f("distribution"),
                        format!("{other:?} is not a distribution: use fixed, uniform or lognormal"),
                    ));
                }
            };
            if !(l.mbps.is_finite() && l.mbps >= 0.001 && l.mbps <= 1_000_000.0) {
                return Err(invalid(
                    f("mbps"),
                    format!(
                        "{} is not a bandwidth between 0.001 and 1000000 Mbit/s",
                        l.mbps
                    ),
                ));
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bits_per_second = (l.mbps * 1_000_000.0).round() as u64;
            links.insert(
                lname.clone(),
                LinkClass {
                    name: lname.clone(),
                    latency,
                    bits_per_second,
                    loss: probability(&f("loss"), l.loss)?,
                    duplicate: probability(&f("duplicate"), l.duplicate)?,
                    reorder: probability(&f("reorder"), l.reorder)?,
                    reorder_delay: opt_duration(
                        &f("reorder_delay"),
                        l.reorder_delay.as_deref(),
                        base,
                    )?,
                },
            );
        }
        let class = |field: &str, name: &str| -> Result<String, ScenarioError> {
            if links.contains_key(name) {
                Ok(name.to_owned())
            } else {
                Err(invalid(
                    field,
                    format!(
                        "no link class {name:?}; defined: {}",
                        links.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        };
        let lan = class("lan", &raw.lan)?;
        let home_uplink = class("home_uplink", &raw.home_uplink)?;
        let shared_uplink = raw
            .shared_uplink
            .as_deref()
            .map(|s| class("shared_uplink", s))
            .transpose()?;
        let home_nat = Nat::parse("home_nat", raw.home_nat.as_deref())?;

        if raw.devices.is_empty() {
            return Err(invalid("devices", "define at least one device"));
        }
        if raw.devices.len() > 64 {
            return Err(invalid("devices", "at most 64 devices per household"));
        }
        let mut devices: Vec<DeviceSpec> = Vec::new();
        for (i, d) in raw.devices.iter().enumerate() {
            let f = |k: &str| format!("devices[{i}].{k}");
            if !hearth_protocol::capability::is_valid_name(&d.name) {
                return Err(invalid(
                    f("name"),
                    format!("{:?} is not a device name", d.name),
                ));
            }
            if devices.iter().any(|x| x.name == d.name) {
                return Err(invalid(f("name"), format!("{:?} is named twice", d.name)));
            }
            let role: Role = d.role.parse().map_err(|_| {
                invalid(
                    f("role"),
                    format!("{:?} is not a role: use home, mobile or cloud", d.role),
                )
            })?;
            let access = class(&f("access"), &d.access)?;
            let at_home = match d.at_home.as_deref() {
                None if role == Role::Home => AtHome::Always,
                None => AtHome::Never,
                Some("always") => AtHome::Always,
                Some("never") => AtHome::Never,
                Some(window) => {
                    let (a, b) = window.split_once('-').ok_or_else(|| {
                        invalid(
                            f("at_home"),
                            format!("{window:?}: use always, never or HH:MM-HH:MM"),
                        )
                    })?;
                    AtHome::Daily(
                        time_of_day(&f("at_home"), a)?,
                        time_of_day(&f("at_home"), b)?,
                    )
                }
            };
            let nat = Nat::parse(&f("nat"), d.nat.as_deref())?;
            // Reachable from other networks wherever it is.
            let reachable = match at_home {
                AtHome::Always => home_nat == Nat::None,
                AtHome::Never => nat == Nat::None,
                AtHome::Daily(..) => home_nat == Nat::None && nat == Nat::None,
            };
            let relay = d.relay.unwrap_or(role == Role::Cloud && reachable);
            if relay && !reachable {
                return Err(invalid(
                    f("relay"),
                    "a relay needs a public address wherever it is: nat = \"none\" (and home_nat = \"none\" when it is at home)",
                ));
            }
            devices.push(DeviceSpec {
                name: d.name.clone(),
                role,
                access,
                at_home,
                nat,
                relay,
            });
        }
        let device = |field: &str, name: &str| -> Result<String, ScenarioError> {
            if devices.iter().any(|d| d.name == name) {
                Ok(name.to_owned())
            } else {
                Err(invalid(field, format!("no device {name:?} in devices")))
            }
        };

        let mut streams: Vec<StreamSpec> = Vec::new();
        for (i, s) in raw.streams.iter().enumerate() {
            let f = |k: &str| format!("streams[{i}].{k}");
            if !hearth_protocol::capability::is_valid_name(&s.store) {
                return Err(invalid(
                    f("store"),
                    format!("{:?} is not a store name", s.store),
                ));
            }
            if streams.iter().any(|x| x.store == s.store) {
                return Err(invalid(
                    f("store"),
                    format!(
                        "{:?} is written by two streams; one store per source",
                        s.store
                    ),
                ));
            }
            let kind = match s.kind.as_str() {
                "sensor" => StreamKind::Sensor,
                "location" => StreamKind::Location,
                other => {
                    return Err(invalid(
                        f("kind"),
                        format!("{other:?} is not a stream kind: use sensor or location"),
                    ));
                }
            };
            if s.batch == 0 || s.batch > 1000 {
                return Err(invalid(f("batch"), "must be between 1 and 1000"));
            }
            let policy = match s.policy.as_deref() {
                None => Policy::default_policy(),
                Some(p) => Policy::parse(p).map_err(|err| invalid(f("policy"), err.to_string()))?,
            };
            streams.push(StreamSpec {
                store: s.store.clone(),
                device: device(&f("device"), &s.device)?,
                kind,
                every: positive(&f("every"), &s.every)?,
                batch: s.batch,
                policy,
                window: match s.window.as_deref() {
                    None => Duration::from_secs(3600),
                    Some(w) => positive(&f("window"), w)?,
                },
            });
        }

        let mut jobs = Vec::new();
        for (i, j) in raw.jobs.iter().enumerate() {
            let f = |k: &str| format!("jobs[{i}].{k}");
            if j.reads.is_empty() {
                return Err(invalid(f("reads"), "a job reads at least one store"));
            }
            for (k, store) in j.reads.iter().enumerate() {
                if !streams.iter().any(|s| &s.store == store) {
                    return Err(invalid(
                        format!("jobs[{i}].reads[{k}]"),
                        format!("no stream writes the store {store:?}"),
                    ));
                }
            }
            jobs.push(JobSpec {
                name: j.name.clone(),
                from: device(&f("from"), &j.from)?,
                reads: j.reads.clone(),
                every: positive(&f("every"), &j.every)?,
                start: opt_duration(&f("start"), j.start.as_deref(), Duration::ZERO)?,
                request_bytes: j.request_bytes.unwrap_or(4096),
                result_bytes: j.result_bytes.unwrap_or(256),
                per_record: opt_duration(
                    &f("per_record"),
                    j.per_record.as_deref(),
                    Duration::from_micros(2),
                )?,
                overhead: opt_duration(
                    &f("overhead"),
                    j.overhead.as_deref(),
                    Duration::from_millis(5),
                )?,
                timeout: match j.timeout.as_deref() {
                    None => Duration::from_secs(30),
                    Some(t) => positive(&f("timeout"), t)?,
                },
            });
        }

        let mut partitions = Vec::new();
        for (i, p) in raw.partitions.iter().enumerate() {
            let f = |k: &str| format!("partitions[{i}].{k}");
            let start = duration(&f("start"), &p.start)?;
            let end = duration(&f("end"), &p.end)?;
            if end <= start {
                return Err(invalid(f("end"), "must be after start"));
            }
            let cut = match p.cut.as_str() {
                "internet" => Cut::Internet,
                other => match other.strip_prefix("device:") {
                    Some(name) => Cut::Device(device(&f("cut"), name)?),
                    None => {
                        return Err(invalid(
                            f("cut"),
                            format!("{other:?}: use internet or device:NAME"),
                        ));
                    }
                },
            };
            partitions.push(Partition { start, end, cut });
        }
        let random_partitions = match &raw.random_partitions {
            None => None,
            Some(r) => {
                let min = positive("random_partitions.min", &r.min)?;
                let max = positive("random_partitions.max", &r.max)?;
                let until = positive("random_partitions.until", &r.until)?;
                if max < min {
                    return Err(invalid("random_partitions.max", "must not be below min"));
                }
                if until <= max {
                    return Err(invalid("random_partitions.until", "must be above max"));
                }
                if r.count > 10_000 {
                    return Err(invalid("random_partitions.count", "at most 10000"));
                }
                Some(RandomPartitions {
                    count: r.count,
                    min,
                    max,
                    until,
                })
            }
        };

        let mut churn = Vec::new();
        for (i, c) in raw.churn.iter().enumerate() {
            let f = |k: &str| format!("churn[{i}].{k}");
            let dev = device(&f("device"), &c.device)?;
            let need = |k: &str, v: &Option<String>| -> Result<String, ScenarioError> {
                v.clone()
                    .ok_or_else(|| invalid(f(k), format!("required for kind {:?}", c.kind)))
            };
            churn.push(match c.kind.as_str() {
                "offline-daily" => Churn::OfflineDaily {
                    device: dev,
                    from: time_of_day(&f("from"), &need("from", &c.from)?)?,
                    until: time_of_day(&f("until"), &need("until", &c.until)?)?,
                },
                "reboot" | "crash" => {
                    let every = positive(&f("every"), &need("every", &c.every)?)?;
                    let down = positive(&f("down"), &need("down", &c.down)?)?;
                    if down >= every {
                        return Err(invalid(f("down"), "must be shorter than every"));
                    }
                    if c.kind == "reboot" {
                        if c.detect.is_some() {
                            return Err(invalid(
                                f("detect"),
                                "only a crash has a detection delay (a reboot is announced)",
                            ));
                        }
                        Churn::Reboot {
                            device: dev,
                            every,
                            down,
                        }
                    } else {
                        let detect = match &c.detect {
                            Some(text) => positive(&f("detect"), text)?,
                            None => DEFAULT_DETECT,
                        };
                        Churn::Crash {
                            device: dev,
                            every,
                            down,
                            detect,
                        }
                    }
                }
                other => {
                    return Err(invalid(
                        f("kind"),
                        format!("{other:?}: use offline-daily, reboot or crash"),
                    ));
                }
            });
        }

        Ok(Self {
            name,
            description: raw.description,
            seed: raw.seed,
            duration: duration_,
            households: raw.households,
            strategy,
            transport,
            bucket,
            links,
            lan,
            home_uplink,
            shared_uplink,
            home_nat,
            devices,
            streams,
            jobs,
            partitions,
            random_partitions,
            churn,
        })
    }
}
