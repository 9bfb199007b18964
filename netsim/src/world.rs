//! The simulator: a virtual clock, an ordered queue of events, modelled links and the
//! real protocol machines of every node (a session per link, sync engine, stores).
//!
//! A [`World`] is a stepper like quinn-proto's test `Pair`: [`World::step`] handles the
//! next event, [`World::run_until`] steps to an instant. Time is in microseconds from
//! the start of the run; the protocol machines see it as Unix milliseconds from
//! [`BASE_MS`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hearth_protocol::capability::{Chain, RevocationSet, Role, Verifier, VerifierConfig};
use hearth_protocol::device;
use hearth_protocol::key::{PublicKey, SecretKey};
use hearth_protocol::mesh::admission::{Gate, Opening};
use hearth_protocol::mesh::membership::{Membership, Snapshot};
use hearth_protocol::mesh::session::{
    self, Action, Channel, Context, LocalAction, LocalChanges, SendId, Session, Side,
};
use hearth_protocol::sealed::{NONCE_LEN, TAG_LEN};
use hearth_protocol::sync::placement::Policy;
use hearth_protocol::sync::{self, Engine, Message, StoreRef};
use hearth_protocol::time::UnixMillis;
use hearth_stores::replica::{Placement, StoresReplica};
use hearth_stores::{Kind, LocalChange, Reading, StoreMeta, Stores};
use serde_json::json;
use tokio::sync::broadcast;

use crate::fault::{LinkFaults, Packet, Partitions, Rule, Verdict};
use crate::metrics::{ConvergenceRecord, JobRecord, Recorder, RestartRecord, TrafficKind};
use crate::rng::Rng;
use crate::scenario::{
    AtHome, Churn, Cut, Latency, Nat, Scenario, Strategy, StreamKind, Transport,
};

/// The Unix time (ms) at which every run starts: 2026-01-01T00:00:00Z.
pub const BASE_MS: u64 = 1_767_225_600_000;
/// Virtual time after the scenario's duration during which workloads stop and the
/// network keeps running, so that replicas can converge.
pub const DRAIN: Duration = Duration::from_secs(600);
const DAY_US: u64 = 86_400_000_000;
/// The name of each household's catalogue store.
const CATALOGUE: &str = "catalogue";

/// The catalogue's store id: derived from the owner key, the same on every device.
fn catalogue_id(owner: &PublicKey) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"hearth/v1/catalogue");
    hasher.update(owner.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Bytes a sealed blob adds to the automerge changes it carries: the encoding of
/// `hearth_protocol::sealed::Blob`, `"HBLB"` and its version (5), the seal id (16), the
/// key epoch (a varint, 1), the author's key (32), the XChaCha20 nonce (24), the
/// ciphertext's length (a varint, 2 from 128 B to 16 KiB) and the Poly1305 tag (16).
/// Added to every message of store data to or from a sealed holder.
pub const SEALED_OVERHEAD: u64 = 5 + 16 + 1 + 32 + NONCE_LEN as u64 + 2 + TAG_LEN as u64;

/// Readings of a store no other device holds that are gathered before they are
/// appended as one write. Nothing outside the origin sees such a store until a job
/// reads it (which appends what is gathered first), so gathering changes no output;
/// it spares the simulator one automerge commit per reading. Bounded so that the
/// gathered readings cost little memory.
const BACKLOG: usize = 32;

/// Shortest retransmission timeout of a reliable transport.
const RTO_MIN_US: u64 = 200_000;
/// Delay before a refused or failed connection is tried again.
const RECONNECT_US: u64 = 5_000_000;
/// Time after which a sync message never acknowledged counts as failed (the node's
/// sync request timeout).
const SYNC_TIMEOUT_US: u64 = 60_000_000;
/// The same for a members message (the node's members request timeout).
const MEMBERS_TIMEOUT_US: u64 = 10_000_000;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A node's stores could not be set up.
    #[error("cannot set up the stores of {node}: {reason}")]
    Stores {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// A certificate could not be issued.
    #[error("cannot issue the certificate of {node}: {reason}")]
    Certificate {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

/// One node's identity in the world.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Its household.
    pub household: u32,
    /// Its name in the household's mesh.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its access link class (an index into the world's classes).
    access: usize,
    at_home: AtHome,
    nat: Nat,
    relay: bool,
}

impl DeviceInfo {
    /// `h003/phone`: household and name.
    pub fn label(&self) -> String {
        format!("h{:03}/{}", self.household, self.name)
    }
}

/// What every node knows of a store (the catalogue's entry).
#[derive(Debug, Clone)]
struct StoreEntry {
    household: u32,
    origin: u32,
    origin_name: String,
    policy: Policy,
    /// Is this the household's catalogue?
    catalogue: bool,
}

struct SimPlacement<'a> {
    me: u32,
    devices: &'a [DeviceInfo],
    catalog: &'a BTreeMap<String, StoreEntry>,
}

/// Does `node` hold the store in plaintext (it can read it, run jobs on it)?
fn holds(devices: &[DeviceInfo], node: u32, entry: &StoreEntry) -> bool {
    devices.get(node as usize).is_some_and(|d| {
        d.household == entry.household && entry.policy.holds(&d.name, d.role, &entry.origin_name)
    })
}

/// Does `node` hold the store sealed (ciphertext only)?
fn seals(devices: &[DeviceInfo], node: u32, entry: &StoreEntry) -> bool {
    devices.get(node as usize).is_some_and(|d| {
        d.household == entry.household && entry.policy.seals(&d.name, d.role, &entry.origin_name)
    })
}

/// Does `node` take part in the replication of the store, in plaintext or sealed? A
/// sealed holder is modelled as a replica that the sync engine keeps like any other
/// (see `docs/netsim.md`): the same changes move at the same times as between the
/// real plaintext holders and the sealed one, whose messages are counted as
/// ciphertext.
fn replicates(devices: &[DeviceInfo], node: u32, entry: &StoreEntry) -> bool {
    holds(devices, node, entry) || seals(devices, node, entry)
}

impl Placement<u32> for SimPlacement<'_> {
    fn peer_holds(&self, peer: &u32, store: &StoreRef) -> bool {
        self.catalog
            .get(&store.id)
            .is_some_and(|e| replicates(self.devices, *peer, e))
    }

    fn we_hold(&self, _peer: &u32, store: &StoreRef) -> bool {
        self.catalog
            .get(&store.id)
            .is_some_and(|e| replicates(self.devices, self.me, e))
    }
}

struct Node {
    stores: Stores,
    engine: Engine<u32>,
    local: BTreeMap<String, broadcast::Receiver<LocalChange>>,
    /// Local writes seen or missed, on their way to the engine.
    changes: LocalChanges<LocalChange>,
    key: PublicKey,
    certificate: Chain,
    gate: Gate,
    /// The session with each connected peer.
    sessions: BTreeMap<u32, Session>,
    /// When each session's timer event is scheduled (µs).
    session_timers: BTreeMap<u32, u64>,
    admitted: BTreeSet<u32>,
    powered: bool,
    /// After a crash: until when (µs) the other devices keep their links to it open,
    /// not having noticed yet.
    unnoticed_until: u64,
    timer: Option<u64>,
    membership: Membership,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Resource {
    Lan(u32),
    Home(u32, bool),
    Shared(bool),
    Access(u32, bool),
}

#[derive(Debug, Default, Clone, Copy)]
struct Link {
    up: bool,
    epoch: u64,
    /// How the connection is carried, chosen when it was opened.
    route: Route,
    /// A hole punch has made the relayed connection direct.
    punched: bool,
    /// Where the two devices were (on their home LAN or not) when it was opened.
    homes: (bool, bool),
}

/// How a connection between two devices is carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Straight from one to the other: on their LAN, or one of them is public.
    #[default]
    Direct,
    /// Through a relay device of the household, both ends behind NATs. With `punch`
    /// (both NATs are cone) a hole punch makes it direct soon after admission.
    Relayed { via: u32, punch: bool },
}

#[derive(Debug, Clone)]
enum Payload {
    /// A message of the session between the two devices.
    Session {
        channel: Channel,
        id: SendId,
        bytes: Vec<u8>,
    },
    /// The transport's acknowledgement of a members or sync message (the node's empty
    /// response).
    Ack(Channel, SendId),
    JobRequest(u64),
    JobResult(u64),
}

