//! The private mesh over libp2p: QUIC and TCP (Noise, Yamux) through DNS and relay
//! circuits, identify, ping, mDNS, AutoNAT and hole punching,
//! with admission (`hearth_protocol::mesh::admission`) run on every connection before
//! anything else of Hearth's is served to the peer.
//!
//! The swarm is an actor: [`spawn`] starts its loop on the runtime and returns a
//! [`MeshHandle`] whose methods send commands (with a oneshot reply) over a bounded
//! channel.
//!
//! ```text
//! MeshHandle ──commands──▶ mesh loop ──▶ libp2p Swarm (admission, members, sync, …)
//!                              └── session::Session per peer; Gate, Membership shared
//! ```
//!
//! This module is the loop and its router; each concern has a module of its own:
//!
//! | module | what |
//! |---|---|
//! | `swarm` | transports and the behaviour of every protocol |
//! | `codec` | length-prefixed frames read within a byte budget |
//! | `gate` | mesh protocols held until their peer is admitted |
//! | `sessions` | the session machine per peer, its messages carried over libp2p |
//! | `admission` | `/hearth/admission/1` on every connection |
//! | `members` | `/hearth/members/2`: the membership store and where devices are |
//! | `address_book` | remembered devices, redial with backoff, bootstrap, mDNS |
//! | `sync` | `/hearth/sync/1`: replication traffic, windowed per peer |
//! | `jobs` | `/hearth/compute/1`: jobs forwarded to the device with the data |
//! | `audit_copies` | `/hearth/audit/1`: audit logs copied to home devices |
//! | `owner` | the owner's commands: revoke, invite, allow-admit, approve |
//! | `strangers` | refusals tallied per source, strangers' share of connections |
//! | `pairing` | a new device redeeming its ticket |
//! | `relay` | the relay for admitted devices, reservations, AutoNAT, hole punching, paths |
//! | `handle` | the commands, and the loop's answers to them |
//!
//! Admission travels as one request and one response on `/hearth/admission/1`: the
//! dialer sends its opening frames, the listener answers with its own frames (its
//! certificate, a welcome for a joiner, or a refusal). Frames are admission messages,
//! each length-prefixed (u32, big endian), at most 64 KiB each and 4 per exchange.
//!
//! Admitted peers then keep the membership store (`hearth_protocol::mesh::membership`)
//! in step on `/hearth/members/2`: the session machine's exchange messages, each one
//! request acknowledged empty: digests every 2 s slowing to every 30 s while both
//! agree, a change told at once, snapshots when digests differ, and each device's
//! listen addresses. docs/mesh.md describes both protocols.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use hearth_protocol::capability::Chain;
use hearth_protocol::key::{NodeKey, PublicKey};
use hearth_protocol::mesh::admission::{Config as AdmissionConfig, Gate};
use hearth_protocol::mesh::membership::{Membership, Snapshot};
use hearth_protocol::statefile;
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::{AuditLog, Event as AuditEvent};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, ping, request_response};
use tokio::sync::{mpsc, oneshot};

mod address_book;
mod admission;
mod audit_copies;
mod codec;
mod error;
mod gate;
mod handle;
mod jobs;
mod members;
mod owner;
mod pairing;
mod relay;
mod sessions;
mod strangers;
mod swarm;
mod sync;
#[cfg(test)]
mod tests;

use address_book::{Backoff, Known, load_peers};
use codec::ProtocolEvent;
pub use codec::{Budget, FrameCodec, Frames, MAX_ADMISSION_BUFFERED_BYTES, MAX_BUFFERED_BYTES};
pub use error::MeshError;
use gate::Admitted;
pub use handle::{
    AdmitScope, DeviceStatus, InboundAudit, InboundJob, MeshHandle, MeshStatus, PeerStatus,
};
use handle::{AuditReply, Command};
#[cfg(test)]
pub(crate) use members::HostileAnswer;
use members::MEMBERSHIP_KIND;
pub use pairing::join;
use sessions::PeerSession;
use strangers::{AuditWriter, Strangers};
use swarm::{Behaviour, BehaviourEvent, build_swarm};

