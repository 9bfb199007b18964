//! Change bombs: automerge data from a peer that is a few MiB on the wire and inflates
//! to a gigabyte. automerge 0.6.1 would inflate it whole (`read_to_end`) before looking
//! at it; the store and the sync engine refuse it first, naming the limit, with the
//! store unchanged and the process's memory hardly grown. Large ordinary changes and
//! documents still load.
//!
//! Memory is read from `/proc/self/status`: `VmRSS` before, and `VmHWM` after, reset
//! through `/proc/self/clear_refs` so that it is the peak of the attempt alone. (Not
//! `statm`, which counts pages of a size a test cannot ask for without `libc`.) The
//! tests of this file take one lock, so that none measures another's allocations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use automerge::sync::{ChunkList, MessageVersion};
use automerge::transaction::{CommitOptions, Transactable as _};
use automerge::{ActorId, AutoCommit, ChangeHash, ROOT, ReadDoc as _};
use hearth_protocol::fuzz::{deflate_then_zeros, leb128};
use hearth_protocol::sync::inflate::{self, MAX_INFLATED_BYTES};
use hearth_protocol::sync::{
    Config, Engine, Event, InflateError, Message, ReplicaError, SyncMessage, SyncState, Unit,
};
use hearth_protocol::time::UnixMillis;
use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::replica::{Everywhere, StoresReplica};
use hearth_stores::{Kind, Reading, Store, Stores, StoresConfig};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// What an attempt may add to the process's resident memory.
const MAX_GROWTH: u64 = 64 * MIB;
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// An op column automerge does not know (id 15, integers), DEFLATE'd: automerge keeps
/// such columns for formats to come. (It orders columns by the low byte of their spec
/// only, so a column after the last one it writes, id 8, has an id of 9 to 15.)
const UNKNOWN_COLUMN: u64 = (15 << 4) | 0b1000 | 2;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- memory ------------------------------------------------------------------------

/// A field of `/proc/self/status` given in kB, in bytes.
fn status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

/// Runs `f`; returns what it returned and how far resident memory rose, at its peak,
/// above where it was before.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    // "5" resets the peak (VmHWM) to the resident memory now.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status("VmRSS:");
    let out = f();
    let peak = status("VmHWM:");
    (out, peak.saturating_sub(before))
}

// ---- building bombs ----------------------------------------------------------------

fn read_uleb(bytes: &mut &[u8]) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let byte = bytes[0];
        *bytes = &bytes[1..];
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("a varint too long");
}

/// A chunk's type and data; there is nothing after it.
fn split_chunk(chunk: &[u8]) -> (u8, &[u8]) {
    assert_eq!(chunk[..4], MAGIC);
    let kind = chunk[8];
    let mut rest = &chunk[9..];
    let len = read_uleb(&mut rest) as usize;
    assert_eq!(rest.len(), len, "one chunk");
    (kind, rest)
}

/// A chunk of `kind` holding `data`, its checksum the start of `hash`.
fn chunk(kind: u8, hash: &[u8; 32], data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(&hash[..4]);
    out.push(kind);
    leb128(data.len() as u64, &mut out);
    out.extend(data);
    out
}

/// What a DEFLATE stream inflates to, counted by flate2 on its own.
fn inflated_len(deflated: &[u8]) -> u64 {
    let mut decoder = flate2::read::DeflateDecoder::new(deflated);
    std::io::copy(&mut decoder, &mut std::io::sink()).unwrap()
}

fn sha256_then_zeros(prefix: &[&[u8]], zeros: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in prefix {
        hasher.update(part);
    }
    let block = vec![0u8; MIB as usize];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(MIB);
        hasher.update(&block[..n as usize]);
        left -= n;
    }
    hasher.finalize().into()
}

/// A bomb: its bytes, where in them its DEFLATE'd part is, and what automerge holds
/// once it inflated it.
struct Bomb {
    bytes: Vec<u8>,
    deflated: Range<usize>,
    inflated: u64,
}

