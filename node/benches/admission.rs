//! Connection set-up plus admission between two mesh nodes on loopback, QUIC and TCP,
//! beside a bare libp2p connection and ping over the same transport in the same run.
//!
//! Run: `cargo bench -p hearth-node --bench admission`. Prints medians of 100 rounds.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use hearth_node::mesh::{self, MeshConfig};
use hearth_protocol::capability::{RevocationSet, Role, Verifier, VerifierConfig};
use hearth_protocol::device;
use hearth_protocol::key::{NodeKey, OwnerKey};
use hearth_protocol::mesh::admission::Gate;
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::AuditLog;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, ping, tcp, yamux};

const ROUNDS: usize = 100;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn admission_round(
    transport: &str,
    owner: &OwnerKey,
    keys: &[NodeKey; 2],
    dir: &std::path::Path,
    round: usize,
) -> Duration {
    let listen: Multiaddr = match transport {
        "quic" => "/ip4/127.0.0.1/udp/0/quic-v1",
        _ => "/ip4/127.0.0.1/tcp/0",
    }
    .parse()
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    let mut first_addr = None;
    for (i, key) in keys.iter().enumerate() {
        let cert = device::issue_certificate(
            owner.secret(),
            None,
            key.public(),
            &format!("n{i}"),
            Role::Home,
            UnixMillis(0),
            UnixMillis(u64::MAX / 2),
            [i as u8; 16],
        )
        .unwrap();
        let gate = Gate::new(
            key.public(),
            Verifier::new(owner.public(), VerifierConfig::default()),
            RevocationSet::new(owner.public()),
            None,
        );
        let audit = Arc::new(
            AuditLog::open(
                &dir.join(format!("audit-{transport}-{round}-{i}.log")),
                "bench",
                key.clone(),
                Arc::new(|| 0),
            )
            .unwrap(),
        );
        let config = MeshConfig {
            listen: vec![listen.clone()],
            bootstrap: first_addr.clone().into_iter().collect(),
            mdns: false,
            ..MeshConfig::default()
        };
        let handle = mesh::spawn(key, cert, gate, None, config, audit, None, stop_rx.clone())
            .await
            .unwrap();
        if first_addr.is_none() {
            // Wait until the first node listens, then point the second at it.
            let addr = loop {
                if let Some(addr) = handle.status().await.unwrap().listen.first().cloned() {
                    break addr;
                }
                tokio::task::yield_now().await;
            };
            let peer = mesh::peer_id(&key.public()).unwrap();
            first_addr = Some(format!("{addr}/p2p/{peer}").parse::<Multiaddr>().unwrap());
        }
        handles.push(handle);
    }
    let dialed = Instant::now();
    loop {
        let status = handles[1].status().await.unwrap();
        if status.peers.iter().any(|p| p.connected) {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = dialed.elapsed();
    let _ = stop_tx.send(true);
    elapsed
}

async fn ping_round(transport: &str) -> Duration {
    let build = || {
        libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_quic()
            .with_behaviour(|_| {
                ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(1)))
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(10)))
            .build()
    };
    let mut a = build();
    let mut b = build();
    let listen: Multiaddr = match transport {
        "quic" => "/ip4/127.0.0.1/udp/0/quic-v1",
        _ => "/ip4/127.0.0.1/tcp/0",
    }
    .parse()
    .unwrap();
    a.listen_on(listen).unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = a.select_next_some().await {
            break address;
        }
    };
    let start = Instant::now();
    b.dial(addr).unwrap();
    loop {
        tokio::select! {
            _ = a.select_next_some() => {}
            event = b.select_next_some() => {
                if let SwarmEvent::Behaviour(ping::Event { result: Ok(_), .. }) = event {
                    return start.elapsed();
                }
            }
        }
    }
}

