//! Reaching devices behind NAT: a relay on the devices that offer one (circuit relay
//! v2, for admitted devices only), reservations on the mesh's relays when AutoNAT has
//! not found this node reachable from outside, hole punching (DCUtR) over relayed
//! connections, and how each device is reached now (direct or relayed, and the
//! round-trip time).
//!
//! A relay carries only the two devices' own encrypted connection (Noise or TLS end to
//! end); admission runs over a relayed connection exactly as over a direct one. What a
//! relay learns is which devices of the mesh talk to each other, when, and how much.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, identify, relay};

use super::address_book::Backoff;
use super::gate::Admitted;
use super::{MeshLoop, now, peer_key};

/// Reservations the relay holds at once, for all devices.
pub(super) const MAX_RESERVATIONS: usize = 64;
/// Reservations one device may hold at once, beyond its first (libp2p refuses a new one
/// when the device holds more than this many, so this is one less than the most it
/// holds).
pub(super) const MAX_RESERVATIONS_PER_DEVICE: usize = 2;
/// Circuits the relay carries at once, for all devices.
pub(super) const MAX_CIRCUITS: usize = 64;
/// Circuits one device may be an end of at once, beyond the first (libp2p refuses a
/// circuit when the device already has more than this many, so it can have one more).
/// Below the 8 connections a node keeps per device, so that the relay's bound, not the
/// far end's, is what a device opening too many meets.
pub(super) const MAX_CIRCUITS_PER_DEVICE: usize = 6;
/// How long a circuit may last. Devices of the mesh are not cut off: a circuit lasts
/// as long as their connection (this is u32::MAX seconds, what the protocol can say).
const CIRCUIT_DURATION: Duration = Duration::from_secs(u32::MAX as u64);
/// A reservation held this long (ms) before it ended was a working one: the next is
/// asked for without backoff.
const RESERVATION_HELD_MS: u64 = 60_000;
/// The protocol a relay lists in identify.
const HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// The relay service's settings: reservations and circuits only for the devices
/// admitted now (a stranger is refused before anything is counted for it), within
/// the bounds above, no limit on a circuit's bytes or duration, and rate limits sized
/// for devices that reconnect often (a phone changing networks): per device a
/// reservation or circuit every 10 s in bursts of up to 60, per address every 5 s in
/// bursts of up to 120. (libp2p's defaults, a circuit every 2 minutes per device in
/// bursts of 30, cut a phone off after 30 reconnections in an hour.)
pub(super) fn server_config(admitted: &Arc<Admitted>) -> relay::Config {
    let mut config = relay::Config {
        max_reservations: MAX_RESERVATIONS,
        max_reservations_per_peer: MAX_RESERVATIONS_PER_DEVICE,
        max_circuits: MAX_CIRCUITS,
        max_circuits_per_peer: MAX_CIRCUITS_PER_DEVICE,
        max_circuit_duration: CIRCUIT_DURATION,
        max_circuit_bytes: 0,
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    };
    // First, so that a stranger's request uses none of the rate limits' tokens.
    let members = admitted.clone();
    config
        .reservation_rate_limiters
        .push(Box::new(move |peer: PeerId, _: &Multiaddr, _| {
            members.contains(&peer)
        }));
    let members = admitted.clone();
    config
        .circuit_src_rate_limiters
        .push(Box::new(move |peer: PeerId, _: &Multiaddr, _| {
            members.contains(&peer)
        }));
    let per_device = NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN);
    let per_address = NonZeroU32::new(120).unwrap_or(NonZeroU32::MIN);
    config
        .reservation_rate_per_peer(per_device, Duration::from_secs(10))
        .circuit_src_per_peer(per_device, Duration::from_secs(10))
        .reservation_rate_per_ip(per_address, Duration::from_secs(5))
        .circuit_src_per_ip(per_address, Duration::from_secs(5))
}

