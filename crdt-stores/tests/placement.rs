//! Placement, as a property: four devices (two home, a phone, a cloud VM) run the sync
//! engine over real stores under the same placement code the node runs
//! (`hearth_stores::replica::Policies`), while random writes, placement changes (that
//! reach each device late, in any order), partitions and heals happen. Whatever the
//! sequence:
//!
//! - no store's data ever reaches a device that no placement of it named (its origin
//!   aside);
//! - no sequence of placement changes leaves a store without a device that holds every
//!   write made to it;
//! - once every device knows the last placement and the network heals, a device it
//!   does not name still holds a replica only while no named holder holds the same (a
//!   device drops a replica only once a named holder confirmed the same digest).
//!
//! What it does not promise: that the named devices then hold everything. A device
//! receives a store only from devices the placement names and from the store's
//! origin, so a copy left only on devices the new placement drops (the origin having
//! dropped it under an earlier placement) waits there, whole, until the owner names
//! one of them again (see docs/decisions.md).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::needless_range_loop
)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_protocol::capability::Role;
use hearth_protocol::sync::placement::Policy;
use hearth_protocol::sync::{Config, Engine, Event};
use hearth_protocol::time::UnixMillis;
use hearth_stores::backend::BackendKind;
use hearth_stores::replica::{Keep, Policies, StoresReplica};
use hearth_stores::{Kind, StoreMeta, Stores, StoresConfig};
use proptest::prelude::*;
use serde_json::json;

const DEVICES: [(&str, Role); 4] = [
    ("home", Role::Home),
    ("hub", Role::Home),
    ("phone", Role::Mobile),
    ("vm", Role::Cloud),
];
/// Store i is created on device ORIGINS[i].
const ORIGINS: [usize; 2] = [2, 0];
const ENTRIES: [&str; 9] = [
    "origin",
    "role:home",
    "role:mobile",
    "role:cloud",
    "home",
    "hub",
    "phone",
    "vm",
    "all",
];

#[derive(Debug, Clone)]
enum Op {
    /// A write to store `.0` on device `.1` (if it holds a replica).
    Write(usize, usize),
    /// The owner places store `.0` on the entries whose bits are set in `.1`.
    Place(usize, u16),
    /// Device `.0` learns the newest placement of store `.1`.
    Learn(usize, usize),
    /// The link between two devices goes up or down.
    Link(usize, usize, bool),
    /// Time passes: `.0` rounds of delivery and timers.
    Run(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..4usize).prop_map(|(s, d)| Op::Write(s, d)),
        2 => (0..2usize, 1..512u16).prop_map(|(s, bits)| Op::Place(s, bits)),
        3 => (0..4usize, 0..2usize).prop_map(|(d, s)| Op::Learn(d, s)),
        2 => (0..4usize, 0..4usize, any::<bool>()).prop_map(|(a, b, up)| Op::Link(a, b, up)),
        3 => (1..6u8).prop_map(Op::Run),
    ]
}

fn policy(bits: u16) -> Policy {
    let text: Vec<&str> = ENTRIES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, e)| *e)
        .collect();
    Policy::parse(&text.join(",")).unwrap()
}

struct Device {
    stores: Stores,
    engine: Engine<usize>,
    view: Policies<usize>,
    _dir: tempfile::TempDir,
}

