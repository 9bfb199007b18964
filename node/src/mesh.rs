//! The private mesh over libp2p: QUIC and TCP (Noise, Yamux), identify, ping and mDNS,
//! with admission (`hearth_protocol::mesh::admission`) run on every connection before
//! anything else of Hearth's is served to the peer.
//!
//! The swarm is an actor: [`spawn`] starts its loop on the runtime and returns a
//! [`MeshHandle`] whose methods send commands (with a oneshot reply) over a bounded
//! channel.
//!
//! ```text
//! MeshHandle ──commands──▶ mesh loop ──▶ libp2p Swarm (admission, identify, ping, mdns)
//!                              └── admission::Connection per peer, Gate shared
//! ```
//!
//! Admission travels as one request and one response on `/hearth/admission/1`: the
//! dialer sends its opening frames, the listener answers with its own frames (its
//! certificate, a welcome for a joiner, or a refusal). Frames are admission messages,
//! each length-prefixed (u32, big endian), at most 64 KiB each and 4 per exchange.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use hearth_protocol::capability::{Chain, Role};
use hearth_protocol::key::{NodeKey, PublicKey};
use hearth_protocol::mesh::admission::{
    self, Config as AdmissionConfig, Connection, Event, Gate, Opening,
};
use hearth_protocol::mesh::ticket::Ticket;
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::{AuditLog, Event as AuditEvent};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, mdns, noise, ping, request_response, tcp,
    yamux,
};
use tokio::sync::{mpsc, oneshot};

pub use libp2p::Multiaddr as Address;

/// The admission protocol's name.
pub const ADMISSION_PROTOCOL: &str = "/hearth/admission/1";
/// The protocol admitted peers use to tell each other where the other devices are.
pub const PEERS_PROTOCOL: &str = "/hearth/peers/1";
/// Most devices listed in one peers message.
const MAX_LISTED_PEERS: usize = 64;
const MAX_FRAMES: usize = 4;

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
    /// Where revocations are kept across restarts. Default: nowhere.
    pub revocations_file: Option<std::path::PathBuf>,
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
            revocations_file: None,
        }
    }
}

/// Frames of admission messages.
#[derive(Debug, Clone, Default)]
pub struct Frames(pub Vec<Vec<u8>>);

/// Length-prefixed admission frames.
#[derive(Debug, Clone, Default)]
pub struct FrameCodec;

async fn read_frames<T: futures_util::AsyncRead + Unpin + Send>(
    io: &mut T,
) -> std::io::Result<Frames> {
    let mut count = [0u8; 1];
    io.read_exact(&mut count).await?;
    if usize::from(count[0]) > MAX_FRAMES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "too many admission frames",
        ));
    }
    let mut frames = Vec::with_capacity(usize::from(count[0]));
    for _ in 0..count[0] {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > admission::MAX_MESSAGE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "admission frame too large",
            ));
        }
        let mut frame = vec![0u8; len];
        io.read_exact(&mut frame).await?;
        frames.push(frame);
    }
    Ok(Frames(frames))
}