/// AutoNAT (v1: its servers answer on any connection, where v2's answer only on
/// connections the asking node dialled, which a device behind NAT never receives):
/// the first probe 2 s after start, again every 10 s until sure, every 5 minutes once
/// sure; any address the devices can dial back counts, and [`MeshLoop::autonat_event`]
/// decides what counts as reachable from outside.
pub(super) fn autonat_config() -> autonat::v1::Config {
    autonat::v1::Config {
        timeout: Duration::from_secs(15),
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(10),
        refresh_interval: Duration::from_secs(5 * 60),
        throttle_server_period: Duration::from_secs(5),
        confidence_max: 2,
        only_global_ips: false,
        // Only admitted devices are asked (added as servers on admission): a
        // stranger's answer would be believed.
        use_connected: false,
        ..autonat::v1::Config::default()
    }
}

/// Whether an address is one other networks could reach: not loopback, private
/// (RFC 1918), link-local, shared (carrier NAT, 100.64.0.0/10) or unspecified.
fn is_outside(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || (a == 100 && (64..128).contains(&b)))
        }
        Protocol::Ip6(ip) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
        _ => false,
    })
}

/// How one connection reaches its device.
#[derive(Debug, Clone)]
pub(super) struct Path {
    peer: PeerId,
    /// The relay it goes through, or none for a direct connection.
    via: Option<PeerId>,
    /// The address dialled, when this side dialled directly.
    dialled: Option<Multiaddr>,
    /// The last ping's round trip.
    rtt: Option<Duration>,
}

/// What this node knows about reaching devices and being reached.
#[derive(Debug, Default)]
pub(super) struct Reach {
    /// Devices that offer a relay (identify lists the hop protocol).
    relays: BTreeSet<PeerId>,
    /// Devices that have spoken the members protocol to this node since they were
    /// admitted here: they admitted this node too, so a reservation will not be
    /// refused for want of it.
    answered: BTreeSet<PeerId>,
    /// This node's reservation on each relay: the listener, and whether the relay
    /// accepted it (when, Unix ms).
    reservations: BTreeMap<PeerId, (ListenerId, Option<u64>)>,
    /// When to ask a relay again after a reservation failed or ended.
    retry: BTreeMap<PeerId, Backoff>,
    /// An address of this node that AutoNAT found reachable from other networks.
    public: Option<Multiaddr>,
    /// Relayed addresses of this node, told to the mesh's devices only.
    relayed: BTreeSet<Multiaddr>,
    /// Every open connection's path.
    paths: BTreeMap<ConnectionId, Path>,
    /// The relay each device was last reached through.
    last_via: BTreeMap<PeerId, PeerId>,
    /// Devices whose hole punch failed since they connected (audited once).
    punch_failed: BTreeSet<PeerId>,
    /// When to dial each relay over QUIC again, lacking a QUIC connection to it.
    quic_retry: BTreeMap<PeerId, Backoff>,
    /// Relays this node knows no QUIC address of.
    no_quic: BTreeSet<PeerId>,
    /// Relays that told this node (identify) the address it is seen at over QUIC.
    seen_over_quic: BTreeSet<PeerId>,
    /// The address each open connection's peer said it sees this node at (identify),
    /// a QUIC and a TCP one for a device reached both ways: vouched for as candidate
    /// addresses once the peer is admitted.
    observed: BTreeMap<ConnectionId, (PeerId, Multiaddr)>,
}

/// How a device is reached now, for `hearth status`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Route {
    /// Relayed through this device, or direct when none.
    pub(super) via: Option<PeerId>,
    /// The last round trip measured on it, in milliseconds (to the microsecond).
    pub(super) rtt_ms: Option<f64>,
}