pub use libp2p::Multiaddr as Address;

/// The admission protocol's name.
pub const ADMISSION_PROTOCOL: &str = "/hearth/admission/1";
/// The protocol admitted peers use to keep the membership store in step and to tell
/// each other where the devices are.
pub const MEMBERS_PROTOCOL: &str = "/hearth/members/2";
/// The protocol admitted peers replicate stores over (`hearth_protocol::sync`).
pub const SYNC_PROTOCOL: &str = "/hearth/sync/1";
/// Jobs forwarded to the device that holds the data, and their replies.
pub const COMPUTE_PROTOCOL: &str = "/hearth/compute/1";
/// Home devices copying other devices' audit logs (see `crate::audit_copy`).
pub const AUDIT_PROTOCOL: &str = "/hearth/audit/1";
/// The largest audit message (a page of log lines, or a run of entry hashes).
pub const MAX_AUDIT_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// How the mesh runs. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Addresses to listen on. Default: QUIC and TCP on all IPv4 interfaces, ports
    /// chosen by the system.
    pub listen: Vec<Multiaddr>,
    /// Addresses to dial at start and after losing them (a cloud node, say).
    pub bootstrap: Vec<Multiaddr>,
    /// Find devices on the LAN with mDNS. Default on.
    pub mdns: bool,
    /// Admission settings (deadline).
    pub admission: AdmissionConfig,
    /// Where the devices this node has admitted, and their addresses, are remembered,
    /// so that a restarted node finds them again. Default: nowhere.
    pub peers_file: Option<std::path::PathBuf>,
    /// Where the membership store (certificates, admit grants, revocations) is kept
    /// across restarts. Default: nowhere.
    pub membership_file: Option<std::path::PathBuf>,
    /// Where this device's certificate is kept, rewritten when the owner approves a
    /// device a delegated admitter admitted. Default: nowhere.
    pub certificate_file: Option<std::path::PathBuf>,
    /// Offer a relay to the mesh's devices (circuit relay v2, for admitted devices
    /// only). Default off; `hearth node run` turns it on for cloud-role devices unless
    /// `[mesh] relay = false`.
    pub relay: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            admission: AdmissionConfig::default(),
            peers_file: None,
            membership_file: None,
            certificate_file: None,
            relay: false,
        }
    }
}

/// The answer to an owner's command, unless its audit entries could not be written.
fn audited<T>(result: Result<T, MeshError>, failed: Option<String>) -> Result<T, MeshError> {
    match failed {
        Some(err) if result.is_ok() => Err(MeshError::Unaudited(err)),
        _ => result,
    }
}

fn now() -> UnixMillis {
    crate::clock::now()
}

/// The ed25519 key behind a PeerId.
pub fn peer_key(peer: &PeerId) -> Option<PublicKey> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    Some(PublicKey::from_bytes(ed.to_bytes()))
}

/// The PeerId of a key.
pub fn peer_id(key: &PublicKey) -> Option<PeerId> {
    let ed = libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()).ok()?;
    Some(PeerId::from_public_key(&libp2p::identity::PublicKey::from(
        ed,
    )))
}

