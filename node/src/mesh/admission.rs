//! Admission on every connection (`/hearth/admission/1`), before anything else of
//! Hearth's is served: the dialler sends its opening (its certificate) as one request,
//! the listener answers with its own once it has accepted the dialler's, and the
//! session machine (`hearth_protocol::mesh::session`, driven in `sessions`) judges both
//! sides.
//! A connection gets one attempt; a device admitted before that asks again (it
//! restarted) is judged afresh and its older connections are closed once it passes.

use std::time::Duration;

use hearth_protocol::device::Device;
use hearth_protocol::mesh::membership::Snapshot;
use hearth_protocol::mesh::session::{Channel, Side};
use hearth_protocol::time::UnixMillis;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::ConnectionId;
use libp2p::{PeerId, request_response};

use super::address_book::{Backoff, Known, STRANGER_RETRY_MS, add_addrs};
use super::codec::{Frames, MAX_FRAMES, ProtocolEvent};
use super::sessions::{PeerSession, Route};
use super::{MeshLoop, now, peer_key};

impl MeshLoop {
    pub(super) fn connection_established(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        self.connections
            .entry(peer_id)
            .or_default()
            .insert(connection_id);
        self.reach.opened(peer_id, connection_id, endpoint);
        let member =
            peer_key(&peer_id).is_some_and(|key| self.membership.certificate(&key).is_some());
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
        if self
            .sessions
            .get(&peer_id)
            .is_some_and(PeerSession::admitting)
        {
            // Both sides dialled at once and each saw the other's connection
            // first, as listener: each waits for a request that would never
            // come. Whoever now has an outgoing connection sends its opening
            // (unless it already answered one, which drained it).
            if endpoint.is_dialer() {
                self.with_session(peer_id, Route::Request, |session, _| {
                    session.handle_opened_as_initiator();
                });
            }
            return;
        }
        let Some(remote) = peer_key(&peer_id) else {
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        };
        // The side that dialled opens; the other answers only once it has
        // accepted what the dialler presented.
        let side = if endpoint.is_dialer() {
            Side::Initiator
        } else {
            Side::Responder
        };
        self.open_session(peer_id, remote, side);
        if let Some(k) = self.known.get_mut(&peer_id)
            && endpoint.is_dialer()
            && add_addrs(&mut k.addrs, vec![endpoint.get_remote_address().clone()])
        {
            self.dirty = true;
        }
    }

    pub(super) fn connection_closed(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        num_established: u32,
    ) {
        if let Some(open) = self.connections.get_mut(&peer_id) {
            open.remove(&connection_id);
            if open.is_empty() {
                self.connections.remove(&peer_id);
            }
        }
        self.strangers
            .closed(peer_id, connection_id, num_established == 0);
        self.reach
            .closed(peer_id, connection_id, num_established == 0);
        if num_established > 0 {
            return;
        }
        self.readmitting.remove(&peer_id);
        self.sessions.remove(&peer_id);
        self.swarm.behaviour_mut().autonat.remove_server(&peer_id);
        if self.known.contains_key(&peer_id)
            && let Some(replication) = &self.replication
        {
            replication.deliver(crate::replication::Input::Disconnected(peer_id));
        }
        if let Some(k) = self.known.get_mut(&peer_id) {
            k.connected = false;
        }
    }

    pub(super) fn admission_event(&mut self, event: ProtocolEvent) {
        let request_response::Event::Message {
            peer,
            connection_id,
            message,
        } = event
        else {
            return;
        };
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
                let admitting = self.sessions.get(&peer).is_some_and(PeerSession::admitting);
                if !admitting
                    && !request.0.is_empty()
                    && let Some(remote) = peer_key(&peer)
                {
                    if self.known.get(&peer).is_some_and(|k| k.connected) {
                        self.readmitting.insert(peer, connection_id);
                    }
                    self.open_session(peer, remote, Side::Responder);
                }
                if !self.sessions.get(&peer).is_some_and(PeerSession::admitting) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .admission
                        .send_response(channel, Frames::default());
                    return;
                }
                let now = now();
                self.with_session(peer, Route::Reply(channel), |session, cx| {
                    for frame in request.0.iter().take(MAX_FRAMES) {
                        session.handle_received(now, Channel::Admission, frame, cx);
                    }
                });
            }
            request_response::Message::Response { response, .. } => {
                if self.sessions.get(&peer).is_some_and(PeerSession::admitting) {
                    let now = now();
                    self.with_session(peer, Route::Drop, |session, cx| {
                        for frame in response.0.iter().take(MAX_FRAMES) {
                            session.handle_received(now, Channel::Admission, frame, cx);
                        }
                    });
                }
            }
        }
    }

    /// A session admitted `peer`.
    pub(super) fn admitted_peer(&mut self, peer: PeerId, device: &Device) {
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
        self.reach.admitted(peer);
        self.vouch_observed(peer);
        // Asked whether this node is reachable, as only devices are.
        self.swarm.behaviour_mut().autonat.add_server(peer, None);
        let certificate = self
            .sessions
            .get(&peer)
            .and_then(|entry| entry.session.peer_certificate())
            .cloned();
        if let Some(certificate) = certificate {
            self.take_in(&Snapshot {
                devices: vec![certificate],
                ..Snapshot::default()
            });
        }
        // A new session: the peer's older connections are dead or about to be (it
        // asked afresh on a new one), and would take a share of every request until
        // ping gives up on them.
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
        if let Some(replication) = &self.replication {
            replication.deliver(crate::replication::Input::Connected {
                peer,
                name: device.name.clone(),
                role: device.role,
            });
        }
    }

    /// A session refused `peer` before admitting it.
    pub(super) fn refused_peer(&mut self, peer: PeerId, reason: &str) {
        self.readmitting.remove(&peer);
        self.audit_refusal("mesh.admit", &peer, reason);
        let open = self.connections.get(&peer).cloned().unwrap_or_default();
        self.strangers.refuse(open);
        tracing::warn!(peer = %peer, %reason, "peer refused");
        // Also a peer admitted before whose fresh admission failed.
        self.disconnected(peer);
        // A stranger on the LAN is not asked again for a while (each try is an audit
        // entry); a device of this mesh keeps its backoff.
        let member = peer_key(&peer).is_some_and(|key| self.membership.certificate(&key).is_some());
        if let Some((_, retry)) = self.lan.get_mut(&peer)
            && !member
        {
            retry.next = now().0.saturating_add(STRANGER_RETRY_MS);
        }
        self.closing
            .push((peer, now().saturating_add(Duration::from_millis(500))));
    }

    /// A session dropped an admitted peer (it broke the exchange's rules).
    pub(super) fn dropped_member(&mut self, peer: PeerId, reason: &str) {
        self.audit(
            "mesh.members",
            &peer.to_string(),
            &format!("refused: {reason}"),
        );
        tracing::warn!(%peer, %reason, "an admitted peer broke the membership exchange; disconnecting");
        self.disconnected(peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// `peer` no longer counts as connected: the sync engine is told.
    fn disconnected(&mut self, peer: PeerId) {
        if let Some(k) = self.known.get_mut(&peer)
            && std::mem::take(&mut k.connected)
            && let Some(replication) = &self.replication
        {
            replication.deliver(crate::replication::Input::Disconnected(peer));
        }
    }

    /// Checks the certificate of every connected device again: one that expired or was
    /// revoked while its connection stayed up is disconnected (and audited).
    pub(super) fn recheck_certificates(&mut self, now: UnixMillis) {
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
}
