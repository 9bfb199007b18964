//! One `hearth_protocol::mesh::session::Session` per peer, driven over libp2p: the
//! session machine decides the order of admission, when memberships are exchanged and
//! how much sync data may be in flight; this module carries its messages and acts on
//! what it decides.
//!
//! Its three channels map onto request-response protocols:
//!
//! - admission (`/hearth/admission/1`): what an initiator sends when it opens goes as
//!   one request of frames; what a responder sends after reading a request goes as its
//!   response;
//! - members (`/hearth/members/2`) and sync (`/hearth/sync/1`): each message is one
//!   request of one frame, and its (empty) response is the acknowledgement the
//!   session's window counts.

use std::collections::BTreeMap;

use hearth_protocol::mesh::session::{self, Action, Channel, Context, Listed, SendId, Session};
use libp2p::{Multiaddr, PeerId, request_response};

use super::codec::Frames;
use super::{MeshLoop, now, peer_id, peer_key};

/// The session with one peer, and what its driver keeps beside it.
pub(super) struct PeerSession {
    pub(super) session: Session,
    /// Whether the session admitted the peer (a refusal after that is a drop).
    pub(super) admitted: bool,
    /// Members and sync requests in flight, with the session's id of each.
    pending: BTreeMap<(Channel, request_response::OutboundRequestId), SendId>,
}

impl PeerSession {
    /// Admitted, and not dropped since.
    pub(super) fn admitted(&self) -> bool {
        self.session.is_admitted()
    }

    /// Still admitting: neither admitted nor refused.
    pub(super) fn admitting(&self) -> bool {
        !self.session.is_admitted() && !self.session.is_closed()
    }
}

/// Where a session's admission messages go.
pub(super) enum Route {
    /// As a request: this side opens.
    Request,
    /// As the response to the peer's request.
    Reply(request_response::ResponseChannel<Frames>),
    /// Nowhere: the exchange of one request and one response is over.
    Drop,
}

impl MeshLoop {
    /// The session machine's settings on this node.
    fn session_config(&self) -> session::Config {
        session::Config::default().with_admission(self.config.admission.clone())
    }

    /// Starts a session with `peer` (replacing any before it), as initiator when this
    /// side dialled.
    pub(super) fn open_session(
        &mut self,
        peer: PeerId,
        remote: hearth_protocol::key::PublicKey,
        side: session::Side,
    ) {
        let opening = hearth_protocol::mesh::admission::Opening::Member(self.certificate.clone());
        let now = now();
        let mut session = Session::new(now, remote, side, opening, self.session_config());
        session.set_listed(now, self.listing());
        self.sessions.insert(
            peer,
            PeerSession {
                session,
                admitted: false,
                pending: BTreeMap::new(),
            },
        );
        let route = match side {
            session::Side::Initiator => Route::Request,
            session::Side::Responder => Route::Drop,
        };
        self.drive(peer, route);
    }

