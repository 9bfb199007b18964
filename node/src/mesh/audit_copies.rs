//! Home devices copying other devices' audit logs (`/hearth/audit/1`): requests and
//! answers of frames that `crate::audit_copy` writes and reads.

use libp2p::{PeerId, request_response};
use tokio::sync::oneshot;

use super::codec::{Frames, ProtocolEvent};
use super::handle::{AuditReply, Command, InboundAudit};
use super::{MeshError, MeshLoop};

impl MeshLoop {
    /// Sends an audit request to the connected device `peer`.
    pub(super) fn audit_request(&mut self, peer: PeerId, frames: Vec<Vec<u8>>, reply: AuditReply) {
        if self.swarm.is_connected(&peer) && self.known.get(&peer).is_some_and(|k| k.connected) {
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

    /// Sends the answer to audit request `id` back to the device that asked.
    pub(super) fn audit_response(&mut self, id: u64, frames: Vec<Vec<u8>>) {
        if let Some(channel) = self.audit_channels.remove(&id) {
            let _ = self
                .swarm
                .behaviour_mut()
                .audit
                .send_response(channel, Frames::from(frames));
        }
    }

    pub(super) fn audit_event(&mut self, event: ProtocolEvent) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
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
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.audit_asked.remove(&request_id) {
                    let _ = reply.send(Ok(response.0));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.audit_asked.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Join(format!(
                        "the audit request did not reach the device or its answer did not come back: {error}"
                    ))));
                }
            }
            _ => {}
        }
    }
}
