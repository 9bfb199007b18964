//! The swarm: its transports (QUIC, and TCP with Noise and Yamux, both through DNS, and
//! circuits through a relay device) and one behaviour of every protocol a node speaks,
//! with the bounds each one reads within.

use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::key::NodeKey;
use hearth_protocol::mesh::{admission, session};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, autonat, dcutr, identify, mdns, noise, ping, relay, request_response,
    tcp, yamux,
};

use super::codec::{Budget, FrameCodec, MAX_ADMISSION_BUFFERED_BYTES, MAX_BUFFERED_BYTES};
use super::gate::{Admitted, Candidates, Gated};
use super::relay::{autonat_config, server_config};
use super::{
    ADMISSION_PROTOCOL, AUDIT_PROTOCOL, COMPUTE_PROTOCOL, MAX_AUDIT_MESSAGE_BYTES,
    MEMBERS_PROTOCOL, MeshError, SYNC_PROTOCOL,
};

/// How long a forwarded job may take, queueing and running, before the caller gives up.
const COMPUTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Streams at once on one TCP connection (yamux), each with a receive window of
/// 256 KiB: at most 16 MiB waits unread in one TCP connection. (QUIC's connection
/// window is 15 MB.)
const MAX_STREAMS_PER_CONNECTION: usize = 64;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) limits: libp2p::connection_limits::Behaviour,
    pub(super) admission: request_response::Behaviour<FrameCodec>,
    // Held until the peer is admitted (see `gate`).
    pub(super) members: Gated<request_response::Behaviour<FrameCodec>>,
    pub(super) sync: Gated<request_response::Behaviour<FrameCodec>>,
    pub(super) compute: Gated<request_response::Behaviour<FrameCodec>>,
    pub(super) audit: Gated<request_response::Behaviour<FrameCodec>>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    /// The relay service, on a node that offers it (`[mesh] relay`).
    pub(super) relay: Toggle<relay::Behaviour>,
    /// Reservations on the mesh's relays, and circuits through them.
    pub(super) relay_client: relay::client::Behaviour,
    /// Hole punching over a relayed connection: a peer's requests are held, like the
    /// mesh protocols, until it is admitted.
    pub(super) dcutr: Gated<dcutr::Behaviour>,
    /// Whether this node is reachable from outside, asked of the mesh's devices; and
    /// dialling back the devices that ask (held, like the mesh protocols, until the
    /// asking peer is admitted).
    pub(super) autonat: Gated<autonat::v1::Behaviour>,
}

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}

