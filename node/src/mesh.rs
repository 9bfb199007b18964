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
//!
//! Admitted peers then keep the membership store (`hearth_protocol::mesh::membership`)
//! in step on `/hearth/members/1`: digests every 2 s, snapshots when they differ, and
//! each device's listen addresses. docs/mesh.md describes both protocols.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};

mod gate;
mod strangers;
use gate::{Admitted, Gated};
use hearth_protocol::capability::Position;
use hearth_protocol::capability::{Chain, Role};
use hearth_protocol::key::{NodeKey, PublicKey};
use hearth_protocol::mesh::admission::{
    self, Config as AdmissionConfig, Connection, Event, Gate, Issuer, Opening,
};
use hearth_protocol::mesh::membership::{self, Membership, Snapshot};
use hearth_protocol::mesh::ticket::Ticket;
use hearth_protocol::statefile;
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::{AuditLog, Event as AuditEvent};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, mdns, noise, ping, request_response, tcp,
    yamux,
};
use strangers::{AuditWriter, Strangers};
use tokio::sync::{mpsc, oneshot};

pub use libp2p::Multiaddr as Address;

/// The admission protocol's name.
pub const ADMISSION_PROTOCOL: &str = "/hearth/admission/1";
/// The protocol admitted peers use to keep the membership store in step and to tell
/// each other where the devices are.
pub const MEMBERS_PROTOCOL: &str = "/hearth/members/1";
/// The protocol admitted peers replicate stores over (`hearth_protocol::sync`).
pub const SYNC_PROTOCOL: &str = "/hearth/sync/1";
/// Jobs forwarded to the device that holds the data, and their replies.
pub const COMPUTE_PROTOCOL: &str = "/hearth/compute/1";
/// Home devices copying other devices' audit logs (see `crate::audit_copy`).
pub const AUDIT_PROTOCOL: &str = "/hearth/audit/1";
/// The largest audit message (a page of log lines, or a run of entry hashes).
pub const MAX_AUDIT_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// How long a forwarded job may take, queueing and running, before the caller gives up.
const COMPUTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most devices listed in one peers message.
const MAX_LISTED_PEERS: usize = 64;
const MAX_FRAMES: usize = 4;
/// Sync bytes sent to one peer and not yet acknowledged, at most (one message larger
/// than this still goes when nothing else is in flight).
const MAX_SYNC_IN_FLIGHT: usize = 16 * 1024 * 1024;
/// Sync bytes held back for one peer while the in-flight window is full, at most (one
/// larger message may wait alone); beyond it a message is dropped and the sync engine's
/// repair sends what it carried.
const MAX_SYNC_WAITING: usize = 16 * 1024 * 1024;

/// Sync traffic to one peer: a window of unacknowledged bytes, and a bounded queue
/// behind it.
#[derive(Default)]
struct SyncOut {
    in_flight: usize,
    pending: BTreeMap<request_response::OutboundRequestId, usize>,
    waiting: std::collections::VecDeque<Vec<u8>>,
    waiting_bytes: usize,
}

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
        }
    }
}

/// Bytes of frames from peers being read, or read and not yet dropped, at most, over
/// every connection and protocol of one node: a frame is read only once its length is
/// reserved here, and a read waits (the peer's writes wait in the transport's
/// flow-control window) while others hold the rest.
pub const MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
/// Bytes of admission messages being read, or read and not yet dropped, at most, over
/// every connection: admission is open to anyone, so it has a budget of its own.
pub const MAX_ADMISSION_BUFFERED_BYTES: usize = 8 * 1024 * 1024;
/// Streams at once on one TCP connection (yamux), each with a receive window of
/// 256 KiB: at most 16 MiB waits unread in one TCP connection. (QUIC's connection
/// window is 15 MB.)
const MAX_STREAMS_PER_CONNECTION: usize = 64;
/// The unit [`Budget`] counts in.
const BUDGET_UNIT: usize = 1024;

/// What frames from peers may hold in memory, shared by every codec of one swarm.
#[derive(Debug, Clone)]
pub struct Budget(Arc<tokio::sync::Semaphore>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(bytes / BUDGET_UNIT)))
    }

    /// Reserves `len` bytes (rounded up to [`BUDGET_UNIT`]), waiting while others
    /// hold them.
    async fn take(&self, len: usize) -> std::io::Result<tokio::sync::OwnedSemaphorePermit> {
        let units = u32::try_from(len.div_ceil(BUDGET_UNIT)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "a frame past any budget")
        })?;
        self.0
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| std::io::Error::other("the frame budget is closed"))
    }
}

/// The frames of one request or response. A request that broke the protocol's limits
/// (more frames, or a larger frame, than it allows) arrives with no frames and the
/// reason, so that the peer can be told off: the request-response layer does not
/// report a request it could not read. Frames read from a peer hold their share of the
/// [`Budget`] until they are dropped.
#[derive(Debug, Clone, Default)]
pub struct Frames(
    pub Vec<Vec<u8>>,
    Option<String>,
    // Held, never read: dropping the frames gives their bytes back to the budget.
    #[allow(dead_code)] Option<Arc<Vec<tokio::sync::OwnedSemaphorePermit>>>,
);

impl From<Vec<Vec<u8>>> for Frames {
    fn from(frames: Vec<Vec<u8>>) -> Self {
        Self(frames, None, None)
    }
}

impl Frames {
    /// Why the request was refused unread, if it was.
    fn violation(&self) -> Option<&str> {
        self.1.as_deref()
    }
}