async fn write_frames<T: futures_util::AsyncWrite + Unpin + Send>(
    io: &mut T,
    frames: Frames,
) -> std::io::Result<()> {
    let count = u8::try_from(frames.0.len().min(MAX_FRAMES)).unwrap_or(0);
    io.write_all(&[count]).await?;
    for frame in frames.0.iter().take(MAX_FRAMES) {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(frame).await?;
    }
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frames;
    type Response = Frames;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Frames>
    where
        T: futures_util::AsyncRead + Unpin + Send,
    {
        read_frames(io).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Frames>
    where
        T: futures_util::AsyncRead + Unpin + Send,
    {
        read_frames(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Frames,
    ) -> std::io::Result<()>
    where
        T: futures_util::AsyncWrite + Unpin + Send,
    {
        write_frames(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Frames,
    ) -> std::io::Result<()>
    where
        T: futures_util::AsyncWrite + Unpin + Send,
    {
        write_frames(io, res).await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    admission: request_response::Behaviour<FrameCodec>,
    peers: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Why the mesh could not start or a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The transport could not be set up.
    #[error("cannot start the mesh: {0}")]
    Start(String),
    /// An address could not be listened on.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The mesh loop has stopped.
    #[error("the mesh has stopped")]
    Stopped,
    /// This node cannot invite (no owner key).
    #[error(
        "this device cannot admit new devices: it holds neither the owner key nor a devices:admit capability"
    )]
    CannotAdmit,
    /// Pairing failed.
    #[error("{0}")]
    Join(String),
    /// No device has that name.
    #[error("no device is named {0:?}")]
    NoSuchDevice(String),
    /// Only the owner key can revoke devices.
    #[error("only the device holding the owner key can revoke devices")]
    NotOwner,
}

/// A peer as the mesh sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Device name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its PeerId.
    pub peer_id: String,
    /// Connected and admitted now?
    pub connected: bool,
    /// Last time it was seen admitted (ms).
    pub last_seen: u64,
}

/// A device of the mesh, for `hearth devices`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// PeerId.
    pub peer_id: String,
    /// Connected now (this device is always online).
    pub online: bool,
    /// Last seen (ms; 0 when never).
    pub last_seen: u64,
    /// Revoked?
    pub revoked: bool,
}

/// What `status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshStatus {
    /// Addresses the swarm listens on.
    pub listen: Vec<String>,
    /// Admitted peers, connected or not.
    pub peers: Vec<PeerStatus>,
}

enum Command {
    Status(oneshot::Sender<MeshStatus>),
    Devices(oneshot::Sender<Vec<DeviceStatus>>),
    Revoke {
        name: String,
        reply: oneshot::Sender<Result<String, MeshError>>,
    },
    Invite {
        ttl: Duration,
        name: Option<String>,
        role: Option<Role>,
        reply: oneshot::Sender<Result<String, MeshError>>,
    },
}

/// A handle to the mesh loop.
#[derive(Debug, Clone)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Status(_) => "Status",
            Command::Devices(_) => "Devices",
            Command::Revoke { .. } => "Revoke",
            Command::Invite { .. } => "Invite",
        })
    }
}

impl MeshHandle {
    /// The swarm's addresses and peers.
    pub async fn status(&self) -> Result<MeshStatus, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)
    }

    /// Every device this node knows, itself included.
    pub async fn devices(&self) -> Result<Vec<DeviceStatus>, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Devices(reply))
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)
    }

    /// Revokes the device called `name` (needs the owner key); returns its PeerId.
    pub async fn revoke(&self, name: &str) -> Result<String, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Revoke {
                name: name.to_owned(),
                reply,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
    }

    /// A one-time pairing ticket, as text.
    pub async fn invite(
        &self,
        ttl: Duration,
        name: Option<String>,
        role: Option<Role>,
    ) -> Result<String, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Invite {
                ttl,
                name,
                role,
                reply,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
    }
}

fn now() -> UnixMillis {
    UnixMillis::from_system_time(std::time::SystemTime::now())
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

fn build_swarm(key: &NodeKey, mdns_on: bool) -> Result<Swarm<Behaviour>, MeshError> {
    let seed = key.to_seed();
    let mut bytes = *seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes)
        .map_err(|err| MeshError::Start(err.to_string()))?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|err| MeshError::Start(err.to_string()))?
        .with_quic()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
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
                        .with_max_established_per_peer(Some(2)),
                ),
                admission: request_response::Behaviour::with_codec(
                    FrameCodec,
                    [(
                        StreamProtocol::new(ADMISSION_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10)),
                ),
                peers: request_response::Behaviour::with_codec(
                    FrameCodec,
                    [(
                        StreamProtocol::new(PEERS_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/hearth/1".into(),
                    key.public(),
                )),
                // A ping every 2 s that fails after 5 s closes the connection, so a device
                // whose link went away is seen as offline within seconds.
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(2))
                        .with_timeout(Duration::from_secs(5)),
                ),
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|err| MeshError::Start(err.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

struct Known {
    name: String,
    role: String,
    connected: bool,
    last_seen: u64,
    addrs: Vec<Multiaddr>,
    retry: Backoff,
}

/// When to try a lost device again: 2 s after losing it, doubling to 30 s.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: u64,
    delay_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: 0,
            delay_ms: 2_000,
        }
    }
}

