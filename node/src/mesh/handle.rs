//! The mesh's API: a [`MeshHandle`] sends commands to the mesh loop, which answers
//! each on a oneshot channel; what the loop reports (status, devices) and what it hands
//! to the node (jobs, audit requests).

use std::time::Duration;

use hearth_protocol::capability::Role;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use super::{MeshError, MeshLoop, audited, now, peer_id};
#[cfg(test)]
use super::{codec::Frames, members::HostileAnswer};

/// What a `devices:admit` grant lets its holder admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitScope {
    /// The roles.
    pub roles: hearth_protocol::capability::Roles,
    /// The names: `name`, `prefix*` or `*`.
    pub names: String,
}

/// A peer as the mesh sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// How it is reached while connected: `direct` or `relayed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The relay device's name, when relayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The last round trip measured on that path, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// A device of the mesh, for `hearth devices`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// How it is reached while online: `direct` or `relayed` (none for this device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The relay device's name, when relayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The last round trip measured on that path, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
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

pub(super) enum Command {
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
        addrs: Vec<String>,
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
    Bootstrap(libp2p::Multiaddr),
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
pub(super) type AuditReply = oneshot::Sender<Result<Vec<Vec<u8>>, MeshError>>;

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
    pub(super) commands: mpsc::Sender<Command>,
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
            Command::Bootstrap(_) => "Bootstrap",
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
        addrs: Vec<String>,
    ) -> Result<String, MeshError> {
        // Just after the node starts, its listeners may not have reported an address
        // yet (a wildcard address is expanded per interface): wait for one, briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (reply, answer) = oneshot::channel();
            self.commands
                .send(Command::Invite {
                    ttl,
                    name: name.clone(),
                    role,
                    addrs: addrs.clone(),
                    reply,
                })
                .await
                .map_err(|_| MeshError::Stopped)?;
            match answer.await.map_err(|_| MeshError::Stopped)? {
                Err(MeshError::NotListening) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
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

    /// From now on answers every membership exchange that asks for an answer with an
    /// empty page, "more", and a new digest each time, keeps every message received in
    /// `answer.requests`, and sends no exchange of its own, as a hostile member would
    /// (tests).
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

    /// Dials `addr` now and again whenever it is not connected, as a bootstrap
    /// address (until the node stops; the device is remembered once admitted).
    pub async fn bootstrap(&self, addr: libp2p::Multiaddr) -> Result<(), MeshError> {
        self.commands
            .send(Command::Bootstrap(addr))
            .await
            .map_err(|_| MeshError::Stopped)
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

impl MeshLoop {
    /// How a connected device is reached: its path (`direct` or `relayed`), the relay's
    /// name, and the round trip. Nothing for a device not connected.
    fn path_of(
        &self,
        peer: &PeerId,
        connected: bool,
    ) -> (Option<String>, Option<String>, Option<f64>) {
        let Some(route) = connected.then(|| self.reach.route(peer)).flatten() else {
            return (None, None, None);
        };
        let path = if route.via.is_some() {
            "relayed"
        } else {
            "direct"
        };
        let via = route.via.map(|relay| {
            self.known
                .get(&relay)
                .map_or_else(|| relay.to_string(), |k| k.name.clone())
        });
        (Some(path.to_owned()), via, route.rtt_ms)
    }

    pub(super) fn command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let status = MeshStatus {
                    listen: self.swarm.listeners().map(ToString::to_string).collect(),
                    peers: self
                        .known
                        .iter()
                        .map(|(peer, k)| {
                            let (path, via, rtt_ms) = self.path_of(peer, k.connected);
                            PeerStatus {
                                name: k.name.clone(),
                                role: k.role.clone(),
                                peer_id: peer.to_string(),
                                connected: k.connected,
                                last_seen: k.last_seen,
                                path,
                                via,
                                rtt_ms,
                            }
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
                        let (path, via, rtt_ms) = self.path_of(&peer, online && peer != me);
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
                            path,
                            via,
                            rtt_ms,
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
                addrs,
                reply,
            } => {
                let result = self.invite(ttl, name, role, &addrs);
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
            Command::SyncSend { peer, bytes } => self.sync_send(peer, bytes),
            Command::Disconnect(peer) => {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.connected = false;
                }
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Bootstrap(addr) => {
                if !self.config.bootstrap.contains(&addr) {
                    self.config.bootstrap.push(addr);
                }
                self.redial();
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
            } => self.audit_request(peer, frames, reply),
            Command::AuditResponse { id, frames } => self.audit_response(id, frames),
            Command::ForwardJob {
                device,
                bytes,
                reply,
            } => self.forward_job(device, bytes, reply),
            Command::JobResponse { id, bytes } => self.job_response(id, bytes),
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
}