impl Bomb {
    /// Checks, with flate2 alone, that the bomb inflates as built: its chunk's data,
    /// with the DEFLATE'd part inflated, is `inflated` bytes.
    fn verify(&self) {
        let (_, data) = split_chunk(&self.bytes);
        let deflated = &self.bytes[self.deflated.clone()];
        let kept = (data.len() - deflated.len()) as u64;
        assert_eq!(inflated_len(deflated) + kept, self.inflated);
    }
}

/// A kv change (key `bomb` set to "x") whose body carries `zeros` zero bytes after its
/// columns, where automerge keeps what a later format may add, as a compressed change
/// chunk. Returns it and its change hash.
fn change_bomb(zeros: u64) -> (Bomb, ChangeHash) {
    let mut doc = AutoCommit::new().with_actor(ActorId::from([7u8; 16]));
    doc.put(ROOT, "bomb", "\"x\"").unwrap();
    doc.commit_with(CommitOptions::default().with_time(0));
    let raw = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let (kind, body) = split_chunk(&raw);
    assert_eq!(kind, 1);
    let len = body.len() as u64 + zeros;
    // A compressed change's checksum, and hash, are those of the change inflated.
    let mut head = vec![1];
    leb128(len, &mut head);
    let hash = sha256_then_zeros(&[&head, body], zeros);
    let deflated = deflate_then_zeros(body, zeros);
    let bytes = chunk(2, &hash, &deflated);
    let deflated = bytes.len() - deflated.len()..bytes.len();
    let bomb = Bomb {
        bytes,
        deflated,
        inflated: len,
    };
    (bomb, ChangeHash(hash))
}

/// The metadata of one group of columns: (spec, length) each.
fn read_columns(bytes: &mut &[u8]) -> Vec<(u64, u64)> {
    let count = read_uleb(bytes);
    (0..count)
        .map(|_| (read_uleb(bytes), read_uleb(bytes)))
        .collect()
}

/// The saved document of a kv store (key `bomb` set to "x") with one more op column,
/// one automerge does not know and keeps, DEFLATE'd, holding `zeros` zero bytes.
fn document_bomb(zeros: u64) -> Bomb {
    let mut doc = AutoCommit::new().with_actor(ActorId::from([8u8; 16]));
    doc.put(ROOT, "bomb", "\"x\"").unwrap();
    doc.commit_with(CommitOptions::default().with_time(0));
    let save = doc.save();
    let (kind, data) = split_chunk(&save);
    assert_eq!(kind, 0);
    let mut r = data;
    for _ in 0..read_uleb(&mut r) {
        let len = read_uleb(&mut r) as usize;
        r = &r[len..];
    }
    let heads = read_uleb(&mut r) as usize;
    r = &r[32 * heads..];
    let change_columns = read_columns(&mut r);
    let op_meta = data.len() - r.len();
    let op_columns = read_columns(&mut r);
    let total = |columns: &[(u64, u64)]| columns.iter().map(|(_, len)| *len).sum::<u64>();
    let (change_data, r) = r.split_at(total(&change_columns) as usize);
    let (op_data, head_indices) = r.split_at(total(&op_columns) as usize);

    let column = deflate_then_zeros(&[], zeros);
    let mut out = data[..op_meta].to_vec();
    leb128(op_columns.len() as u64 + 1, &mut out);
    for (spec, len) in &op_columns {
        leb128(*spec, &mut out);
        leb128(*len, &mut out);
    }
    leb128(UNKNOWN_COLUMN, &mut out);
    leb128(column.len() as u64, &mut out);
    out.extend(change_data);
    out.extend(op_data);
    let at = out.len();
    out.extend(&column);
    out.extend(head_indices);
    // A document's checksum is over its data as sent.
    let mut head = vec![0];
    leb128(out.len() as u64, &mut head);
    let hash = sha256_then_zeros(&[&head, &out], 0);
    let inflated = (out.len() - column.len()) as u64 + zeros;
    let bytes = chunk(0, &hash, &out);
    let start = bytes.len() - out.len() + at;
    Bomb {
        bytes,
        deflated: start..start + column.len(),
        inflated,
    }
}

// ---- stores ------------------------------------------------------------------------