struct World {
    devices: Vec<Device>,
    clock: Arc<AtomicU64>,
    links: BTreeSet<(usize, usize)>,
    wire: Vec<(usize, usize, Vec<u8>)>,
    metas: Vec<StoreMeta>,
    /// The newest placement of each store.
    placed: Vec<Policy>,
    /// Devices any placement of each store named (or its origin).
    ever: Vec<BTreeSet<usize>>,
    /// Keys written to each store.
    written: Vec<BTreeSet<String>>,
    writes: u64,
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn named_by(policy: &Policy, store: usize) -> BTreeSet<usize> {
    let origin = DEVICES[ORIGINS[store]].0;
    DEVICES
        .iter()
        .enumerate()
        .filter(|(_, (name, role))| policy.holds(name, *role, origin))
        .map(|(i, _)| i)
        .collect()
}

impl World {
    fn new() -> Self {
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let mut devices = Vec::new();
        for (i, (name, role)) in DEVICES.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let c = clock.clone();
            let stores = Stores::open(StoresConfig {
                root: dir.path().to_path_buf(),
                backend: BackendKind::Memory,
                actor: [u8::try_from(i + 1).unwrap(); 16],
                clock: Arc::new(move || c.load(Ordering::SeqCst)),
            })
            .unwrap();
            devices.push(Device {
                stores,
                engine: Engine::new(Config::default()),
                view: Policies::new(name, *role, None),
                _dir: dir,
            });
        }
        let mut metas = Vec::new();
        let mut placed = Vec::new();
        let mut ever = Vec::new();
        for (s, origin) in ORIGINS.iter().enumerate() {
            let store = devices[*origin]
                .stores
                .create(&format!("s{s}"), Kind::Kv, None)
                .unwrap();
            metas.push(store.meta().clone());
            let default = Policy::default_policy();
            ever.push(named_by(&default, s));
            ever[s].insert(*origin);
            placed.push(default);
        }
        let mut world = Self {
            devices,
            clock,
            links: BTreeSet::new(),
            wire: Vec::new(),
            metas,
            placed,
            ever,
            written: vec![BTreeSet::new(), BTreeSet::new()],
            writes: 0,
        };
        // Every device starts knowing the default placement of both stores.
        for d in 0..DEVICES.len() {
            for s in 0..ORIGINS.len() {
                world.learn(d, s);
            }
        }
        world
    }

    fn now(&self) -> UnixMillis {
        UnixMillis(self.clock.load(Ordering::SeqCst))
    }

    fn with(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Engine<usize>, &mut StoresReplica<'_, Policies<usize>>, UnixMillis),
    ) {
        let now = self.now();
        let d = &mut self.devices[i];
        let mut replica = StoresReplica::new(&d.stores, &d.view, now.0);
        f(&mut d.engine, &mut replica, now);
        while let Some((to, bytes)) = self.devices[i].engine.poll_transmit() {
            if self.links.contains(&link(i, to)) {
                self.wire.push((i, to, bytes));
            }
        }
        while let Some(event) = self.devices[i].engine.poll_event() {
            if let Event::Misbehaved { reason, .. } | Event::LocalError { reason, .. } = event {
                panic!("device {i}: {reason}");
            }
        }
    }

    fn learn(&mut self, d: usize, s: usize) {
        let origin = DEVICES[ORIGINS[s]].0.to_owned();
        let id = self.metas[s].id.clone();
        let policy = self.placed[s].clone();
        self.devices[d].view.policies.insert(id, (origin, policy));
        self.with(d, |e, r, now| e.rescan(now, r));
        self.drop_unheld(d);
    }

    fn drop_unheld(&mut self, d: usize) {
        for store in self.devices[d].stores.all() {
            let id = store.meta().id.clone();
            let device = &self.devices[d];
            let keep = device
                .view
                .keep(&device.engine, &id, &store.sync_id(), store.digest());
            if keep == Keep::Wait {
                // What the node does (every few seconds): ask the holders to confirm.
                drop(store);
                self.with(d, |e, r, now| e.hand_over(now, &id, r));
                continue;
            }
            if keep == Keep::Drop {
                let name = store.name().to_owned();
                drop(store);
                self.devices[d].engine.forget_store(&id);
                self.devices[d].stores.remove(&name).unwrap();
            }
        }
    }

    fn set_link(&mut self, a: usize, b: usize, up: bool) {
        if a == b || self.links.contains(&link(a, b)) == up {
            return;
        }
        if up {
            self.links.insert(link(a, b));
            for (x, y) in [(a, b), (b, a)] {
                let (name, role) = DEVICES[y];
                self.devices[x]
                    .view
                    .devices
                    .insert(y, (name.to_owned(), role));
                self.with(x, |e, r, now| e.handle_connected(now, y, r));
            }
        } else {
            self.links.remove(&link(a, b));
            self.wire.retain(|(f, t, _)| link(*f, *t) != link(a, b));
            for (x, y) in [(a, b), (b, a)] {
                self.devices[x].view.devices.remove(&y);
                self.devices[x].engine.handle_disconnected(&y);
            }
        }
    }