/// Length-prefixed frames: a count byte (at most 4), then each frame as a `u32`
/// big-endian length and its bytes, at most `max_frame` bytes each, read within the
/// swarm's [`Budget`].
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
    max_frames: usize,
    budget: Budget,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame`.
    pub fn new(max_frame: usize, budget: &Budget) -> Self {
        Self {
            max_frame,
            max_frames: MAX_FRAMES,
            budget: budget.clone(),
        }
    }

    /// The same, taking at most one frame per message (for large frames: what a
    /// peer can make this node buffer before the request is even looked at).
    pub fn single(max_frame: usize, budget: &Budget) -> Self {
        Self {
            max_frame,
            max_frames: 1,
            budget: budget.clone(),
        }
    }
}

async fn read_frames<T: futures_util::AsyncRead + Unpin + Send>(
    io: &mut T,
    max_frame: usize,
    max_frames: usize,
    budget: &Budget,
) -> std::io::Result<Frames> {
    let mut count = [0u8; 1];
    io.read_exact(&mut count).await?;
    if usize::from(count[0]) > max_frames {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "more frames than the protocol allows",
        ));
    }
    let mut frames = Vec::with_capacity(usize::from(count[0]));
    let mut held = Vec::with_capacity(usize::from(count[0]));
    for _ in 0..count[0] {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max_frame {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a frame larger than the protocol allows",
            ));
        }
        held.push(budget.take(len).await?);
        frames.push(read_frame(io, len).await?);
    }
    Ok(Frames(frames, None, Some(Arc::new(held))))
}

/// Reads a frame of `len` bytes into a buffer grown as the bytes arrive (doubling, but
/// never past `len`): a length alone reserves nothing, and a frame holds no more memory
/// than its bytes.
async fn read_frame<T: futures_util::AsyncRead + Unpin + Send>(
    io: &mut T,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut frame: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8 * 1024];
    while frame.len() < len {
        let want = (len - frame.len()).min(buf.len());
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = io.read(chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if frame.capacity() < frame.len() + n {
            let target = (frame.capacity() * 2).max(frame.len() + n).min(len);
            frame.reserve_exact(target - frame.len());
        }
        frame.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(frame)
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
        match read_frames(io, self.max_frame, self.max_frames, &self.budget).await {
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                Ok(Frames(Vec::new(), Some(err.to_string()), None))
            }
            other => other,
        }
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Frames>
    where
        T: futures_util::AsyncRead + Unpin + Send,
    {
        read_frames(io, self.max_frame, self.max_frames, &self.budget).await
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
    // Held until the peer is admitted (see `gate`).
    members: Gated<request_response::Behaviour<FrameCodec>>,
    sync: Gated<request_response::Behaviour<FrameCodec>>,
    compute: Gated<request_response::Behaviour<FrameCodec>>,
    audit: Gated<request_response::Behaviour<FrameCodec>>,
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
    /// That device is not connected now.
    #[error("device {0:?} is not connected")]
    NotConnected(String),
    /// Only the owner key can do this.
    #[error("only the device holding the owner key can {0}")]
    NotOwner(&'static str),
    /// The owner key could not sign.
    #[error("cannot sign: {0}")]
    Sign(String),
    /// The change was made but its audit entry could not be written.
    #[error(
        "the change was made but its audit entry cannot be written ({0}); fix the disk \
         and check `hearth audit verify`"
    )]
    Unaudited(String),
    /// A change of the membership was made but could not be stored on this device.
    #[error(
        "the change was made but cannot be stored here ({0}); it holds until this node \
         stops and reaches the devices connected now. Free the disk or fix the data \
         directory, then do it again"
    )]
    Unsaved(String),
    /// A device of that name exists already.
    #[error("the mesh already has a device named {0:?}: choose another name")]
    NameTaken(String),
    /// More than one device has that name.
    #[error("{name:?} names more than one device ({peers}); name the one you mean by its peer id")]
    Ambiguous {
        /// The name.
        name: String,
        /// Their peer ids.
        peers: String,
    },
    /// A `devices:admit` scope that names nothing.
    #[error("invalid admit scope: {0}")]
    BadScope(String),
    /// The device's certificate no longer holds, so there is nothing to approve.
    #[error("{0:?} cannot be approved: its certificate no longer holds ({1}); invite it again")]
    NotApprovable(String, String),
    /// This device would revoke itself.
    #[error(
        "{0:?} is this device: revoke it from another device of the mesh (the owner key can move with `hearth init --recover`)"
    )]
    RevokeSelf(String),
}

/// What a `devices:admit` grant lets its holder admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitScope {
    /// The roles.
    pub roles: hearth_protocol::capability::Roles,
    /// The names: `name`, `prefix*` or `*`.
    pub names: String,
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
    /// Is its certificate the owner's own (signed at `init`, pairing through the
    /// owner's device, or `hearth devices approve`)? A device admitted under a
    /// `devices:admit` grant is not until the owner approves it; its certificate ends
    /// with the grant.
    pub approved: bool,
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
    AllowAdmit {
        name: String,
        ttl: Duration,
        scope: AdmitScope,
        reply: oneshot::Sender<Result<String, MeshError>>,
    },
    Approve {
        name: String,
        reply: oneshot::Sender<Result<bool, MeshError>>,
    },
    RevokeCapability {
        id: hearth_protocol::capability::CapId,
        reply: oneshot::Sender<Result<(), MeshError>>,
    },
    #[cfg(test)]
    MembersSend {
        peer: PeerId,
        frames: Vec<Vec<u8>>,
    },
    #[cfg(test)]
    MembersAnswer(HostileAnswer),
    SyncSend {
        peer: PeerId,
        bytes: Vec<u8>,
    },
    Disconnect(PeerId),
    Revocations(oneshot::Sender<hearth_protocol::capability::RevocationSet>),
    ServeJobs(mpsc::Sender<InboundJob>),
    ForwardJob {
        device: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, MeshError>>,
    },
    ServeAudit(mpsc::Sender<InboundAudit>),
    AuditRequest {
        peer: PeerId,
        frames: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, MeshError>>,
    },
    AuditResponse {
        id: u64,
        frames: Vec<Vec<u8>>,
    },
    JobResponse {
        id: u64,
        bytes: Vec<u8>,
    },
}

/// A job another device forwarded here.
#[derive(Debug)]
pub struct InboundJob {
    /// The device that sent it.
    pub from: String,
    /// The encoded job.
    pub bytes: Vec<u8>,
    /// Where the encoded reply goes.
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// Where the answer to an audit request sent from here goes.
type AuditReply = oneshot::Sender<Result<Vec<Vec<u8>>, MeshError>>;

/// An admitted device asking for this device's audit log.
#[derive(Debug)]
pub struct InboundAudit {
    /// The device that asks.
    pub from: String,
    /// Its role, as its certificate says.
    pub role: String,
    /// The request.
    pub frames: Vec<Vec<u8>>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Vec<Vec<u8>>>,
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
            Command::AllowAdmit { .. } => "AllowAdmit",
            Command::Approve { .. } => "Approve",
            Command::RevokeCapability { .. } => "RevokeCapability",
            Command::SyncSend { .. } => "SyncSend",
            #[cfg(test)]
            Command::MembersSend { .. } => "MembersSend",
            #[cfg(test)]
            Command::MembersAnswer(_) => "MembersAnswer",
            Command::Disconnect(_) => "Disconnect",
            Command::Revocations(_) => "Revocations",
            Command::ServeJobs(_) => "ServeJobs",
            Command::ServeAudit(_) => "ServeAudit",
            Command::AuditRequest { .. } => "AuditRequest",
            Command::AuditResponse { .. } => "AuditResponse",
            Command::ForwardJob { .. } => "ForwardJob",
            Command::JobResponse { .. } => "JobResponse",
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

    /// Lets the device called `name` admit new devices of the roles and names in
    /// `scope` for `ttl` (needs the owner key): signs a `devices:admit` capability for
    /// its node key and adds it to the membership store, which carries it to that
    /// device. Returns the capability id.
    pub async fn allow_admit(
        &self,
        name: &str,
        ttl: Duration,
        scope: AdmitScope,
    ) -> Result<String, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::AllowAdmit {
                name: name.to_owned(),
                ttl,
                scope,
                reply,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
    }

    /// Approves the device called `name`, admitted under a `devices:admit` grant (needs
    /// the owner key): signs it a certificate of its own, so that it stays a member
    /// when the grant ends or is withdrawn. Returns `false` when its certificate was
    /// the owner's already.
    pub async fn approve(&self, name: &str) -> Result<bool, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Approve {
                name: name.to_owned(),
                reply,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
    }

    /// Sends a sync message to an admitted peer (waits while the mesh is busy).
    pub(crate) async fn sync_send(&self, peer: PeerId, bytes: Vec<u8>) -> Result<(), MeshError> {
        self.commands
            .send(Command::SyncSend { peer, bytes })
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Sends a membership request of these frames to an admitted peer, as a hostile
    /// member would (tests).
    #[cfg(test)]
    pub(crate) async fn members_send(
        &self,
        peer: PeerId,
        frames: Vec<Vec<u8>>,
    ) -> Result<(), MeshError> {
        self.commands
            .send(Command::MembersSend { peer, frames })
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// From now on answers every membership request with `answer.frames` (the digest
    /// frame made different each time) and keeps the requests in `answer.requests`, as
    /// a hostile member would (tests).
    #[cfg(test)]
    pub(crate) async fn members_answer(&self, answer: HostileAnswer) -> Result<(), MeshError> {
        self.commands
            .send(Command::MembersAnswer(answer))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Disconnects a peer.
    pub(crate) async fn disconnect(&self, peer: PeerId) -> Result<(), MeshError> {
        self.commands
            .send(Command::Disconnect(peer))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// The revocations this node knows.
    pub async fn revocations(
        &self,
    ) -> Result<hearth_protocol::capability::RevocationSet, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Revocations(reply))
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)
    }

    /// Hands jobs that other devices forward here to `jobs`.
    pub(crate) async fn serve_jobs(&self, jobs: mpsc::Sender<InboundJob>) -> Result<(), MeshError> {
        self.commands
            .send(Command::ServeJobs(jobs))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Hands audit requests from other devices to `requests`.
    pub(crate) async fn serve_audit(
        &self,
        requests: mpsc::Sender<InboundAudit>,
    ) -> Result<(), MeshError> {
        self.commands
            .send(Command::ServeAudit(requests))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Sends an audit request to the connected device `peer`; returns its answer.
    pub(crate) async fn audit_request(
        &self,
        peer: PeerId,
        frames: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::AuditRequest {
                peer,
                frames,
                reply,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
    }

    /// Sends an encoded job to the connected device `device`; returns its encoded reply.
    pub(crate) async fn forward_job(
        &self,
        device: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::ForwardJob {
                device: device.to_owned(),
                bytes,
                reply,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
    }

    /// Revokes the capability `id` (needs the owner key): every device refuses it, and
    /// every capability delegated from it, from then on.
    pub async fn revoke_capability(
        &self,
        id: hearth_protocol::capability::CapId,
    ) -> Result<(), MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::RevokeCapability { id, reply })
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
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

fn build_swarm(
    key: &NodeKey,
    mdns_on: bool,
    admitted: &Arc<Admitted>,
) -> Result<Swarm<Behaviour>, MeshError> {
    let seed = key.to_seed();
    let mut bytes = *seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes)
        .map_err(|err| MeshError::Start(err.to_string()))?;
    let budget = Budget::new(MAX_BUFFERED_BYTES);
    let admission_budget = Budget::new(MAX_ADMISSION_BUFFERED_BYTES);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, || {
            let mut config = yamux::Config::default();
            config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
            config
        })
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
                        // A device that restarted connects again while the old,
                        // dead connections still count until ping gives up on them.
                        .with_max_established_per_peer(Some(4)),
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
                        FrameCodec::single(
                            hearth_protocol::sync::message::MAX_MESSAGE_BYTES,
                            &budget,
                        ),
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
                        FrameCodec::new(membership::MAX_SNAPSHOT_BYTES, &budget),
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
            })
        })
        .map_err(|err| MeshError::Start(err.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(3600))
                // Streams being negotiated or held for admission, per connection: what
                // a peer not yet admitted can make the transport buffer is bounded by
                // this many flow-control windows.
                .with_max_negotiating_inbound_streams(64)
        })
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
    /// The digest of its membership store, as it last told us.
    digest: Option<[u8; 32]>,
    /// How far our membership has been paged to it.
    paging: Paging,
}

/// Where the membership exchange with one peer stands.
#[derive(Debug, Clone, Copy, Default)]
struct Paging {
    /// Where our next page starts (`None`: at the first revocation).
    after: Option<Position>,
    /// The digests (ours, theirs) when we last sent the final page: while both stay
    /// the same, paging again would not help (the peer refuses something), so only
    /// the first page is sent.
    round_done: Option<([u8; 32], Option<[u8; 32]>)>,
    /// When a new round may start (ms): a peer whose digest keeps changing gets the
    /// whole set paged to it at most once per [`ROUND_EVERY_MS`], the first page
    /// otherwise.
    next_round: u64,
}

/// How a test playing a hostile member answers membership requests.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct HostileAnswer {
    /// The frames of every answer (the second, the digest, is changed each time).
    pub frames: Vec<Vec<u8>>,
    /// Every request received since, in order.
    pub requests: Arc<std::sync::Mutex<Vec<Vec<Vec<u8>>>>>,
}

#[cfg(test)]
impl HostileAnswer {
    fn answer(&self, request: Frames) -> Frames {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.push(request.0);
        let mut frames = self.frames.clone();
        if let Some(digest) = frames.get_mut(1) {
            *digest = <sha2::Sha256 as sha2::Digest>::digest(requests.len().to_be_bytes()).to_vec();
        }
        Frames::from(frames)
    }
}

/// Least time between two rounds of paging the whole membership to one peer.
const ROUND_EVERY_MS: u64 = 10_000;

/// How long a LAN peer that was refused (not a device of this mesh) waits before it
/// is dialled again.
const STRANGER_RETRY_MS: u64 = 10 * 60 * 1000;

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

/// The remembered address book. One that cannot be read is reported and started
/// afresh: it holds only where devices were last reached, never who may connect.
fn load_peers(path: &std::path::Path) -> BTreeMap<PeerId, Known> {
    let bytes = match statefile::read_state(path, PEERS_KIND, MAX_PEERS_BYTES) {
        Ok(Some(state)) => state.payload,
        Ok(None) => return BTreeMap::new(),
        Err(err) => {
            tracing::warn!(error = %err, "ignoring an unreadable peers file; devices are found again as they connect");
            return BTreeMap::new();
        }
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
                    digest: None,
                    paging: Paging::default(),
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
    /// Writes this loop's audit entries, off the loop.
    audit: AuditWriter,
    /// Refusals counted per source, strangers' share of the incoming connections.
    strangers: Strangers,
    admitting: BTreeMap<PeerId, Connection>,
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
    /// Sync traffic per peer, bounded.
    sync_out: BTreeMap<PeerId, SyncOut>,
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
    let mut swarm = build_swarm(key, config.mdns, &admitted)?;
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
    let (commands, receiver) = mpsc::channel(64);
    let mut mesh = MeshLoop {
        swarm,
        gate,
        certificate,
        owner,
        config,
        audit: AuditWriter::spawn(audit)
            .map_err(|err| MeshError::Start(format!("cannot start the audit writer: {err}")))?,
        strangers: Strangers::default(),
        admitting: BTreeMap::new(),
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
        sync_out: BTreeMap::new(),
        connections: BTreeMap::new(),
        readmitting: BTreeMap::new(),
        admitted,
        unsaved: None,
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
                _ = redial.tick() => self.redial(),
            }
            self.admitted.set(
                self.known
                    .iter()
                    .filter(|(_, k)| k.connected)
                    .map(|(peer, _)| *peer)
                    .collect(),
            );
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
                let mut list = self
                    .membership
                    .members(&self.gate.revocations)
                    .into_iter()
                    .filter_map(|member| {
                        let peer = peer_id(&member.device.node_key)?;
                        let known = self.known.get(&peer);
                        let (online, last_seen) = if peer == me {
                            (true, now().0)
                        } else {
                            known.map_or((false, 0), |k| (k.connected, k.last_seen))
                        };
                        let approved = self
                            .membership
                            .certificate(&member.device.node_key)
                            .is_some_and(|chain| chain.links().len() == 1);
                        Some(DeviceStatus {
                            name: member.device.name,
                            role: member.device.role.to_string(),
                            peer_id: peer.to_string(),
                            online,
                            last_seen,
                            revoked: member.revoked,
                            approved,
                        })
                    })
                    .collect::<Vec<_>>();
                // This device first, then by name.
                let me = me.to_string();
                list.sort_by(|a, b| (a.peer_id != me, &a.name).cmp(&(b.peer_id != me, &b.name)));
                let _ = reply.send(list);
            }
            // The owner's commands are answered once their audit entries are on disk.
            Command::Revoke { name, reply } => {
                let result = self.revoke(&name);
                self.audit
                    .then(move |failed| drop(reply.send(audited(result, failed))));
            }
            Command::Invite {
                ttl,
                name,
                role,
                reply,
            } => {
                let result = self.invite(ttl, name, role);
                self.audit
                    .then(move |failed| drop(reply.send(audited(result, failed))));
            }
            Command::AllowAdmit {
                name,
                ttl,
                scope,
                reply,
            } => {
                let result = self.allow_admit(&name, ttl, scope);
                self.audit
                    .then(move |failed| drop(reply.send(audited(result, failed))));
            }
            Command::Approve { name, reply } => {
                let result = self.approve(&name);
                self.audit
                    .then(move |failed| drop(reply.send(audited(result, failed))));
            }
            #[cfg(test)]
            Command::MembersSend { peer, frames } => {
                self.swarm
                    .behaviour_mut()
                    .members
                    .send_request(&peer, Frames::from(frames));
            }
            #[cfg(test)]
            Command::MembersAnswer(answer) => self.hostile_answer = Some(answer),
            Command::SyncSend { peer, bytes } => {
                if self.known.get(&peer).is_some_and(|k| k.connected) {
                    let out = self.sync_out.entry(peer).or_default();
                    if !out.waiting.is_empty()
                        && out.waiting_bytes.saturating_add(bytes.len()) > MAX_SYNC_WAITING
                    {
                        tracing::debug!(%peer, bytes = bytes.len(), "sync window and queue full: the message is left to repair");
                    } else {
                        out.waiting_bytes += bytes.len();
                        out.waiting.push_back(bytes);
                        self.send_sync(peer);
                    }
                }
            }
            Command::Disconnect(peer) => {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.connected = false;
                }
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Revocations(reply) => {
                let _ = reply.send(self.gate.revocations.clone());
            }
            Command::ServeJobs(jobs) => self.jobs = Some(jobs),
            Command::ServeAudit(requests) => self.audit_requests = Some(requests),
            Command::AuditRequest {
                peer,
                frames,
                reply,
            } => {
                if self.swarm.is_connected(&peer)
                    && self.known.get(&peer).is_some_and(|k| k.connected)
                {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .audit
                        .send_request(&peer, Frames::from(frames));
                    self.audit_asked.insert(id, reply);
                } else {
                    let _ = reply.send(Err(MeshError::NotConnected(peer.to_string())));
                }
            }
            Command::AuditResponse { id, frames } => {
                if let Some(channel) = self.audit_channels.remove(&id) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .audit
                        .send_response(channel, Frames::from(frames));
                }
            }
            Command::ForwardJob {
                device,
                bytes,
                reply,
            } => {
                let peer = self
                    .known
                    .iter()
                    .find(|(peer, k)| {
                        k.name == device && k.connected && self.swarm.is_connected(peer)
                    })
                    .map(|(peer, _)| *peer);
                match peer {
                    Some(peer) => {
                        let id = self
                            .swarm
                            .behaviour_mut()
                            .compute
                            .send_request(&peer, Frames::from(vec![bytes]));
                        self.forwarded.insert(id, reply);
                    }
                    None => {
                        let _ = reply.send(Err(MeshError::NotConnected(device)));
                    }
                }
            }
            Command::JobResponse { id, bytes } => {
                if let Some(channel) = self.job_channels.remove(&id) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .compute
                        .send_response(channel, Frames::from(vec![bytes]));
                }
            }
            Command::RevokeCapability { id, reply } => {
                let result = self.sign_revocation(
                    hearth_protocol::capability::RevocationTarget::Capability(id),
                    "revoked by the owner".into(),
                    "revoke capabilities",
                );
                self.audit
                    .then(move |failed| drop(reply.send(audited(result, failed))));
            }
        }
    }

    /// The unrevoked device called `name` in the membership store.
    /// The unrevoked device called `name`, or whose peer id is `name`; refused when the
    /// name is ambiguous.
    fn device_named(&self, name: &str) -> Result<PublicKey, MeshError> {
        let members: Vec<_> = self
            .membership
            .members(&self.gate.revocations)
            .into_iter()
            .filter(|m| !m.revoked)
            .collect();
        // A peer id names exactly one device, whatever any device is called.
        if let Some(member) = members
            .iter()
            .find(|m| peer_id(&m.device.node_key).is_some_and(|p| p.to_string() == name))
        {
            return Ok(member.device.node_key);
        }
        let live: Vec<PublicKey> = members
            .iter()
            .filter(|m| m.device.name == name)
            .map(|m| m.device.node_key)
            .collect();
        match live.as_slice() {
            [] => Err(MeshError::NoSuchDevice(name.to_owned())),
            [key] => Ok(*key),
            keys => Err(MeshError::Ambiguous {
                name: name.to_owned(),
                peers: keys
                    .iter()
                    .filter_map(peer_id)
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Names of the unrevoked devices, for the gate (a joiner cannot take one).
    fn refresh_names(&mut self) {
        self.gate.taken = self
            .membership
            .members(&self.gate.revocations)
            .into_iter()
            .filter(|m| !m.revoked)
            .map(|m| m.device.name)
            .collect();
    }

    fn revoke(&mut self, name: &str) -> Result<String, MeshError> {
        if self.owner_key.is_none() {
            return Err(MeshError::NotOwner("revoke devices"));
        }
        let key = self.device_named(name)?;
        if key == self.node_key.public() {
            return Err(MeshError::RevokeSelf(name.to_owned()));
        }
        let peer = peer_id(&key).ok_or_else(|| MeshError::NoSuchDevice(name.to_owned()))?;
        self.sign_revocation(
            hearth_protocol::capability::RevocationTarget::Key(key),
            format!("device {name} revoked by the owner"),
            "revoke devices",
        )?;
        Ok(peer.to_string())
    }

    /// Signs a revocation with the owner key, takes it in and sends it on at once.
    fn sign_revocation(
        &mut self,
        target: hearth_protocol::capability::RevocationTarget,
        reason: String,
        what: &'static str,
    ) -> Result<(), MeshError> {
        let Some(owner_key) = self.owner_key.clone() else {
            return Err(MeshError::NotOwner(what));
        };
        let revocation = hearth_protocol::capability::Revocation {
            issuer: owner_key.public(),
            target,
            issued_at: now(),
            reason,
        }
        .sign(owner_key.secret())
        .map_err(|err| MeshError::Sign(err.to_string()))?;
        self.take_in(&Snapshot {
            revocations: vec![revocation],
            ..Snapshot::default()
        });
        // Tell every connected device now rather than at the next exchange.
        self.share_peers();
        self.stored()
    }

    fn allow_admit(
        &mut self,
        name: &str,
        ttl: Duration,
        scope: AdmitScope,
    ) -> Result<String, MeshError> {
        let Some(owner_key) = self.owner_key.clone() else {
            return Err(MeshError::NotOwner("let other devices admit devices"));
        };
        if scope.roles.is_empty()
            || !hearth_protocol::capability::is_valid_store_pattern(&scope.names)
        {
            return Err(MeshError::BadScope(format!(
                "name at least one role and a name pattern (`name`, `prefix*` or `*`), not {:?}",
                scope.names
            )));
        }
        let key = self.device_named(name)?;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|err| MeshError::Sign(err.to_string()))?;
        let grant = hearth_protocol::capability::Capability {
            issuer: owner_key.public(),
            audience: key,
            parent: None,
            grants: vec![hearth_protocol::capability::Grant::new(
                hearth_protocol::capability::Resource::DevicesAdmit {
                    roles: scope.roles,
                    names: scope.names,
                },
                hearth_protocol::capability::Actions::ADMIT,
            )],
            not_before: now(),
            expires: now().saturating_add(ttl),
            nonce,
        }
        .sign(owner_key.secret())
        .map_err(|err| MeshError::Sign(err.to_string()))?;
        let id = grant.id();
        self.take_in(&Snapshot {
            admits: vec![Chain::root(grant)],
            ..Snapshot::default()
        });
        self.audit("mesh.allow-admit", name, "allowed");
        self.share_peers();
        self.stored()?;
        Ok(id.to_string())
    }

    /// Hands the revocations to replication: a withdrawn grant can change a placement.
    fn tell_revocations(&self) {
        if let Some(replication) = &self.replication {
            replication.deliver(crate::replication::Input::Revocations(
                self.gate.revocations.clone(),
            ));
        }
    }

    /// Merges membership documents (from a peer, or made here): drops newly revoked
    /// devices, keeps the store on disk, and adopts or drops this node's admit grant.
    fn take_in(&mut self, snapshot: &Snapshot) {
        let _ = self.take_in_from(None, snapshot);
    }

    /// [`MeshLoop::take_in`] for documents a peer sent: those left out are audited,
    /// summed per peer over 5 s (`mesh.members`, `refused: …`). Returns whether
    /// anything was new.
    fn take_in_from(&mut self, from: Option<&PeerId>, snapshot: &Snapshot) -> bool {
        let merged = self
            .membership
            .merge(now(), snapshot, &mut self.gate.revocations);
        for reason in &merged.rejected {
            tracing::warn!(%reason, "a membership document was left out");
        }
        if let (Some(peer), Some(first)) = (from, merged.rejected.first()) {
            let entry = self
                .left_out
                .entry(*peer)
                .or_insert_with(|| (0, first.clone(), now()));
            entry.0 += merged.rejected.len();
        }
        for device in &merged.new_devices {
            tracing::info!(device = %device.name, role = %device.role, "a device joined the mesh");
        }
        for key in &merged.revoked_keys {
            self.audit("mesh.revoke", &key.short(), "allowed");
            if let Some(peer) = peer_id(key) {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.connected = false;
                }
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
        if merged.new_revocations > 0 {
            self.tell_revocations();
            // A revoked capability can end a device's certificate (one issued under a
            // withdrawn devices:admit grant, not approved by the owner): drop those too.
            let revoked: Vec<PublicKey> = self
                .membership
                .members(&self.gate.revocations)
                .into_iter()
                .filter(|m| m.revoked)
                .map(|m| m.device.node_key)
                .collect();
            for key in revoked {
                if let Some(peer) = peer_id(&key)
                    && self.known.get(&peer).is_some_and(|k| k.connected)
                {
                    self.known.entry(peer).and_modify(|k| k.connected = false);
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
        if merged.changed() {
            self.refresh_names();
            self.adopt_own_certificate();
            self.save_membership();
            self.refresh_issuer();
            self.dirty = true;
        }
        merged.changed()
    }

    /// On the owner's device, at the owner's word: replaces the certificate of a
    /// device admitted under a `devices:admit` grant with one the owner key signs, of
    /// full lifetime, for the same key, name and role. Until then the device's
    /// certificate ends with the grant, and revoking the grant (or its holder's key)
    /// ends the device's membership too.
    fn approve(&mut self, name: &str) -> Result<bool, MeshError> {
        let Some(owner_key) = self.owner_key.clone() else {
            return Err(MeshError::NotOwner("approve devices"));
        };
        let key = self.device_named(name)?;
        let Some(chain) = self.membership.certificate(&key) else {
            return Err(MeshError::NoSuchDevice(name.to_owned()));
        };
        if chain.links().len() == 1 {
            return Ok(false);
        }
        let now = now();
        let device = match self.gate.check(now, &key, chain) {
            Ok(device) => device,
            Err(reason) => return Err(MeshError::NotApprovable(name.to_owned(), reason)),
        };
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|err| MeshError::Sign(err.to_string()))?;
        let signed = hearth_protocol::device::issue_certificate(
            owner_key.secret(),
            None,
            device.node_key,
            &device.name,
            device.role,
            now,
            now.saturating_add(admission::CERTIFICATE_LIFETIME),
            nonce,
        )
        .map_err(|err| MeshError::Sign(err.to_string()))?;
        self.take_in(&Snapshot {
            devices: vec![signed],
            ..Snapshot::default()
        });
        self.audit("mesh.approve", &device.name, "allowed");
        self.share_peers();
        self.stored()?;
        Ok(true)
    }

    /// Presents (and keeps on disk) the longest-lasting certificate the membership
    /// holds for this device, once the owner has approved it.
    fn adopt_own_certificate(&mut self) {
        let Some(best) = self.membership.certificate(&self.node_key.public()) else {
            return;
        };
        if *best == self.certificate {
            return;
        }
        self.certificate = best.clone();
        tracing::info!("this device's certificate was renewed by the owner");
        if let Some(path) = &self.config.certificate_file {
            let text = format!("{}\n", self.certificate.to_text());
            if let Err(err) = statefile::write_durable(path, text.as_bytes()) {
                tracing::error!(path = %path.display(), error = %err, "cannot store the renewed certificate");
            }
        }
    }

    /// A node without the owner key signs certificates while it holds a valid
    /// `devices:admit` grant, and stops when the grant is revoked or expires.
    fn refresh_issuer(&mut self) {
        if self.owner_key.is_some() {
            return;
        }
        let grant =
            self.membership
                .admit_for(&self.node_key.public(), now(), &self.gate.revocations);
        if grant.as_ref() != self.gate.admit_grant() {
            if grant.is_some() {
                tracing::info!("this device may now admit new devices");
            }
            self.gate.set_issuer(grant.map(|admit| Issuer {
                key: self.node_key.secret().clone(),
                admit: Some(admit),
            }));
        }
    }

    /// Stores the membership; a failure is logged and kept in `unsaved` until a later
    /// save succeeds, so that the owner's command that made the change reports it.
    fn save_membership(&mut self) {
        let Some(path) = &self.config.membership_file else {
            return;
        };
        let bytes = self.membership.stored(&self.gate.revocations).encode();
        let saved = if bytes.len() > hearth_protocol::mesh::membership::MAX_STORED_BYTES {
            // Never a file that could not be read back (the revocation set's limits
            // keep within it; this holds should they ever not).
            Err(format!(
                "the membership is {} bytes, larger than its file may be",
                bytes.len()
            ))
        } else {
            statefile::write_state(path, MEMBERSHIP_KIND, 1, &bytes)
                .map_err(|err| format!("{}: {err}", path.display()))
        };
        if let Err(err) = &saved {
            tracing::error!(error = %err, "cannot store the membership");
        }
        self.unsaved = saved.err();
    }

    /// `Err` when the membership could not be stored since it last changed.
    fn stored(&self) -> Result<(), MeshError> {
        match &self.unsaved {
            Some(err) => Err(MeshError::Unsaved(err.clone())),
            None => Ok(()),
        }
    }

    fn share_peers(&mut self) {
        // A test's hostile member only answers.
        #[cfg(test)]
        if self.hostile_answer.is_some() {
            return;
        }
        let connected: Vec<PeerId> = self
            .known
            .iter()
            .filter(|(_, k)| k.connected)
            .map(|(p, _)| *p)
            .collect();
        for peer in connected {
            let list = self.peer_list(&peer);
            self.swarm.behaviour_mut().members.send_request(&peer, list);
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
        if let Some(name) = &name
            && self.gate.taken.contains(name)
        {
            return Err(MeshError::NameTaken(name.clone()));
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

    /// Sends a peer's waiting sync messages while its in-flight window has room.
    fn send_sync(&mut self, peer: PeerId) {
        let Some(out) = self.sync_out.get_mut(&peer) else {
            return;
        };
        while let Some(next) = out.waiting.front() {
            let len = next.len();
            if out.in_flight > 0 && out.in_flight.saturating_add(len) > MAX_SYNC_IN_FLIGHT {
                return;
            }
            let Some(bytes) = out.waiting.pop_front() else {
                return;
            };
            out.waiting_bytes -= len;
            out.in_flight += len;
            let id = self
                .swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, Frames::from(vec![bytes]));
            out.pending.insert(id, len);
        }
    }

    /// A sync message was acknowledged, or failed: its bytes leave the window.
    fn sync_done(&mut self, peer: PeerId, id: request_response::OutboundRequestId) {
        if let Some(out) = self.sync_out.get_mut(&peer)
            && let Some(len) = out.pending.remove(&id)
        {
            out.in_flight -= len;
            self.send_sync(peer);
        }
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(
                BehaviourEvent::Admission(request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, .. },
                    ..
                })
                | BehaviourEvent::Members(request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, .. },
                    ..
                })
                | BehaviourEvent::Sync(request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, .. },
                    ..
                })
                | BehaviourEvent::Compute(request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, .. },
                    ..
                })
                | BehaviourEvent::Audit(request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, .. },
                    ..
                }),
            ) if request.violation().is_some() => {
                // Nothing of it was read past the violation, and nothing is answered:
                // the peer goes, admitted or not.
                let reason = request.violation().unwrap_or_default();
                self.audit_refusal("mesh.receive", &peer, reason);
                tracing::warn!(%peer, %reason, "disconnecting a peer that broke a protocol's limits");
                if let Some(k) = self.known.get_mut(&peer) {
                    k.connected = false;
                }
                self.admitting.remove(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "mesh listening"),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id);
                let member = peer_key(&peer_id)
                    .is_some_and(|key| self.membership.certificate(&key).is_some());
                if !self.strangers.opened(
                    peer_id,
                    connection_id,
                    endpoint.get_remote_address(),
                    member,
                ) {
                    tracing::debug!(peer = %peer_id, "closing a stranger's connection: their share of incoming connections is taken");
                    self.swarm.close_connection(connection_id);
                    return;
                }
                if self.known.get(&peer_id).is_some_and(|k| k.connected) {
                    return;
                }
                if let Some(connection) = self.admitting.get_mut(&peer_id) {
                    // Both sides dialled at once and each saw the other's connection
                    // first, as listener: each waits for a request that would never
                    // come. Whoever now has an outgoing connection sends its opening
                    // (unless it already answered one, which drained it).
                    if endpoint.is_dialer() {
                        connection.initiate();
                        let frames: Vec<Vec<u8>> =
                            std::iter::from_fn(|| connection.poll_transmit()).collect();
                        if !frames.is_empty() {
                            self.swarm
                                .behaviour_mut()
                                .admission
                                .send_request(&peer_id, Frames::from(frames));
                        }
                    }
                    return;
                }
                let Some(remote) = peer_key(&peer_id) else {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                };
                // The side that dialled opens; the other answers only once it has
                // accepted what the dialler presented.
                let opening = Opening::Member(self.certificate.clone());
                let mut connection = if endpoint.is_dialer() {
                    Connection::new(now(), remote, opening, &self.config.admission)
                } else {
                    Connection::respond(now(), remote, opening, &self.config.admission)
                };
                if endpoint.is_dialer() {
                    let frames: Vec<Vec<u8>> =
                        std::iter::from_fn(|| connection.poll_transmit()).collect();
                    self.swarm
                        .behaviour_mut()
                        .admission
                        .send_request(&peer_id, Frames::from(frames));
                }
                if let Some(k) = self.known.get_mut(&peer_id)
                    && endpoint.is_dialer()
                    && add_addrs(&mut k.addrs, vec![endpoint.get_remote_address().clone()])
                {
                    self.dirty = true;
                }
                self.admitting.insert(peer_id, connection);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(open) = self.connections.get_mut(&peer_id) {
                    open.remove(&connection_id);
                    if open.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                self.strangers
                    .closed(peer_id, connection_id, num_established == 0);
                if num_established > 0 {
                    return;
                }
                self.readmitting.remove(&peer_id);
                self.admitting.remove(&peer_id);
                self.sync_out.remove(&peer_id);
                if self.known.contains_key(&peer_id)
                    && let Some(replication) = &self.replication
                {
                    replication.deliver(crate::replication::Input::Disconnected(peer_id));
                }
                if let Some(k) = self.known.get_mut(&peer_id) {
                    k.connected = false;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Members(request_response::Event::Message {
                peer,
                message,
                ..
            })) => {
                let admitted = self.known.get(&peer).is_some_and(|k| k.connected);
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        #[cfg(test)]
                        if let Some(hostile) = &self.hostile_answer {
                            let answer = hostile.answer(request);
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .members
                                .send_response(channel, answer);
                            return;
                        }
                        // Take the peer's news in first, so the answer carries the
                        // merged membership only if it still differs from the peer's.
                        if admitted {
                            let _ = self.learn_peers(&peer, &request);
                        }
                        let answer = if admitted {
                            self.peer_list(&peer)
                        } else {
                            Frames::default()
                        };
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .members
                            .send_response(channel, answer);
                    }
                    request_response::Message::Response { response, .. } => {
                        if admitted {
                            let news = self.learn_peers(&peer, &response);
                            // Page on at once while we have more to send, or while the
                            // peer has more and its last page brought something new (a
                            // peer that only says "more" gets the next tick's exchange).
                            let theirs_more = news && response.0.get(3).is_some_and(|f| f == b"1");
                            let ours_more = self
                                .known
                                .get(&peer)
                                .is_some_and(|k| k.paging.after.is_some());
                            if theirs_more || ours_more {
                                let list = self.peer_list(&peer);
                                self.swarm.behaviour_mut().members.send_request(&peer, list);
                            }
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            })) => {
                let admitted = self.known.get(&peer).is_some_and(|k| k.connected);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, Frames::default());
                if admitted && let Some(replication) = &self.replication {
                    for frame in request.0 {
                        replication.offer(peer, frame);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::OutboundFailure {
                    peer,
                    error,
                    request_id,
                    ..
                },
            )) => {
                tracing::debug!(%peer, %error, "a sync message was not delivered");
                self.sync_done(peer, request_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, .. },
                ..
            })) => self.sync_done(peer, request_id),
            SwarmEvent::Behaviour(BehaviourEvent::Compute(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            })) => {
                let from = self
                    .known
                    .get(&peer)
                    .filter(|k| k.connected)
                    .map(|k| k.name.clone());
                let (Some(from), Some(jobs), Some(bytes)) =
                    (from, self.jobs.clone(), request.0.into_iter().next())
                else {
                    // Not admitted, no compute here, or an empty request: no reply.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .compute
                        .send_response(channel, Frames::default());
                    return;
                };
                let id = self.next_job;
                self.next_job += 1;
                self.job_channels.insert(id, channel);
                let (reply, answer) = oneshot::channel();
                let busy = hearth_protocol::compute::JobReply::Unavailable(
                    "the device is busy with other jobs".into(),
                )
                .encode();
                if jobs.try_send(InboundJob { from, bytes, reply }).is_err() {
                    self.command(Command::JobResponse { id, bytes: busy });
                    return;
                }
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let bytes = answer.await.unwrap_or(busy);
                    let _ = commands.send(Command::JobResponse { id, bytes }).await;
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Compute(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) => {
                if let Some(reply) = self.forwarded.remove(&request_id) {
                    let _ =
                        reply.send(
                            response.0.into_iter().next().ok_or_else(|| {
                                MeshError::Join("the device does not run jobs".into())
                            }),
                        );
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Compute(
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                },
            )) => {
                if let Some(reply) = self.forwarded.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Join(format!(
                        "the job did not reach the device or its reply did not come back: {error}"
                    ))));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Audit(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            })) => {
                let from = self
                    .known
                    .get(&peer)
                    .filter(|k| k.connected)
                    .map(|k| (k.name.clone(), k.role.clone()));
                let (Some((from, role)), Some(requests)) = (from, self.audit_requests.clone())
                else {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .audit
                        .send_response(channel, Frames::default());
                    return;
                };
                let id = self.next_job;
                self.next_job += 1;
                self.audit_channels.insert(id, channel);
                let (reply, answer) = oneshot::channel();
                let inbound = InboundAudit {
                    from,
                    role,
                    frames: request.0,
                    reply,
                };
                if requests.try_send(inbound).is_err() {
                    // Busy: an empty answer, asked again next round.
                    self.command(Command::AuditResponse {
                        id,
                        frames: Vec::new(),
                    });
                    return;
                }
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let frames = answer.await.unwrap_or_default();
                    let _ = commands.send(Command::AuditResponse { id, frames }).await;
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Audit(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) => {
                if let Some(reply) = self.audit_asked.remove(&request_id) {
                    let _ = reply.send(Ok(response.0));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Audit(
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                },
            )) => {
                if let Some(reply) = self.audit_asked.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Join(format!(
                        "the audit request did not reach the device or its answer did not come back: {error}"
                    ))));
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
                let mut new: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
                for (peer, addr) in found {
                    new.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in new {
                    let (known, _) = self.lan.entry(peer).or_default();
                    add_addrs(known, addrs);
                }
                // Dial now rather than at the next tick.
                self.redial_lan(now().0);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    if let Some((addrs, _)) = self.lan.get_mut(&peer) {
                        addrs.retain(|a| *a != addr);
                        if addrs.is_empty() {
                            self.lan.remove(&peer);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Admission(
                request_response::Event::Message {
                    peer,
                    connection_id,
                    message,
                },
            )) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        // One attempt per connection: one refused is not judged
                        // again (nor audited) before it closes.
                        if self.strangers.was_refused(connection_id) {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .admission
                                .send_response(channel, Frames::default());
                            return;
                        }
                        // A peer that asks for admission gets it judged afresh, even
                        // one admitted before: it may have restarted while its old
                        // connection, dead, still counts until ping gives up on it.
                        if !self.admitting.contains_key(&peer)
                            && !request.0.is_empty()
                            && let Some(remote) = peer_key(&peer)
                        {
                            if self.known.get(&peer).is_some_and(|k| k.connected) {
                                self.readmitting.insert(peer, connection_id);
                            }
                            let fresh = Connection::respond(
                                now(),
                                remote,
                                Opening::Member(self.certificate.clone()),
                                &self.config.admission,
                            );
                            self.admitting.insert(peer, fresh);
                        }
                        let Some(connection) = self.admitting.get_mut(&peer) else {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .admission
                                .send_response(channel, Frames::default());
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
                            .send_response(channel, Frames::from(frames));
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
        let certificate = connection.peer_certificate().cloned();
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
                        digest: None,
                        paging: Paging::default(),
                    });
                    entry.retry = Backoff::default();
                    entry.name = device.name.clone();
                    entry.role = device.role.to_string();
                    self.dirty = true;
                    entry.connected = true;
                    entry.last_seen = now().0;
                    entry.digest = None;
                    entry.paging = Paging::default();
                    if let Some(certificate) = &certificate {
                        self.take_in(&Snapshot {
                            devices: vec![certificate.clone()],
                            ..Snapshot::default()
                        });
                    }
                    // A new session: the peer's older connections are dead or about
                    // to be (it asked afresh on a new one), and would take a share of
                    // every request until ping gives up on them; what waited for the
                    // old session is superseded by the exchange that starts now.
                    if let Some(current) = self.readmitting.remove(&peer) {
                        let older: Vec<ConnectionId> = self
                            .connections
                            .get(&peer)
                            .map(|open| open.range(..current).copied().collect())
                            .unwrap_or_default();
                        for connection in older {
                            tracing::debug!(%peer, ?connection, "closing a connection of the previous session");
                            self.swarm.close_connection(connection);
                        }
                    }
                    self.sync_out.remove(&peer);
                    // Exchange memberships now rather than at the next tick.
                    let frames = self.peer_list(&peer);
                    self.swarm
                        .behaviour_mut()
                        .members
                        .send_request(&peer, frames);
                    if let Some(replication) = &self.replication {
                        replication.deliver(crate::replication::Input::Connected {
                            peer,
                            name: device.name.clone(),
                            role: device.role,
                        });
                    }
                }
                Event::Joined(device) => {
                    self.audit("mesh.join", &device.name, "allowed");
                    // Taken at once: a second join under the name is refused even
                    // before the new certificate is in the membership.
                    self.gate.taken.insert(device.name.clone());
                }
                Event::Welcomed(_) => {}
                Event::Refused { reason } => {
                    self.audit_refusal("mesh.admit", &peer, &reason);
                    let open = self.connections.get(&peer).cloned().unwrap_or_default();
                    self.strangers.refuse(open);
                    tracing::warn!(peer = %peer, %reason, "peer refused");
                    // Also a peer admitted before whose fresh admission failed.
                    if let Some(k) = self.known.get_mut(&peer) {
                        k.connected = false;
                    }
                    // A stranger on the LAN is not asked again for a while (each try
                    // is an audit entry); a device of this mesh keeps its backoff.
                    let member = peer_key(&peer)
                        .is_some_and(|key| self.membership.certificate(&key).is_some());
                    if let Some((_, retry)) = self.lan.get_mut(&peer)
                        && !member
                    {
                        retry.next = now().0.saturating_add(STRANGER_RETRY_MS);
                    }
                    self.closing
                        .push((peer, now().saturating_add(Duration::from_millis(500))));
                }
            }
        }
        if done {
            self.admitting.remove(&peer);
            self.readmitting.remove(&peer);
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
        self.recheck_certificates(now);
        self.audit_left_out(now, false);
        self.audit_strangers(false);
        if self.dirty {
            self.dirty = false;
            self.save_peers();
        }
    }

    /// Audits the membership documents peers sent that were left out, one entry per
    /// peer per 5 s at most (all of them when `all`, at shutdown).
    fn audit_left_out(&mut self, now: UnixMillis, all: bool) {
        let due: Vec<PeerId> = self
            .left_out
            .iter()
            .filter(|(_, (_, _, since))| all || now.0 >= since.0.saturating_add(5_000))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if let Some((count, first, _)) = self.left_out.remove(&peer) {
                self.audit(
                    "mesh.members",
                    &peer.to_string(),
                    &format!("refused: {count} membership document(s) left out (first: {first})"),
                );
            }
        }
    }

    /// Checks the certificate of every connected device again: one that expired or was
    /// revoked while its connection stayed up is disconnected (and audited).
    fn recheck_certificates(&mut self, now: UnixMillis) {
        let connected: Vec<PeerId> = self
            .known
            .iter()
            .filter(|(_, k)| k.connected)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in connected {
            let Some(key) = peer_key(&peer) else {
                continue;
            };
            let Some(chain) = self.membership.certificate(&key).cloned() else {
                continue;
            };
            let Err(reason) = self.gate.check(now, &key, &chain) else {
                continue;
            };
            let name = self
                .known
                .get(&peer)
                .map(|k| k.name.clone())
                .unwrap_or_default();
            tracing::warn!(%peer, device = %name, %reason, "disconnecting a device whose certificate no longer holds");
            self.audit(
                "mesh.admit",
                &name,
                &format!("refused: {reason} (on a live connection)"),
            );
            if let Some(k) = self.known.get_mut(&peer) {
                k.connected = false;
            }
            if let Some(replication) = &self.replication {
                replication.deliver(crate::replication::Input::Disconnected(peer));
            }
            let _ = self.swarm.disconnect_peer_id(peer);
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
        if let Err(err) = statefile::write_state(path, PEERS_KIND, 1, &bytes) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remember peers");
        }
    }

    /// What this node tells an admitted peer: the devices it knows with their
    /// addresses (one frame of `PEER_ID ADDRESS…` lines), its membership digest, a
    /// page of its membership when the peer's last digest differs (else an empty
    /// frame), and whether more pages follow (`1`, else empty). Advances the paging.
    fn peer_list(&mut self, peer: &PeerId) -> Frames {
        let me = *self.swarm.local_peer_id();
        let own: Vec<String> = self
            .swarm
            .listeners()
            .take(16)
            .map(ToString::to_string)
            .collect();
        let mut text = format!("{me} {}\n", own.join(" "));
        text.extend(
            self.known
                .iter()
                .filter(|(_, k)| !k.addrs.is_empty())
                .take(MAX_LISTED_PEERS - 1)
                .map(|(peer, k)| {
                    let addrs: Vec<String> = k.addrs.iter().map(ToString::to_string).collect();
                    format!("{peer} {}\n", addrs.join(" "))
                }),
        );
        let mut text = text.into_bytes();
        text.truncate(admission::MAX_MESSAGE_BYTES);
        let now = now();
        let ours = self.membership.digest(now, &self.gate.revocations);
        let (snapshot, more) = match self.known.get_mut(peer) {
            Some(k) if k.digest == Some(ours) => {
                k.paging = Paging::default();
                (Vec::new(), false)
            }
            Some(k)
                if k.paging.round_done == Some((ours, k.digest))
                    || (k.paging.after.is_none() && now.0 < k.paging.next_round) =>
            {
                let page = self.membership.page(now, &self.gate.revocations, None);
                (page.snapshot.encode(), false)
            }
            Some(k) => {
                if k.paging.after.is_none() {
                    k.paging.next_round = now.0.saturating_add(ROUND_EVERY_MS);
                }
                let page =
                    self.membership
                        .page(now, &self.gate.revocations, k.paging.after.as_ref());
                k.paging.after = page.next;
                if page.next.is_none() {
                    k.paging.round_done = Some((ours, k.digest));
                }
                (page.snapshot.encode(), page.next.is_some())
            }
            None => (
                self.membership
                    .page(now, &self.gate.revocations, None)
                    .snapshot
                    .encode(),
                false,
            ),
        };
        let more = if more { b"1".to_vec() } else { Vec::new() };
        Frames::from(vec![text, ours.to_vec(), snapshot, more])
    }

    /// Takes in what an admitted peer told us: its membership (merged), its digest, and
    /// the devices it knows, which we dial (admission decides about them).
    /// Returns whether its membership brought anything new.
    fn learn_peers(&mut self, from: &PeerId, frames: &Frames) -> bool {
        let mut news = false;
        if let Some(snapshot) = frames.0.get(2).filter(|f| !f.is_empty()) {
            match Snapshot::decode(snapshot) {
                Ok(snapshot) => news = self.take_in_from(Some(from), &snapshot),
                Err(err) => {
                    self.audit(
                        "mesh.members",
                        &from.to_string(),
                        &format!("refused: malformed membership snapshot: {err}"),
                    );
                    tracing::warn!(peer = %from, error = %err, "malformed membership snapshot; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(*from);
                    return false;
                }
            }
        }
        let digest = frames
            .0
            .get(1)
            .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok());
        if let Some(k) = self.known.get_mut(from) {
            k.digest = digest;
        }
        let me = *self.swarm.local_peer_id();
        for frame in frames.0.iter().take(1) {
            let text = String::from_utf8_lossy(frame);
            for line in text.lines().take(MAX_LISTED_PEERS) {
                let mut parts = line.split_whitespace();
                let Some(Ok(peer)) = parts.next().map(str::parse::<PeerId>) else {
                    continue;
                };
                let addrs: Vec<Multiaddr> = parts.take(16).filter_map(|a| a.parse().ok()).collect();
                if peer == *from {
                    // The peer's own listen addresses: where to find it again.
                    if let Some(k) = self.known.get_mut(from)
                        && add_addrs(&mut k.addrs, addrs)
                    {
                        self.dirty = true;
                    }
                    continue;
                }
                if peer == me || self.swarm.is_connected(&peer) {
                    continue;
                }
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
        news
    }

    /// Redials admitted peers that dropped, and bootstrap addresses not connected; asks
    /// connected peers which devices they know.
    fn redial(&mut self) {
        self.share_peers();
        let now = now().0;
        // A bootstrap address of a device we know is one more address of it, dialled
        // with the others: a dial of its own (to where the device was when this one
        // joined, say) would hold back the dial to where it is now, as libp2p dials a
        // device once at a time.
        let mut bootstrap: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        let mut strangers = Vec::new();
        for addr in &self.config.bootstrap {
            match bootstrap_peer(addr) {
                Some((peer, bare)) if self.known.contains_key(&peer) => {
                    bootstrap.entry(peer).or_default().push(bare);
                }
                _ => strangers.push(addr.clone()),
            }
        }
        let mut targets: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, k) in &mut self.known {
            let lost = !k.connected
                && !self.swarm.is_connected(peer)
                && !peer_key(peer).is_some_and(|key| self.gate.revocations.is_key_revoked(&key));
            if lost && k.retry.due(now) {
                let mut addrs = k.addrs.clone();
                for addr in bootstrap.remove(peer).unwrap_or_default() {
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
                targets.push((*peer, addrs));
            }
        }
        for (peer, addrs) in targets {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
        self.redial_lan(now);
        for addr in strangers {
            let connected = addr.iter().any(|p| match p {
                libp2p::multiaddr::Protocol::P2p(peer) => self.swarm.is_connected(&peer),
                _ => false,
            });
            let retry = self.bootstrap_retry.entry(addr.to_string()).or_default();
            if connected {
                *retry = Backoff::default();
            } else if retry.due(now)
                && let Err(err) = self.swarm.dial(addr.clone())
            {
                tracing::warn!(%addr, error = %err, "cannot dial a bootstrap address");
            }
        }
    }
}

impl MeshLoop {
    /// Dials every LAN peer that is not connected and whose next attempt is due.
    fn redial_lan(&mut self, now: u64) {
        let mut targets: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, (addrs, retry)) in &mut self.lan {
            let admitted = self.known.get(peer).is_some_and(|k| k.connected);
            if admitted && self.swarm.is_connected(peer) {
                *retry = Backoff::default();
                continue;
            }
            if !self.swarm.is_connected(peer)
                && !self.admitting.contains_key(peer)
                && retry.due(now)
            {
                targets.push((*peer, addrs.clone()));
            }
        }
        for (peer, addrs) in targets {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }
}

/// Adds addresses not known yet (keeping at most 16); returns whether any was new.
/// The device a bootstrap address names (`…/p2p/PEER`), and the address without it.
fn bootstrap_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut peer = None;
    let bare: Multiaddr = addr
        .iter()
        .filter(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => {
                peer = Some(*id);
                false
            }
            _ => true,
        })
        .collect();
    peer.map(|peer| (peer, bare))
}

/// Adds the addresses in `new` that `known` lacks, in front (a device that restarted on
/// new ports is dialled there first), and keeps the 16 most recent. True if it changed.
fn add_addrs(known: &mut Vec<Multiaddr>, new: Vec<Multiaddr>) -> bool {
    let mut fresh: Vec<Multiaddr> = Vec::new();
    for addr in new {
        if !known.contains(&addr) && !fresh.contains(&addr) {
            fresh.push(addr);
        }
    }
    if fresh.is_empty() {
        return false;
    }
    known.splice(0..0, fresh);
    known.truncate(16);
    true
}

/// Reads `membership.bin`: a snapshot followed by its SHA-256 (a file of earlier
/// versions has no checksum and is read if it decodes whole).
/// What the membership state file's header calls it.
const MEMBERSHIP_KIND: &str = "membership";
/// What the address book's state file header calls it.
const PEERS_KIND: &str = "peers";
/// The largest address book read (1,024 devices of 16 addresses).
const MAX_PEERS_BYTES: u64 = 16 << 20;

/// Pairs this (new) device with the inviter named in `ticket`: dials it, redeems the
/// ticket, and returns the certificate it issues.
pub async fn join(
    key: &NodeKey,
    ticket: &Ticket,
    name: &str,
    role: Role,
    timeout: Duration,
) -> Result<Chain, MeshError> {
    let mut swarm = build_swarm(key, false, &Arc::new(Admitted::default()))?;
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use hearth_protocol::capability::{RevocationSet, Role, Verifier, VerifierConfig};
    use hearth_protocol::device;
    use hearth_protocol::key::OwnerKey;

    #[test]
    fn a_device_restarting_on_new_ports_is_remembered_where_it_is_now() {
        let addr = |port: u16| -> Multiaddr {
            format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
                .parse()
                .unwrap()
        };
        let mut known = Vec::new();
        // Twenty restarts, each on two new ports.
        for restart in 0..20u16 {
            let now = vec![addr(1000 + 2 * restart), addr(1001 + 2 * restart)];
            assert!(add_addrs(&mut known, now.clone()));
            assert_eq!(
                known[..2],
                now[..],
                "restart {restart}: the new ports come first"
            );
            assert!(known.len() <= 16);
            // Hearing of them again changes nothing (the address book is not rewritten).
            assert!(!add_addrs(&mut known, now.clone()));
            assert!(!add_addrs(&mut known, vec![now[1].clone(), now[0].clone()]));
        }
        assert_eq!(known.len(), 16);
        assert!(!known.contains(&addr(1000)), "the oldest went");
    }

    async fn connected(handle: &MeshHandle) -> bool {
        handle
            .status()
            .await
            .unwrap()
            .peers
            .iter()
            .any(|p| p.connected)
    }

    /// Waits (at most 20 s) until every handle lists a connected peer.
    async fn until_admitted(handles: &[&MeshHandle]) {
        tokio::time::timeout(Duration::from_secs(20), async {
            for handle in handles {
                while !connected(handle).await {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
        .await
        .expect("the devices admit each other");
    }

    /// Polls `f` (at most 20 s) until it returns something.
    async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(value) = f() {
                    return value;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("gave up waiting: {what}"))
    }

    /// The first entry for `action` whose outcome starts with "refused".
    fn refusal(audit: &AuditLog, action: &str) -> Option<hearth_stores::audit::Entry> {
        audit
            .entries(None, None, Some(action))
            .unwrap()
            .into_iter()
            .find(|e| e.outcome.starts_with("refused"))
    }

    fn admissions(audit: &AuditLog) -> usize {
        audit.entries(None, None, Some("mesh.admit")).unwrap().len()
    }

    /// `n` meshed devices in this process; each after the first dials the first, whose
    /// address is returned too.
    async fn devices(
        dir: &std::path::Path,
        stop: &tokio::sync::watch::Receiver<bool>,
        n: u8,
    ) -> (Vec<(MeshHandle, Arc<AuditLog>, PeerId)>, Multiaddr) {
        let owner = OwnerKey::from_seed([1; 32]);
        devices_knowing(dir, stop, n, RevocationSet::new(owner.public())).await
    }

    /// [`devices`], the first starting with `revocations`.
    async fn devices_knowing(
        dir: &std::path::Path,
        stop: &tokio::sync::watch::Receiver<bool>,
        n: u8,
        mut revocations: RevocationSet,
    ) -> (Vec<(MeshHandle, Arc<AuditLog>, PeerId)>, Multiaddr) {
        let owner = OwnerKey::from_seed([1; 32]);
        let mut out: Vec<(MeshHandle, Arc<AuditLog>, PeerId)> = Vec::new();
        let mut first: Option<Multiaddr> = None;
        for i in 0..n {
            let key = NodeKey::from_seed([10 + i; 32]);
            let cert = device::issue_certificate(
                owner.secret(),
                None,
                key.public(),
                &format!("n{i}"),
                Role::Home,
                UnixMillis(0),
                UnixMillis(u64::MAX / 2),
                [i; 16],
            )
            .unwrap();
            let gate = Gate::new(
                key.public(),
                Verifier::new(owner.public(), VerifierConfig::default()),
                std::mem::replace(&mut revocations, RevocationSet::new(owner.public())),
                None,
            );
            let audit = Arc::new(
                AuditLog::open(
                    &dir.join(format!("audit-{i}.log")),
                    &format!("n{i}"),
                    key.clone(),
                    Arc::new(|| 0),
                )
                .unwrap(),
            );
            let config = MeshConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: first.clone().into_iter().collect(),
                mdns: false,
                ..MeshConfig::default()
            };
            let handle = spawn(
                &key,
                cert,
                gate,
                None,
                config,
                audit.clone(),
                None,
                stop.clone(),
            )
            .await
            .unwrap();
            let peer = peer_id(&key.public()).unwrap();
            if first.is_none() {
                let addr = loop {
                    if let Some(addr) = handle.status().await.unwrap().listen.first().cloned() {
                        break addr;
                    }
                    tokio::task::yield_now().await;
                };
                first = Some(format!("{addr}/p2p/{peer}").parse().unwrap());
            }
            out.push((handle, audit, peer));
        }
        (out, first.unwrap())
    }

    /// The owner revokes a capability while `membership.bin` cannot be replaced (a
    /// directory stands where it goes): the command fails saying so, rather than
    /// acknowledging a revocation that would be gone after a restart. Once the disk is
    /// fixed, revocations are stored and acknowledged again, the earlier one with them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_that_cannot_be_stored_is_not_acknowledged() {
        use hearth_protocol::capability::CapId;
        use hearth_protocol::mesh::admission::Issuer;

        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let owner = OwnerKey::from_seed([1; 32]);
        let key = NodeKey::from_seed([10; 32]);
        let cert = device::issue_certificate(
            owner.secret(),
            None,
            key.public(),
            "n0",
            Role::Home,
            UnixMillis(0),
            UnixMillis(u64::MAX / 2),
            [0; 16],
        )
        .unwrap();
        let gate = Gate::new(
            key.public(),
            Verifier::new(owner.public(), VerifierConfig::default()),
            RevocationSet::new(owner.public()),
            Some(Issuer {
                key: owner.secret().clone(),
                admit: None,
            }),
        );
        let audit = Arc::new(
            AuditLog::open(
                &dir.path().join("audit.log"),
                "n0",
                key.clone(),
                Arc::new(|| 0),
            )
            .unwrap(),
        );
        let membership = dir.path().join("membership.bin");
        let config = MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            membership_file: Some(membership.clone()),
            ..MeshConfig::default()
        };
        let handle = spawn(&key, cert, gate, Some(owner), config, audit, None, stop_rx)
            .await
            .unwrap();
        handle.revoke_capability(CapId([1; 32])).await.unwrap();
        let stored = std::fs::read(&membership).unwrap();

        std::fs::remove_file(&membership).unwrap();
        std::fs::create_dir_all(membership.join("in the way")).unwrap();
        let err = handle.revoke_capability(CapId([2; 32])).await.unwrap_err();
        assert!(matches!(err, MeshError::Unsaved(_)), "{err}");
        assert!(err.to_string().contains("cannot be stored here"), "{err}");

        std::fs::remove_dir_all(&membership).unwrap();
        handle.revoke_capability(CapId([3; 32])).await.unwrap();
        let now_stored = std::fs::read(&membership).unwrap();
        assert!(now_stored.len() > stored.len());
        let _ = stop_tx.send(true);
    }

    #[tokio::test]
    async fn frames_are_read_whole_holding_no_more_than_their_bytes() {
        let budget = Budget::new(MAX_BUFFERED_BYTES);
        let big: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let mut wire = vec![2u8];
        for frame in [&b"hello"[..], &big[..]] {
            wire.extend_from_slice(&u32::try_from(frame.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(frame);
        }
        let frames = read_frames(
            &mut futures_util::io::Cursor::new(&wire),
            1 << 20,
            4,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(frames.0, vec![b"hello".to_vec(), big.clone()]);
        assert!(frames.0[1].capacity() <= big.len());
        // Cut short: an error, not a short frame.
        let cut = &wire[..wire.len() - 1];
        assert!(
            read_frames(&mut futures_util::io::Cursor::new(cut), 1 << 20, 4, &budget)
                .await
                .is_err()
        );
        // Over the limits: refused from the prefix alone.
        assert!(
            read_frames(&mut futures_util::io::Cursor::new(&wire), 1000, 4, &budget)
                .await
                .is_err()
        );
        assert!(
            read_frames(
                &mut futures_util::io::Cursor::new(&wire),
                1 << 20,
                1,
                &budget
            )
            .await
            .is_err()
        );
    }

    /// Frames read hold their bytes of the budget until they are dropped; a read that
    /// would pass it waits, and goes on once the budget is free again.
    #[tokio::test]
    async fn frames_are_read_within_the_budget_and_hold_it_until_dropped() {
        use futures_util::FutureExt as _;

        let budget = Budget::new(100 * BUDGET_UNIT);
        let message = |len: usize| {
            let mut wire = vec![1u8];
            wire.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            wire.extend(std::iter::repeat_n(7u8, len));
            wire
        };
        let (sixty, fifty) = (message(60 * BUDGET_UNIT), message(50 * BUDGET_UNIT));
        let first = read_frames(
            &mut futures_util::io::Cursor::new(&sixty),
            1 << 20,
            4,
            &budget,
        )
        .now_or_never()
        .expect("within the budget: read at once")
        .unwrap();
        let mut cursor = futures_util::io::Cursor::new(&fifty);
        let mut second = Box::pin(read_frames(&mut cursor, 1 << 20, 4, &budget));
        assert!(
            (&mut second).now_or_never().is_none(),
            "60 + 50 units of a budget of 100: the second waits"
        );
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(second.0[0].len(), 50 * BUDGET_UNIT);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_sync_message_disconnects_the_sender_with_an_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (nodes, _) = devices(dir.path(), &stop_rx, 2).await;
        let (receiver, receiver_audit, receiver_peer) = &nodes[0];
        let (sender, _, _) = &nodes[1];
        until_admitted(&[receiver, sender]).await;

        let too_large = vec![0u8; hearth_protocol::sync::message::MAX_MESSAGE_BYTES + 1];
        sender.sync_send(*receiver_peer, too_large).await.unwrap();
        let refused = eventually("the receiver audits the refusal", || {
            refusal(receiver_audit, "mesh.receive")
        })
        .await;
        assert_eq!(refused.object, "n1");
        assert!(refused.outcome.contains("larger"), "{}", refused.outcome);
        // The connection was closed (the sender redials later, with backoff).
        let before = admissions(receiver_audit);
        eventually("the sender is admitted afresh on a new connection", || {
            (admissions(receiver_audit) > before).then_some(())
        })
        .await;
        let _ = stop_tx.send(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stranger_gets_nothing_read_but_admission() {
        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (nodes, addr) = devices(dir.path(), &stop_rx, 1).await;
        let (_, audit, home) = &nodes[0];

        // A stranger dials and, without presenting anything, opens a sync stream with
        // a frame far over the limit: were it read, its length alone would get the
        // stranger refused for breaking the protocol's limits.
        let stranger = NodeKey::from_seed([99; 32]);
        let mut swarm = build_swarm(&stranger, false, &Arc::new(Admitted::default())).unwrap();
        swarm.dial(addr).unwrap();
        let too_large = vec![0u8; hearth_protocol::sync::message::MAX_MESSAGE_BYTES + 1];
        let outcome = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        assert_eq!(peer_id, *home);
                        swarm
                            .behaviour_mut()
                            .sync
                            .send_request(&peer_id, Frames::from(vec![too_large.clone()]));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(
                        request_response::Event::OutboundFailure { error, .. },
                    )) => return error.to_string(),
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(
                        request_response::Event::Message { .. },
                    )) => panic!("a stranger was answered on the sync protocol"),
                    _ => {}
                }
            }
        })
        .await
        .expect("the stranger's request ends");
        // It was held unread until the stranger was refused at the admission deadline
        // and the connection closed. (The refusal is written off the mesh loop.)
        eventually("the refusal is audited", || {
            refusal(audit, "mesh.admit").filter(|e| e.outcome.contains("admission deadline"))
        })
        .await;
        tracing::debug!(%outcome, "the stranger's request ended");
        assert!(
            audit
                .entries(None, None, Some("mesh.receive"))
                .unwrap()
                .is_empty(),
            "the stranger's request was read"
        );
        let _ = stop_tx.send(true);
    }

    /// A stranger asking for admission three times on one connection is judged once:
    /// one answer holds the refusal, the others nothing (or the connection is gone),
    /// and one refusal is audited, naming where it came from.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_gets_one_admission_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (nodes, addr) = devices(dir.path(), &stop_rx, 1).await;
        let (_, audit, home) = &nodes[0];
        let stranger = NodeKey::from_seed([98; 32]);
        let mut swarm = build_swarm(&stranger, false, &Arc::new(Admitted::default())).unwrap();
        swarm.dial(addr).unwrap();
        let answers = tokio::time::timeout(Duration::from_secs(30), async {
            let mut answers = Vec::new();
            while answers.len() < 3 {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        assert_eq!(peer_id, *home);
                        for _ in 0..3 {
                            swarm
                                .behaviour_mut()
                                .admission
                                .send_request(&peer_id, Frames::from(vec![b"junk".to_vec()]));
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Admission(
                        request_response::Event::Message {
                            message: request_response::Message::Response { response, .. },
                            ..
                        },
                    )) => answers.push(response.0.len()),
                    SwarmEvent::Behaviour(BehaviourEvent::Admission(
                        request_response::Event::OutboundFailure { .. },
                    )) => answers.push(0),
                    _ => {}
                }
            }
            answers
        })
        .await
        .expect("three answers");
        assert_eq!(
            answers.iter().filter(|frames| **frames > 0).count(),
            1,
            "{answers:?}"
        );
        let refused = eventually("the refusal is audited", || refusal(audit, "mesh.admit")).await;
        assert!(
            refused.outcome.contains("malformed admission message")
                && refused.outcome.contains("(from 127.0.0.1)"),
            "{}",
            refused.outcome
        );
        let _ = stop_tx.send(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_thousand_revocations_reach_a_device_in_full() {
        use hearth_protocol::capability::{CapId, Revocation, RevocationTarget};
        let dir = tempfile::tempdir().unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let owner = OwnerKey::from_seed([1; 32]);
        let phone = NodeKey::from_seed([99; 32]).public();
        let mut revocations = RevocationSet::new(owner.public());
        let revoke = |target| {
            Revocation {
                issuer: owner.public(),
                target,
                issued_at: UnixMillis(1),
                reason: String::new(),
            }
            .sign(owner.secret())
            .unwrap()
        };
        for i in 0..100_000u64 {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            revocations
                .insert(&revoke(RevocationTarget::Capability(CapId(id))))
                .unwrap();
        }
        revocations
            .insert(&revoke(RevocationTarget::Key(phone)))
            .unwrap();
        let (nodes, _) = devices_knowing(dir.path(), &stop_rx, 2, revocations).await;
        until_admitted(&[&nodes[0].0, &nodes[1].0]).await;
        // The second device learns every one, page by page, and agrees with the first.
        let started = std::time::Instant::now();
        let learnt = tokio::time::timeout(Duration::from_secs(180), async {
            loop {
                let learnt = nodes[1].0.revocations().await.unwrap();
                if learnt.len() == 100_001 {
                    return learnt;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("every revocation arrives");
        assert!(learnt.is_key_revoked(&phone));
        let held = nodes[0].0.revocations().await.unwrap();
        assert_eq!(learnt.digest(), held.digest());
        eprintln!("paged in {:?}", started.elapsed());
        let _ = stop.send(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_certificate_that_expires_on_a_live_connection_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let owner = OwnerKey::from_seed([1; 32]);
        // No clock-skew allowance, so that the certificate ends when it says.
        let verifier = || {
            Verifier::new(
                owner.public(),
                VerifierConfig::default().with_clock_skew(Duration::ZERO),
            )
        };
        let mut handles = Vec::new();
        let mut audits = Vec::new();
        let mut first: Option<Multiaddr> = None;
        let expires = now().saturating_add(Duration::from_secs(3));
        for (i, (name, until)) in [
            (0u8, ("home", UnixMillis(u64::MAX / 2))),
            (1, ("phone", expires)),
        ] {
            let key = NodeKey::from_seed([30 + i; 32]);
            let cert = device::issue_certificate(
                owner.secret(),
                None,
                key.public(),
                name,
                Role::Home,
                UnixMillis(0),
                until,
                [i; 16],
            )
            .unwrap();
            let audit = Arc::new(
                AuditLog::open(
                    &dir.path().join(format!("{name}.log")),
                    name,
                    key.clone(),
                    Arc::new(|| 0),
                )
                .unwrap(),
            );
            let handle = spawn(
                &key,
                cert,
                Gate::new(
                    key.public(),
                    verifier(),
                    RevocationSet::new(owner.public()),
                    None,
                ),
                None,
                MeshConfig {
                    listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                    bootstrap: first.clone().into_iter().collect(),
                    mdns: false,
                    ..MeshConfig::default()
                },
                audit.clone(),
                None,
                stop.clone(),
            )
            .await
            .unwrap();
            if first.is_none() {
                let peer = peer_id(&key.public()).unwrap();
                let addr = loop {
                    if let Some(addr) = handle.status().await.unwrap().listen.first().cloned() {
                        break addr;
                    }
                    tokio::task::yield_now().await;
                };
                first = Some(format!("{addr}/p2p/{peer}").parse().unwrap());
            }
            handles.push(handle);
            audits.push(audit);
        }
        until_admitted(&[&handles[0], &handles[1]]).await;
        // The phone's certificate runs out while the connection is up: home ends it
        // within a second, with an audit entry.
        let ended = eventually("home drops the phone when its certificate expires", || {
            audits[0]
                .entries(None, None, Some("mesh.admit"))
                .unwrap()
                .into_iter()
                .find(|e| e.outcome.contains("on a live connection"))
        })
        .await;
        assert!(now().0 >= expires.0, "not before it expired");
        assert!(
            now().0 < expires.0 + 5_000,
            "within a second or so: {ended:?}"
        );
        assert!(ended.outcome.contains("expired"), "{}", ended.outcome);
        let _ = stop_tx.send(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_malformed_sync_message_disconnects_the_sender_with_an_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (nodes, addr) = devices(dir.path(), &stop_rx, 1).await;
        let (sender, _, _) = &nodes[0];

        // A whole node (stores, replication, audit log) that dials the sender.
        let owner = OwnerKey::from_seed([1; 32]);
        let key = NodeKey::from_seed([20; 32]);
        let data_dir = dir.path().join("node");
        std::fs::create_dir_all(&data_dir).unwrap();
        let node = crate::Node::open(crate::NodeConfig {
            data_dir: data_dir.clone(),
            name: "home".into(),
            role: "home".into(),
            node_key: key.clone(),
            api: "127.0.0.1:0".parse().unwrap(),
            backend: hearth_stores::backend::BackendKind::Redb,
            mesh: Some(crate::MeshSetup {
                certificate: device::issue_certificate(
                    owner.secret(),
                    None,
                    key.public(),
                    "home",
                    Role::Home,
                    UnixMillis(0),
                    UnixMillis(u64::MAX / 2),
                    [20; 16],
                )
                .unwrap(),
                owner: owner.public(),
                owner_key: None,
                config: MeshConfig {
                    listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                    bootstrap: vec![addr],
                    mdns: false,
                    ..MeshConfig::default()
                },
            }),
            compute_limits: Default::default(),
        })
        .unwrap();
        let mut stop = stop_rx.clone();
        let served = tokio::spawn(node.clone().serve(
            async move {
                let _ = stop.changed().await;
            },
            |_| {},
        ));
        let home = peer_id(&key.public()).unwrap();
        until_admitted(&[sender]).await;
        eventually("home admits the sender", || {
            (admissions(&node.audit) > 0).then_some(())
        })
        .await;
        let before = admissions(&node.audit);

        sender
            .sync_send(home, b"HSYN\x01 not a sync message".to_vec())
            .await
            .unwrap();
        let refused = eventually("home audits the refusal", || {
            refusal(&node.audit, "sync.receive")
        })
        .await;
        assert_eq!(refused.object, "n0");
        // Disconnected: the sender is admitted afresh on a new connection later.
        eventually("the sender was disconnected and came back", || {
            (admissions(&node.audit) > before).then_some(())
        })
        .await;
        let _ = stop_tx.send(true);
        let _ = served.await;
    }
}
