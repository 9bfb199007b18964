//! The membership exchange between admitted devices (`/hearth/members/1`): each side
//! tells the other the devices it knows and where they are, the digest of its
//! membership store (`hearth_protocol::mesh::membership`), and a page of that store
//! while the digests differ. The store is kept on disk (`membership.bin`).

use hearth_protocol::capability::Position;
use hearth_protocol::key::PublicKey;
use hearth_protocol::mesh::admission;
use hearth_protocol::mesh::membership::Snapshot;
use hearth_protocol::statefile;
use hearth_protocol::time::UnixMillis;
use libp2p::{Multiaddr, PeerId, request_response};

use super::address_book::add_addrs;
use super::codec::{Frames, ProtocolEvent};
use super::{MeshError, MeshLoop, now, peer_id, peer_key};

/// Most devices listed in one peers message.
const MAX_LISTED_PEERS: usize = 64;
/// What the membership state file's header calls it.
pub(super) const MEMBERSHIP_KIND: &str = "membership";
/// Least time between two rounds of paging the whole membership to one peer.
const ROUND_EVERY_MS: u64 = 10_000;

/// Where the membership exchange with one peer stands.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Paging {
    /// Where our next page starts (`None`: at the first revocation).
    pub(super) after: Option<Position>,
    /// The digests (ours, theirs) when we last sent the final page: while both stay
    /// the same, paging again would not help (the peer refuses something), so only
    /// the first page is sent.
    pub(super) round_done: Option<([u8; 32], Option<[u8; 32]>)>,
    /// When a new round may start (ms): a peer whose digest keeps changing gets the
    /// whole set paged to it at most once per [`ROUND_EVERY_MS`], the first page
    /// otherwise.
    pub(super) next_round: u64,
}

/// One message of the exchange, either way: four frames on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Exchange {
    /// The devices the sender knows and where they listen, the sender first. Frame 0:
    /// a line of `PEER_ID ADDRESS…` each, cut at an admission message's size; read
    /// back, at most [`MAX_LISTED_PEERS`] lines of 16 addresses.
    pub(super) devices: Vec<(PeerId, Vec<Multiaddr>)>,
    /// The digest of the sender's membership store. Frame 1: its 32 bytes (anything
    /// else reads as none).
    pub(super) digest: Option<[u8; 32]>,
    /// A page of the sender's membership store, encoded. Frame 2 (empty: none).
    pub(super) page: Vec<u8>,
    /// Whether more pages follow. Frame 3: `1` (anything else: no).
    pub(super) more: bool,
}

impl Exchange {
    pub(super) fn encode(&self) -> Frames {
        let mut text = String::new();
        for (peer, addrs) in &self.devices {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            text.push_str(&format!("{peer} {}\n", addrs.join(" ")));
        }
        let mut text = text.into_bytes();
        text.truncate(admission::MAX_MESSAGE_BYTES);
        let digest = self.digest.map(|d| d.to_vec()).unwrap_or_default();
        let more = if self.more { b"1".to_vec() } else { Vec::new() };
        Frames::from(vec![text, digest, self.page.clone(), more])
    }

    /// Reads what a peer sent; what does not parse is left out.
    pub(super) fn decode(frames: &Frames) -> Self {
        let mut devices = Vec::new();
        if let Some(frame) = frames.0.first() {
            let text = String::from_utf8_lossy(frame);
            for line in text.lines().take(MAX_LISTED_PEERS) {
                let mut parts = line.split_whitespace();
                let Some(Ok(peer)) = parts.next().map(str::parse::<PeerId>) else {
                    continue;
                };
                let addrs = parts.take(16).filter_map(|a| a.parse().ok()).collect();
                devices.push((peer, addrs));
            }
        }
        Self {
            devices,
            digest: frames
                .0
                .get(1)
                .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok()),
            page: frames.0.get(2).cloned().unwrap_or_default(),
            more: frames.0.get(3).is_some_and(|f| f == b"1"),
        }
    }
}

/// How a test playing a hostile member answers membership requests.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct HostileAnswer {
    /// The frames of every answer (the second, the digest, is changed each time).
    pub frames: Vec<Vec<u8>>,
    /// Every request received since, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Vec<Vec<u8>>>>>,
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

