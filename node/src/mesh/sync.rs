//! Store replication between admitted devices (`/hearth/sync/1`): each sync message is
//! one request, acknowledged empty, under a per-peer window of unacknowledged bytes and
//! a bounded queue behind it (`hearth_protocol::mesh::session::Window`, the one the
//! protocol's session machine keeps). What the messages say is `hearth_protocol::sync`'s.

use std::collections::BTreeMap;

use hearth_protocol::mesh::session::{self, Queued, SendId, Window};
use libp2p::{PeerId, request_response};

use super::MeshLoop;
use super::codec::{Frames, ProtocolEvent};

/// Sync traffic to one peer: the window, and which request carries which of its
/// messages.
pub(super) struct SyncOut {
    window: Window,
    pending: BTreeMap<request_response::OutboundRequestId, SendId>,
    next_id: u64,
}

impl Default for SyncOut {
    fn default() -> Self {
        let config = session::Config::default();
        Self {
            window: Window::new(config.max_in_flight, config.max_waiting),
            pending: BTreeMap::new(),
            next_id: 0,
        }
    }
}

impl MeshLoop {
    /// Queues a sync message for an admitted peer and sends what the window allows.
    pub(super) fn sync_send(&mut self, peer: PeerId, bytes: Vec<u8>) {
        if self.known.get(&peer).is_some_and(|k| k.connected) {
            let out = self.sync_out.entry(peer).or_default();
            let len = bytes.len();
            if out.window.push(bytes) == Queued::Dropped {
                tracing::debug!(%peer, bytes = len, "sync window and queue full: the message is left to repair");
            } else {
                self.send_sync(peer);
            }
        }
    }

    /// Sends a peer's waiting sync messages while its in-flight window has room.
    fn send_sync(&mut self, peer: PeerId) {
        let Some(out) = self.sync_out.get_mut(&peer) else {
            return;
        };
        loop {
            let id = SendId(out.next_id.wrapping_add(1));
            let Some(bytes) = out.window.next(id) else {
                return;
            };
            out.next_id = id.0;
            let request = self
                .swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, Frames::from(vec![bytes]));
            out.pending.insert(request, id);
        }
    }

    /// A sync message was acknowledged, or failed: its bytes leave the window.
    fn sync_done(&mut self, peer: PeerId, request: request_response::OutboundRequestId) {
        if let Some(out) = self.sync_out.get_mut(&peer)
            && let Some(id) = out.pending.remove(&request)
            && out.window.done(id)
        {
            self.send_sync(peer);
        }
    }

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
            request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                tracing::debug!(%peer, %error, "a sync message was not delivered");
                self.sync_done(peer, request_id);
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, .. },
                ..
            } => self.sync_done(peer, request_id),
            _ => {}
        }
    }
}
