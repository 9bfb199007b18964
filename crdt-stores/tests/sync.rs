//! The sync engine with real stores and no network: 3 to 5 replicas write at random
//! while a simulated network partitions them, loses, duplicates and reorders
//! messages, and the owner erases ranges of readings, kv keys and documents, which
//! each replica applies when it hears of it; once it heals, every replica must hold the same heads and the same
//! contents as a model of every write and erasure. Each run is seeded; a failure prints the seed
//! (rerun one with `HEARTH_SYNC_SEED=N`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_protocol::sync::{Config, Engine, Event};
use hearth_protocol::time::UnixMillis;
use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::replica::{Everywhere, StoresReplica, store_ref};
use hearth_stores::{Kind, LocalChange, Reading, Stores, StoresConfig};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// xorshift64*: small, seeded, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Node {
    stores: Stores,
    engine: Engine<usize>,
    /// Local-change subscriptions, by store id.
    local: BTreeMap<String, broadcast::Receiver<LocalChange>>,
    _dir: tempfile::TempDir,
}

struct World {
    nodes: Vec<Node>,
    clock: Arc<AtomicU64>,
    links: BTreeSet<(usize, usize)>,
    /// In flight: (from, to, bytes).
    wire: Vec<(usize, usize, Vec<u8>)>,
    /// Every kv write: key -> value (keys are unique per write).
    kv_model: BTreeMap<String, Value>,
    /// Every reading appended, as (ts, value text, erasures its writer had applied).
    series_model: Vec<(u64, String, u64)>,
    /// Ranges of readings erased, in order (erasure k + 1 is `erased[k]`).
    erased: Vec<(u64, u64)>,
    /// Readings erased, summed over every replica.
    erased_readings: u64,
    /// Keys erased, in order, per kv or doc store.
    erased_keys: BTreeMap<&'static str, Vec<String>>,
    /// Values of erased keys erased, summed over every replica.
    erased_values: u64,
    /// The documents of the doc store: each node writes only its own field of each
    /// (`f<node>`), by patch or by putting the whole document as it sees it, so every
    /// field's value is the last its writer gave it.
    doc_model: BTreeMap<String, BTreeMap<String, Value>>,
    misbehaved: usize,
    /// Stores created during the run.
    kv_late: Vec<String>,
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl World {
    fn new(count: usize, window: u64) -> Self {
        Self::with_config(count, window, &Config::default())
    }

    fn with_config(count: usize, window: u64, config: &Config) -> Self {
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let mut nodes = Vec::new();
        for i in 0..count {
            let dir = tempfile::tempdir().unwrap();
            let c = clock.clone();
            let stores = Stores::open(StoresConfig {
                root: dir.path().to_path_buf(),
                backend: BackendKind::Memory,
                actor: [u8::try_from(i + 1).unwrap(); 16],
                clock: Arc::new(move || c.load(Ordering::SeqCst)),
            })
            .unwrap();
            nodes.push(Node {
                stores,
                engine: Engine::new(config.clone()),
                local: BTreeMap::new(),
                _dir: dir,
            });
        }
        let origin = &nodes[0].stores;
        origin.create("settings", Kind::Kv, None).unwrap();
        origin
            .create("sensor", Kind::Timeseries, Some(window))
            .unwrap();
        // Documents are created once, on the origin, before anyone edits them: two
        // devices creating one key apart make two objects, and one of them wins.
        let contacts = origin.create("contacts", Kind::Doc, None).unwrap();
        let mut doc_model = BTreeMap::new();
        for d in 0..4 {
            contacts.put(&format!("d{d}"), json!({})).unwrap();
            doc_model.insert(format!("d{d}"), BTreeMap::new());
        }
        Self {
            nodes,
            clock,
            links: BTreeSet::new(),
            wire: Vec::new(),
            kv_model: BTreeMap::new(),
            series_model: Vec::new(),
            erased: Vec::new(),
            erased_readings: 0,
            erased_keys: BTreeMap::new(),
            erased_values: 0,
            doc_model,
            misbehaved: 0,
            kv_late: Vec::new(),
        }
    }

    fn now(&self) -> UnixMillis {
        UnixMillis(self.clock.load(Ordering::SeqCst))
    }

    /// Runs `f` with node `i`'s engine and replica, then moves what it sends to the wire.
    fn with(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Engine<usize>, &mut StoresReplica<'_, Everywhere>, UnixMillis),
    ) {
        let now = self.now();
        let node = &mut self.nodes[i];
        let mut replica = StoresReplica::new(&node.stores, &Everywhere, now.0);
        f(&mut node.engine, &mut replica, now);
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        loop {
            // New stores (replicas made by sync) get a local-change subscription.
            for store in self.nodes[i].stores.all() {
                let id = store.meta().id.clone();
                self.nodes[i]
                    .local
                    .entry(id)
                    .or_insert_with(|| store.subscribe_local());
            }
            let mut moved = false;
            while let Some((to, bytes)) = self.nodes[i].engine.poll_transmit() {
                moved = true;
                if self.links.contains(&link(i, to)) {
                    self.wire.push((i, to, bytes));
                }
            }
            while let Some(event) = self.nodes[i].engine.poll_event() {
                match event {
                    Event::Misbehaved { peer, reason } => {
                        // What a node does: drop the connection.
                        eprintln!("node {i} dropped {peer}: {reason}");
                        self.misbehaved += 1;
                        self.cut(i, peer);
                    }
                    Event::LocalError { store, reason } => {
                        panic!("node {i} store {store}: {reason}")
                    }
                    Event::Received { .. } | Event::Sent { .. } | Event::Unshared { .. } => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        if !self.links.insert(link(a, b)) {
            return;
        }
        self.with(a, |e, r, now| e.handle_connected(now, b, r));
        self.with(b, |e, r, now| e.handle_connected(now, a, r));
    }

    fn cut(&mut self, a: usize, b: usize) {
        if !self.links.remove(&link(a, b)) {
            return;
        }
        self.wire
            .retain(|(from, to, _)| link(*from, *to) != link(a, b));
        self.nodes[a].engine.handle_disconnected(&b);
        self.nodes[b].engine.handle_disconnected(&a);
    }

    fn deliver(&mut self, index: usize, keep_copy: bool) {
        let (from, to, bytes) = if keep_copy {
            self.wire[index].clone()
        } else {
            self.wire.swap_remove(index)
        };
        self.with(to, |e, r, now| e.handle_message(now, &from, &bytes, r));
    }

    /// Hands every local write's changes to the node's engine.
    fn pump_local(&mut self, i: usize) {
        let ids: Vec<String> = self.nodes[i].local.keys().cloned().collect();
        for id in ids {
            while let Some(rx) = self.nodes[i].local.get_mut(&id) {
                let change = match rx.try_recv() {
                    Ok(change) => change,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                };
                // The engine knows a store by its sync id (which an erasure changes);
                // a write from before an erasure belongs to the replica as it was.
                let Some(store) = self.nodes[i].stores.get_by_id(&id) else {
                    continue;
                };
                if store.erasures() != change.erasures {
                    continue;
                }
                let sync = store.sync_id();
                self.with(i, |e, r, now| {
                    e.local_change(now, &sync, &change.units, change.before, r);
                });
            }
        }
    }

    fn write(&mut self, rng: &mut Rng, i: usize, n: u64) {
        let stores = &self.nodes[i].stores;
        if rng.chance(30) {
            // Edit this node's field of a document it holds already.
            let key = format!("d{}", rng.below(4));
            let field = format!("f{i}");
            if let Ok(store) = stores.get("contacts")
                && let Some(Value::Object(mut doc)) = store.get(&key).unwrap()
            {
                // Edits to a document being erased, made before this replica applied
                // the erasure, are erased with it.
                let mut doomed = BTreeMap::new();
                let model = if self
                    .erased_keys
                    .get("contacts")
                    .is_some_and(|k| k.contains(&key))
                {
                    &mut doomed
                } else {
                    self.doc_model.entry(key.clone()).or_default()
                };
                match rng.below(3) {
                    0 => {
                        store.patch(&key, json!({ field.clone(): n })).unwrap();
                        model.insert(field, json!(n));
                    }
                    1 => {
                        store.patch(&key, json!({ field.clone(): null })).unwrap();
                        model.remove(&field);
                    }
                    _ => {
                        doc.insert(field.clone(), json!({ "n": n, "by": i }));
                        store.put(&key, Value::Object(doc)).unwrap();
                        model.insert(field, json!({ "n": n, "by": i }));
                    }
                }
            }
        } else if rng.chance(40) {
            if let Ok(store) = stores.get("settings") {
                let key = format!("n{i}-{n}");
                let value = json!({ "n": n, "by": i });
                store.put(&key, value.clone()).unwrap();
                self.kv_model.insert(key, value);
            }
        } else if let Ok(store) = stores.get("sensor") {
            let count = 1 + rng.below(4);
            let mut readings = Vec::new();
            for k in 0..count {
                let ts = rng.below(20_000);
                let value = json!({ "v": n * 10 + k, "by": i });
                self.series_model
                    .push((ts, value.to_string(), store.erasures()));
                readings.push(Reading::new(ts, value));
            }
            store.append(readings).unwrap();
        }
        self.pump_local(i);
    }

    /// The owner erases a range of readings; its device applies it at once.
    fn erase(&mut self, rng: &mut Rng, i: usize) {
        let from = rng.below(20_000);
        let to = from + 1 + rng.below(8_000);
        self.erased.push((from, to));
        self.apply_erasures(i);
    }

    /// The owner erases a key of a kv or doc store (at most two per store); its
    /// device applies it at once.
    fn erase_key(&mut self, rng: &mut Rng, i: usize, store: &'static str) {
        let erased = self.erased_keys.entry(store).or_default();
        if erased.len() >= 2 {
            return;
        }
        let key = if store == "settings" {
            let keys: Vec<&String> = self.kv_model.keys().collect();
            if keys.is_empty() {
                return;
            }
            keys[rng.below(keys.len() as u64) as usize].clone()
        } else {
            format!("d{}", rng.below(4))
        };
        if erased.contains(&key) {
            return;
        }
        erased.push(key.clone());
        self.kv_model.remove(&key);
        if store == "contacts" {
            self.doc_model.remove(&key);
        }
        self.apply_erasures(i);
    }

    /// Node `i` hears of the erasures it has not applied, and applies them.
    fn apply_erasures(&mut self, i: usize) {
        for name in ["settings", "contacts"] {
            let Ok(store) = self.nodes[i].stores.get(name) else {
                continue;
            };
            let old = store.sync_id();
            let keys = self.erased_keys.get(name).cloned().unwrap_or_default();
            while let Some(key) = keys.get(store.erasures() as usize) {
                let selector = hearth_protocol::sync::erasure::Selector {
                    keys: vec![key.clone()],
                    ..Default::default()
                };
                let erased = store.erase(store.erasures() + 1, &selector).unwrap();
                assert!(erased.applied);
                self.erased_values += erased.keys;
            }
            if store.sync_id() != old {
                self.nodes[i].engine.forget_store(&old);
                self.with(i, |e, r, now| e.rescan(now, r));
            }
        }
        let Ok(store) = self.nodes[i].stores.get("sensor") else {
            return;
        };
        let old = store.sync_id();
        while let Some(&(from, to)) = self.erased.get(store.erasures() as usize) {
            let selector = hearth_protocol::sync::erasure::Selector {
                from: Some(from),
                to: Some(to),
                ..Default::default()
            };
            let erased = store.erase(store.erasures() + 1, &selector).unwrap();
            assert!(erased.applied);
            self.erased_readings += erased.readings;
        }
        if store.sync_id() != old {
            // What a node does: the store is another one to the engine now.
            self.nodes[i].engine.forget_store(&old);
            self.with(i, |e, r, now| e.rescan(now, r));
        }
    }

    fn tick(&mut self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
        for i in 0..self.nodes.len() {
            let due = self.nodes[i].engine.poll_timeout();
            if due.is_some_and(|d| d <= self.now()) {
                self.with(i, |e, r, now| e.handle_timeout(now, r));
            }
        }
    }

    /// Heals: every pair connected afresh, messages delivered in order without loss,
    /// time moving on, until nothing is left to send.
    fn heal(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            self.apply_erasures(i);
        }
        for a in 0..n {
            for b in a + 1..n {
                self.cut(a, b);
            }
        }
        self.wire.clear();
        for a in 0..n {
            for b in a + 1..n {
                self.connect(a, b);
            }
        }
        let mut quiet_ticks = 0;
        for _ in 0..2_000_000 {
            if self.wire.is_empty() {
                self.tick(1_000);
                quiet_ticks += 1;
                if self.wire.is_empty()
                    && self.nodes.iter().all(|n| n.engine.poll_timeout().is_none())
                {
                    return;
                }
                assert!(quiet_ticks < 1_000, "the mesh never went quiet");
                continue;
            }
            self.deliver(0, false);
        }
        panic!("healing did not finish");
    }

    fn check(&self) {
        let digests: Vec<Vec<(String, [u8; 32])>> = self
            .nodes
            .iter()
            .map(|n| {
                n.stores
                    .all()
                    .iter()
                    .map(|s| (s.name().to_owned(), s.digest()))
                    .collect()
            })
            .collect();
        for (i, d) in digests.iter().enumerate() {
            assert_eq!(d, &digests[0], "node {i} differs from node 0");
        }
        // A reading is gone if an erasure picks it that its writer had not applied
        // when it wrote it (a reading written after applying one is new data).
        let mut model_series: Vec<(u64, String)> = self
            .series_model
            .iter()
            .filter(|(ts, _, applied)| {
                !self
                    .erased
                    .iter()
                    .enumerate()
                    .any(|(k, (from, to))| k as u64 >= *applied && ts >= from && ts < to)
            })
            .map(|(ts, value, _)| (*ts, value.clone()))
            .collect();
        model_series.sort();
        for (i, node) in self.nodes.iter().enumerate() {
            let settings = node.stores.get("settings").unwrap();
            let mut kv = BTreeMap::new();
            for key in settings.keys().unwrap() {
                kv.insert(key.clone(), settings.get(&key).unwrap().unwrap());
            }
            assert_eq!(kv, self.kv_model, "node {i}: kv contents");
            let contacts = node.stores.get("contacts").unwrap();
            for (key, fields) in &self.doc_model {
                let want = Value::Object(fields.clone().into_iter().collect());
                assert_eq!(
                    contacts.get(key).unwrap(),
                    Some(want),
                    "node {i}: document {key}"
                );
            }
            for key in self.erased_keys.get("contacts").into_iter().flatten() {
                assert_eq!(contacts.get(key).unwrap(), None, "node {i}: erased {key}");
            }
            assert!(contacts.keys().unwrap().iter().all(|k| k.starts_with('d')));
            let sensor = node.stores.get("sensor").unwrap();
            let mut got: Vec<(u64, String)> = sensor
                .read(Selection::All, None)
                .unwrap()
                .iter()
                .map(|r| (r.ts, r.value.to_string()))
                .collect();
            got.sort();
            assert_eq!(got, model_series, "node {i}: readings");
            assert_eq!(sensor.records().unwrap(), model_series.len() as u64);
            // Every engine knows, as confirmed by each peer, that they agree.
            for store in node.stores.all() {
                let ours = store.digest();
                for replica in node.engine.replicas(&store.sync_id()) {
                    assert_eq!(
                        replica.confirmed.map(|(d, _)| d),
                        Some(ours),
                        "node {i} does not know peer {} holds {}",
                        replica.peer,
                        store.name()
                    );
                }
            }
        }
    }
}

/// Runs one seeded history; returns how many readings and values its erasures erased.
fn run(seed: u64) -> (u64, u64) {
    let mut rng = Rng::new(seed);
    let count = 3 + rng.below(3) as usize;
    let window = [500, 1_000, 5_000][rng.below(3) as usize];
    let mut world = World::new(count, window);
    for a in 0..count {
        for b in a + 1..count {
            world.connect(a, b);
        }
    }
    let loss = rng.below(20);
    let dup = rng.below(10);
    let steps = 300 + rng.below(300);
    let mut writes = 0;
    for step in 0..steps {
        match rng.below(100) {
            0..=29 => {
                writes += 1;
                let i = rng.below(count as u64) as usize;
                world.write(&mut rng, i, writes);
            }
            30..=37 => {
                let a = rng.below(count as u64) as usize;
                let b = rng.below(count as u64) as usize;
                if a != b {
                    if world.links.contains(&link(a, b)) {
                        world.cut(a, b);
                    } else {
                        world.connect(a, b);
                    }
                }
            }
            38..=41 => world.tick(rng.below(3_000)),
            43 if world.erased.len() < 3 => {
                let i = rng.below(count as u64) as usize;
                world.erase(&mut rng, i);
            }
            44..=45 => {
                let i = rng.below(count as u64) as usize;
                world.apply_erasures(i);
            }
            46 => {
                let i = rng.below(count as u64) as usize;
                world.erase_key(&mut rng, i, "settings");
            }
            47 if step > steps / 3 => {
                let i = rng.below(count as u64) as usize;
                world.erase_key(&mut rng, i, "contacts");
            }
            42 if step > steps / 2 => {
                // A store created later, elsewhere.
                let i = rng.below(count as u64) as usize;
                let name = format!("late-{step}");
                let created = world.nodes[i].stores.create(&name, Kind::Kv, None).unwrap();
                created.put("k", json!(step)).unwrap();
                let store = store_ref(created.meta());
                world.with(i, |e, r, now| e.store_added(now, &store, r));
                world.kv_late.push(name);
            }
            _ => {
                if world.wire.is_empty() {
                    continue;
                }
                let index = rng.below(world.wire.len() as u64) as usize;
                if rng.chance(loss) {
                    world.wire.swap_remove(index);
                } else {
                    world.deliver(index, rng.chance(dup));
                }
            }
        }
    }
    world.heal();
    world.check();
    for name in &world.kv_late {
        for (i, node) in world.nodes.iter().enumerate() {
            assert!(node.stores.get(name).is_ok(), "node {i} lacks {name}");
        }
    }
    (world.erased_readings, world.erased_values)
}

#[test]
fn replicas_converge_after_partitions_loss_duplication_and_reordering() {
    let seeds: Vec<u64> = match std::env::var("HEARTH_SYNC_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => (1..=12).collect(),
    };
    let (mut erased, mut values) = (0, 0);
    for seed in seeds {
        match std::panic::catch_unwind(|| run(seed)) {
            Ok((r, v)) => {
                erased += r;
                values += v;
            }
            Err(panic) => {
                eprintln!("sync property failed with seed {seed} (rerun: HEARTH_SYNC_SEED={seed})");
                std::panic::resume_unwind(panic);
            }
        }
    }
    // The histories do erase readings (the seeds are fixed; this guards the mix).
    assert!(
        erased > 0 && values > 0,
        "no erasure erased anything ({erased} readings, {values} values)"
    );
}

/// Two devices holding the same 1,000 stores reconnect: one summary each way, a few
/// dozen bytes, and every store known to be in sync.
#[test]
fn reconnecting_with_a_thousand_unchanged_stores_costs_one_round_trip() {
    let mut world = World::new(2, 60_000);
    for i in 0..1_000 {
        let store = world.nodes[0]
            .stores
            .create(&format!("s{i}"), Kind::Kv, None)
            .unwrap();
        store.put("k", json!(i)).unwrap();
    }
    world.connect(0, 1);
    world.heal();
    world.check();
    // Reconnect: count what crosses the wire until it is quiet.
    world.cut(0, 1);
    world.connect(0, 1);
    let mut messages = 0;
    let mut bytes = 0;
    while !world.wire.is_empty() {
        messages += 1;
        bytes += world.wire[0].2.len();
        world.deliver(0, false);
    }
    println!("reconnect with 1002 unchanged stores: {messages} messages, {bytes} bytes");
    assert_eq!(messages, 2, "one summary each way");
    assert!(bytes < 200, "{bytes} bytes");
    for store in world.nodes[0].stores.all() {
        let replicas = world.nodes[0].engine.replicas(&store.meta().id);
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].confirmed.map(|(d, _)| d), Some(store.digest()));
    }
}

/// More shared stores than one `Digests` message may list (the limit lowered here from
/// 4,096 to 16): the sender splits the listing, and every store still reaches the other
/// device.
#[test]
fn more_stores_than_one_digests_message_holds_all_replicate() {
    let count = 40;
    let mut world = World::with_config(
        2,
        60_000,
        &Config::default().with_max_stores_per_message(16),
    );
    for i in 0..count {
        let store = world.nodes[0]
            .stores
            .create(&format!("s{i}"), Kind::Kv, None)
            .unwrap();
        store.put("k", json!(i)).unwrap();
    }
    world.connect(0, 1);
    let mut digests = 0;
    while !world.wire.is_empty() {
        if hearth_protocol::sync::Message::decode(&world.wire[0].2)
            .is_ok_and(|m| matches!(m, hearth_protocol::sync::Message::Digests(ref e) if { assert!(e.len() <= 16); true }))
        {
            digests += 1;
        }
        world.deliver(0, false);
    }
    // 42 stores (with the world's own two) in listings of at most 16.
    assert!(
        digests >= 3,
        "the listing was split: {digests} Digests messages"
    );
    world.heal();
    world.check();
    assert!(world.nodes[1].stores.all().len() > count);
}

/// Bad sync data ends the conversation with that peer and leaves the store as it was.
#[test]
fn bad_messages_disconnect_the_peer_and_change_nothing() {
    use hearth_protocol::sync::{Message, Unit};

    let mut world = World::new(2, 60_000);
    world.connect(0, 1);
    world.heal();
    let sensor = world.nodes[1].stores.get("sensor").unwrap();
    let settings = world.nodes[1].stores.get("settings").unwrap();
    let (sensor_id, settings_id) = (sensor.meta().id.clone(), settings.meta().id.clone());
    let before = (sensor.digest(), settings.digest());

    // A chunk document whose readings list holds something that is not a reading.
    let mut doc = automerge::AutoCommit::new();
    let list = automerge::transaction::Transactable::put_object(
        &mut doc,
        automerge::ROOT,
        "readings",
        automerge::ObjType::List,
    )
    .unwrap();
    automerge::transaction::Transactable::insert(&mut doc, &list, 0, "not a reading").unwrap();
    let bad_chunk = doc.save();

    let attacks: Vec<Vec<u8>> = vec![
        b"HSYN\x01\x09garbage".to_vec(),
        vec![0xff; 64],
        Message::Sync {
            store: settings_id.clone(),
            unit: Unit::Whole,
            data: vec![0x42, 1, 2, 3],
        }
        .encode(),
        Message::Push {
            store: settings_id.clone(),
            unit: Unit::Whole,
            digest: [0; 32],
            data: b"not automerge".to_vec(),
        }
        .encode(),
        Message::Chunk {
            store: sensor_id.clone(),
            start: 0,
            data: bad_chunk,
        }
        .encode(),
        Message::Push {
            store: sensor_id.clone(),
            unit: Unit::Whole,
            digest: [0; 32],
            data: Vec::new(),
        }
        .encode(),
    ];
    for (n, attack) in attacks.into_iter().enumerate() {
        world.connect(0, 1);
        let misbehaved = world.misbehaved;
        world.wire.clear();
        world.wire.push((0, 1, attack));
        world.deliver(0, false);
        assert_eq!(
            world.misbehaved,
            misbehaved + 1,
            "attack {n} was not refused"
        );
        assert!(
            !world.links.contains(&(0, 1)),
            "attack {n}: still connected"
        );
        assert_eq!(
            (sensor.digest(), settings.digest()),
            before,
            "attack {n} changed a store"
        );
    }
    assert_eq!(sensor.records().unwrap(), 0);
}

/// A push lost on a link that stays up is repaired by the settle comparison, without a
/// reconnection.
#[test]
fn a_lost_push_is_repaired_without_reconnecting() {
    let mut world = World::new(2, 60_000);
    world.connect(0, 1);
    world.heal();
    let mut rng = Rng::new(99);
    for n in 0..20 {
        world.write(&mut rng, 0, 1_000 + n);
        // The third write's messages are lost; the rest arrive in order.
        while !world.wire.is_empty() {
            if n == 2 {
                world.wire.remove(0);
            } else {
                world.deliver(0, false);
            }
        }
    }
    // Time passes on a link that never went down.
    for _ in 0..200 {
        world.tick(1_000);
        while !world.wire.is_empty() {
            world.deliver(0, false);
        }
        if world
            .nodes
            .iter()
            .all(|n| n.engine.poll_timeout().is_none())
        {
            break;
        }
    }
    assert!(world.links.contains(&(0, 1)), "the link stayed up");
    world.check();
}