struct MeshLoop {
    swarm: Swarm<Behaviour>,
    gate: Gate,
    certificate: Chain,
    owner: PublicKey,
    config: MeshConfig,
    /// Writes this loop's audit entries, off the loop.
    audit: AuditWriter,
    /// Refusals counted per source, strangers' share of the incoming connections.
    strangers: Strangers,
    /// The session with each peer (admitting, admitted, or refused and closing).
    sessions: BTreeMap<PeerId, PeerSession>,
    known: BTreeMap<PeerId, Known>,
    /// Refused peers, disconnected once their refusal had time to reach them.
    closing: Vec<(PeerId, UnixMillis)>,
    /// The peers file needs writing.
    dirty: bool,
    /// When to dial each bootstrap address again.
    bootstrap_retry: BTreeMap<String, Backoff>,
    /// Where jobs forwarded by other devices go.
    jobs: Option<mpsc::Sender<InboundJob>>,
    /// Forwarded jobs being run here, waiting for their reply.
    job_channels: BTreeMap<u64, request_response::ResponseChannel<Frames>>,
    next_job: u64,
    /// Where audit requests from other devices go.
    audit_requests: Option<mpsc::Sender<InboundAudit>>,
    /// Audit requests being answered here.
    audit_channels: BTreeMap<u64, request_response::ResponseChannel<Frames>>,
    /// Audit requests sent from here, waiting for their answer.
    audit_asked: BTreeMap<request_response::OutboundRequestId, AuditReply>,
    /// Jobs forwarded from here, waiting for the other device's reply.
    forwarded:
        BTreeMap<request_response::OutboundRequestId, oneshot::Sender<Result<Vec<u8>, MeshError>>>,
    /// Sends commands to this loop (for tasks it spawns).
    commands: mpsc::Sender<Command>,
    /// Peers mDNS found on the LAN, with their addresses, dialled again with backoff
    /// until admitted: mDNS reports a peer once, so a first attempt that fails (a
    /// crossed dial, a busy peer) must not leave it unreachable until the record expires.
    lan: BTreeMap<PeerId, (Vec<Multiaddr>, Backoff)>,
    /// The owner key, on the device that holds it.
    owner_key: Option<hearth_protocol::key::OwnerKey>,
    /// This node's key, which signs certificates under a `devices:admit` grant.
    node_key: NodeKey,
    /// The replicated list of devices, admit grants (revocations are in the gate).
    membership: Membership,
    /// Where admitted peers and their sync messages go.
    replication: Option<crate::replication::ReplicationHandle>,
    /// Membership documents peers sent that were left out, summed per peer until
    /// audited: (count, the first reason, since).
    left_out: BTreeMap<PeerId, (usize, String, UnixMillis)>,
    /// Set by a test playing a hostile member: how membership requests are answered.
    #[cfg(test)]
    hostile_answer: Option<HostileAnswer>,
    /// Every open connection of each peer.
    connections: BTreeMap<PeerId, BTreeSet<ConnectionId>>,
    /// Peers admitted before that asked for admission again (they restarted, or lost
    /// their connection while ours lives on), with the connection they asked on: once
    /// admitted, their older connections are closed.
    readmitting: BTreeMap<PeerId, ConnectionId>,
    /// The admitted peers, as the gated protocols see them.
    admitted: Arc<Admitted>,
    /// Why the membership could not be stored, since it last changed.
    unsaved: Option<String>,
    /// Relays, reservations, and how each device is reached.
    reach: relay::Reach,
}