    /// Runs `f` on the session with `peer`, with the device's gate and membership, then
    /// acts on what it decided. Nothing happens without a session.
    pub(super) fn with_session(
        &mut self,
        peer: PeerId,
        route: Route,
        f: impl FnOnce(&mut Session, &mut Context<'_>),
    ) {
        let Some(entry) = self.sessions.get_mut(&peer) else {
            if let Route::Reply(channel) = route {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .admission
                    .send_response(channel, Frames::default());
            }
            return;
        };
        let mut cx = Context {
            gate: &mut self.gate,
            membership: &mut self.membership,
        };
        f(&mut entry.session, &mut cx);
        self.drive(peer, route);
    }

    /// Admitted by its session and not revoked, expired or dropped since: a device
    /// whose certificate stopped holding is disconnected at once, but what its
    /// connection still carries until it closes is neither taken in nor answered.
    pub(super) fn is_live(&self, peer: &PeerId) -> bool {
        self.sessions.get(peer).is_some_and(PeerSession::admitted)
            && self.known.get(peer).is_some_and(|k| k.connected)
    }

    /// Hands a message from `peer` to its session, if the session admitted it and it
    /// is still live: a message on the old connection of a peer being admitted afresh
    /// is left (the sync engine's repair and the next exchange carry what it held), and
    /// so is one from a device revoked since.
    pub(super) fn received(&mut self, peer: PeerId, channel: Channel, messages: &[Vec<u8>]) {
        if !self.is_live(&peer) {
            return;
        }
        let now = now();
        self.with_session(peer, Route::Drop, |session, cx| {
            for message in messages {
                session.handle_received(now, channel, message, cx);
            }
        });
    }

    /// Carries out what the session with `peer` decided.
    pub(super) fn drive(&mut self, peer: PeerId, route: Route) {
        // A device revoked (or whose certificate expired) since its session admitted
        // it is sent nothing more: no membership, no addresses, no store data.
        let cut_off = !self.known.get(&peer).is_some_and(|k| k.connected);
        let Some(entry) = self.sessions.get_mut(&peer) else {
            return;
        };
        let cut_off = cut_off && entry.admitted;
        let behaviour = self.swarm.behaviour_mut();
        let mut admission = Vec::new();
        let mut decided = Vec::new();
        while let Some(action) = entry.session.poll_action() {
            match action {
                Action::Send {
                    channel: Channel::Admission,
                    bytes,
                    ..
                } => admission.push(bytes),
                Action::Send {
                    channel: Channel::Members | Channel::Sync,
                    ..
                } if cut_off => {}
                Action::Send {
                    channel: Channel::Members,
                    id,
                    bytes,
                } => {
                    // A test's hostile member only answers, its own way.
                    #[cfg(test)]
                    if self.hostile_answer.is_some() {
                        continue;
                    }
                    let request = behaviour
                        .members
                        .send_request(&peer, Frames::from(vec![bytes]));
                    entry.pending.insert((Channel::Members, request), id);
                }
                Action::Send {
                    channel: Channel::Sync,
                    id,
                    bytes,
                } => {
                    let request = behaviour
                        .sync
                        .send_request(&peer, Frames::from(vec![bytes]));
                    entry.pending.insert((Channel::Sync, request), id);
                }
                Action::Admitted(device) => {
                    entry.admitted = true;
                    decided.push(Action::Admitted(device));
                }
                other => decided.push(other),
            }
        }
        let admitted = entry.admitted;
        match route {
            Route::Reply(channel) => {
                let _ = behaviour
                    .admission
                    .send_response(channel, Frames::from(admission));
            }
            Route::Request if !admission.is_empty() => {
                behaviour
                    .admission
                    .send_request(&peer, Frames::from(admission));
            }
            Route::Request | Route::Drop => {}
        }
        for action in decided {
            self.act(peer, admitted, action);
        }
    }

    fn act(&mut self, peer: PeerId, admitted: bool, action: Action) {
        match action {
            Action::Send { .. } => {}
            Action::Admitted(device) => self.admitted_peer(peer, &device),
            Action::Joined(device) => {
                self.audit("mesh.join", &device.name, "allowed");
                // Taken at once: a second join under the name is refused even
                // before the new certificate is in the membership.
                self.gate.taken.insert(device.name.clone());
            }
            Action::Welcomed(_) => {}
            Action::Refused { reason } if admitted => self.dropped_member(peer, &reason),
            Action::Refused { reason } => self.refused_peer(peer, &reason),
            Action::Merged(merged) => {
                if self.merged(Some(&peer), &merged) {
                    self.membership_changed(Some(peer));
                }
            }
            // What came with a message that revoked its sender (or after it was
            // dropped) is left.
            Action::Listed(_) | Action::Sync(_) if !self.is_live(&peer) => {}
            Action::Listed(listed) => self.learn_listed(peer, listed),
            Action::Sync(bytes) => {
                if let Some(replication) = &self.replication {
                    replication.offer(peer, bytes);
                }
            }
            Action::SyncDropped { bytes } => {
                tracing::debug!(%peer, bytes, "sync window and queue full: the message is left to repair");
            }
        }
    }

    /// The membership changed here: every admitted peer but `except` is told now.
    pub(super) fn membership_changed(&mut self, except: Option<PeerId>) {
        let peers: Vec<PeerId> = self
            .sessions
            .iter()
            .filter(|(peer, entry)| Some(**peer) != except && entry.session.is_admitted())
            .map(|(peer, _)| *peer)
            .collect();
        let now = now();
        for peer in peers {
            self.with_session(peer, Route::Drop, |session, cx| {
                session.handle_membership_changed(now, cx);
            });
        }
    }

    /// What this node tells admitted peers of: itself with where it listens, then
    /// where it is reachable through relays (told only to the mesh's devices), then
    /// the devices it knows with their addresses.
    pub(super) fn listing(&self) -> Vec<Listed> {
        let own: Vec<String> = self
            .reach
            .relayed_addresses()
            .chain(self.swarm.listeners())
            .take(session::MAX_ADDRESSES)
            .map(ToString::to_string)
            .collect();
        let me = peer_key(self.swarm.local_peer_id());
        me.map(|key| Listed {
            key,
            addresses: own,
        })
        .into_iter()
        .chain(
            self.known
                .iter()
                .filter(|(_, k)| !k.addrs.is_empty())
                .filter_map(|(peer, k)| {
                    Some(Listed {
                        key: peer_key(peer)?,
                        addresses: k.addrs.iter().map(ToString::to_string).collect(),
                    })
                }),
        )
        .take(session::MAX_LISTED)
        .collect()
    }

    /// Hands every session the current listing (each tells its peer only if it changed).
    pub(super) fn refresh_listing(&mut self) {
        let listed = self.listing();
        let now = now();
        let peers: Vec<PeerId> = self.sessions.keys().copied().collect();
        for peer in peers {
            let listed = listed.clone();
            self.with_session(peer, Route::Drop, |session, _| {
                session.set_listed(now, listed);
            });
        }
    }

    /// Fires the sessions' timers that are due.
    pub(super) fn session_timeouts(&mut self) {
        let now = now();
        let due: Vec<PeerId> = self
            .sessions
            .iter()
            .filter(|(_, entry)| entry.session.poll_timeout().is_some_and(|at| now >= at))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.with_session(peer, Route::Drop, |session, cx| {
                session.handle_timeout(now, cx);
            });
        }
    }