impl Backoff {
    /// Is an attempt due at `now`? If so, schedules the next one further out.
    fn due(&mut self, now: u64) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.delay_ms;
        self.delay_ms = (self.delay_ms * 2).min(30_000);
        true
    }
}

/// One remembered device in the peers file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Remembered {
    peer_id: String,
    name: String,
    role: String,
    last_seen: u64,
    addrs: Vec<String>,
}

/// Revocations as stored and passed on: each `u16` length (big endian) then its bytes.
fn encode_revocations(list: &[hearth_protocol::capability::SignedRevocation]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in list {
        let bytes = r.encode();
        if out.len() + bytes.len() + 2 > admission::MAX_MESSAGE_BYTES {
            break;
        }
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn decode_revocations(mut bytes: &[u8]) -> Vec<hearth_protocol::capability::SignedRevocation> {
    let mut out = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        let Some(one) = rest.get(..len) else { break };
        if let Ok(r) = hearth_protocol::capability::SignedRevocation::decode(one) {
            out.push(r);
        }
        bytes = rest.get(len..).unwrap_or_default();
    }
    out
}

fn load_revocations(path: &std::path::Path) -> Vec<hearth_protocol::capability::SignedRevocation> {
    std::fs::read(path)
        .map(|b| decode_revocations(&b))
        .unwrap_or_default()
}

fn load_peers(path: &std::path::Path) -> BTreeMap<PeerId, Known> {
    let Ok(bytes) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    let list: Vec<Remembered> = match serde_json::from_slice(&bytes) {
        Ok(list) => list,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "ignoring an unreadable peers file");
            return BTreeMap::new();
        }
    };
    list.into_iter()
        .take(1024)
        .filter_map(|r| {
            let peer = r.peer_id.parse().ok()?;
            let addrs = r
                .addrs
                .iter()
                .take(16)
                .filter_map(|a| a.parse().ok())
                .collect();
            Some((
                peer,
                Known {
                    name: r.name,
                    role: r.role,
                    connected: false,
                    last_seen: r.last_seen,
                    addrs,
                    retry: Backoff::default(),
                },
            ))
        })
        .collect()
}

struct MeshLoop {
    swarm: Swarm<Behaviour>,
    gate: Gate,
    certificate: Chain,
    owner: PublicKey,
    config: MeshConfig,
    audit: Arc<AuditLog>,
    admitting: BTreeMap<PeerId, Connection>,
    known: BTreeMap<PeerId, Known>,
    /// Listen addresses identify reported for peers still being admitted.
    identified: BTreeMap<PeerId, Vec<Multiaddr>>,
    /// Refused peers, disconnected once their refusal had time to reach them.
    closing: Vec<(PeerId, UnixMillis)>,
    /// The peers file needs writing.
    dirty: bool,
    /// When to dial each bootstrap address again.
    bootstrap_retry: BTreeMap<String, Backoff>,
    /// The owner key, on the device that holds it.
    owner_key: Option<hearth_protocol::key::OwnerKey>,
    /// This device's name and role.
    me: (String, String),
}