/// From opening a node (stores, audit log, mesh) to another device seeing it admitted.
async fn node_start_round(owner: &OwnerKey, dir: &std::path::Path, round: usize) -> Duration {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let a_key = NodeKey::from_seed([7; 32]);
    let b_key = NodeKey::from_seed([8; 32]);
    let cert = |key: &NodeKey, name: &str| {
        device::issue_certificate(
            owner.secret(),
            None,
            key.public(),
            name,
            Role::Home,
            UnixMillis(0),
            UnixMillis(u64::MAX / 2),
            [9; 16],
        )
        .unwrap()
    };
    let gate = Gate::new(
        a_key.public(),
        Verifier::new(owner.public(), VerifierConfig::default()),
        RevocationSet::new(owner.public()),
        None,
    );
    let audit = Arc::new(
        AuditLog::open(
            &dir.join(format!("start-a-{round}.log")),
            "a",
            a_key.clone(),
            Arc::new(|| 0),
        )
        .unwrap(),
    );
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        mdns: false,
        ..MeshConfig::default()
    };
    let a = mesh::spawn(
        &a_key,
        cert(&a_key, "a"),
        gate,
        None,
        config,
        audit,
        None,
        stop_rx.clone(),
    )
    .await
    .unwrap();
    let addr = loop {
        if let Some(addr) = a.status().await.unwrap().listen.first().cloned() {
            break addr;
        }
        tokio::task::yield_now().await;
    };
    let bootstrap: Multiaddr = format!("{addr}/p2p/{}", mesh::peer_id(&a_key.public()).unwrap())
        .parse()
        .unwrap();
    let data_dir = dir.join(format!("start-b-{round}"));
    std::fs::create_dir_all(&data_dir).unwrap();
    let start = Instant::now();
    let node = hearth_node::Node::open(hearth_node::NodeConfig {
        data_dir,
        name: "b".into(),
        role: "home".into(),
        node_key: b_key.clone(),
        api: "127.0.0.1:0".parse().unwrap(),
        backend: hearth_stores::backend::BackendKind::Redb,
        mesh: Some(hearth_node::MeshSetup {
            certificate: cert(&b_key, "b"),
            owner: owner.public(),
            owner_key: None,
            config: MeshConfig {
                listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
                bootstrap: vec![bootstrap],
                mdns: false,
                ..MeshConfig::default()
            },
        }),
        compute_limits: Default::default(),
        metrics: false,
        exports: Default::default(),
    })
    .unwrap();
    let mut stop_b = stop_rx.clone();
    let served = tokio::spawn(node.serve(
        async move {
            let _ = stop_b.changed().await;
        },
        |_| {},
    ));
    loop {
        if a.status().await.unwrap().peers.iter().any(|p| p.connected) {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(true);
    let _ = served.await;
    elapsed
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let owner = OwnerKey::from_seed([1; 32]);
    let keys = [NodeKey::from_seed([2; 32]), NodeKey::from_seed([3; 32])];
    println!(
        "{:<8} {:>30} {:>30}",
        "", "bare connect + first ping", "connect + admission (both ways)"
    );
    for transport in ["quic", "tcp"] {
        let pings: Vec<Duration> = (0..ROUNDS)
            .map(|_| runtime.block_on(ping_round(transport)))
            .collect();
        let admits: Vec<Duration> = (0..ROUNDS)
            .map(|round| {
                runtime.block_on(admission_round(transport, &owner, &keys, dir.path(), round))
            })
            .collect();
        println!(
            "{:<8} {:>27.2} ms {:>27.2} ms",
            transport,
            median(pings).as_secs_f64() * 1e3,
            median(admits).as_secs_f64() * 1e3
        );
    }
    let starts: Vec<Duration> = (0..20)
        .map(|round| runtime.block_on(node_start_round(&owner, dir.path(), round)))
        .collect();
    println!(
        "node start (stores, audit log, mesh) to first admitted peer, QUIC: {:.2} ms (median of 20)",
        median(starts).as_secs_f64() * 1e3
    );
}
