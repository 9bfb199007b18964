//! What authorising sync per store and peer costs: the placement checks a received push
//! goes through (`Policies::holds`, `held_here`, `keeps`), timed per call, beside the
//! handling of the push itself (decode, automerge apply, durable-in-memory commit,
//! answer) measured in the same run on the in-memory backend, the cheapest there is.
//!
//! Run: `cargo bench -p hearth-stores --bench placement`. Figures are recorded in
//! docs/benchmarks.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use hearth_protocol::capability::Role;
use hearth_protocol::sync::placement::Policy;
use hearth_protocol::sync::{Config, Engine};
use hearth_protocol::time::UnixMillis;
use hearth_stores::backend::BackendKind;
use hearth_stores::replica::{Placement, Policies, StoresReplica, store_ref};
use hearth_stores::{Kind, Stores, StoresConfig};
use serde_json::json;

fn stores(dir: &std::path::Path, actor: u8) -> Stores {
    Stores::open(StoresConfig {
        root: dir.to_path_buf(),
        backend: BackendKind::Memory,
        actor: [actor; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap()
}

/// A placement with `count` stores, each `origin,role:home,phone`, and two devices.
fn policies(me: &str, role: Role, count: usize, extra: Option<&str>) -> Policies<usize> {
    let mut p = Policies::new(me, role, None);
    p.devices.insert(0, ("home".into(), Role::Home));
    p.devices.insert(1, ("phone".into(), Role::Mobile));
    let policy = Policy::parse("origin,role:home,phone").unwrap();
    for i in 0..count {
        p.policies
            .insert(format!("{i:032x}"), ("home".into(), policy.clone()));
    }
    if let Some(id) = extra {
        p.policies.insert(id.into(), ("home".into(), policy));
    }
    p
}

fn main() {
    const CHECKS: u64 = 2_000_000;
    const PUSHES: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let home = stores(&dir.path().join("home"), 1);
    let phone = stores(&dir.path().join("phone"), 2);
    let store = home.create("bench", Kind::Kv, None).unwrap();
    let id = store.meta().id.clone();
    phone.create_replica(store.meta().clone()).unwrap();
    let home_view = policies("home", Role::Home, 1000, Some(&id));
    let phone_view = policies("phone", Role::Mobile, 1000, Some(&id));

    // The checks alone, on a placement of 1,001 stores.
    let started = Instant::now();
    for _ in 0..CHECKS {
        black_box(phone_view.holds(black_box(&0), black_box(&id)));
        black_box(phone_view.held_here(black_box(&id)));
        black_box(Placement::keeps(&phone_view, black_box(&id)));
    }
    let per_check = started.elapsed().as_nanos() as f64 / CHECKS as f64;

    // Push handling on the phone, the floor the checks sit on.
    let now = UnixMillis(1_700_000_000_000);
    let mut home_engine: Engine<usize> = Engine::new(Config::default());
    let mut phone_engine: Engine<usize> = Engine::new(Config::default());
    {
        let mut h = StoresReplica::new(&home, &home_view, now.0);
        let mut p = StoresReplica::new(&phone, &phone_view, now.0);
        home_engine.handle_connected(now, 1, &mut h);
        phone_engine.handle_connected(now, 0, &mut p);
        // Exchange until quiet, so each side confirmed the other.
        for _ in 0..50 {
            let mut moved = false;
            while let Some((_, bytes)) = home_engine.poll_transmit() {
                moved = true;
                phone_engine.handle_message(now, &0, &bytes, &mut p);
            }
            while let Some((_, bytes)) = phone_engine.poll_transmit() {
                moved = true;
                home_engine.handle_message(now, &1, &bytes, &mut h);
            }
            if !moved {
                break;
            }
        }
    }
    let mut pushes = Vec::with_capacity(PUSHES);
    let mut changes = store.subscribe_local();
    for i in 0..PUSHES {
        store.put(&format!("k{i}"), json!(i)).unwrap();
        let change = changes.try_recv().unwrap();
        let mut h = StoresReplica::new(&home, &home_view, now.0);
        home_engine.local_change(now, &id, &change.units, change.before, &mut h);
        while let Some((to, bytes)) = home_engine.poll_transmit() {
            if to == 1 {
                pushes.push(bytes);
            }
        }
    }
    assert_eq!(pushes.len(), PUSHES, "every write was pushed");
    let started = Instant::now();
    for bytes in &pushes {
        let mut p = StoresReplica::new(&phone, &phone_view, now.0);
        phone_engine.handle_message(now, &0, bytes, &mut p);
        while phone_engine.poll_transmit().is_some() {}
        while phone_engine.poll_event().is_some() {}
    }
    let per_push = started.elapsed().as_nanos() as f64 / PUSHES as f64;
    assert_eq!(phone.get("bench").unwrap().keys().unwrap().len(), PUSHES);
    let _ = store_ref(store.meta());

    println!("placement checks on a received push (1,001 stores placed):");
    println!(
        "  holds + held_here + keeps, per push          {:>10.0} ns",
        per_check
    );
    println!(
        "  handling one push, in-memory store (floor)   {:>10.0} ns",
        per_push
    );
    println!(
        "  the checks' share of the push                {:>10.3} %",
        100.0 * per_check / per_push
    );
}