pub(super) fn build_swarm(
    key: &NodeKey,
    mdns_on: bool,
    relay_server: bool,
    admitted: &Arc<Admitted>,
) -> Result<Swarm<Behaviour>, MeshError> {
    let seed = key.to_seed();
    let mut bytes = *seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes)
        .map_err(|err| MeshError::Start(err.to_string()))?;
    let budget = Budget::new(MAX_BUFFERED_BYTES);
    let admission_budget = Budget::new(MAX_ADMISSION_BUFFERED_BYTES);
    let candidates = Arc::new(Candidates::default());
    let behaviour = |key: &libp2p::identity::Keypair,
                     relay_client: relay::client::Behaviour|
     -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
        let peer = key.public().to_peer_id();
        let relay = relay_server.then(|| {
            let mut relay = relay::Behaviour::new(peer, server_config(admitted));
            // Offered whether or not an address was confirmed from outside: the
            // owner said this node relays.
            relay.set_status(Some(relay::Status::Enable));
            relay
        });
        let mdns = if mdns_on {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config {
                    query_interval: Duration::from_secs(30),
                    ..mdns::Config::default()
                },
                peer,
            )?)
        } else {
            None
        };
        Ok(Behaviour {
            // A person has a handful of devices: bound what strangers can open.
            limits: libp2p::connection_limits::Behaviour::new(
                libp2p::connection_limits::ConnectionLimits::default()
                    .with_max_pending_incoming(Some(32))
                    .with_max_pending_outgoing(Some(64))
                    .with_max_established_incoming(Some(128))
                    // A device that restarted connects again while the old,
                    // dead connections still count until ping gives up on them.
                    // Hole punching opens more connections to a device beside
                    // its relayed one.
                    .with_max_established_per_peer(Some(8)),
            ),
            // Anyone may speak admission: it reads within a budget of its own
            // (strangers cannot take the members' share), two streams at once per
            // connection.
            admission: request_response::Behaviour::with_codec(
                FrameCodec::new(admission::MAX_MESSAGE_BYTES, &admission_budget),
                [(
                    StreamProtocol::new(ADMISSION_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(10))
                    .with_max_concurrent_streams(2),
            ),
            sync: Gated::new(
                request_response::Behaviour::with_codec(
                    FrameCodec::single(hearth_protocol::sync::message::MAX_MESSAGE_BYTES, &budget),
                    [(
                        StreamProtocol::new(SYNC_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(32),
                ),
                admitted.clone(),
            ),
            compute: Gated::new(
                request_response::Behaviour::with_codec(
                    FrameCodec::single(hearth_protocol::compute::MAX_JOB_BYTES, &budget),
                    [(
                        StreamProtocol::new(COMPUTE_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(COMPUTE_TIMEOUT)
                        .with_max_concurrent_streams(4),
                ),
                admitted.clone(),
            ),
            audit: Gated::new(
                request_response::Behaviour::with_codec(
                    FrameCodec::new(MAX_AUDIT_MESSAGE_BYTES, &budget),
                    [(
                        StreamProtocol::new(AUDIT_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(4),
                ),
                admitted.clone(),
            ),
            members: Gated::new(
                request_response::Behaviour::with_codec(
                    FrameCodec::single(session::MAX_EXCHANGE_BYTES, &budget),
                    [(
                        StreamProtocol::new(MEMBERS_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10)),
                ),
                admitted.clone(),
            ),
            // Identify runs before admission too, so it keeps the listen addresses
            // to itself: devices tell each other those in the membership exchange.
            identify: identify::Behaviour::new(
                identify::Config::new("/hearth/1".into(), key.public())
                    .with_hide_listen_addrs(true),
            ),
            // A ping every 2 s that fails after 5 s closes the connection, so a device
            // whose link went away is seen as offline within seconds.
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5)),
            ),
            mdns: Toggle::from(mdns),
            relay: Toggle::from(relay),
            relay_client,
            // Both hear only the addresses admitted devices saw this node at.
            dcutr: Gated::with_candidates(
                dcutr::Behaviour::new(peer),
                admitted.clone(),
                candidates.clone(),
                false,
            ),
            autonat: Gated::with_candidates(
                autonat::v1::Behaviour::new(peer, autonat_config()),
                admitted.clone(),
                candidates.clone(),
                true,
            ),
        })
    };
    let start = |err: &dyn std::fmt::Display| MeshError::Start(err.to_string());
    // The transports up to DNS, built again for the fallback below.
    macro_rules! transports {
        () => {
            libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
                .with_tokio()
                .with_tcp(tcp::Config::default(), noise::Config::new, yamux_config)
                .map_err(|err| start(&err))?
                .with_quic()
        };
    }
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_relay_client(noise::Config::new, yamux_config)
                .map_err(|err| start(&err))?
                .with_behaviour(behaviour)
                .map_err(|err| start(&err))?
                .with_swarm_config(|c| {
                    c.with_idle_connection_timeout(Duration::from_secs(3600))
                        // Streams being negotiated or held for admission, per
                        // connection: what a peer not yet admitted can make the
                        // transport buffer is bounded by this many flow-control
                        // windows.
                        .with_max_negotiating_inbound_streams(64)
                })
                .build()
        };
    }
    // `/dns4/…` addresses resolve with the system's resolver; a system without a
    // resolver configuration still resolves names in its hosts file.
    let swarm = match transports!().with_dns() {
        Ok(builder) => finish!(builder),
        Err(err) => {
            tracing::warn!(error = %err, "no system resolver configuration; DNS names resolve from the hosts file only");
            finish!(transports!().with_dns_config(
                libp2p::dns::ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                libp2p::dns::ResolverOpts::default(),
            ))
        }
    };
    Ok(swarm)
}
