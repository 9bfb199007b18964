//! Pairing a new device: it dials the inviter named in a ticket and redeems the ticket
//! over admission, coming away with its certificate. Runs on a swarm of its own,
//! before the device's node first starts.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use hearth_protocol::capability::{Chain, Role};
use hearth_protocol::key::NodeKey;
use hearth_protocol::mesh::admission::{
    Config as AdmissionConfig, Connection, Event, Gate, Opening,
};
use hearth_protocol::mesh::ticket::Ticket;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, request_response};

use super::codec::{Frames, MAX_FRAMES};
use super::gate::Admitted;
use super::swarm::{BehaviourEvent, build_swarm};
use super::{MeshError, now, peer_id};

/// Pairs this (new) device with the inviter named in `ticket`: dials it, redeems the
/// ticket, and returns the certificate it issues.
pub async fn join(
    key: &NodeKey,
    ticket: &Ticket,
    name: &str,
    role: Role,
    timeout: Duration,
) -> Result<Chain, MeshError> {
    let mut swarm = build_swarm(key, false, false, &Arc::new(Admitted::default()))?;
    swarm
        .listen_on(
            "/ip4/127.0.0.1/udp/0/quic-v1"
                .parse()
                .map_err(|_| MeshError::Start("bad address".into()))?,
        )
        .map_err(|err| MeshError::Start(err.to_string()))?;
    let inviter = peer_id(&ticket.inviter)
        .ok_or_else(|| MeshError::Join("the ticket names an invalid inviter".into()))?;
    let addrs: Vec<Multiaddr> = ticket.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    if addrs.is_empty() {
        return Err(MeshError::Join(
            "the ticket holds no address to reach the inviter".into(),
        ));
    }
    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(inviter)
        .addresses(addrs)
        .build();
    swarm
        .dial(opts)
        .map_err(|err| MeshError::Join(format!("cannot reach the inviter: {err}")))?;
    let mut gate = Gate::new(
        key.public(),
        hearth_protocol::capability::Verifier::new(ticket.owner, Default::default()),
        hearth_protocol::capability::RevocationSet::new(ticket.owner),
        None,
    );
    let mut connection = Connection::new(
        now(),
        ticket.inviter,
        Opening::Joiner {
            ticket: ticket.id,
            proof: ticket.proof(&key.public()),
            name: name.to_owned(),
            role,
        },
        &AdmissionConfig::default(),
    );
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut certificate = None;
    loop {
        tokio::select! {
            () = &mut deadline => return Err(MeshError::Join("the inviter did not answer in time".into())),
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == inviter => {
                    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| connection.poll_transmit()).collect();
                    swarm.behaviour_mut().admission.send_request(&inviter, Frames::from(frames));
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(MeshError::Join(format!("cannot reach the inviter: {error}")));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Admission(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. }, ..
                })) => {
                    for frame in response.0.iter().take(MAX_FRAMES) {
                        connection.handle_message(now(), frame, &mut gate);
                    }
                    while let Some(event) = connection.poll_event() {
                        match event {
                            Event::Welcomed(chain) => certificate = Some(chain),
                            Event::Refused { reason } => return Err(MeshError::Join(reason)),
                            _ => {}
                        }
                    }
                    if connection.is_admitted() {
                        return certificate.ok_or_else(|| MeshError::Join("no certificate was issued".into()));
                    }
                    return Err(MeshError::Join("the inviter's answer was incomplete".into()));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Admission(request_response::Event::OutboundFailure { error, .. })) => {
                    return Err(MeshError::Join(format!("pairing failed: {error}")));
                }
                _ => {}
            }
        }
    }
}