impl MeshLoop {
    /// Merges membership documents (from a peer, or made here): drops newly revoked
    /// devices, keeps the store on disk, and adopts or drops this node's admit grant.
    pub(super) fn take_in(&mut self, snapshot: &Snapshot) {
        let _ = self.take_in_from(None, snapshot);
    }

    /// [`MeshLoop::take_in`] for documents a peer sent: those left out are audited,
    /// summed per peer over 5 s (`mesh.members`, `refused: …`). Returns whether
    /// anything was new.
    pub(super) fn take_in_from(&mut self, from: Option<&PeerId>, snapshot: &Snapshot) -> bool {
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

    /// Stores the membership; a failure is logged and kept in `unsaved` until a later
    /// save succeeds, so that the owner's command that made the change reports it.
    pub(super) fn save_membership(&mut self) {
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
    pub(super) fn stored(&self) -> Result<(), MeshError> {
        match &self.unsaved {
            Some(err) => Err(MeshError::Unsaved(err.clone())),
            None => Ok(()),
        }
    }

    pub(super) fn share_peers(&mut self) {
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

    /// Audits the membership documents peers sent that were left out, one entry per
    /// peer per 5 s at most (all of them when `all`, at shutdown).
    pub(super) fn audit_left_out(&mut self, now: UnixMillis, all: bool) {
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

    /// What this node tells an admitted peer: the devices it knows with their
    /// addresses, its membership digest, a page of its membership when the peer's last
    /// digest differs (else none), and whether more pages follow. Advances the paging.
    pub(super) fn peer_list(&mut self, peer: &PeerId) -> Frames {
        let me = *self.swarm.local_peer_id();
        // Where this node listens, then where it is reachable through relays (told
        // only to the mesh's devices).
        let own: Vec<Multiaddr> = self
            .reach
            .relayed_addresses()
            .chain(self.swarm.listeners())
            .take(16)
            .cloned()
            .collect();
        let mut devices = vec![(me, own)];
        devices.extend(
            self.known
                .iter()
                .filter(|(_, k)| !k.addrs.is_empty())
                .take(MAX_LISTED_PEERS - 1)
                .map(|(peer, k)| (*peer, k.addrs.clone())),
        );
        let now = now();
        let ours = self.membership.digest(now, &self.gate.revocations);
        let (page, more) = match self.known.get_mut(peer) {
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
        Exchange {
            devices,
            digest: Some(ours),
            page,
            more,
        }
        .encode()
    }

    /// Takes in what an admitted peer told us: its membership (merged), its digest, and
    /// the devices it knows, which we dial (admission decides about them).
    /// Returns whether its membership brought anything new.
    fn learn_peers(&mut self, from: &PeerId, message: &Exchange) -> bool {
        let mut news = false;
        if !message.page.is_empty() {
            match Snapshot::decode(&message.page) {
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
        if let Some(k) = self.known.get_mut(from) {
            k.digest = message.digest;
        }
        let me = *self.swarm.local_peer_id();
        for (peer, addrs) in &message.devices {
            let (peer, addrs) = (*peer, addrs.clone());
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
            let addrs = self.reach.dialable(addrs);
            if addrs.is_empty() || revoked {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
        news
    }

    pub(super) fn members_event(&mut self, event: ProtocolEvent) {
        let request_response::Event::Message { peer, message, .. } = event else {
            return;
        };
        let admitted = self.known.get(&peer).is_some_and(|k| k.connected);
        // A member's request, or its answer with something in it, shows that it
        // admitted this node too (the protocol is held until then).
        let spoke = match &message {
            request_response::Message::Request { .. } => true,
            request_response::Message::Response { response, .. } => !response.0.is_empty(),
        };
        if admitted && spoke && self.reach.answered(peer) {
            self.quic_to_relays();
            self.dial_through(peer);
        }
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
                    let _ = self.learn_peers(&peer, &Exchange::decode(&request));
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
                    let response = Exchange::decode(&response);
                    let news = self.learn_peers(&peer, &response);
                    // Page on at once while we have more to send, or while the
                    // peer has more and its last page brought something new (a
                    // peer that only says "more" gets the next tick's exchange).
                    let theirs_more = news && response.more;
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
}