/// Starts the mesh loop. `issuer` lets this node admit devices (it holds the owner key).
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    key: &NodeKey,
    certificate: Chain,
    mut gate: Gate,
    owner_key: Option<hearth_protocol::key::OwnerKey>,
    config: MeshConfig,
    audit: Arc<AuditLog>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<MeshHandle, MeshError> {
    let mut swarm = build_swarm(key, config.mdns)?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|err| MeshError::Listen {
                addr: addr.to_string(),
                reason: err.to_string(),
            })?;
    }
    for addr in &config.bootstrap {
        if let Err(err) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %err, "cannot dial a bootstrap address");
        }
    }
    let owner = *gate.owner();
    if let Some(path) = &config.revocations_file {
        for revocation in load_revocations(path) {
            if let Err(err) = gate.revocations.insert(&revocation) {
                tracing::warn!(error = %err, "ignoring a stored revocation");
            }
        }
    }
    let me = certificate
        .leaf()
        .capability()
        .device()
        .map(|(n, r)| (n.to_owned(), r.to_string()))
        .unwrap_or_default();
    let config_peers = config
        .peers_file
        .as_deref()
        .map(load_peers)
        .unwrap_or_default();
    let (commands, receiver) = mpsc::channel(64);
    let mesh = MeshLoop {
        swarm,
        gate,
        certificate,
        owner,
        config,
        audit,
        admitting: BTreeMap::new(),
        known: config_peers,
        identified: BTreeMap::new(),
        closing: Vec::new(),
        dirty: false,
        bootstrap_retry: BTreeMap::new(),
        owner_key,
        me,
    };
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
                _ = redial.tick() => self.redial(),
            }
        }
        tracing::info!("mesh stopped");
    }

    fn audit(&self, action: &str, object: &str, outcome: &str) {
        if let Err(err) = self.audit.record(AuditEvent {
            actor: "mesh".into(),
            action: action.into(),
            object: object.into(),
            cap_id: None,
            outcome: outcome.into(),
            bytes: 0,
        }) {
            tracing::error!(error = %err, "cannot write the audit log");
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let status = MeshStatus {
                    listen: self.swarm.listeners().map(ToString::to_string).collect(),
                    peers: self
                        .known
                        .iter()
                        .map(|(peer, k)| PeerStatus {
                            name: k.name.clone(),
                            role: k.role.clone(),
                            peer_id: peer.to_string(),
                            connected: k.connected,
                            last_seen: k.last_seen,
                        })
                        .collect(),
                };
                let _ = reply.send(status);
            }
            Command::Devices(reply) => {
                let me = *self.swarm.local_peer_id();
                let mut list = vec![DeviceStatus {
                    name: self.me.0.clone(),
                    role: self.me.1.clone(),
                    peer_id: me.to_string(),
                    online: true,
                    last_seen: now().0,
                    revoked: false,
                }];
                list.extend(
                    self.known.iter().map(|(peer, k)| DeviceStatus {
                        name: k.name.clone(),
                        role: k.role.clone(),
                        peer_id: peer.to_string(),
                        online: k.connected,
                        last_seen: k.last_seen,
                        revoked: peer_key(peer)
                            .is_some_and(|key| self.gate.revocations.is_key_revoked(&key)),
                    }),
                );
                let _ = reply.send(list);
            }
            Command::Revoke { name, reply } => {
                let _ = reply.send(self.revoke(&name));
            }
            Command::Invite {
                ttl,
                name,
                role,
                reply,
            } => {
                let _ = reply.send(self.invite(ttl, name, role));
            }
        }
    }

    fn revoke(&mut self, name: &str) -> Result<String, MeshError> {
        let Some(owner_key) = self.owner_key.clone() else {
            return Err(MeshError::NotOwner);
        };
        let (peer, _) = self
            .known
            .iter()
            .find(|(_, k)| k.name == name)
            .ok_or_else(|| MeshError::NoSuchDevice(name.to_owned()))?;
        let peer = *peer;
        let key = peer_key(&peer).ok_or_else(|| MeshError::NoSuchDevice(name.to_owned()))?;
        let revocation = hearth_protocol::capability::Revocation {
            issuer: owner_key.public(),
            target: hearth_protocol::capability::RevocationTarget::Key(key),
            issued_at: now(),
            reason: format!("device {name} revoked by the owner"),
        }
        .sign(owner_key.secret())
        .map_err(|err| MeshError::Start(err.to_string()))?;
        self.accept_revocations(vec![revocation]);
        // Tell every connected device now rather than at the next exchange.
        self.share_peers();
        Ok(peer.to_string())
    }

    /// Takes in revocations (checked by the revocation set), drops revoked peers, keeps
    /// the set on disk.
    fn accept_revocations(&mut self, list: Vec<hearth_protocol::capability::SignedRevocation>) {
        let mut changed = false;
        for revocation in list {
            match self.gate.revocations.insert(&revocation) {
                Ok(true) => {
                    changed = true;
                    if let hearth_protocol::capability::RevocationTarget::Key(key) =
                        revocation.revocation().target
                    {
                        self.audit("mesh.revoke", &key.short(), "allowed");
                        if let Some(peer) = peer_id(&key) {
                            if let Some(k) = self.known.get_mut(&peer) {
                                k.connected = false;
                            }
                            let _ = self.swarm.disconnect_peer_id(peer);
                        }
                    }
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "ignoring a revocation"),
            }
        }
        if changed {
            if let Some(path) = &self.config.revocations_file {
                let bytes = encode_revocations(self.gate.revocations.signed());
                let tmp = path.with_extension("tmp");
                if let Err(err) =
                    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path))
                {
                    tracing::error!(error = %err, "cannot store revocations");
                }
            }
            self.dirty = true;
        }
    }

    fn share_peers(&mut self) {
        let connected: Vec<PeerId> = self
            .known
            .iter()
            .filter(|(_, k)| k.connected)
            .map(|(p, _)| *p)
            .collect();
        for peer in connected {
            let list = self.peer_list();
            self.swarm.behaviour_mut().peers.send_request(&peer, list);
        }
    }

    fn invite(
        &mut self,
        ttl: Duration,
        name: Option<String>,
        role: Option<Role>,
    ) -> Result<String, MeshError> {
        if !self.gate.can_admit() {
            return Err(MeshError::CannotAdmit);
        }
        let mut id = [0u8; 16];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|err| MeshError::Start(err.to_string()))?;
        getrandom::fill(&mut secret).map_err(|err| MeshError::Start(err.to_string()))?;
        let me = *self.swarm.local_peer_id();
        let addrs: Vec<String> = self
            .swarm
            .listeners()
            .map(|a| {
                a.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(me))
                    .to_string()
            })
            .collect();
        let local = peer_key(&me)
            .ok_or_else(|| MeshError::Start("the local PeerId is not ed25519".into()))?;
        let expires = now().saturating_add(ttl);
        self.gate.invitations.expire(now());
        let ticket = self
            .gate
            .invitations
            .issue(self.owner, local, addrs, id, secret, expires, name, role);
        self.audit("mesh.invite", &hex::encode(id), "allowed");
        Ok(ticket.to_text().to_string())
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "mesh listening"),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if self.known.get(&peer_id).is_some_and(|k| k.connected)
                    || self.admitting.contains_key(&peer_id)
                {
                    return;
                }
                let Some(remote) = peer_key(&peer_id) else {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                };
                let mut connection = Connection::new(
                    now(),
                    remote,
                    Opening::Member(self.certificate.clone()),
                    &self.config.admission,
                );
                if endpoint.is_dialer() {
                    let frames: Vec<Vec<u8>> =
                        std::iter::from_fn(|| connection.poll_transmit()).collect();
                    self.swarm
                        .behaviour_mut()
                        .admission
                        .send_request(&peer_id, Frames(frames));
                }
                if let Some(k) = self.known.get_mut(&peer_id) {
                    let addr = endpoint.get_remote_address().clone();
                    if !k.addrs.contains(&addr) && endpoint.is_dialer() {
                        k.addrs.push(addr);
                    }
                }
                self.admitting.insert(peer_id, connection);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.admitting.remove(&peer_id);
                self.identified.remove(&peer_id);
                if let Some(k) = self.known.get_mut(&peer_id) {
                    k.connected = false;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // Only admitted devices' addresses are passed on; until admission they wait.
                let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
                match self.known.get_mut(&peer_id) {
                    Some(k) if k.connected => {
                        add_addrs(&mut k.addrs, addrs);
                        self.dirty = true;
                    }
                    _ if self.swarm.is_connected(&peer_id) => {
                        self.identified.insert(peer_id, addrs);
                    }
                    _ => {}
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Peers(request_response::Event::Message {
                peer,
                message,
                ..
            })) => {
                let admitted = self.known.get(&peer).is_some_and(|k| k.connected);
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let answer = if admitted {
                            self.peer_list()
                        } else {
                            Frames(Vec::new())
                        };
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .peers
                            .send_response(channel, answer);
                        if admitted {
                            self.learn_peers(&request);
                        }
                    }
                    request_response::Message::Response { response, .. } => {
                        if admitted {
                            self.learn_peers(&response);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(err),
            })) => {
                tracing::info!(%peer, error = %err, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Admission(
                request_response::Event::Message { peer, message, .. },
            )) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let Some(connection) = self.admitting.get_mut(&peer) else {
                            // Already admitted, or unknown: answer nothing useful.
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .admission
                                .send_response(channel, Frames(Vec::new()));
                            return;
                        };
                        for frame in request.0.iter().take(MAX_FRAMES) {
                            connection.handle_message(now(), frame, &mut self.gate);
                        }
                        let frames: Vec<Vec<u8>> =
                            std::iter::from_fn(|| connection.poll_transmit()).collect();
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .admission
                            .send_response(channel, Frames(frames));
                        self.drain(peer);
                    }
                    request_response::Message::Response { response, .. } => {
                        if let Some(connection) = self.admitting.get_mut(&peer) {
                            for frame in response.0.iter().take(MAX_FRAMES) {
                                connection.handle_message(now(), frame, &mut self.gate);
                            }
                            while connection.poll_transmit().is_some() {}
                            self.drain(peer);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Acts on a connection's admission events.
    fn drain(&mut self, peer: PeerId) {
        let Some(connection) = self.admitting.get_mut(&peer) else {
            return;
        };
        let events: Vec<Event> = std::iter::from_fn(|| connection.poll_event()).collect();
        let done = connection.is_admitted() || connection.is_refused();
        for event in events {
            match event {
                Event::Admitted(device) => {
                    self.audit("mesh.admit", &device.name, "allowed");
                    tracing::info!(peer = %peer, device = %device.name, "peer admitted");
                    let entry = self.known.entry(peer).or_insert_with(|| Known {
                        name: device.name.clone(),
                        role: device.role.to_string(),
                        connected: true,
                        last_seen: 0,
                        addrs: Vec::new(),
                        retry: Backoff::default(),
                    });
                    entry.retry = Backoff::default();
                    entry.name = device.name.clone();
                    entry.role = device.role.to_string();
                    self.dirty = true;
                    entry.connected = true;
                    entry.last_seen = now().0;
                    if let Some(addrs) = self.identified.remove(&peer) {
                        add_addrs(&mut entry.addrs, addrs);
                    }
                }
                Event::Joined(device) => {
                    self.audit("mesh.join", &device.name, "allowed");
                }
                Event::Welcomed(_) => {}
                Event::Refused { reason } => {
                    self.audit(
                        "mesh.admit",
                        &peer.to_string(),
                        &format!("refused: {reason}"),
                    );
                    tracing::warn!(peer = %peer, %reason, "peer refused");
                    self.closing
                        .push((peer, now().saturating_add(Duration::from_millis(500))));
                }
            }
        }
        if done {
            self.admitting.remove(&peer);
        }
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
        let peers: Vec<PeerId> = self.admitting.keys().copied().collect();
        for peer in peers {
            if let Some(connection) = self.admitting.get_mut(&peer)
                && connection.poll_timeout().is_some_and(|t| now >= t)
            {
                connection.handle_timeout(now);
                self.drain(peer);
            }
        }
        for (peer, k) in &mut self.known {
            if k.connected && self.swarm.is_connected(peer) {
                k.last_seen = now.0;
            }
        }
        if self.dirty {
            self.dirty = false;
            self.save_peers();
        }
    }

    fn save_peers(&self) {
        let Some(path) = &self.config.peers_file else {
            return;
        };
        let list: Vec<Remembered> = self
            .known
            .iter()
            .map(|(peer, k)| Remembered {
                peer_id: peer.to_string(),
                name: k.name.clone(),
                role: k.role.clone(),
                last_seen: k.last_seen,
                addrs: k.addrs.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let Ok(bytes) = serde_json::to_vec_pretty(&list) else {
            return;
        };
        let tmp = path.with_extension("tmp");
        if let Err(err) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remember peers");
        }
    }

    /// The admitted devices this node knows, with their addresses, as one frame:
    /// `peer id (text) SP address SP address …` per line.
    fn peer_list(&self) -> Frames {
        let text: String = self
            .known
            .iter()
            .filter(|(_, k)| !k.addrs.is_empty())
            .take(MAX_LISTED_PEERS)
            .map(|(peer, k)| {
                let addrs: Vec<String> = k.addrs.iter().map(ToString::to_string).collect();
                format!("{peer} {}\n", addrs.join(" "))
            })
            .collect();
        let mut text = text.into_bytes();
        text.truncate(admission::MAX_MESSAGE_BYTES);
        Frames(vec![
            text,
            encode_revocations(self.gate.revocations.signed()),
        ])
    }

    /// Dials devices an admitted peer told us about; admission decides about them.
    fn learn_peers(&mut self, frames: &Frames) {
        if let Some(revocations) = frames.0.get(1) {
            self.accept_revocations(decode_revocations(revocations));
        }
        let me = *self.swarm.local_peer_id();
        for frame in frames.0.iter().take(1) {
            let text = String::from_utf8_lossy(frame);
            for line in text.lines().take(MAX_LISTED_PEERS) {
                let mut parts = line.split_whitespace();
                let Some(Ok(peer)) = parts.next().map(str::parse::<PeerId>) else {
                    continue;
                };
                if peer == me || self.swarm.is_connected(&peer) {
                    continue;
                }
                let addrs: Vec<Multiaddr> = parts.take(16).filter_map(|a| a.parse().ok()).collect();
                let revoked =
                    peer_key(&peer).is_some_and(|key| self.gate.revocations.is_key_revoked(&key));
                if addrs.is_empty() || revoked {
                    continue;
                }
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
    }

    /// Redials admitted peers that dropped, and bootstrap addresses not connected; asks
    /// connected peers which devices they know.
    fn redial(&mut self) {
        self.share_peers();
        let now = now().0;
        let mut targets: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, k) in &mut self.known {
            let lost = !k.connected
                && !self.swarm.is_connected(peer)
                && !peer_key(peer).is_some_and(|key| self.gate.revocations.is_key_revoked(&key));
            if lost && k.retry.due(now) {
                targets.push((*peer, k.addrs.clone()));
            }
        }
        for (peer, addrs) in targets {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
        for addr in self.config.bootstrap.clone() {
            let connected = addr.iter().any(|p| match p {
                libp2p::multiaddr::Protocol::P2p(peer) => self.swarm.is_connected(&peer),
                _ => false,
            });
            let retry = self.bootstrap_retry.entry(addr.to_string()).or_default();
            if connected {
                *retry = Backoff::default();
            } else if retry.due(now) {
                let _ = self.swarm.dial(addr);
            }
        }
    }
}

fn add_addrs(known: &mut Vec<Multiaddr>, new: Vec<Multiaddr>) {
    for addr in new {
        if !known.contains(&addr) {
            known.push(addr);
        }
    }
    known.truncate(16);
}

/// Pairs this (new) device with the inviter named in `ticket`: dials it, redeems the
/// ticket, and returns the certificate it issues.
pub async fn join(
    key: &NodeKey,
    ticket: &Ticket,
    name: &str,
    role: Role,
    timeout: Duration,
) -> Result<Chain, MeshError> {
    let mut swarm = build_swarm(key, false)?;
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
                    swarm.behaviour_mut().admission.send_request(&inviter, Frames(frames));
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