#[derive(Debug, Clone)]
enum Event {
    Deliver {
        from: u32,
        to: u32,
        epoch: u64,
        payload: Payload,
    },
    Timer(u32),
    Reconnect,
    /// The timer of `x`'s session with `y` on the link of the given epoch.
    SessionTimer(u32, u32, u64),
    /// A members or sync message `x` sent to `y` on the link of the given epoch was
    /// never acknowledged.
    SendFailed(u32, u32, u64, SendId),
    Write(u32, usize),
    Job(u32, usize),
    JobRan(u64),
    JobTimeout(u64),
    Power(u32, bool),
    /// A crash: powered off without the others noticing for the given µs.
    Crash(u32, u64),
    /// The hole punch of a relayed connection (its two ends and epoch) got through.
    Punch(u32, u32, u64),
}

/// A device powered on that is catching up.
#[derive(Debug)]
struct RestartWatch {
    /// Its record in `Recorder::restarts`.
    record: usize,
    device: u32,
    label: String,
    /// Only writes made before it was powered on count.
    before: usize,
    /// Stores with writes it has yet to receive or pass on.
    stores: BTreeSet<String>,
}

#[derive(Debug)]
struct Pending {
    record: usize,
    target: u64,
    remaining: BTreeSet<u32>,
}

#[derive(Debug)]
struct JobState {
    record: usize,
    submitter: u32,
    executor: u32,
    done: bool,
}

/// A simulated world of households, their devices and the links between them.
pub struct World {
    scenario: Scenario,
    strategy: Strategy,
    now: u64,
    end: u64,
    draining: bool,
    /// No device was offline and no link cut at any moment of the drain (so far).
    whole_in_drain: bool,
    clock: Arc<AtomicU64>,
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    classes: Vec<crate::scenario::LinkClass>,
    lan: usize,
    home_uplink: usize,
    shared_uplink: Option<usize>,
    devices: Vec<DeviceInfo>,
    nodes: Vec<Node>,
    catalog: BTreeMap<String, StoreEntry>,
    /// Store id per (household, stream).
    stream_ids: BTreeMap<(u32, usize), String>,
    links: BTreeMap<(u32, u32), Link>,
    busy: BTreeMap<Resource, u64>,
    fifo: BTreeMap<(u32, u32), u64>,
    link_faults: LinkFaults,
    partitions: Partitions,
    extra_rules: Vec<Box<dyn Rule>>,
    seed: u64,
    link_rngs: BTreeMap<(u32, u32), Rng>,
    rule_rng: Rng,
    node_rngs: Vec<Rng>,
    pending: BTreeMap<String, Vec<Pending>>,
    jobs: BTreeMap<u64, JobState>,
    next_job: u64,
    offline_daily: Vec<(u32, u64, u64)>,
    /// Restarted devices still catching up.
    watches: Vec<RestartWatch>,
    /// Readings written to a store no other device holds, not yet appended: by
    /// (origin, store id). See [`BACKLOG`].
    backlog: BTreeMap<(u32, String), Vec<Reading>>,
    /// What happened, for the metrics.
    pub recorder: Recorder,
    events: u64,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("scenario", &self.scenario.name)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

fn seed32(rng: &mut Rng) -> [u8; 32] {
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
    }
    out
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

impl World {
    /// Builds the world of `scenario` under `strategy`, seeded by `seed`: every node with
    /// its keys, certificate and stores, and the first events of every workload.
    pub fn new(scenario: &Scenario, strategy: Strategy, seed: u64) -> Result<Self, SimError> {
        let clock = Arc::new(AtomicU64::new(BASE_MS));
        let classes: Vec<crate::scenario::LinkClass> = scenario.links.values().cloned().collect();
        let index = |name: &str| classes.iter().position(|c| c.name == name).unwrap_or(0);
        let lan = index(&scenario.lan);
        let home_uplink = index(&scenario.home_uplink);
        let shared_uplink = scenario.shared_uplink.as_deref().map(index);
        let link_faults = LinkFaults {
            classes: classes
                .iter()
                .map(|c| (c.loss, c.duplicate, c.reorder, c.reorder_delay))
                .collect(),
        };
        let mut devices = Vec::new();
        let mut nodes = Vec::new();
        let mut node_rngs = Vec::new();
        for h in 0..scenario.households {
            let mut owner_rng = Rng::new(Rng::child_seed(seed, &format!("owner/{h}")));
            let owner = SecretKey::from_seed(seed32(&mut owner_rng));
            for spec in &scenario.devices {
                let id = u32::try_from(devices.len()).unwrap_or(u32::MAX);
                let info = DeviceInfo {
                    household: h,
                    name: spec.name.clone(),
                    role: spec.role,
                    access: index(&spec.access),
                    at_home: spec.at_home,
                    nat: spec.nat,
                    relay: spec.relay,
                };
                let label = info.label();
                let mut rng = Rng::new(Rng::child_seed(seed, &format!("node/{label}")));
                let secret = SecretKey::from_seed(seed32(&mut rng));
                let key = secret.public();
                let mut nonce = [0u8; 16];
                nonce[..4].copy_from_slice(&id.to_be_bytes());
                let certificate = device::issue_certificate(
                    &owner,
                    None,
                    key,
                    &spec.name,
                    spec.role,
                    UnixMillis(BASE_MS),
                    UnixMillis(BASE_MS + 10 * 365 * 86_400_000),
                    nonce,
                )
                .map_err(|err| SimError::Certificate {
                    node: label.clone(),
                    reason: err.to_string(),
                })?;
                let gate = Gate::new(
                    key,
                    Verifier::new(owner.public(), VerifierConfig::default()),
                    RevocationSet::new(owner.public()),
                    None,
                );
                let mut actor = [0u8; 16];
                actor.copy_from_slice(&seed32(&mut rng)[..16]);
                let c = clock.clone();
                // Jobs are modelled by their cost and read no readings, so closed
                // chunks keep none decoded.
                let stores =
                    Stores::in_memory(actor, Arc::new(move || c.load(Ordering::Relaxed)), 0);
                let mut membership = Membership::new(owner.public());
                membership
                    .add_device(
                        UnixMillis(BASE_MS),
                        &certificate,
                        &RevocationSet::new(owner.public()),
                    )
                    .map_err(|reason| SimError::Certificate {
                        node: label.clone(),
                        reason,
                    })?;
                // Every device starts the household's catalogue: one kv store whose id
                // comes from the owner key, held by every device.
                let catalogue_id = catalogue_id(&owner.public());
                stores
                    .create_replica(StoreMeta {
                        name: CATALOGUE.to_owned(),
                        id: catalogue_id,
                        kind: Kind::Kv,
                        created: BASE_MS,
                        window_ms: hearth_stores::DEFAULT_WINDOW_MS,
                        text: Vec::new(),
                        erasures: 0,
                        erased: Vec::new(),
                    })
                    .map_err(|err| SimError::Stores {
                        node: label.clone(),
                        reason: err.to_string(),
                    })?;
                nodes.push(Node {
                    stores,
                    engine: Engine::new(sync::Config::default()),
                    local: BTreeMap::new(),
                    changes: LocalChanges::new(),
                    key,
                    certificate,
                    gate,
                    sessions: BTreeMap::new(),
                    session_timers: BTreeMap::new(),
                    admitted: BTreeSet::new(),
                    powered: true,
                    unnoticed_until: 0,
                    timer: None,
                    membership,
                });
                node_rngs.push(rng);
                devices.push(info);
            }
        }
        let end = us(scenario.duration);
        let mut partitions = Partitions {
            windows: Vec::new(),
        };
        let nodes_named = |name: &str| -> Vec<u32> {
            devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.name == name)
                .filter_map(|(i, _)| u32::try_from(i).ok())
                .collect()
        };
        for p in &scenario.partitions {
            let nodes = match &p.cut {
                Cut::Internet => None,
                Cut::Device(name) => Some(nodes_named(name)),
            };
            partitions.windows.push((us(p.start), us(p.end), nodes));
        }
        if let Some(r) = &scenario.random_partitions {
            let mut rng = Rng::new(Rng::child_seed(seed, "random-partitions"));
            let n = devices.len() as u64;
            for _ in 0..r.count {
                let len = us(r.min) + rng.below(us(r.max) - us(r.min) + 1);
                let start = rng.below(us(r.until) - len);
                let cut = if rng.chance(0.2) {
                    None
                } else {
                    let count = 1 + rng.below(n.min(8));
                    Some(
                        (0..count)
                            .filter_map(|_| u32::try_from(rng.below(n)).ok())
                            .collect(),
                    )
                };
                partitions.windows.push((start, start + len, cut));
            }
        }
        let mut world = Self {
            scenario: scenario.clone(),
            strategy,
            now: 0,
            end,
            draining: false,
            whole_in_drain: false,
            clock,
            queue: BTreeMap::new(),
            seq: 0,
            classes,
            lan,
            home_uplink,
            shared_uplink,
            devices,
            nodes,
            catalog: BTreeMap::new(),
            stream_ids: BTreeMap::new(),
            links: BTreeMap::new(),
            busy: BTreeMap::new(),
            fifo: BTreeMap::new(),
            link_faults,
            partitions,
            extra_rules: Vec::new(),
            seed,
            link_rngs: BTreeMap::new(),
            rule_rng: Rng::new(Rng::child_seed(seed, "rules")),
            node_rngs,
            pending: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job: 0,
            offline_daily: Vec::new(),
            watches: Vec::new(),
            backlog: BTreeMap::new(),
            recorder: Recorder::new(us(scenario.bucket)),
            events: 0,
        };
        world.setup()?;
        Ok(world)
    }

