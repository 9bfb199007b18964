//! Store replication between admitted devices (`/hearth/sync/1`): each sync message is
//! one request, acknowledged empty, under the peer's session window of unacknowledged
//! bytes and the bounded queue behind it (`hearth_protocol::mesh::session`, driven in
//! `sessions`). What the messages say is `hearth_protocol::sync`'s.

use hearth_protocol::mesh::session::Channel;
use libp2p::request_response;

use super::MeshLoop;
use super::codec::{Frames, ProtocolEvent};

impl MeshLoop {
    pub(super) fn sync_event(&mut self, event: ProtocolEvent) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, Frames::default());
                self.received(peer, Channel::Sync, &request.0);
            }
            request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                tracing::debug!(%peer, %error, "a sync message was not delivered");
                self.sent(peer, Channel::Sync, request_id, false);
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, .. },
                ..
            } => self.sent(peer, Channel::Sync, request_id, true),
            _ => {}
        }
    }
}
