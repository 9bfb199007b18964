//! Admission on every connection (`/hearth/admission/1`), before anything else of
//! Hearth's is served: the dialler sends its opening (its certificate) as one request,
//! the listener answers with its own once it has accepted the dialler's, and the
//! sans-IO machine `hearth_protocol::mesh::admission::Connection` judges both sides.
//! A connection gets one attempt; a device admitted before that asks again (it
//! restarted) is judged afresh and its older connections are closed once it passes.

use std::time::Duration;

use hearth_protocol::mesh::admission::{Connection, Event, Opening};
use hearth_protocol::mesh::membership::Snapshot;
use hearth_protocol::time::UnixMillis;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::ConnectionId;
use libp2p::{PeerId, request_response};

use super::address_book::{Backoff, Known, STRANGER_RETRY_MS, add_addrs};
use super::codec::{Frames, MAX_FRAMES, ProtocolEvent};
use super::members::Paging;
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
            let frames: Vec<Vec<u8>> = std::iter::from_fn(|| connection.poll_transmit()).collect();
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
        self.admitting.remove(&peer_id);
        self.sync_out.remove(&peer_id);
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

    /// Acts on a connection's admission events.
    pub(super) fn drain(&mut self, peer: PeerId) {
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
                    self.reach.admitted(peer);
                    self.vouch_observed(peer);
                    // Asked whether this node is reachable, as only devices are.
                    self.swarm.behaviour_mut().autonat.add_server(peer, None);
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