    /// Adds a fault rule; it sees every message after the link classes' own faults.
    pub fn add_rule(&mut self, rule: Box<dyn Rule>) {
        self.extra_rules.push(rule);
    }

    fn policy_for(&self, stream: usize) -> Policy {
        let own = || {
            self.scenario
                .streams
                .get(stream)
                .map_or_else(Policy::default_policy, |s| s.policy.clone())
        };
        match self.strategy {
            Strategy::ComputeToData => own(),
            Strategy::DataToCloud => {
                Policy::parse("origin,role:cloud").unwrap_or_else(|_| Policy::default_policy())
            }
            Strategy::DataToHome => Policy::default_policy(),
            // The stream's own policy, and the cloud devices hold the store sealed
            // (unless the policy already names them in plaintext: plaintext wins).
            Strategy::DataToSealedCloud => {
                let own = own();
                Policy::parse(&format!("{own},sealed:role:cloud")).unwrap_or(own)
            }
        }
    }

    fn node_of(&self, household: u32, name: &str) -> Option<u32> {
        let per = self.scenario.devices.len();
        let i = self.scenario.devices.iter().position(|d| d.name == name)?;
        u32::try_from(household as usize * per + i).ok()
    }

    /// The nodes of household `h` (ids are dense, household by household).
    fn household_nodes(&self, h: u32) -> std::ops::Range<u32> {
        let per = self.scenario.devices.len();
        let first = u32::try_from(h as usize * per).unwrap_or(u32::MAX);
        let last = u32::try_from((h as usize + 1) * per)
            .unwrap_or(u32::MAX)
            .min(u32::try_from(self.nodes.len()).unwrap_or(u32::MAX));
        first..last
    }

