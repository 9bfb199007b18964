//! Someone at a mesh's relay, asking for what the relay gives. Two modes:
//!
//! - `relay-probe RELAY TARGET`: a stranger (a new key each run). It dials the relay
//!   (a multiaddr ending in `/p2p/RELAY_ID`), asks for a reservation, then for a circuit
//!   to the device TARGET (a peer id), and prints
//!   `{"reservation": "refused"|"accepted"|"no answer", "circuit": "refused"|"connected"|"no answer"}`.
//! - `relay-probe --member DATA_DIR RELAY TARGET COUNT`: a member turned hostile, with
//!   the node key and certificate in DATA_DIR (its own node must not run). It is
//!   admitted by the relay, then opens COUNT circuits to TARGET at once, and prints
//!   `{"admitted": true|false, "opened": N, "refused": M}`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt as _;
use hearth_node::mesh::{ADMISSION_PROTOCOL, Budget, FrameCodec, Frames, peer_key};
use hearth_protocol::capability::Chain;
use hearth_protocol::key::NodeKey;
use hearth_protocol::mesh::admission::{self, Connection, Opening};
use hearth_protocol::time::UnixMillis;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, identify, noise, ping, relay, request_response, yamux,
};

#[derive(NetworkBehaviour)]
struct Probe {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    // A peer that does not answer pings is disconnected by the node.
    ping: ping::Behaviour,
    admission: request_response::Behaviour<FrameCodec>,
}

fn usage(err: &str) -> ! {
    eprintln!(
        "relay-probe: {err}\nusage: relay-probe RELAY_MULTIADDR TARGET_PEER_ID\n       relay-probe --member DATA_DIR RELAY_MULTIADDR TARGET_PEER_ID COUNT"
    );
    std::process::exit(2)
}

fn build(keypair: libp2p::identity::Keypair) -> Swarm<Probe> {
    let budget = Budget::new(1 << 20);
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap_or_else(|e| usage(&e.to_string()))
        .with_behaviour(|key, relay| Probe {
            relay,
            identify: identify::Behaviour::new(identify::Config::new(
                "/probe/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            admission: request_response::Behaviour::with_codec(
                FrameCodec::new(admission::MAX_MESSAGE_BYTES, &budget),
                [(
                    StreamProtocol::new(ADMISSION_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            ),
        })
        .unwrap_or_else(|e| usage(&e.to_string()))
        // Keeps its connection to the relay between requests.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn parse<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse()
        .unwrap_or_else(|e| usage(&format!("{text}: {e:?}")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [relay_addr, target] => stranger(parse(relay_addr), parse(target)).await,
        [flag, dir, relay_addr, target, count] if flag == "--member" => {
            member(
                Path::new(dir),
                parse(relay_addr),
                parse(target),
                parse(count),
            )
            .await;
        }
        _ => usage("wrong arguments"),
    }
}

async fn stranger(relay_addr: Multiaddr, target: PeerId) {
    let mut swarm = build(libp2p::identity::Keypair::generate_ed25519());
    let answer = Duration::from_secs(15);
    let reservation = tokio::time::timeout(answer, async {
        let _ = swarm.listen_on(relay_addr.clone().with(Protocol::P2pCircuit));
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(ProbeEvent::Relay(
                    relay::client::Event::ReservationReqAccepted { .. },
                )) => return "accepted",
                SwarmEvent::ListenerClosed { reason, .. } => {
                    eprintln!("reservation: {reason:?}");
                    return "refused";
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or("no answer");
    let circuit = tokio::time::timeout(answer, async {
        let addr = relay_addr
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(target));
        if let Err(err) = swarm.dial(addr) {
            eprintln!("circuit: {err}");
            return "refused";
        }
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target => {
                    return "connected";
                }
                SwarmEvent::OutgoingConnectionError {
                    peer_id: Some(peer),
                    error,
                    ..
                } if peer == target => {
                    eprintln!("circuit: {error}");
                    return "refused";
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or("no answer");
    println!(r#"{{"reservation": "{reservation}", "circuit": "{circuit}"}}"#);
}

async fn member(dir: &Path, relay_addr: Multiaddr, target: PeerId, count: usize) {
    let key = NodeKey::read(&dir.join("node.key")).unwrap_or_else(|e| usage(&e.to_string()));
    let text =
        std::fs::read_to_string(dir.join("device.cap")).unwrap_or_else(|e| usage(&e.to_string()));
    let chain = Chain::from_text(&text).unwrap_or_else(|e| usage(&format!("{e:?}")));
    let mut seed = *key.to_seed();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).unwrap();
    let mut swarm = build(keypair);
    let relay = relay_addr
        .iter()
        .find_map(|p| match p {
            Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .unwrap_or_else(|| usage("the relay address names no peer"));
    let relay_key =
        peer_key(&relay).unwrap_or_else(|| usage("the relay's peer id is no ed25519 key"));
    swarm.dial(relay_addr.clone()).unwrap();
    let answer = Duration::from_secs(15);
    // Admission: this device's opening as one request; the relay's answer means it
    // accepted the certificate.
    let admitted = tokio::time::timeout(answer, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == relay => {
                    let now = UnixMillis(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis() as u64,
                    );
                    let mut opening = Connection::new(
                        now,
                        relay_key,
                        Opening::Member(chain.clone()),
                        &admission::Config::default(),
                    );
                    let frames: Vec<Vec<u8>> =
                        std::iter::from_fn(|| opening.poll_transmit()).collect();
                    swarm
                        .behaviour_mut()
                        .admission
                        .send_request(&relay, Frames::from(frames));
                }
                SwarmEvent::Behaviour(ProbeEvent::Admission(
                    request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    },
                )) => return !response.0.is_empty(),
                SwarmEvent::Behaviour(ProbeEvent::Admission(
                    request_response::Event::OutboundFailure { error, .. },
                )) => {
                    eprintln!("admission: {error}");
                    return false;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    let (mut opened, mut refused) = (0usize, 0usize);
    if admitted {
        // Every circuit at once, each a connection of its own.
        let addr = relay_addr
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(target));
        for _ in 0..count {
            let opts = DialOpts::peer_id(target)
                .condition(PeerCondition::Always)
                .addresses(vec![addr.clone()])
                .build();
            if swarm.dial(opts).is_err() {
                refused += 1;
            }
        }
        let _ = tokio::time::timeout(answer, async {
            while opened + refused < count {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target => {
                        opened += 1;
                    }
                    SwarmEvent::OutgoingConnectionError {
                        peer_id: Some(peer),
                        error,
                        ..
                    } if peer == target => {
                        eprintln!("circuit: {error}");
                        refused += 1;
                    }
                    _ => {}
                }
            }
        })
        .await;
    }
    println!(r#"{{"admitted": {admitted}, "opened": {opened}, "refused": {refused}}}"#);
}