    fn write(&mut self, s: usize, d: usize) {
        let Ok(store) = self.devices[d].stores.get(&self.metas[s].name) else {
            return;
        };
        self.writes += 1;
        let key = format!("w{}", self.writes);
        let mut changes = store.subscribe_local();
        store.put(&key, json!(d)).unwrap();
        let change = changes.try_recv().unwrap();
        self.written[s].insert(key);
        let id = self.metas[s].id.clone();
        self.with(d, |e, r, now| {
            e.local_change(now, &id, &change.units, change.before, r);
        });
    }

    fn run(&mut self, rounds: u8) {
        for _ in 0..rounds {
            let wire = std::mem::take(&mut self.wire);
            for (from, to, bytes) in wire {
                self.with(to, |e, r, now| e.handle_message(now, &from, &bytes, r));
            }
            self.clock.fetch_add(700, Ordering::SeqCst);
            for d in 0..DEVICES.len() {
                self.with(d, |e, r, now| {
                    if e.poll_timeout().is_some_and(|t| t <= now) {
                        e.handle_timeout(now, r);
                    }
                });
                self.drop_unheld(d);
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write(s, d) => self.write(s, d),
            Op::Place(s, bits) => {
                self.placed[s] = policy(bits);
                let named = named_by(&self.placed[s], s);
                self.ever[s].extend(named);
            }
            Op::Learn(d, s) => self.learn(d, s),
            Op::Link(a, b, up) => self.set_link(a, b, up),
            Op::Run(n) => self.run(n),
        }
    }

    /// Keys of store `s` on device `d`, if it holds a replica.
    fn keys(&self, s: usize, d: usize) -> Option<BTreeSet<String>> {
        let store = self.devices[d].stores.get(&self.metas[s].name).ok()?;
        Some(store.keys().unwrap().into_iter().collect())
    }

    fn digest(&self, s: usize, d: usize) -> Option<hearth_protocol::sync::Digest> {
        let store = self.devices[d].stores.get(&self.metas[s].name).ok()?;
        Some(store.digest())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for s in 0..ORIGINS.len() {
            for d in 0..DEVICES.len() {
                if let Some(keys) = self.keys(s, d) {
                    prop_assert!(
                        keys.is_empty() || self.ever[s].contains(&d),
                        "store s{s} reached {} which no placement named",
                        DEVICES[d].0
                    );
                }
            }
            for key in &self.written[s] {
                prop_assert!(
                    (0..DEVICES.len()).any(|d| self.keys(s, d).is_some_and(|k| k.contains(key))),
                    "write {key} of s{s} is held by no device"
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn data_stays_within_its_placements_and_is_never_left_without_a_holder(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let mut world = World::new();
        for a in 0..DEVICES.len() {
            for b in a + 1..DEVICES.len() {
                world.set_link(a, b, true);
            }
        }
        for op in &ops {
            world.apply(op);
            world.check()?;
        }
        // Everyone learns the last placements; the network heals; time passes.
        for a in 0..DEVICES.len() {
            for b in a + 1..DEVICES.len() {
                world.set_link(a, b, true);
            }
        }
        for d in 0..DEVICES.len() {
            for s in 0..ORIGINS.len() {
                world.learn(d, s);
            }
        }
        for _ in 0..40 {
            world.run(5);
        }
        world.check()?;
        for s in 0..ORIGINS.len() {
            let named = named_by(&world.placed[s], s);
            let digests: BTreeSet<_> = named.iter().filter_map(|d| world.digest(s, *d)).collect();
            for d in 0..DEVICES.len() {
                if !named.contains(&d) && world.keys(s, d).is_some() {
                    // A device no longer named keeps its copy only while no named
                    // holder has confirmed the same: it never drops what others lack.
                    prop_assert!(
                        !world.digest(s, d).is_some_and(|x| digests.contains(&x)),
                        "{} still holds s{s} though a named holder has the same",
                        DEVICES[d].0
                    );
                }
            }
        }
    }
}