/// Starts the mesh loop. `gate` holds the issuer when this node holds the owner key;
/// a node without it admits devices once a `devices:admit` grant for it arrives.
/// Admitted peers and their sync messages are handed to `replication`.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    key: &NodeKey,
    certificate: Chain,
    mut gate: Gate,
    owner_key: Option<hearth_protocol::key::OwnerKey>,
    config: MeshConfig,
    audit: Arc<AuditLog>,
    replication: Option<crate::replication::ReplicationHandle>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<MeshHandle, MeshError> {
    let admitted = Arc::new(Admitted::default());
    let mut swarm = build_swarm(key, config.mdns, config.relay, &admitted)?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|err| MeshError::Listen {
                addr: addr.to_string(),
                reason: err.to_string(),
            })?;
    }
    let owner = *gate.owner();
    let mut members = Membership::new(owner);
    if let Some(path) = &config.membership_file {
        // Fails closed: the file holds the revocations, and starting without them
        // would admit revoked devices again.
        let unreadable = |reason: String| {
            MeshError::Start(format!(
                "{reason}. The node will not start on a membership it cannot read: it \
                 holds the mesh's revocations. Restore the file from a backup; or, knowing \
                 that a revoked device could be admitted here until another device passes \
                 the revocations back, delete it"
            ))
        };
        let max = hearth_protocol::mesh::membership::MAX_STORED_BYTES as u64;
        let stored = statefile::read_state(path, MEMBERSHIP_KIND, max)
            .map_err(|err| unreadable(err.to_string()))?;
        if let Some(stored) = stored {
            let stored = Snapshot::decode_stored(&stored.payload)
                .map_err(|err| unreadable(format!("{}: {err}", path.display())))?;
            let merged = members.merge(now(), &stored, &mut gate.revocations);
            for reason in merged.rejected {
                tracing::info!(%reason, "a stored membership document no longer counts");
            }
        }
    }
    if let Err(reason) = members.add_device(now(), &certificate, &gate.revocations) {
        tracing::warn!(%reason, "this device's own certificate is not valid");
    }
    let config_peers = config
        .peers_file
        .as_deref()
        .map(load_peers)
        .unwrap_or_default();
    // Revocations stored before the node stopped and not yet audited are audited now;
    // should one not be, no revocation is listed as audited while this node runs.
    let mut all_audited = true;
    if let Some(path) = &config.membership_file {
        match members::audit_kept_revocations(path, &gate.revocations, &audit) {
            Ok(0) => {}
            Ok(audited) => tracing::warn!(
                audited,
                "revocations stored before the node stopped are audited now"
            ),
            Err(err) => {
                tracing::error!(error = %err, "cannot audit the revocations stored before the node stopped");
                all_audited = false;
            }
        }
    }
    let (commands, receiver) = mpsc::channel(64);
    let mut mesh = MeshLoop {
        swarm,
        gate,
        certificate,
        owner,
        config,
        audit: AuditWriter::spawn(audit, all_audited)
            .map_err(|err| MeshError::Start(format!("cannot start the audit writer: {err}")))?,
        strangers: Strangers::default(),
        sessions: BTreeMap::new(),
        known: config_peers,
        closing: Vec::new(),
        dirty: false,
        bootstrap_retry: BTreeMap::new(),
        lan: BTreeMap::new(),
        jobs: None,
        job_channels: BTreeMap::new(),
        next_job: 0,
        forwarded: BTreeMap::new(),
        audit_requests: None,
        audit_channels: BTreeMap::new(),
        audit_asked: BTreeMap::new(),
        connections: BTreeMap::new(),
        readmitting: BTreeMap::new(),
        admitted,
        unsaved: None,
        reach: relay::Reach::default(),
        commands: commands.clone(),
        owner_key,
        node_key: key.clone(),
        membership: members,
        replication,
        left_out: BTreeMap::new(),
        #[cfg(test)]
        hostile_answer: None,
    };
    mesh.adopt_own_certificate();
    mesh.refresh_issuer();
    mesh.refresh_names();
    mesh.tell_revocations();
    tokio::spawn(mesh.run(receiver, shutdown));
    Ok(MeshHandle { commands })
}

