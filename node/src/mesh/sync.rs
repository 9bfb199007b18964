//! Store replication between admitted devices (`/hearth/sync/1`): each sync message is
//! one request, acknowledged empty, under a per-peer window of unacknowledged bytes and
//! a bounded queue behind it. What the messages say is `hearth_protocol::sync`'s.

use std::collections::BTreeMap;

use libp2p::{PeerId, request_response};

use super::MeshLoop;
use super::codec::{Frames, ProtocolEvent};

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
pub(super) struct SyncOut {
    pub(super) in_flight: usize,
    pub(super) pending: BTreeMap<request_response::OutboundRequestId, usize>,
    pub(super) waiting: std::collections::VecDeque<Vec<u8>>,
    pub(super) waiting_bytes: usize,
}

impl MeshLoop {
    /// Queues a sync message for an admitted peer and sends what the window allows.
    pub(super) fn sync_send(&mut self, peer: PeerId, bytes: Vec<u8>) {
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
