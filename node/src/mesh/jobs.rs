//! Jobs forwarded to the device that holds the data (`/hearth/compute/1`): one request
//! carries an encoded job, its response the encoded reply. What a job is and how it
//! runs is `hearth_protocol::compute`'s and `crate::compute`'s.

use libp2p::request_response;
use tokio::sync::oneshot;

use super::codec::{Frames, ProtocolEvent};
use super::handle::{Command, InboundJob};
use super::{MeshError, MeshLoop};

impl MeshLoop {
    /// Sends an encoded job to the connected device called `device`.
    pub(super) fn forward_job(
        &mut self,
        device: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, MeshError>>,
    ) {
        let peer = self
            .known
            .iter()
            .find(|(peer, k)| k.name == device && k.connected && self.swarm.is_connected(peer))
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

    /// Sends the reply of job `id`, run here, back to the device that sent it.
    pub(super) fn job_response(&mut self, id: u64, bytes: Vec<u8>) {
        if let Some(channel) = self.job_channels.remove(&id) {
            let _ = self
                .swarm
                .behaviour_mut()
                .compute
                .send_response(channel, Frames::from(vec![bytes]));
        }
    }

    pub(super) fn compute_event(&mut self, event: ProtocolEvent) {
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
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.forwarded.remove(&request_id) {
                    let _ =
                        reply.send(
                            response.0.into_iter().next().ok_or_else(|| {
                                MeshError::Join("the device does not run jobs".into())
                            }),
                        );
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.forwarded.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Join(format!(
                        "the job did not reach the device or its reply did not come back: {error}"
                    ))));
                }
            }
            _ => {}
        }
    }
}