impl MeshLoop {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(command) = commands.recv() => self.command(command),
                event = self.swarm.select_next_some() => self.swarm_event(event),
                _ = tick.tick() => self.timeouts(),
                _ = redial.tick() => {
                    self.redial();
                    self.reserve();
                }
            }
            self.admitted.set(
                self.known
                    .iter()
                    .filter(|(_, k)| k.connected)
                    .map(|(peer, _)| *peer)
                    .collect(),
            );
        }
        // Where the devices are, as learned since the last tick: a device stopped
        // within a second of hearing of the others would otherwise forget them.
        if self.dirty {
            self.dirty = false;
            self.save_peers();
        }
        self.audit_left_out(now(), true);
        self.audit_strangers(true);
        self.audit.close().await;
        tracing::info!("mesh stopped");
    }

    fn audit(&self, action: &str, object: &str, outcome: &str) {
        self.audit.record(AuditEvent {
            actor: "mesh".into(),
            action: action.into(),
            object: object.into(),
            cap_id: None,
            outcome: outcome.into(),
            bytes: 0,
        });
    }

    /// Audits a refusal of `peer` (`action`, for `reason`): the first for that reason
    /// from its source in a minute is recorded, the rest are counted
    /// ([`Self::audit_strangers`]).
    fn audit_refusal(&mut self, action: &str, peer: &PeerId, reason: &str) {
        let device = peer_key(peer)
            .and_then(|key| self.membership.certificate(&key))
            .and_then(|_| self.known.get(peer))
            .map(|k| k.name.clone());
        let (source, first) =
            self.strangers
                .count(peer, device.as_deref(), reason, std::time::Instant::now());
        if first {
            let object = device.unwrap_or_else(|| peer.to_string());
            self.audit(
                action,
                &object,
                &format!("refused: {reason} (from {source})"),
            );
        }
    }

    /// Records the refusals counted and not yet recorded, per source, for the
    /// windows that ended (all of them when `all`, at shutdown).
    fn audit_strangers(&mut self, all: bool) {
        for due in self.strangers.due(std::time::Instant::now(), all) {
            self.audit(
                "mesh.admit",
                &due.source,
                &format!(
                    "refused: {} more attempts from {} in the last {} s",
                    due.count,
                    due.source,
                    due.over.as_secs()
                ),
            );
        }
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "mesh listening");
                self.new_listen_addr(&address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let reason = match reason {
                    Ok(()) => "closed".to_owned(),
                    Err(err) => err.to_string(),
                };
                self.listener_closed(listener_id, &reason);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                self.external_address(address, true);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.connection_established(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => self.connection_closed(peer_id, connection_id, num_established),
            _ => {}
        }
    }

    fn behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Admission(event) if !self.broke_limits(&event) => {
                self.admission_event(event);
            }
            BehaviourEvent::Members(event) if !self.broke_limits(&event) => {
                self.members_event(event);
            }
            BehaviourEvent::Sync(event) if !self.broke_limits(&event) => self.sync_event(event),
            BehaviourEvent::Compute(event) if !self.broke_limits(&event) => {
                self.compute_event(event);
            }
            BehaviourEvent::Audit(event) if !self.broke_limits(&event) => self.audit_event(event),
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(err),
            }) => {
                tracing::info!(%peer, error = %err, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Ping(ping::Event {
                connection,
                result: Ok(rtt),
                ..
            }) => self.reach.rtt(connection, rtt),
            BehaviourEvent::Mdns(event) => self.mdns_event(event),
            BehaviourEvent::Identify(event) => self.identify_event(event),
            BehaviourEvent::Relay(event) => self.relay_event(event),
            BehaviourEvent::RelayClient(event) => self.relay_client_event(event),
            BehaviourEvent::Dcutr(event) => self.dcutr_event(event),
            BehaviourEvent::Autonat(event) => self.autonat_event(event),
            _ => {}
        }
    }

    /// Whether `event` is a request that broke its protocol's limits (more frames, or a
    /// larger frame, than it allows). Nothing of it was read past the violation, and
    /// nothing is answered: the peer goes, admitted or not.
    fn broke_limits(&mut self, event: &ProtocolEvent) -> bool {
        let request_response::Event::Message {
            peer,
            message: request_response::Message::Request { request, .. },
            ..
        } = event
        else {
            return false;
        };
        let Some(reason) = request.violation() else {
            return false;
        };
        let (peer, reason) = (*peer, reason.to_owned());
        self.audit_refusal("mesh.receive", &peer, &reason);
        tracing::warn!(%peer, %reason, "disconnecting a peer that broke a protocol's limits");
        if let Some(k) = self.known.get_mut(&peer) {
            k.connected = false;
        }
        self.sessions.remove(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
        true
    }

    fn timeouts(&mut self) {
        let now = now();
        let (due, later): (Vec<_>, Vec<_>) = self.closing.drain(..).partition(|(_, at)| *at <= now);
        self.closing = later;
        for (peer, _) in due {
            if !self.known.get(&peer).is_some_and(|k| k.connected) {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
        self.session_timeouts();
        for (peer, k) in &mut self.known {
            if k.connected && self.swarm.is_connected(peer) {
                k.last_seen = now.0;
            }
        }
        self.recheck_certificates(now);
        self.audit_left_out(now, false);
        self.audit_strangers(false);
        if self.dirty {
            self.dirty = false;
            self.save_peers();
        }
    }
}