    /// A sync message to `peer`, sent as its session's window allows.
    pub(super) fn sync_send(&mut self, peer: PeerId, bytes: Vec<u8>) {
        self.with_session(peer, Route::Drop, |session, _| session.send_sync(bytes));
    }

    /// A members or sync request to `peer` was acknowledged (`delivered`), or failed.
    pub(super) fn sent(
        &mut self,
        peer: PeerId,
        channel: Channel,
        request: request_response::OutboundRequestId,
        delivered: bool,
    ) {
        let Some(id) = self
            .sessions
            .get_mut(&peer)
            .and_then(|entry| entry.pending.remove(&(channel, request)))
        else {
            return;
        };
        let now = now();
        self.with_session(peer, Route::Drop, |session, cx| {
            if delivered {
                session.handle_sent(now, id, cx);
            } else {
                session.handle_failed(id);
            }
        });
    }

    /// Takes in the devices a peer listed: its own addresses are where to find it
    /// again; the others are dialled (admission decides about them).
    fn learn_listed(&mut self, from: PeerId, listed: Vec<Listed>) {
        let me = *self.swarm.local_peer_id();
        for entry in listed {
            let Some(peer) = peer_id(&entry.key) else {
                continue;
            };
            let addrs: Vec<Multiaddr> = entry
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            if peer == from {
                if let Some(k) = self.known.get_mut(&from)
                    && super::address_book::add_addrs(&mut k.addrs, addrs)
                {
                    self.dirty = true;
                }
                continue;
            }
            if peer == me || self.swarm.is_connected(&peer) {
                continue;
            }
            if self.gate.revocations.is_key_revoked(&entry.key) {
                continue;
            }
            let addrs = self.reach.dialable(addrs);
            if addrs.is_empty() {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }
}