/// The relay a relayed address or endpoint goes through: the peer named just before
/// `/p2p-circuit`.
fn relay_in(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for protocol in addr {
        match protocol {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// The candidate addresses of this node that an observed address gives, as identify
/// makes them: the observed address itself when its port is one this node listens on
/// (the port was reused), else the observed host with each listening port of the same
/// transport.
fn candidates(observed: &Multiaddr, listeners: &[Multiaddr]) -> Vec<Multiaddr> {
    fn port(a: &Multiaddr) -> Option<Protocol<'_>> {
        a.iter()
            .find(|p| matches!(p, Protocol::Tcp(_) | Protocol::Udp(_)))
    }
    let direct = || listeners.iter().filter(|l| !is_relayed(l));
    if port(observed).is_some() && direct().any(|l| port(l) == port(observed)) {
        return vec![observed.clone()];
    }
    let mut out: Vec<Multiaddr> = direct()
        .filter(|l| is_quic(l) == is_quic(observed))
        .filter_map(|l| libp2p::swarm::_address_translation(l, observed))
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        vec![observed.clone()]
    } else {
        out
    }
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl Reach {
    /// Records a new connection's path.
    pub(super) fn opened(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let via = if endpoint.is_relayed() {
            match endpoint {
                ConnectedPoint::Dialer { address, .. } => relay_in(address),
                ConnectedPoint::Listener {
                    local_addr,
                    send_back_addr,
                } => relay_in(local_addr).or_else(|| relay_in(send_back_addr)),
            }
        } else {
            None
        };
        if let Some(relay) = via {
            self.last_via.insert(peer, relay);
        }
        let dialled = match endpoint {
            ConnectedPoint::Dialer { address, .. } if !endpoint.is_relayed() => {
                Some(address.clone())
            }
            _ => None,
        };
        self.paths.insert(
            connection,
            Path {
                peer,
                via,
                dialled,
                rtt: None,
            },
        );
    }

    /// Forgets a closed connection; and, once a device has none left, that it answered.
    pub(super) fn closed(&mut self, peer: PeerId, connection: ConnectionId, last: bool) {
        self.paths.remove(&connection);
        self.observed.remove(&connection);
        if last {
            self.answered.remove(&peer);
            self.last_via.remove(&peer);
            self.relays.remove(&peer);
            self.punch_failed.remove(&peer);
            self.quic_retry.remove(&peer);
            self.no_quic.remove(&peer);
            self.seen_over_quic.remove(&peer);
        }
    }

    /// A device was (re-)admitted: it has yet to show it admitted this node.
    pub(super) fn admitted(&mut self, peer: PeerId) {
        self.answered.remove(&peer);
    }

    /// A device spoke the members protocol: it admitted this node. True the first
    /// time since it was admitted here.
    pub(super) fn answered(&mut self, peer: PeerId) -> bool {
        self.answered.insert(peer)
    }

    /// Can devices be dialled through `relay` now? Once it has admitted this node (it
    /// refuses a circuit to anyone else, and would audit the attempt as a stranger's),
    /// and once it has told this node the address it is seen at over QUIC (or this
    /// node knows no QUIC address of it): hole punching over the circuit offers the
    /// addresses this node was seen at when the circuit opened, and a TCP address
    /// alone never meets the other side's QUIC punch.
    fn relay_ready(&self, relay: &PeerId) -> bool {
        self.answered.contains(relay)
            && (self.no_quic.contains(relay) || self.seen_over_quic.contains(relay))
    }

    fn has_quic(&self, peer: &PeerId) -> bool {
        self.paths
            .values()
            .any(|p| p.peer == *peer && p.via.is_none() && p.dialled.as_ref().is_some_and(is_quic))
    }

    /// The addresses worth dialling now: a relayed one only through a relay that is
    /// ready.
    pub(super) fn dialable(&self, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        addrs
            .into_iter()
            .filter(|a| relay_in(a).is_none_or(|relay| self.relay_ready(&relay)))
            .collect()
    }

    pub(super) fn rtt(&mut self, connection: ConnectionId, rtt: Duration) {
        if let Some(path) = self.paths.get_mut(&connection) {
            path.rtt = Some(rtt);
        }
    }

    /// How `peer` is reached now: directly if any connection to it is direct.
    pub(super) fn route(&self, peer: &PeerId) -> Option<Route> {
        let paths: Vec<&Path> = self.paths.values().filter(|p| p.peer == *peer).collect();
        let best = paths
            .iter()
            .filter(|p| p.via.is_none())
            .max_by_key(|p| p.rtt.is_some())
            .or_else(|| paths.iter().max_by_key(|p| p.rtt.is_some()))?;
        Some(Route {
            via: best.via,
            rtt_ms: best
                .rtt
                .map(|rtt| (rtt.as_secs_f64() * 1_000_000.0).round() / 1000.0),
        })
    }

    /// The relayed connections to `peer`.
    fn relayed_connections(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.paths
            .iter()
            .filter(|(_, p)| p.peer == *peer && p.via.is_some())
            .map(|(c, _)| *c)
            .collect()
    }

    /// This node's relayed addresses, for the mesh's devices.
    pub(super) fn relayed_addresses(&self) -> impl Iterator<Item = &Multiaddr> {
        self.relayed.iter()
    }
}

impl MeshLoop {
    fn name_of(&self, peer: &PeerId) -> String {
        self.known
            .get(peer)
            .map_or_else(|| peer.to_string(), |k| k.name.clone())
    }

    /// Asks each relay device for a reservation, when this node was not found reachable
    /// from outside, the relay is connected and has admitted this node, and no
    /// reservation is held or pending there.
    pub(super) fn reserve(&mut self) {
        // Also on a node reachable from outside: it dials devices through relays too.
        self.quic_to_relays();
        if self.reach.public.is_some() {
            return;
        }
        let now = now().0;
        let due: Vec<PeerId> = self
            .reach
            .relays
            .iter()
            .filter(|relay| {
                self.known.get(relay).is_some_and(|k| k.connected)
                    && self.reach.answered.contains(relay)
                    && !self.reach.reservations.contains_key(relay)
            })
            .copied()
            .collect();
        for relay in due {
            if !self.reach.retry.entry(relay).or_default().due(now) {
                continue;
            }
            // Where this node reached the relay directly, else where it was told the
            // relay is: the reservation's address is built from it.
            let dialled = self
                .reach
                .paths
                .values()
                .find(|p| p.peer == relay && p.via.is_none())
                .and_then(|p| p.dialled.clone());
            let Some(addr) = dialled.or_else(|| {
                self.known
                    .get(&relay)
                    .and_then(|k| k.addrs.iter().find(|a| !is_relayed(a)).cloned())
            }) else {
                continue;
            };
            let addr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect::<Multiaddr>()
                .with(Protocol::P2p(relay))
                .with(Protocol::P2pCircuit);
            match self.swarm.listen_on(addr.clone()) {
                Ok(listener) => {
                    tracing::info!(relay = %self.name_of(&relay), %addr, "asking for a relay reservation");
                    self.reach.reservations.insert(relay, (listener, None));
                }
                Err(err) => {
                    tracing::warn!(%addr, error = %err, "cannot ask for a relay reservation");
                }
            }
        }
    }

    /// Keeps a QUIC connection to every admitted relay. Hole punching dials the
    /// addresses each side was seen at, and a node learns the one it is seen at over
    /// QUIC only on a QUIC connection; a device that reached the relay over TCP alone
    /// would offer only a TCP address, which the other side's QUIC punch never meets.
    pub(super) fn quic_to_relays(&mut self) {
        let now = now().0;
        let relays: Vec<PeerId> = self
            .reach
            .relays
            .iter()
            .filter(|relay| self.known.get(relay).is_some_and(|k| k.connected))
            .copied()
            .collect();
        for relay in relays {
            if self.reach.has_quic(&relay) {
                self.reach.quic_retry.remove(&relay);
                continue;
            }
            let Some(addr) = self.known.get(&relay).and_then(|k| {
                k.addrs
                    .iter()
                    .find(|a| is_quic(a) && !is_relayed(a))
                    .cloned()
            }) else {
                if self.reach.no_quic.insert(relay) {
                    self.dial_through(relay);
                }
                continue;
            };
            self.reach.no_quic.remove(&relay);
            if self.reach.quic_retry.entry(relay).or_default().due(now) {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(relay)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .addresses(vec![addr])
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
    }

    /// `relay` admitted this node: the lost devices known to be reachable through it
    /// are dialled there now, beside any dial still waiting on their other addresses
    /// (one to an address a NAT drops takes seconds to give up).
    pub(super) fn dial_through(&mut self, relay: PeerId) {
        if !self.reach.relay_ready(&relay) {
            return;
        }
        let targets: Vec<(PeerId, Vec<Multiaddr>)> = self
            .known
            .iter()
            .filter(|(peer, k)| !k.connected && !self.swarm.is_connected(peer))
            .map(|(peer, k)| {
                let via: Vec<Multiaddr> = k
                    .addrs
                    .iter()
                    .filter(|a| relay_in(a) == Some(relay))
                    .cloned()
                    .collect();
                (*peer, via)
            })
            .filter(|(_, via)| !via.is_empty())
            .collect();
        for (peer, addrs) in targets {
            let revoked =
                peer_key(&peer).is_some_and(|key| self.gate.revocations.is_key_revoked(&key));
            if revoked {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    /// A listener closed: if it was a reservation, it is asked for again later.
    pub(super) fn listener_closed(&mut self, listener: ListenerId, reason: &str) {
        let Some(relay) = self
            .reach
            .reservations
            .iter()
            .find(|(_, (id, _))| *id == listener)
            .map(|(relay, _)| *relay)
        else {
            return;
        };
        // Asked for again soon only after a reservation that held: a relay that
        // accepts and drops at once is asked ever less often (up to every 30 s), and
        // its acceptances audited as rarely.
        if let Some((_, Some(accepted))) = self.reach.reservations.remove(&relay)
            && now().0.saturating_sub(accepted) >= RESERVATION_HELD_MS
        {
            self.reach.retry.remove(&relay);
        }
        let prefix: Vec<Multiaddr> = self
            .reach
            .relayed
            .iter()
            .filter(|a| relay_in(a) == Some(relay))
            .cloned()
            .collect();
        for addr in prefix {
            self.reach.relayed.remove(&addr);
        }
        tracing::info!(relay = %self.name_of(&relay), %reason, "relay reservation ended");
    }

    /// An address of this node was confirmed or expired: relayed ones are kept for
    /// the mesh's devices only (identify would tell them to anyone connected).
    pub(super) fn external_address(&mut self, addr: Multiaddr, confirmed: bool) {
        if !is_relayed(&addr) || !confirmed {
            return;
        }
        self.swarm.remove_external_address(&addr);
        // Only the address of a reservation this node asked for, and a few of them.
        let ours =
            relay_in(&addr).is_some_and(|relay| self.reach.reservations.contains_key(&relay));
        if ours && self.reach.relayed.len() < 8 {
            self.reach.relayed.insert(addr);
        }
    }

    /// AutoNAT and DCUtR may use the address `peer` saw this node at, once `peer` is
    /// an admitted device (see `gate::Candidates`).
    pub(super) fn vouch_observed(&mut self, peer: PeerId) {
        // `known` is where admission is recorded first (the shared `Admitted` set
        // follows at the end of the loop's turn).
        if !self.known.get(&peer).is_some_and(|k| k.connected) {
            return;
        }
        let listeners: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let addrs: Vec<Multiaddr> = self
            .reach
            .observed
            .values()
            .filter(|(p, _)| *p == peer)
            .flat_map(|(_, observed)| candidates(observed, &listeners))
            .collect();
        if let Some(c) = self.swarm.behaviour().autonat.candidates() {
            c.vouch(addrs);
        }
    }

    pub(super) fn identify_event(&mut self, event: identify::Event) {
        if let identify::Event::Received {
            peer_id,
            info,
            connection_id,
        } = event
        {
            if !is_relayed(&info.observed_addr) {
                self.reach
                    .observed
                    .insert(connection_id, (peer_id, info.observed_addr.clone()));
                self.vouch_observed(peer_id);
            }
            if is_quic(&info.observed_addr)
                && !is_relayed(&info.observed_addr)
                && self.reach.seen_over_quic.insert(peer_id)
            {
                // Devices behind this relay can be dialled through it now.
                self.dial_through(peer_id);
            }
            let hop = info.protocols.iter().any(|p| p.as_ref() == HOP_PROTOCOL);
            // Identify runs before admission: `reserve` uses only relays that are
            // admitted devices. The set is of connected peers only (see `closed`).
            if hop && peer_id != *self.swarm.local_peer_id() {
                self.reach.relays.insert(peer_id);
            } else {
                self.reach.relays.remove(&peer_id);
            }
        }
    }

    pub(super) fn relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if let Some((_, accepted)) = self.reach.reservations.get_mut(&relay_peer_id) {
                    accepted.get_or_insert(now().0);
                }
                if !renewal {
                    let name = self.name_of(&relay_peer_id);
                    tracing::info!(relay = %name, "relay reservation accepted");
                    self.audit(
                        "mesh.relay",
                        &name,
                        "reserved: reachable through this relay",
                    );
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "circuit opened through a relay");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "circuit opened to this node through a relay");
            }
        }
    }

    /// The relay service's decisions. Refusals are audited (one per source and reason
    /// a minute, the rest counted); accepted reservations and circuits are audited
    /// too: they are data flows through this device.
    pub(super) fn relay_event(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                let reason = if self.admitted.contains(&src_peer_id) {
                    format!(
                        "relay reservation over the relay's bounds ({MAX_RESERVATIONS_PER_DEVICE} per device, {MAX_RESERVATIONS} in all, or the rate limit)"
                    )
                } else {
                    "relay reservation from a peer that is not an admitted device".to_owned()
                };
                self.audit_refusal("mesh.relay", &src_peer_id, &reason);
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                let reason = if !self.admitted.contains(&src_peer_id) {
                    "relay circuit from a peer that is not an admitted device".to_owned()
                } else if matches!(status, relay::StatusCode::NoReservation) {
                    format!("relay circuit to {dst_peer_id}, which holds no reservation here")
                } else {
                    format!(
                        "relay circuit over the relay's bounds ({MAX_CIRCUITS_PER_DEVICE} per device, {MAX_CIRCUITS} in all, or the rate limit)"
                    )
                };
                self.audit_refusal("mesh.relay", &src_peer_id, &reason);
            }
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => {
                let name = self.name_of(&src_peer_id);
                self.audit("mesh.relay", &name, "allowed: reservation");
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                let object = format!(
                    "{} -> {}",
                    self.name_of(&src_peer_id),
                    self.name_of(&dst_peer_id)
                );
                self.audit("mesh.relay", &object, "allowed: circuit");
            }
            other => tracing::debug!(event = ?other, "relay"),
        }
    }

    /// A hole punch's outcome. On success the relayed connections to the device are
    /// closed (its traffic goes direct) and the change of path is audited; on failure
    /// the relayed connection stays and carries everything.
    pub(super) fn dcutr_event(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        let name = self.name_of(&peer);
        match event.result {
            Ok(_) => {
                let relayed = self.reach.relayed_connections(&peer);
                // The other side may have closed the relayed connection already.
                let via = self
                    .reach
                    .last_via
                    .get(&peer)
                    .map(|relay| self.name_of(relay))
                    .unwrap_or_else(|| "a relay".to_owned());
                tracing::info!(device = %name, %via, "hole punched: the connection is direct now");
                self.audit(
                    "mesh.path",
                    &name,
                    &format!("direct (was relayed via {via})"),
                );
                for connection in relayed {
                    self.swarm.close_connection(connection);
                }
            }
            Err(err) => {
                tracing::info!(device = %name, error = %err, "hole punching failed; staying relayed");
                if !self.reach.punch_failed.insert(peer) {
                    return;
                }
                self.audit(
                    "mesh.path",
                    &name,
                    &format!("relayed: hole punching failed ({err})"),
                );
            }
        }
    }

    /// AutoNAT's verdict: reachable from other networks (a device dialled this node
    /// back at an IPv4 address outside private ranges), or not. A node reachable from
    /// outside needs no reservation; one on a LAN that only a LAN device could dial
    /// back still does. A global IPv6 address does not count: a LAN device dials it
    /// back, while the home router's firewall may keep the internet out.
    pub(super) fn autonat_event(&mut self, event: autonat::v1::Event) {
        let autonat::v1::Event::StatusChanged { new, .. } = event else {
            return;
        };
        let public = match new {
            autonat::v1::NatStatus::Public(addr)
                if is_outside(&addr)
                    && !is_relayed(&addr)
                    && addr.iter().any(|p| matches!(p, Protocol::Ip4(_))) =>
            {
                Some(addr)
            }
            _ => None,
        };
        if public != self.reach.public {
            match &public {
                Some(addr) => tracing::info!(%addr, "reachable from other networks"),
                None => tracing::info!(
                    "not reachable from other networks; reachable through the mesh's relays"
                ),
            }
            self.reach.public = public;
        }
    }

    /// A relay is reached at its listen addresses (the owner said it has a public
    /// one): each but loopback is an external address, which its reservations carry.
    pub(super) fn new_listen_addr(&mut self, addr: &Multiaddr) {
        let loopback = addr.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        });
        if self.config.relay && !loopback && is_outside(addr) && !is_relayed(addr) {
            self.swarm.add_external_address(addr.clone());
        }
    }
}
