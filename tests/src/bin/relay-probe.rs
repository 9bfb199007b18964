//! A stranger at a mesh's relay: `relay-probe RELAY TARGET` dials the relay (a
//! multiaddr ending in `/p2p/RELAY_ID`), asks it for a reservation, then for a circuit
//! to the device TARGET (a peer id), and prints one JSON line saying what each came to:
//! `{"reservation": "refused"|"accepted"|"no answer", "circuit": "refused"|"connected"|"no answer"}`.
//! Its key is new each run: it is no device of any mesh.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use futures_util::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, noise, ping, relay, yamux};

#[derive(NetworkBehaviour)]
struct Probe {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    // A peer that does not answer pings is disconnected by the node.
    ping: ping::Behaviour,
}

fn usage(err: &str) -> ! {
    eprintln!("relay-probe: {err}\nusage: relay-probe RELAY_MULTIADDR TARGET_PEER_ID");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [relay_addr, target] = args.as_slice() else {
        usage("two arguments")
    };
    let relay_addr: Multiaddr = relay_addr
        .parse()
        .unwrap_or_else(|e| usage(&format!("{e}")));
    let target: PeerId = target.parse().unwrap_or_else(|e| usage(&format!("{e:?}")));
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
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
        })
        .unwrap_or_else(|e| usage(&e.to_string()))
        // Keeps its connection to the relay between the two requests.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
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