fn open(dir: &std::path::Path, actor: u8) -> Stores {
    Stores::open(StoresConfig {
        root: dir.to_path_buf(),
        backend: BackendKind::Redb,
        actor: [actor; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap()
}

/// What a store holds: its units' heads, and its values or readings.
type Contents = (Vec<(Unit, Vec<[u8; 32]>)>, Value);

/// What a store holds, to compare before and after.
fn contents(store: &Store) -> Contents {
    let units = store
        .units()
        .into_iter()
        .map(|u| (u.unit, u.heads))
        .collect();
    let values = match store.meta().kind {
        Kind::Timeseries => json!(store.read(Selection::All, None).unwrap()),
        _ => json!(
            store
                .keys()
                .unwrap()
                .into_iter()
                .map(|k| (k.clone(), store.get(&k).unwrap()))
                .collect::<Vec<_>>()
        ),
    };
    (units, values)
}

fn too_large() -> ReplicaError {
    ReplicaError::Inflate(InflateError::TooLarge {
        limit: MAX_INFLATED_BYTES,
    })
}

fn sync_message(changes: Vec<Vec<u8>>) -> SyncMessage {
    SyncMessage {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(changes),
        supported_capabilities: None,
        version: MessageVersion::V1,
    }
}

/// Sends `bytes` to `store` every way a peer's data reaches automerge (pushed changes,
/// a sync message's changes, and for a timeseries store a chunk sent whole); each must
/// be refused for passing the limit, changing nothing and adding less than
/// [`MAX_GROWTH`] to resident memory.
fn assert_refused(store: &Store, unit: Unit, bytes: &[u8]) {
    let before = contents(store);
    let check = |how: &str, (result, growth): (Result<(), ReplicaError>, u64)| {
        assert_eq!(result, Err(too_large()), "{how}");
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains(&MAX_INFLATED_BYTES.to_string()),
            "the error names the limit: {message}"
        );
        assert!(
            growth < MAX_GROWTH,
            "{how}: resident memory grew by {} MiB",
            growth / MIB
        );
        assert_eq!(contents(store), before, "{how}: the store changed");
    };
    check("pushed", peak_growth(|| store.apply_changes(unit, bytes)));
    let message = sync_message(vec![b"".to_vec(), bytes.to_vec()]);
    check(
        "in a sync message",
        peak_growth(|| store.sync_receive(unit, &mut SyncState::new(), message)),
    );
}

// ---- tests -------------------------------------------------------------------------

#[test]
fn a_compressed_change_bomb_is_refused_before_automerge_inflates_it() {
    let _serial = serial();

    // The construction is a change automerge takes: one of 16 MiB loads, and plain
    // automerge's memory grows with what it inflates (so a GiB would take a GiB).
    let (small, hash) = change_bomb(16 * MIB);
    small.verify();
    let mut plain = AutoCommit::new();
    let (loaded, growth) = peak_growth(|| plain.load_incremental(&small.bytes));
    loaded.unwrap();
    assert!(plain.get_change_by_hash(&hash).is_some());
    assert!(
        growth >= 16 * MIB,
        "plain automerge grew by {} MiB",
        growth / MIB
    );
    drop(plain);

    let (bomb, _) = change_bomb(GIB);
    bomb.verify();
    assert!(bomb.inflated > 16 * MAX_INFLATED_BYTES);
    assert!(bomb.bytes.len() < 8 * MIB as usize, "{}", bomb.bytes.len());

    let dir = tempfile::tempdir().unwrap();
    let stores = open(dir.path(), 1);
    let settings = stores.create("settings", Kind::Kv, None).unwrap();
    settings.put("before", json!({ "kept": true })).unwrap();
    let sensor = stores.create("sensor", Kind::Timeseries, Some(60)).unwrap();
    sensor.append(vec![Reading::new(5, json!(1))]).unwrap();
    let sensor_before = contents(&sensor);

    assert_refused(&settings, Unit::Whole, &bomb.bytes);
    assert_refused(&sensor, Unit::Chunk(0), &bomb.bytes);
    assert_refused(&sensor, Unit::Chunk(600), &bomb.bytes);
    // After ordinary changes, or split over a sync message's changes, it is the same.
    let settings_changes = {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "other", "1").unwrap();
        doc.commit();
        doc.save_after(&[])
    };
    let after_changes = [settings_changes.clone(), bomb.bytes.clone()].concat();
    assert_refused(&settings, Unit::Whole, &after_changes);
    let message = sync_message(vec![
        settings_changes,
        small.bytes.clone(),
        bomb.bytes.clone(),
    ]);
    assert_eq!(
        settings.sync_receive(Unit::Whole, &mut SyncState::new(), message),
        Err(too_large())
    );

    // Under the limit the same construction is taken.
    settings.apply_changes(Unit::Whole, &small.bytes).unwrap();
    assert_eq!(settings.get("bomb").unwrap(), Some(json!("x")));
    settings.delete("bomb").unwrap();

    // And on disk nothing of the refused payloads was kept.
    let units = (settings.units(), sensor.units());
    drop((settings, sensor, stores));
    let stores = open(dir.path(), 1);
    let (settings, sensor) = (
        stores.get("settings").unwrap(),
        stores.get("sensor").unwrap(),
    );
    assert_eq!((settings.units(), sensor.units()), units);
    assert_eq!(contents(&sensor), sensor_before);
    assert_eq!(
        settings.get("before").unwrap(),
        Some(json!({ "kept": true }))
    );
    assert_eq!(settings.get("other").unwrap(), None);
}

#[test]
fn a_document_bomb_is_refused_before_automerge_inflates_it() {
    let _serial = serial();

    // A saved document automerge loads, its extra column inflated on the way.
    let small = document_bomb(16 * MIB);
    small.verify();
    let (loaded, growth) = peak_growth(|| AutoCommit::load(&small.bytes));
    let plain = loaded.unwrap();
    assert_eq!(
        plain.get(ROOT, "bomb").unwrap().unwrap().0.to_str(),
        Some("\"x\"")
    );
    assert!(
        growth >= 16 * MIB,
        "plain automerge grew by {} MiB",
        growth / MIB
    );
    drop(plain);

    let bomb = document_bomb(GIB);
    bomb.verify();
    assert!(bomb.inflated > 16 * MAX_INFLATED_BYTES);
    assert!(bomb.bytes.len() < 8 * MIB as usize);

    let dir = tempfile::tempdir().unwrap();
    let stores = open(dir.path(), 1);
    let settings = stores.create("settings", Kind::Kv, None).unwrap();
    let empty = stores.create("empty", Kind::Kv, None).unwrap();
    settings.put("before", json!(1)).unwrap();
    let sensor = stores.create("sensor", Kind::Timeseries, Some(60)).unwrap();
    sensor.append(vec![Reading::new(5, json!(1))]).unwrap();
    // Closed: a chunk sent whole is merged into it.
    sensor.append(vec![Reading::new(300, json!(2))]).unwrap();
    assert!(
        sensor
            .units()
            .iter()
            .any(|u| u.unit == Unit::Chunk(0) && u.closed)
    );

    assert_refused(&settings, Unit::Whole, &bomb.bytes);
    assert_refused(&empty, Unit::Whole, &bomb.bytes);
    assert_refused(&sensor, Unit::Chunk(0), &bomb.bytes);
    assert_refused(&sensor, Unit::Chunk(120), &bomb.bytes);
    assert_eq!(empty.keys().unwrap(), Vec::<String>::new());
    assert!(
        sensor
            .units()
            .iter()
            .any(|u| u.unit == Unit::Chunk(0) && u.closed)
    );

    empty.apply_changes(Unit::Whole, &small.bytes).unwrap();
    assert_eq!(empty.get("bomb").unwrap(), Some(json!("x")));
}

/// Two nodes whose engines have exchanged their stores.
struct Pair {
    stores: [Stores; 2],
    engines: [Engine<usize>; 2],
    now: UnixMillis,
    _dirs: [tempfile::TempDir; 2],
}

impl Pair {
    fn new() -> Self {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let stores = [open(dirs[0].path(), 1), open(dirs[1].path(), 2)];
        let settings = stores[0].create("settings", Kind::Kv, None).unwrap();
        settings.put("before", json!(1)).unwrap();
        let sensor = stores[0]
            .create("sensor", Kind::Timeseries, Some(60))
            .unwrap();
        sensor
            .append(vec![Reading::new(5, json!(1)), Reading::new(300, json!(2))])
            .unwrap();
        let mut pair = Self {
            stores,
            engines: [
                Engine::new(Config::default()),
                Engine::new(Config::default()),
            ],
            now: UnixMillis(1_000),
            _dirs: dirs,
        };
        pair.connect();
        pair
    }

    fn connect(&mut self) {
        for (i, peer) in [(0, 1), (1, 0)] {
            self.engines[i].handle_disconnected(&peer);
            let mut replica = StoresReplica::new(&self.stores[i], &Everywhere, self.now.0);
            self.engines[i].handle_connected(self.now, peer, &mut replica);
        }
        let events = self.pump();
        assert!(
            events
                .iter()
                .all(|e| matches!(e, Event::Received { .. } | Event::Sent { .. })),
            "{events:?}"
        );
    }

    /// Delivers messages until none is left; returns node 1's events.
    fn pump(&mut self) -> Vec<Event<usize>> {
        let mut events = Vec::new();
        loop {
            let mut moved = false;
            for from in 0..2 {
                let mut sent = Vec::new();
                while let Some(transmit) = self.engines[from].poll_transmit() {
                    sent.push(transmit);
                }
                for (to, bytes) in sent {
                    moved = true;
                    self.deliver(from, to, &bytes);
                }
                while let Some(event) = self.engines[from].poll_event() {
                    if from == 1 {
                        events.push(event);
                    }
                }
            }
            if !moved {
                return events;
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let mut replica = StoresReplica::new(&self.stores[to], &Everywhere, self.now.0);
        self.engines[to].handle_message(self.now, &from, bytes, &mut replica);
    }

    /// Node 0 sends `message` to node 1: node 1 must drop it as misbehaving, naming the
    /// limit, with its stores unchanged and its memory hardly grown.
    fn assert_misbehaved(&mut self, message: &Message) {
        let bytes = message.encode();
        let stores: Vec<Arc<Store>> = self.stores[1].all();
        let before: Vec<_> = stores.iter().map(|s| contents(s)).collect();
        let ((), growth) = peak_growth(|| self.deliver(0, 1, &bytes));
        let events: Vec<_> = std::iter::from_fn(|| self.engines[1].poll_event()).collect();
        let reasons: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Misbehaved { peer: 0, reason } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(reasons.len(), 1, "{events:?}");
        assert!(
            reasons[0].contains(&MAX_INFLATED_BYTES.to_string()),
            "{}",
            reasons[0]
        );
        assert!(
            growth < MAX_GROWTH,
            "resident memory grew by {} MiB",
            growth / MIB
        );
        let after: Vec<_> = stores.iter().map(|s| contents(s)).collect();
        assert_eq!(after, before);
        // The driver disconnects; a new connection starts over.
        self.connect();
    }
}

#[test]
fn the_sync_engine_drops_a_peer_that_sends_a_bomb() {
    let _serial = serial();
    let (change, _) = change_bomb(GIB);
    let document = document_bomb(GIB);
    let mut pair = Pair::new();
    let id = |name: &str| pair.stores[1].get(name).unwrap().meta().id.clone();
    let (settings, sensor) = (id("settings"), id("sensor"));

    pair.assert_misbehaved(&Message::Push {
        store: settings.clone(),
        unit: Unit::Whole,
        digest: [0; 32],
        data: change.bytes.clone(),
    });
    pair.assert_misbehaved(&Message::Push {
        store: sensor.clone(),
        unit: Unit::Chunk(0),
        digest: [0; 32],
        data: document.bytes.clone(),
    });
    pair.assert_misbehaved(&Message::Chunk {
        store: sensor.clone(),
        start: 0,
        data: document.bytes.clone(),
    });
    pair.assert_misbehaved(&Message::Sync {
        store: settings.clone(),
        unit: Unit::Whole,
        data: sync_message(vec![change.bytes.clone()]).encode(),
    });
    pair.assert_misbehaved(&Message::Sync {
        store: sensor,
        unit: Unit::Chunk(600),
        data: sync_message(vec![document.bytes.clone()]).encode(),
    });
}

/// xorshift64*, for text DEFLATE cannot shrink to nothing.
fn text(seed: u64, len: usize) -> String {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let n = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 58;
            char::from(
                b"abcdefghijklmnopqrstuvwxyz0123456789 ,.-{}:ABCDEFGHIJKLMNOPQRSTU"[n as usize],
            )
        })
        .collect()
}

#[test]
fn large_ordinary_changes_and_documents_still_load() {
    let _serial = serial();
    // One change of five values of 900 KiB each: about 4.4 MiB, as automerge keeps it
    // and (compressed) as it sends it whole.
    let values: Vec<(String, Value)> = (0..5)
        .map(|i| (format!("key {i}"), json!(text(i, 900 * 1024))))
        .collect();
    let mut doc = AutoCommit::new().with_actor(ActorId::from([9u8; 16]));
    for (key, value) in &values {
        doc.put(ROOT, key.as_str(), value.to_string()).unwrap();
    }
    doc.commit_with(CommitOptions::default().with_time(0));
    let mut change = doc.get_last_local_change().unwrap().clone();
    let raw = change.raw_bytes().to_vec();
    let compressed = change.bytes().to_vec();
    let save = doc.save();
    assert_eq!((raw[8], compressed[8], save[8]), (1, 2, 0));
    for bytes in [&raw, &compressed, &save] {
        let inflated = inflate::check([bytes.as_slice()]).unwrap();
        assert!(inflated > 4 * MIB && inflated < MAX_INFLATED_BYTES);
    }
    assert!(compressed.len() < raw.len() && save.len() < raw.len());

    let dir = tempfile::tempdir().unwrap();
    let stores = open(dir.path(), 1);
    for (name, bytes) in [("raw", &raw), ("compressed", &compressed), ("save", &save)] {
        let store = stores.create(name, Kind::Kv, None).unwrap();
        store.put("mine", json!(true)).unwrap();
        store.apply_changes(Unit::Whole, bytes).unwrap();
        for (key, value) in &values {
            assert_eq!(store.get(key).unwrap().as_ref(), Some(value), "{name}");
        }
        assert_eq!(store.keys().unwrap().len(), values.len() + 1);
        let message = sync_message(vec![bytes.to_vec()]);
        let again = stores
            .create(&format!("{name}-sync"), Kind::Kv, None)
            .unwrap();
        again
            .sync_receive(Unit::Whole, &mut SyncState::new(), message)
            .unwrap();
        assert_eq!(again.keys().unwrap().len(), values.len());
    }

    // A closed chunk of a few MiB, sent whole.
    let origin = stores
        .create("sensor", Kind::Timeseries, Some(60_000))
        .unwrap();
    let readings: Vec<Reading> = (0..15_000u64)
        .map(|ts| Reading::new(ts, json!({ "ts": ts, "note": text(ts, 200) })))
        .collect();
    origin.append(readings).unwrap();
    origin
        .append(vec![Reading::new(200_000, json!(null))])
        .unwrap();
    let closed = origin.closed_chunk(0).unwrap().expect("chunk 0 is closed");
    let inflated = inflate::check([closed.as_slice()]).unwrap();
    assert!(inflated > 3 * MIB, "{inflated}");
    let other = tempfile::tempdir().unwrap();
    let peer = open(other.path(), 2);
    let replica = peer.create_replica(origin.meta().clone()).unwrap();
    replica.apply_changes(Unit::Chunk(0), &closed).unwrap();
    assert_eq!(replica.records().unwrap(), 15_000);
    assert_eq!(
        replica.read(Selection::All, None).unwrap(),
        origin.read(Selection::Range(0, 60_000), None).unwrap()
    );
}