    fn setup(&mut self) -> Result<(), SimError> {
        let per = self.scenario.devices.len();
        for h in 0..self.scenario.households {
            let first = u32::try_from(h as usize * per).unwrap_or(0);
            if let Ok(catalogue) = self.node(first).stores.get(CATALOGUE) {
                let id = catalogue.meta().id.clone();
                let origin_name = self
                    .devices
                    .get(first as usize)
                    .map_or_else(String::new, |d| d.name.clone());
                self.catalog.insert(
                    id,
                    StoreEntry {
                        household: h,
                        origin: first,
                        origin_name,
                        policy: Policy::everywhere(),
                        catalogue: true,
                    },
                );
            }
            for (s, stream) in self.scenario.streams.clone().iter().enumerate() {
                let Some(origin) = self.node_of(h, &stream.device) else {
                    continue;
                };
                let policy = self.policy_for(s);
                let node = self.node(origin);
                let window = u64::try_from(stream.window.as_millis()).unwrap_or(u64::MAX);
                let store = node
                    .stores
                    .create(&stream.store, Kind::Timeseries, Some(window))
                    .map_err(|err| SimError::Stores {
                        node: self.label(origin),
                        reason: err.to_string(),
                    })?;
                let id = store.meta().id.clone();
                // The origin records the store in the catalogue.
                if let Ok(catalogue) = node.stores.get(CATALOGUE) {
                    let entry = json!({
                        "name": stream.store,
                        "kind": "timeseries",
                        "window_ms": window,
                        "origin": stream.device,
                        "replicas": policy.to_string(),
                        "created": BASE_MS,
                    });
                    catalogue
                        .put(&format!("store/{id}"), entry)
                        .map_err(|err| SimError::Stores {
                            node: self.label(origin),
                            reason: err.to_string(),
                        })?;
                }
                let entry = StoreEntry {
                    household: h,
                    origin,
                    origin_name: stream.device.clone(),
                    policy,
                    catalogue: false,
                };
                // The sync engine hears of local writes only to push them to peers that
                // hold the store. Placement is fixed for the run, so a store no other
                // device holds is not subscribed: its writes would reach no peer, and
                // the digests the store computes around each write for a subscriber
                // would be thrown away.
                let shared = self
                    .household_nodes(h)
                    .any(|n| n != origin && replicates(&self.devices, n, &entry));
                if shared {
                    let rx = store.subscribe_local();
                    if let Some(n) = self.nodes.get_mut(origin as usize) {
                        n.local.insert(id.clone(), rx);
                    }
                }
                self.catalog.insert(id.clone(), entry);
                self.stream_ids.insert((h, s), id);
                let mut rng = Rng::new(Rng::child_seed(self.seed, &format!("stream/{h}/{s}")));
                let first = rng.below(us(stream.every).max(1));
                self.schedule(first, Event::Write(h, s));
            }
            for (j, job) in self.scenario.jobs.clone().iter().enumerate() {
                let mut rng = Rng::new(Rng::child_seed(self.seed, &format!("job/{h}/{j}")));
                let first = us(job.start) + rng.below(us(job.every).max(1));
                self.schedule(first, Event::Job(h, j));
            }
        }
        // Churn.
        let days = self.end / DAY_US + 2;
        let mut boundaries: BTreeSet<u64> = self
            .partitions
            .windows
            .iter()
            .flat_map(|(s, e, _)| [*s, *e])
            .collect();
        for churn in self.scenario.churn.clone() {
            match churn {
                Churn::OfflineDaily {
                    device,
                    from,
                    until,
                } => {
                    for (i, d) in self.devices.iter().enumerate() {
                        if d.name == device
                            && let Ok(i) = u32::try_from(i)
                        {
                            self.offline_daily.push((i, from * 1000, until * 1000));
                        }
                    }
                    for day in 0..days {
                        boundaries.insert(day * DAY_US + from * 1000);
                        boundaries.insert(day * DAY_US + until * 1000);
                    }
                }
                Churn::Reboot {
                    ref device,
                    every,
                    down,
                }
                | Churn::Crash {
                    ref device,
                    every,
                    down,
                    ..
                } => {
                    let targets: Vec<u32> = self
                        .devices
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| d.name == *device)
                        .filter_map(|(i, _)| u32::try_from(i).ok())
                        .collect();
                    let mut t = us(every);
                    while t < self.end {
                        for &n in &targets {
                            let off = match &churn {
                                Churn::Crash { detect, .. } => Event::Crash(n, us(*detect)),
                                _ => Event::Power(n, false),
                            };
                            self.schedule(t, off);
                            self.schedule(t + us(down), Event::Power(n, true));
                        }
                        t += us(every);
                    }
                }
            }
        }
        for d in &self.scenario.devices {
            if let AtHome::Daily(a, b) = d.at_home {
                for day in 0..days {
                    boundaries.insert(day * DAY_US + a * 1000);
                    boundaries.insert(day * DAY_US + b * 1000);
                }
            }
        }
        boundaries.insert(0);
        for b in boundaries {
            if b <= self.end + us(DRAIN) {
                self.schedule(b, Event::Reconnect);
            }
        }
        Ok(())
    }

    fn node(&self, i: u32) -> &Node {
        // Node ids are dense indices made in `new`.
        #[allow(clippy::indexing_slicing)]
        &self.nodes[i as usize]
    }

    fn label(&self, i: u32) -> String {
        self.devices
            .get(i as usize)
            .map_or_else(|| format!("node {i}"), DeviceInfo::label)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn now_ms(&self) -> UnixMillis {
        UnixMillis(BASE_MS + self.now / 1000)
    }

    /// Virtual time, µs from the start.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The end of the scenario, µs from the start (the drain follows).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Events handled so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn at_home(&self, i: u32) -> bool {
        let Some(d) = self.devices.get(i as usize) else {
            return false;
        };
        match d.at_home {
            AtHome::Always => true,
            AtHome::Never => false,
            AtHome::Daily(a, b) => in_daily(self.now, a * 1000, b * 1000),
        }
    }

    fn online(&self, i: u32) -> bool {
        self.nodes.get(i as usize).is_some_and(|n| n.powered)
            && !self
                .offline_daily
                .iter()
                .any(|(n, a, b)| *n == i && in_daily(self.now, *a, *b))
    }

    /// The hops of the path from `a` to `b`: resource and link class; and whether it
    /// leaves a home LAN.
    fn path(&self, a: u32, b: u32) -> (Vec<(Resource, usize)>, bool) {
        let (Some(da), Some(db)) = (self.devices.get(a as usize), self.devices.get(b as usize))
        else {
            return (Vec::new(), true);
        };
        let (ha, hb) = (self.at_home(a), self.at_home(b));
        if ha && hb && da.household == db.household {
            return (vec![(Resource::Lan(da.household), self.lan)], false);
        }
        let side = |node: u32, d: &DeviceInfo, home: bool, up: bool| {
            let mut hops = Vec::new();
            if home {
                hops.push((Resource::Home(d.household, up), self.home_uplink));
                if let Some(s) = self.shared_uplink {
                    hops.push((Resource::Shared(up), s));
                }
            } else {
                hops.push((Resource::Access(node, up), d.access));
            }
            hops
        };
        let mut hops = side(a, da, ha, true);
        let mut back = side(b, db, hb, false);
        back.reverse();
        hops.extend(back);
        (hops, true)
    }

    /// The hops from `a` to `b`, through the relay `via` when there is one (a relayed
    /// path always leaves the LAN).
    fn path_via(&self, a: u32, b: u32, via: Option<u32>) -> (Vec<(Resource, usize)>, bool) {
        match via {
            Some(v) => {
                let (mut hops, _) = self.path(a, v);
                hops.extend(self.path(v, b).0);
                (hops, true)
            }
            None => self.path(a, b),
        }
    }

    fn sample_latency(&mut self, from: u32, to: u32, class: usize) -> u64 {
        let seed = self.seed;
        let rng = self
            .link_rngs
            .entry((from, to))
            .or_insert_with(|| Rng::new(Rng::child_seed(seed, &format!("link/{from}/{to}"))));
        let Some(c) = self.classes.get(class) else {
            return 0;
        };
        match c.latency {
            Latency::Fixed(d) => us(d),
            Latency::Uniform { base, spread } => {
                let f = 1.0 - spread + 2.0 * spread * rng.unit();
                to_us(base.as_secs_f64() * f)
            }
            Latency::LogNormal { median, sigma } => {
                let f = (sigma * rng.normal()).exp();
                to_us(median.as_secs_f64() * f)
            }
        }
    }

    /// Sends `payload` of `bytes` from `from` to `to` over their link, if it is up.
    fn send(&mut self, from: u32, to: u32, payload: Payload, bytes: u64) {
        let link = self.links.get(&pair(from, to)).copied().unwrap_or_default();
        if !link.up {
            self.recorder.lost_on_cut += 1;
            return;
        }
        // Store data (not the catalogue, which is metadata): its origin, whether it is a
        // push, and whether it travels sealed (one end holds the store sealed).
        let data = match &payload {
            Payload::Session {
                channel: Channel::Sync,
                bytes: data,
                ..
            } => self.carried(data).map(|(entry, push)| {
                let sealed = seals(&self.devices, from, entry) || seals(&self.devices, to, entry);
                (entry.origin, push, sealed)
            }),
            _ => None,
        };
        // Ciphertext is the changes in a blob: bigger on the wire by the blob's header
        // and tag.
        let bytes = match data {
            Some((_, _, true)) => bytes + SEALED_OVERHEAD,
            _ => bytes,
        };
        let relay = match link.route {
            Route::Relayed { via, .. } if !link.punched => Some(via),
            _ => None,
        };
        let (hops, wan) = self.path_via(from, to, relay);
        if let Some(via) = relay {
            self.recorder.relayed(via, bytes);
        }
        let mut t = self.now;
        let mut latency = 0;
        let mut classes = Vec::with_capacity(hops.len());
        for (resource, class) in &hops {
            let bps = self
                .classes
                .get(*class)
                .map_or(1, |c| c.bits_per_second.max(1));
            let ser = u64::try_from((u128::from(bytes) * 8 * 1_000_000).div_ceil(u128::from(bps)))
                .unwrap_or(u64::MAX);
            let busy = self.busy.entry(*resource).or_insert(0);
            let start = t.max(*busy);
            *busy = start + ser;
            t = start + ser;
            latency += self.sample_latency(from, to, *class);
            classes.push(*class);
        }
        let mut arrival = t + latency;
        // Accounting.
        let kind = match &payload {
            Payload::Session { channel, .. } => match channel {
                Channel::Admission => TrafficKind::Admission,
                Channel::Members => TrafficKind::Membership,
                Channel::Sync => TrafficKind::Sync,
            },
            Payload::Ack(Channel::Members, _) => TrafficKind::Membership,
            Payload::Ack(_, _) => TrafficKind::Sync,
            Payload::JobRequest(_) | Payload::JobResult(_) => TrafficKind::Job,
        };
        for class in &classes {
            let name = self.classes.get(*class).map_or("", |c| c.name.as_str());
            self.recorder.traffic(self.now, name, kind, bytes);
        }
        if let Some((origin, push, sealed)) = data {
            let to_cloud = self
                .devices
                .get(to as usize)
                .is_some_and(|d| d.role == Role::Cloud);
            if sealed {
                // Ciphertext: not raw data, wherever it goes.
                self.recorder.sealed(to_cloud, bytes);
            } else {
                if push {
                    self.recorder.pushes.push(bytes);
                }
                self.recorder.raw(origin == from, wan, to_cloud, bytes);
            }
        }
        // Faults.
        let packet = Packet {
            now: self.now,
            from,
            to,
            bytes,
            classes: &classes,
        };
        // The link classes' own faults go through the transport: on a reliable one a
        // loss is a retransmission and a duplicate is discarded. Other rules act on
        // messages as they are.
        let reliable = self.scenario.transport == Transport::Reliable;
        let mut verdicts = vec![(
            self.link_faults.verdict(&packet, &mut self.rule_rng),
            reliable,
        )];
        for rule in &mut self.extra_rules {
            verdicts.push((rule.verdict(&packet, &mut self.rule_rng), false));
        }
        let mut copies = 1;
        let mut delayed = false;
        for (v, reliable) in verdicts {
            match v {
                Verdict::Pass => {}
                Verdict::Drop if reliable => {
                    // Sent again after a retransmission timeout.
                    self.recorder.retransmitted += 1;
                    arrival += (3 * latency).max(RTO_MIN_US);
                    delayed = true;
                }
                Verdict::Drop => {
                    self.recorder.dropped += 1;
                    self.never_acknowledged(from, to, link.epoch, &payload);
                    return;
                }
                Verdict::Duplicate if reliable => {}
                Verdict::Duplicate => copies = 2,
                Verdict::Delay(d) => {
                    arrival += us(d);
                    delayed = true;
                }
            }
        }
        if !delayed {
            // A connection delivers in order: a message never overtakes an earlier one.
            let last = self.fifo.entry((from, to)).or_insert(0);
            arrival = arrival.max(*last);
            *last = arrival;
        }
        if copies > 1 {
            self.recorder.duplicated += 1;
            self.schedule(
                arrival,
                Event::Deliver {
                    from,
                    to,
                    epoch: link.epoch,
                    payload: payload.clone(),
                },
            );
        }
        self.schedule(
            arrival,
            Event::Deliver {
                from,
                to,
                epoch: link.epoch,
                payload,
            },
        );
    }

    /// The stream store whose contents a sync message carries (a `Push`, `Sync` or
    /// `Chunk`; the catalogue is metadata: store names, kinds, policies), and whether
    /// the message is a push.
    fn carried(&self, data: &[u8]) -> Option<(&StoreEntry, bool)> {
        let message = Message::decode(data).ok()?;
        if !matches!(
            message,
            Message::Push { .. } | Message::Sync { .. } | Message::Chunk { .. }
        ) {
            return None;
        }
        let entry = message.store().and_then(|id| self.catalog.get(id))?;
        (!entry.catalogue).then_some((entry, matches!(message, Message::Push { .. })))
    }

    /// Runs `f` on node `i`'s engine with its replica, then sends what it queued.
    fn with_engine(
        &mut self,
        i: u32,
        f: impl FnOnce(&mut Engine<u32>, &mut StoresReplica<'_, SimPlacement<'_>>, UnixMillis),
    ) {
        let now = self.now_ms();
        let placement = SimPlacement {
            me: i,
            devices: &self.devices,
            catalog: &self.catalog,
        };
        let Some(node) = self.nodes.get_mut(i as usize) else {
            return;
        };
        let mut replica = StoresReplica::new(&node.stores, &placement, now.0);
        f(&mut node.engine, &mut replica, now);
        self.flush(i);
    }

    fn flush(&mut self, i: u32) {
        loop {
            let Some(node) = self.nodes.get_mut(i as usize) else {
                return;
            };
            let mut out = Vec::new();
            while let Some(t) = node.engine.poll_transmit() {
                out.push(t);
            }
            let mut events = Vec::new();
            while let Some(e) = node.engine.poll_event() {
                events.push(e);
            }
            if out.is_empty() && events.is_empty() {
                break;
            }
            for (to, bytes) in out {
                if let Some(session) = self
                    .nodes
                    .get_mut(i as usize)
                    .and_then(|n| n.sessions.get_mut(&to))
                {
                    session.send_sync(bytes);
                }
                self.session_flush(i, to);
            }
            for event in events {
                match event {
                    sync::Event::Received { store, .. } => self.reached(i, &store),
                    sync::Event::Misbehaved { peer, .. } => {
                        self.recorder.misbehaved += 1;
                        self.link_down(i, peer);
                    }
                    sync::Event::LocalError { .. } => self.recorder.local_errors += 1,
                    sync::Event::Sent { .. } | sync::Event::Unshared { .. } => {}
                }
            }
        }
        self.arm(i);
    }

    fn arm(&mut self, i: u32) {
        let Some(node) = self.nodes.get(i as usize) else {
            return;
        };
        let Some(due) = node.engine.poll_timeout() else {
            return;
        };
        let t = due.0.saturating_sub(BASE_MS).saturating_mul(1000);
        let at = if t > self.now { t } else { self.now + 1000 };
        if node
            .timer
            .is_some_and(|armed| armed <= at && armed > self.now)
        {
            return;
        }
        if let Some(node) = self.nodes.get_mut(i as usize) {
            node.timer = Some(at);
        }
        self.schedule(at, Event::Timer(i));
    }

    /// Data reached node `i` for `store`: writes it now holds have reached it.
    fn reached(&mut self, i: u32, store: &str) {
        let Some(list) = self.pending.get_mut(store) else {
            return;
        };
        let records = self
            .nodes
            .get(i as usize)
            .and_then(|n| n.stores.get_by_id(store))
            .and_then(|s| s.records().ok())
            .unwrap_or(0);
        let now = self.now;
        let recorder = &mut self.recorder;
        list.retain_mut(|p| {
            if p.target <= records {
                p.remaining.remove(&i);
            }
            if p.remaining.is_empty() {
                if let Some(r) = recorder.convergence.get_mut(p.record) {
                    r.converged_us = Some(now);
                }
                false
            } else {
                true
            }
        });
        if self.watches.iter().any(|w| w.stores.contains(store)) {
            self.check_restarts(store);
        }
    }

    /// Writes still on their way that concern device `n` (it lacks them, or wrote them
    /// and another holder lacks them), among the first `before` writes, in `store`.
    fn missed(&self, n: u32, label: &str, store: &str, before: usize) -> usize {
        self.pending.get(store).map_or(0, |list| {
            list.iter()
                .filter(|p| {
                    p.record < before
                        && (p.remaining.contains(&n)
                            || self
                                .recorder
                                .convergence
                                .get(p.record)
                                .is_some_and(|c| c.origin == label))
                })
                .count()
        })
    }

    /// Device `n` was powered on: from now, until every write it missed (or wrote and
    /// did not pass on) before that has reached every holder, it is catching up.
    fn watch_restart(&mut self, n: u32) {
        let label = self.label(n);
        let before = self.recorder.convergence.len();
        let counts: Vec<(String, usize)> = self
            .pending
            .keys()
            .map(|store| (store.clone(), self.missed(n, &label, store, before)))
            .filter(|(_, missed)| *missed > 0)
            .collect();
        let missed = counts.iter().map(|(_, missed)| missed).sum();
        let stores: BTreeSet<String> = counts.into_iter().map(|(store, _)| store).collect();
        let record = self.recorder.restarts.len();
        self.recorder.restarts.push(RestartRecord {
            device: label.clone(),
            powered_on_us: self.now,
            missed,
            caught_up_us: stores.is_empty().then_some(self.now),
        });
        if !stores.is_empty() {
            self.watches.push(RestartWatch {
                record,
                device: n,
                label,
                before,
                stores,
            });
        }
    }

    /// Device `n` went down again: if it was still catching up, it did not (its record
    /// keeps no catch-up time).
    fn stop_watching(&mut self, n: u32) {
        self.watches.retain(|w| w.device != n);
    }

    /// Data of `store` arrived somewhere: restarted devices waiting on it may be done.
    fn check_restarts(&mut self, store: &str) {
        let now = self.now;
        let mut watches = std::mem::take(&mut self.watches);
        watches.retain_mut(|w| {
            if w.stores.contains(store) && self.missed(w.device, &w.label, store, w.before) == 0 {
                w.stores.remove(store);
            }
            if w.stores.is_empty() {
                if let Some(r) = self.recorder.restarts.get_mut(w.record) {
                    r.caught_up_us = Some(now);
                }
                return false;
            }
            true
        });
        self.watches = watches;
    }

    /// Should the link between `a` and `b` be up: both online, no rule cutting it, and
    /// a way through their NATs?
    fn wanted(&self, a: u32, b: u32) -> bool {
        self.open(a, b) && self.route(a, b).is_some()
    }

    /// Are `a` and `b` online with no rule cutting the path between them?
    fn open(&self, a: u32, b: u32) -> bool {
        let (_, wan) = self.path(a, b);
        self.online(a)
            && self.online(b)
            && !self.partitions.cuts(self.now, a, b, wan)
            && !self.extra_rules.iter().any(|r| r.cuts(self.now, a, b, wan))
    }

    /// The NAT in front of `i` where it is now.
    fn nat(&self, i: u32) -> Nat {
        if self.at_home(i) {
            self.scenario.home_nat
        } else {
            self.devices.get(i as usize).map_or(Nat::None, |d| d.nat)
        }
    }

    /// How a connection between `a` and `b` opened now would be carried; `None` when
    /// both are behind NATs and no relay of their household can reach both.
    fn route(&self, a: u32, b: u32) -> Option<Route> {
        let (_, wan) = self.path(a, b);
        let (na, nb) = (self.nat(a), self.nat(b));
        if !wan || na == Nat::None || nb == Nat::None {
            return Some(Route::Direct);
        }
        let household = self.devices.get(a as usize)?.household;
        let via = self.household_nodes(household).find(|&v| {
            v != a
                && v != b
                && self.devices.get(v as usize).is_some_and(|d| d.relay)
                && self.open(a, v)
                && self.open(v, b)
        })?;
        Some(Route::Relayed {
            via,
            punch: na == Nat::Cone && nb == Nat::Cone,
        })
    }

    /// Does the up link between `a` and `b` still work the way it was opened? A direct
    /// connection made by a hole punch breaks when either end moves network; a relayed
    /// one when its relay goes or a better way appears.
    fn route_holds(&self, a: u32, b: u32, link: &Link) -> bool {
        if link.punched {
            link.homes == (self.at_home(a.min(b)), self.at_home(a.max(b)))
        } else {
            self.route(a, b) == Some(link.route)
        }
    }

    /// The typical one-way time (µs) over the path from `a` to `b`, or through `via`:
    /// the median latency of every hop.
    fn nominal_one_way(&self, a: u32, b: u32, via: Option<u32>) -> u64 {
        self.path_via(a, b, via)
            .0
            .iter()
            .filter_map(|(_, class)| self.classes.get(*class))
            .map(|c| match c.latency {
                Latency::Fixed(d) | Latency::Uniform { base: d, .. } => us(d),
                Latency::LogNormal { median, .. } => us(median),
            })
            .sum()
    }

    /// Is every link of every household wanted now: every device online, nothing cut?
    fn whole(&self) -> bool {
        (0..self.scenario.households).all(|h| {
            let nodes = self.household_nodes(h);
            nodes
                .clone()
                .all(|a| (a + 1..nodes.end).all(|b| self.wanted(a, b)))
        })
    }

    /// Brings links up and down to match who is online and what the rules cut.
    fn reconnect(&mut self) {
        let per = self.scenario.devices.len();
        let total = u32::try_from(self.nodes.len()).unwrap_or(0);
        let mut a = 0u32;
        while a < total {
            let household_end = (a as usize / per + 1) * per;
            for b in a + 1..u32::try_from(household_end).unwrap_or(0).min(total) {
                let want = self.wanted(a, b);
                if self.draining && !want {
                    self.whole_in_drain = false;
                }
                let link = self.links.get(&(a, b)).copied().unwrap_or_default();
                let up = link.up;
                if want && !up {
                    self.link_up(a, b);
                } else if want && !self.route_holds(a, b, &link) {
                    // The devices moved network or the relay went: the connection
                    // breaks and is made again the way that works now.
                    self.link_down(a, b);
                    self.link_up(a, b);
                } else if !want && up && !self.unnoticed(a) && !self.unnoticed(b) {
                    self.link_down(a, b);
                }
            }
            a += 1;
        }
    }

    /// Is `i` down after a crash that the others have not noticed yet?
    fn unnoticed(&self, i: u32) -> bool {
        let node = self.node(i);
        !node.powered && self.now < node.unnoticed_until
    }

    fn link_up(&mut self, a: u32, b: u32) {
        let route = self.route(a, b).unwrap_or_default();
        let homes = (self.at_home(a.min(b)), self.at_home(a.max(b)));
        if route != Route::Direct {
            self.recorder.relay.connections += 1;
        }
        let link = self.links.entry(pair(a, b)).or_default();
        link.up = true;
        link.epoch += 1;
        link.route = route;
        link.punched = false;
        link.homes = homes;
        let now = self.now_ms();
        // `a` dials: its session opens as initiator, `b`'s as responder.
        for (x, y, side) in [(a, b, Side::Initiator), (b, a, Side::Responder)] {
            let remote = self.node(y).key;
            let opening = Opening::Member(self.node(x).certificate.clone());
            if let Some(node) = self.nodes.get_mut(x as usize) {
                node.sessions.insert(
                    y,
                    Session::new(now, remote, side, opening, session::Config::default()),
                );
                node.session_timers.remove(&y);
            }
        }
        self.session_flush(a, b);
        self.session_flush(b, a);
    }

    fn link_down(&mut self, a: u32, b: u32) {
        let link = self.links.entry(pair(a, b)).or_default();
        if !link.up {
            return;
        }
        link.up = false;
        link.epoch += 1;
        for (x, y) in [(a, b), (b, a)] {
            if let Some(node) = self.nodes.get_mut(x as usize) {
                node.sessions.remove(&y);
                node.session_timers.remove(&y);
                if node.admitted.remove(&y) {
                    node.engine.handle_disconnected(&y);
                }
            }
        }
    }

    /// Runs `f` on `x`'s session with `y`, lending it the node's gate and membership,
    /// then acts on what the session asks for.
    fn with_session(
        &mut self,
        x: u32,
        y: u32,
        f: impl FnOnce(&mut Session, &mut Context<'_>, UnixMillis),
    ) {
        let now = self.now_ms();
        let Some(node) = self.nodes.get_mut(x as usize) else {
            return;
        };
        let Some(session) = node.sessions.get_mut(&y) else {
            return;
        };
        let mut cx = Context {
            gate: &mut node.gate,
            membership: &mut node.membership,
        };
        f(session, &mut cx, now);
        self.session_flush(x, y);
    }

    /// Acts on what `x`'s session with `y` asks for, and arms its timer.
    fn session_flush(&mut self, x: u32, y: u32) {
        let Some(session) = self
            .nodes
            .get_mut(x as usize)
            .and_then(|n| n.sessions.get_mut(&y))
        else {
            return;
        };
        let actions: Vec<Action> = std::iter::from_fn(|| session.poll_action()).collect();
        for action in actions {
            match action {
                Action::Send { channel, id, bytes } => {
                    let len = bytes.len() as u64;
                    self.send(x, y, Payload::Session { channel, id, bytes }, len);
                }
                Action::Admitted(_) => {
                    self.recorder.admissions += 1;
                    if let Some(node) = self.nodes.get_mut(x as usize) {
                        node.admitted.insert(y);
                    }
                    self.schedule_punch(x, y);
                    self.with_engine(x, |e, r, now| e.handle_connected(now, y, r));
                    self.take_peer_certificate(x, y);
                }
                Action::Refused { .. } => {
                    self.recorder.refused += 1;
                    self.link_down(x, y);
                    self.schedule(self.now + RECONNECT_US, Event::Reconnect);
                    return;
                }
                Action::Sync(bytes) => {
                    self.with_engine(x, |e, r, now| e.handle_message(now, &y, &bytes, r));
                }
                Action::SyncDropped { .. } => self.recorder.sync_queue_full += 1,
                // Merged already: what changed is told to the other peers at once, as
                // the node does.
                Action::Merged(merged) => {
                    if merged.changed() {
                        self.membership_changed(x, Some(y));
                    }
                }
                // netsim has no addresses to dial, no pairing and no audit log.
                Action::Listed(_) | Action::Joined(_) | Action::Welcomed(_) => {}
            }
        }
        self.arm_session(x, y);
    }

    /// `x` admitted `y`: `y`'s certificate joins `x`'s membership (as the node takes
    /// it in), and if that is news every admitted peer is told.
    fn take_peer_certificate(&mut self, x: u32, y: u32) {
        let now = self.now_ms();
        let Some(node) = self.nodes.get_mut(x as usize) else {
            return;
        };
        let Some(chain) = node
            .sessions
            .get(&y)
            .and_then(Session::peer_certificate)
            .cloned()
        else {
            return;
        };
        let snapshot = Snapshot {
            devices: vec![chain],
            ..Snapshot::default()
        };
        if node
            .membership
            .merge(now, &snapshot, &mut node.gate.revocations)
            .changed()
        {
            self.membership_changed(x, None);
        }
    }

    /// `x`'s membership changed: every admitted peer but `except` is told now.
    fn membership_changed(&mut self, x: u32, except: Option<u32>) {
        let Some(node) = self.nodes.get(x as usize) else {
            return;
        };
        let peers: Vec<u32> = node
            .sessions
            .iter()
            .filter(|(y, s)| Some(**y) != except && s.is_admitted())
            .map(|(y, _)| *y)
            .collect();
        for y in peers {
            self.with_session(x, y, |s, cx, now| s.handle_membership_changed(now, cx));
        }
    }

    /// Schedules the timer of `x`'s session with `y`, unless it is already due then.
    fn arm_session(&mut self, x: u32, y: u32) {
        let epoch = self.links.get(&pair(x, y)).map_or(0, |l| l.epoch);
        let now = self.now;
        let Some(node) = self.nodes.get_mut(x as usize) else {
            return;
        };
        let Some(due) = node.sessions.get(&y).and_then(Session::poll_timeout) else {
            node.session_timers.remove(&y);
            return;
        };
        let t = due.0.saturating_sub(BASE_MS).saturating_mul(1000);
        let at = t.max(now);
        if node.session_timers.get(&y) == Some(&at) {
            return;
        }
        node.session_timers.insert(y, at);
        self.schedule(at, Event::SessionTimer(x, y, epoch));
    }

    /// A members or sync message, or its acknowledgement, was lost for good: its sender
    /// hears of the failure when the request times out.
    fn never_acknowledged(&mut self, from: u32, to: u32, epoch: u64, payload: &Payload) {
        let (sender, receiver, channel, id) = match payload {
            Payload::Session {
                channel: channel @ (Channel::Members | Channel::Sync),
                id,
                ..
            } => (from, to, *channel, *id),
            Payload::Ack(channel, id) => (to, from, *channel, *id),
            _ => return,
        };
        let timeout = match channel {
            Channel::Members => MEMBERS_TIMEOUT_US,
            _ => SYNC_TIMEOUT_US,
        };
        self.schedule(
            self.now + timeout,
            Event::SendFailed(sender, receiver, epoch, id),
        );
    }

    /// Once both ends of a relayed connection between cone NATs have admitted each
    /// other, DCUtR runs over it (as the node holds it until admission): a CONNECT and
    /// its answer, then SYNC, over the relay (one and a half round trips), then both
    /// dial and the direct QUIC handshake takes one more round trip.
    fn schedule_punch(&mut self, x: u32, y: u32) {
        let Some(link) = self.links.get(&pair(x, y)).copied() else {
            return;
        };
        let Route::Relayed { via, punch: true } = link.route else {
            return;
        };
        if link.punched
            || !self.node(x).admitted.contains(&y)
            || !self.node(y).admitted.contains(&x)
        {
            return;
        }
        let relayed = self.nominal_one_way(x, y, Some(via));
        let direct = self.nominal_one_way(x, y, None);
        self.schedule(
            self.now + 3 * relayed + 2 * direct,
            Event::Punch(x, y, link.epoch),
        );
    }

    /// Handles the next event, if it is due by `until`. False when none is.
    pub fn step(&mut self, until: u64) -> bool {
        let Some((&(at, seq), _)) = self.queue.first_key_value() else {
            return false;
        };
        if at > until {
            return false;
        }
        let Some(event) = self.queue.remove(&(at, seq)) else {
            return false;
        };
        self.now = self.now.max(at);
        self.clock
            .store(BASE_MS + self.now / 1000, Ordering::Relaxed);
        self.events += 1;
        self.handle(event);
        true
    }

    /// Steps until `until` (µs) or until nothing is left to do.
    pub fn run_until(&mut self, until: u64, progress: &mut dyn FnMut(u64)) {
        while self.step(until) {
            if self.events.is_multiple_of(4096) {
                progress(self.now);
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs the scenario to its end, then the drain; returns the records.
    pub fn run(mut self, progress: &mut dyn FnMut(u64, u64)) -> Recorder {
        let end = self.end;
        let total = end + us(DRAIN);
        self.run_until(end, &mut |now| progress(now, total));
        self.recorder.unconverged_at_end = self.pending.values().map(Vec::len).sum();
        self.draining = true;
        // Links are re-evaluated at every instant a cut or an offline window begins or
        // ends, and at every power change, so checking now and at each of those during
        // the drain tells whether the network stayed whole through it.
        self.whole_in_drain = self.whole();
        self.run_until(total, &mut |now| progress(now, total));
        progress(total, total);
        self.finish()
    }

    fn finish(mut self) -> Recorder {
        for (node, id) in self.backlog.keys().cloned().collect::<Vec<_>>() {
            self.append_backlog(node, &id);
        }
        // Every holder's replica against the origin's.
        let mut divergent = 0;
        let mut checked = 0;
        for (id, entry) in &self.catalog {
            let Some(origin) = self
                .nodes
                .get(entry.origin as usize)
                .and_then(|n| n.stores.get_by_id(id))
            else {
                continue;
            };
            let digest = origin.digest();
            for (i, node) in self.nodes.iter().enumerate() {
                let Ok(i) = u32::try_from(i) else { continue };
                if i == entry.origin || !replicates(&self.devices, i, entry) {
                    continue;
                }
                checked += 1;
                if node.stores.get_by_id(id).map(|s| s.digest()) != Some(digest) {
                    divergent += 1;
                }
            }
        }
        let per = self.scenario.devices.len();
        self.recorder.membership_complete = self
            .nodes
            .iter()
            .filter(|n| n.membership.members(&n.gate.revocations).len() == per)
            .count();
        self.recorder.replicas_checked = checked;
        self.recorder.replicas_divergent = divergent;
        self.recorder.convergence_expected = self.whole_in_drain;
        self.recorder.nodes = self.nodes.len();
        self.recorder.events = self.events;
        self.recorder.end_us = self.end;
        self.recorder
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                from,
                to,
                epoch,
                payload,
            } => self.deliver(from, to, epoch, payload),
            Event::Timer(i) => {
                let now_ms = self.now_ms();
                let Some(node) = self.nodes.get_mut(i as usize) else {
                    return;
                };
                if node.timer.is_some_and(|t| t <= self.now) {
                    node.timer = None;
                }
                if node.engine.poll_timeout().is_some_and(|d| d <= now_ms) {
                    self.with_engine(i, |e, r, now| e.handle_timeout(now, r));
                } else {
                    self.arm(i);
                }
            }
            Event::Reconnect => self.reconnect(),
            Event::SessionTimer(x, y, epoch) => {
                let at = self.now;
                let current = self
                    .links
                    .get(&pair(x, y))
                    .is_some_and(|l| l.up && l.epoch == epoch)
                    && self
                        .nodes
                        .get(x as usize)
                        .is_some_and(|n| n.session_timers.get(&y) == Some(&at));
                if current {
                    if let Some(node) = self.nodes.get_mut(x as usize) {
                        node.session_timers.remove(&y);
                    }
                    self.with_session(x, y, |s, cx, now| s.handle_timeout(now, cx));
                }
            }
            Event::SendFailed(x, y, epoch, id) => {
                if self
                    .links
                    .get(&pair(x, y))
                    .is_some_and(|l| l.up && l.epoch == epoch)
                {
                    self.with_session(x, y, |s, _, _| s.handle_failed(id));
                }
            }
            Event::Write(h, s) => self.write(h, s),
            Event::Job(h, j) => self.submit(h, j),
            Event::JobRan(id) => self.job_ran(id),
            Event::JobTimeout(id) => {
                if let Some(job) = self.jobs.get_mut(&id)
                    && !job.done
                {
                    job.done = true;
                    if let Some(r) = self.recorder.jobs.get_mut(job.record) {
                        r.outcome = "timeout";
                    }
                }
            }
            Event::Power(i, on) => {
                let was = self.nodes.get(i as usize).is_some_and(|n| n.powered);
                if let Some(node) = self.nodes.get_mut(i as usize) {
                    node.powered = on;
                    node.unnoticed_until = 0;
                    if on && !was {
                        // A reboot: the engine starts afresh; the stores are on disk.
                        node.engine = Engine::new(sync::Config::default());
                        node.timer = None;
                    }
                }
                if !on {
                    self.stop_watching(i);
                }
                if on && !was {
                    // Links the others still hold open after a crash: the device
                    // dials again and is admitted afresh on a new connection; what
                    // was in flight on the old one is lost.
                    let stale: Vec<u32> = self
                        .links
                        .iter()
                        .filter(|&(&(a, b), l)| l.up && (a == i || b == i))
                        .map(|(&(a, b), _)| if a == i { b } else { a })
                        .collect();
                    for other in stale {
                        if self.wanted(i, other) {
                            self.link_up(i, other);
                        } else {
                            // Cut meanwhile (a partition began while it was down).
                            self.link_down(i, other);
                        }
                    }
                    self.watch_restart(i);
                }
                self.reconnect();
            }
            Event::Punch(a, b, epoch) => {
                if let Some(link) = self.links.get_mut(&pair(a, b))
                    && link.up
                    && link.epoch == epoch
                    && !link.punched
                {
                    link.punched = true;
                    self.recorder.relay.punches += 1;
                }
            }
            Event::Crash(i, detect) => {
                self.stop_watching(i);
                let now = self.now;
                if let Some(node) = self.nodes.get_mut(i as usize) {
                    // Its memory is gone; its stores are on disk. The others are not
                    // told: their links to it stay open until they notice.
                    node.powered = false;
                    node.unnoticed_until = now + detect;
                    node.engine = Engine::new(sync::Config::default());
                    node.timer = None;
                    node.sessions.clear();
                    node.session_timers.clear();
                    node.admitted.clear();
                }
                self.schedule(now + detect, Event::Reconnect);
                self.reconnect();
            }
        }
    }

    fn deliver(&mut self, from: u32, to: u32, epoch: u64, payload: Payload) {
        if !self.node(to).powered
            || !self
                .links
                .get(&pair(from, to))
                .is_some_and(|l| l.up && l.epoch == epoch)
        {
            self.recorder.lost_on_cut += 1;
            return;
        }
        match payload {
            Payload::Session { channel, id, bytes } => {
                if self.node(to).sessions.contains_key(&from) {
                    self.with_session(to, from, |s, cx, now| {
                        s.handle_received(now, channel, &bytes, cx);
                    });
                } else {
                    self.recorder.dropped += 1;
                }
                // The transport acknowledges a members or sync message once it is
                // received, with or without a session (the node answers every request).
                if channel != Channel::Admission {
                    self.send(to, from, Payload::Ack(channel, id), 0);
                }
            }
            Payload::Ack(_, id) => {
                self.with_session(to, from, |s, cx, now| s.handle_sent(now, id, cx))
            }
            Payload::JobRequest(id) => self.job_arrived(id, to),
            Payload::JobResult(id) => self.complete(id),
        }
    }

    fn write(&mut self, h: u32, s: usize) {
        let Some(stream) = self.scenario.streams.get(s).cloned() else {
            return;
        };
        if self.draining {
            return;
        }
        self.schedule(self.now + us(stream.every), Event::Write(h, s));
        let Some(origin) = self.node_of(h, &stream.device) else {
            return;
        };
        if !self.node(origin).powered {
            return;
        }
        let Some(id) = self.stream_ids.get(&(h, s)).cloned() else {
            return;
        };
        let now_ms = self.now_ms().0;
        let rng = match self.node_rngs.get_mut(origin as usize) {
            Some(rng) => rng,
            None => return,
        };
        let readings: Vec<Reading> = (0..u64::from(stream.batch))
            .map(|k| {
                let value = match stream.kind {
                    StreamKind::Sensor => json!({ "celsius": round2(15.0 + 10.0 * rng.unit()) }),
                    StreamKind::Location => json!({
                        "lat": round5(51.5 + 0.05 * rng.unit()),
                        "lon": round5(-0.12 + 0.05 * rng.unit()),
                        "acc": 5 + rng.below(30),
                    }),
                };
                Reading::new(now_ms + k, value)
            })
            .collect();
        let private = self.catalog.get(&id).is_some_and(|entry| {
            self.household_nodes(h)
                .all(|n| n == origin || !replicates(&self.devices, n, entry))
        });
        if private {
            let gathered = self.backlog.entry((origin, id.clone())).or_default();
            gathered.extend(readings);
            if gathered.len() >= BACKLOG {
                self.append_backlog(origin, &id);
            }
            return;
        }
        let Some(store) = self.node(origin).stores.get_by_id(&id) else {
            return;
        };
        if store.append(readings).is_err() {
            self.recorder.local_errors += 1;
            return;
        }
        let target = store.records().unwrap_or(0);
        // Who must receive it.
        let remaining: BTreeSet<u32> = match self.catalog.get(&id) {
            Some(entry) => self
                .household_nodes(h)
                .filter(|&n| n != origin && holds(&self.devices, n, entry))
                .collect(),
            None => BTreeSet::new(),
        };
        if !remaining.is_empty() {
            let record = self.recorder.convergence.len();
            self.recorder.convergence.push(ConvergenceRecord {
                store: stream.store.clone(),
                origin: self.label(origin),
                written_us: self.now,
                converged_us: None,
            });
            self.pending.entry(id.clone()).or_default().push(Pending {
                record,
                target,
                remaining,
            });
        }
        self.pump_local(origin);
    }

    /// Appends the readings gathered for a store no other device holds.
    fn append_backlog(&mut self, node: u32, id: &str) {
        let Some(readings) = self.backlog.remove(&(node, id.to_owned())) else {
            return;
        };
        let appended = self
            .node(node)
            .stores
            .get_by_id(id)
            .map(|store| store.append(readings));
        if !matches!(appended, Some(Ok(()))) {
            self.recorder.local_errors += 1;
        }
    }

    /// Hands the node's local writes to its engine; writes missed (the subscription
    /// lagged) make the engine compare the store with its peers again.
    fn pump_local(&mut self, i: u32) {
        let mut actions = Vec::new();
        if let Some(node) = self.nodes.get_mut(i as usize) {
            for (id, rx) in &mut node.local {
                loop {
                    match rx.try_recv() {
                        Ok(change) => node.changes.handle_change(id, change),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            node.changes.handle_lagged(id);
                        }
                        Err(_) => break,
                    }
                }
            }
            actions.extend(std::iter::from_fn(|| node.changes.poll_action()));
        }
        for action in actions {
            match action {
                LocalAction::Apply { store, change } => self.with_engine(i, |e, r, now| {
                    e.local_change(now, &store, &change.units, change.before, r);
                }),
                LocalAction::Recheck { store } => {
                    self.with_engine(i, |e, _, now| e.recheck(now, &store));
                }
            }
        }
    }

    fn reachable(&self, from: u32, to: u32) -> bool {
        from == to
            || (self.node(from).admitted.contains(&to) && self.node(to).admitted.contains(&from))
    }

    /// Where a job runs: the candidates this strategy allows, ranked by the node's own
    /// rule (`hearth_protocol::compute::choose`).
    fn executor(&self, h: u32, submitter: u32, reads: &[String]) -> Option<u32> {
        let per = self.scenario.devices.len();
        let first = u32::try_from(h as usize * per).ok()?;
        let last = u32::try_from((h as usize + 1) * per).ok()?;
        let mut candidates = Vec::new();
        for n in first..last {
            let d = self.devices.get(n as usize)?;
            let fits = match self.strategy {
                Strategy::DataToCloud => d.role == Role::Cloud,
                Strategy::DataToHome => d.role == Role::Home,
                // Only where the plaintext is: never on a sealed holder.
                Strategy::ComputeToData | Strategy::DataToSealedCloud => {
                    reads.iter().all(|store| {
                        self.scenario
                            .streams
                            .iter()
                            .position(|s| &s.store == store)
                            .and_then(|s| self.stream_ids.get(&(h, s)))
                            .and_then(|id| self.catalog.get(id))
                            .is_some_and(|e| holds(&self.devices, n, e))
                    })
                }
            };
            if !fits {
                continue;
            }
            candidates.push(hearth_protocol::compute::Candidate {
                // Zero-padded indices: the final tie-break by name is by index.
                device: format!("{n:010}"),
                role: d.role,
                online: self.node(n).powered && self.reachable(submitter, n),
                fresh: true,
                local: n == submitter,
            });
        }
        hearth_protocol::compute::choose(&candidates).and_then(|c| c.device.parse().ok())
    }

    fn submit(&mut self, h: u32, j: usize) {
        let Some(job) = self.scenario.jobs.get(j).cloned() else {
            return;
        };
        if self.draining {
            return;
        }
        self.schedule(self.now + us(job.every), Event::Job(h, j));
        let Some(submitter) = self.node_of(h, &job.from) else {
            return;
        };
        if !self.node(submitter).powered {
            return;
        }
        let id = self.next_job;
        self.next_job += 1;
        let record = self.recorder.jobs.len();
        let executor = self.executor(h, submitter, &job.reads);
        self.recorder.jobs.push(JobRecord {
            job: job.name.clone(),
            from: self.label(submitter),
            ran_on: executor.map(|e| self.label(e)),
            submitted_us: self.now,
            outcome: "pending",
            latency_us: None,
            records_scanned: 0,
            records_missing: 0,
            during_partition: self.partitions.active(self.now),
        });
        let Some(executor) = executor else {
            if let Some(r) = self.recorder.jobs.get_mut(record) {
                r.outcome = "unavailable";
            }
            return;
        };
        self.jobs.insert(
            id,
            JobState {
                record,
                submitter,
                executor,
                done: false,
            },
        );
        self.schedule(self.now + us(job.timeout), Event::JobTimeout(id));
        if executor == submitter {
            self.job_arrived(id, executor);
        } else {
            self.send(
                submitter,
                executor,
                Payload::JobRequest(id),
                job.request_bytes,
            );
        }
    }

    fn job_arrived(&mut self, id: u64, at: u32) {
        let Some(state) = self.jobs.get(&id) else {
            return;
        };
        let Some(record) = self.recorder.jobs.get(state.record) else {
            return;
        };
        let Some(spec) = self
            .scenario
            .jobs
            .iter()
            .find(|j| j.name == record.job)
            .cloned()
        else {
            return;
        };
        if !self.node(at).powered {
            return;
        }
        let h = self.devices.get(at as usize).map_or(0, |d| d.household);
        let mut scanned = 0;
        let mut missing = 0;
        for store in &spec.reads {
            let Some(id) = self
                .scenario
                .streams
                .iter()
                .position(|s| &s.store == store)
                .and_then(|s| self.stream_ids.get(&(h, s)))
            else {
                continue;
            };
            let id = id.clone();
            let origin = self.catalog.get(&id).map_or(at, |e| e.origin);
            self.append_backlog(at, &id);
            self.append_backlog(origin, &id);
            let id = &id;
            let here = self
                .node(at)
                .stores
                .get_by_id(id)
                .and_then(|s| s.records().ok())
                .unwrap_or(0);
            let at_origin = self
                .catalog
                .get(id)
                .and_then(|e| self.node(e.origin).stores.get_by_id(id))
                .and_then(|s| s.records().ok())
                .unwrap_or(0);
            scanned += here;
            missing += at_origin.saturating_sub(here);
        }
        if let Some(r) = self
            .jobs
            .get(&id)
            .and_then(|s| self.recorder.jobs.get_mut(s.record))
        {
            r.records_scanned = scanned;
            r.records_missing = missing;
        }
        let cost = us(spec.overhead) + us(spec.per_record).saturating_mul(scanned);
        self.schedule(self.now + cost, Event::JobRan(id));
    }

    fn job_ran(&mut self, id: u64) {
        let Some(state) = self.jobs.get(&id) else {
            return;
        };
        let (submitter, executor) = (state.submitter, state.executor);
        if submitter == executor {
            return self.complete(id);
        }
        let bytes = self
            .recorder
            .jobs
            .get(state.record)
            .and_then(|r| self.scenario.jobs.iter().find(|j| j.name == r.job))
            .map_or(0, |j| j.result_bytes);
        self.send(executor, submitter, Payload::JobResult(id), bytes);
    }

    fn complete(&mut self, id: u64) {
        let Some(state) = self.jobs.get_mut(&id) else {
            return;
        };
        if state.done {
            return;
        }
        state.done = true;
        if let Some(r) = self.recorder.jobs.get_mut(state.record) {
            r.outcome = "ok";
            r.latency_us = Some(self.now - r.submitted_us);
        }
    }
}

fn in_daily(now: u64, from: u64, until: u64) -> bool {
    let t = now % DAY_US;
    if from <= until {
        from <= t && t < until
    } else {
        t >= from || t < until
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_us(seconds: f64) -> u64 {
    (seconds * 1_000_000.0).round().max(0.0) as u64
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round5(x: f64) -> f64 {
    (x * 100_000.0).round() / 100_000.0
}
