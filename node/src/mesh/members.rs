//! The membership exchange between admitted devices (`/hearth/members/2`): each
//! message is one `hearth_protocol::mesh::session::Exchange` (the devices the sender
//! knows and where they are, the digest of its membership store, a page of that store
//! while the digests differ), sent as one request and acknowledged empty. When to send
//! and what is the session machine's (`sessions`); this module takes in what was
//! merged. The store is kept on disk (`membership.bin`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hearth_protocol::capability::{Position, RevocationSet};
use hearth_protocol::key::PublicKey;
use hearth_protocol::mesh::membership::MAX_STORED_BYTES;
use hearth_protocol::mesh::membership::{Merged, Snapshot};
use hearth_protocol::mesh::session::Channel;
use hearth_protocol::statefile;
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::{AuditLog, Event as AuditEvent};
use libp2p::{PeerId, request_response};

use super::codec::{Frames, ProtocolEvent};
use super::{MeshError, MeshLoop, now, peer_id};

/// What the membership state file's header calls it.
pub(super) const MEMBERSHIP_KIND: &str = "membership";

/// What the header of the file of audited key revocations calls it.
const REVOCATIONS_AUDITED_KIND: &str = "revocations-audited";

/// The file beside `membership` that lists the revoked keys whose `mesh.revoke`
/// entries are written.
fn audited_path(membership: &Path) -> PathBuf {
    membership.with_file_name("revocations-audited.bin")
}

/// The keys `revocations` revokes, in order.
fn revoked_keys(revocations: &RevocationSet) -> Vec<PublicKey> {
    revocations
        .key_revocations()
        .filter_map(|(position, _)| match position {
            Position::Key(key) => Some(key),
            Position::Capability(..) => None,
        })
        .collect()
}

/// Audits the key revocations `revocations` holds that the audit log may not tell of:
/// the node stored them and stopped before their entries were written. Those the
/// file of audited revocations lists are skipped; for the others (all of them when
/// that file is missing or unreadable) the audit log is read. Returns how many were
/// audited now, or why one could not be (the file is then left as it was).
pub(super) fn audit_kept_revocations(
    membership: &Path,
    revocations: &RevocationSet,
    log: &AuditLog,
) -> Result<usize, String> {
    let path = audited_path(membership);
    let listed: BTreeSet<[u8; 32]> = match statefile::read_state(
        &path,
        REVOCATIONS_AUDITED_KIND,
        MAX_STORED_BYTES as u64,
    ) {
        Ok(Some(state)) if state.payload.len() % 32 == 0 => state
            .payload
            .chunks_exact(32)
            .filter_map(|chunk| <[u8; 32]>::try_from(chunk).ok())
            .collect(),
        Ok(None) => BTreeSet::new(),
        Ok(Some(_)) => {
            tracing::warn!(path = %path.display(), "the list of audited revocations is damaged; reading the audit log instead");
            BTreeSet::new()
        }
        Err(err) => {
            tracing::warn!(error = %err, "the list of audited revocations cannot be read; reading the audit log instead");
            BTreeSet::new()
        }
    };
    let revoked = revoked_keys(revocations);
    let unlisted: Vec<&PublicKey> = revoked
        .iter()
        .filter(|key| !listed.contains(key.as_bytes()))
        .collect();
    if unlisted.is_empty() {
        return Ok(0);
    }
    // An audit log that cannot be read: each is audited again (a second entry for a
    // revocation is better than none).
    let audited: BTreeSet<String> = match log.entries(None, None, Some("mesh.revoke")) {
        Ok(entries) => entries.into_iter().map(|entry| entry.object).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the audit log; auditing every unlisted revocation");
            BTreeSet::new()
        }
    };
    let mut written = 0;
    for key in unlisted {
        if audited.contains(&key.short()) {
            continue;
        }
        let recorded = log.record(AuditEvent {
            actor: "mesh".into(),
            action: "mesh.revoke".into(),
            object: key.short(),
            cap_id: None,
            outcome: "allowed (taken in before the node last stopped; audited at start)".into(),
            bytes: 0,
        });
        recorded.map_err(|err| err.to_string())?;
        written += 1;
    }
    write_audited_list(&path, &revoked);
    Ok(written)
}

/// Writes the list of revoked keys whose audit entries are written; a failure is
/// logged (the next start reads the audit log instead).
fn write_audited_list(path: &Path, keys: &[PublicKey]) {
    let payload: Vec<u8> = keys.iter().flat_map(|key| *key.as_bytes()).collect();
    if let Err(err) = statefile::write_state(path, REVOCATIONS_AUDITED_KIND, 1, &payload) {
        tracing::warn!(path = %path.display(), error = %err, "cannot record which revocations are audited; the next start reads the audit log to know");
    }
}

/// How a test playing a hostile member answers membership messages.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct HostileAnswer {
    /// What every answer lists (its digest is made different each time, and it
    /// always says that more pages follow).
    pub listed: Vec<hearth_protocol::mesh::session::Listed>,
    /// Every message received since, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

#[cfg(test)]
impl HostileAnswer {
    /// Keeps `message` and, when it asks for an answer, returns the hostile one.
    fn answer(&self, message: &[u8]) -> Option<Vec<u8>> {
        use hearth_protocol::mesh::session::Exchange;
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.push(message.to_vec());
        let asked = Exchange::decode(message).is_ok_and(|e| e.request);
        asked.then(|| {
            Exchange {
                request: false,
                more: true,
                digest: <sha2::Sha256 as sha2::Digest>::digest(requests.len().to_be_bytes()).into(),
                page: Vec::new(),
                listed: self.listed.clone(),
            }
            .encode()
        })
    }
}

impl MeshLoop {
    /// Merges membership documents made here (or a peer's certificate): drops newly
    /// revoked devices, keeps the store on disk, adopts or drops this node's admit
    /// grant, and tells every admitted peer at once if anything changed.
    pub(super) fn take_in(&mut self, snapshot: &Snapshot) {
        let merged = self
            .membership
            .merge(now(), snapshot, &mut self.gate.revocations);
        if self.merged(None, &merged) {
            self.membership_changed(None);
        }
    }

    /// Acts on a merge into the membership (from `from`'s session, or made here):
    /// documents a peer sent that were left out are audited, summed per peer over 5 s
    /// (`mesh.members`, `refused: …`). Returns whether anything was new.
    pub(super) fn merged(&mut self, from: Option<&PeerId>, merged: &Merged) -> bool {
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
        // Audited once stored: an entry never tells of a revocation that a restart
        // would lose. One stored but not yet audited when the node stopped is audited
        // when it starts again (`audit_kept_revocations`).
        if !merged.revoked_keys.is_empty() {
            let outcome = match &self.unsaved {
                None => "allowed".to_owned(),
                Some(err) => format!("allowed (in force until the node stops: not stored: {err})"),
            };
            for key in &merged.revoked_keys {
                self.audit("mesh.revoke", &key.short(), &outcome);
            }
            self.note_revocations_audited();
        }
        merged.changed()
    }

    /// Once the audit entries queued so far are written, records that every key
    /// revocation held now is audited (`revocations-audited.bin`, beside the
    /// membership file), so that a start need not read the audit log to know it.
    fn note_revocations_audited(&self) {
        let Some(path) = self.config.membership_file.as_deref().map(audited_path) else {
            return;
        };
        let keys = revoked_keys(&self.gate.revocations);
        // Not after an entry that could not be written: the next start then reads the
        // audit log and writes what is missing.
        self.audit
            .if_all_written(move || write_audited_list(&path, &keys));
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

    pub(super) fn members_event(&mut self, event: ProtocolEvent) {
        let (peer, request, channel) = match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => (peer, request, channel),
            // Answers are acknowledgements.
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, .. },
                ..
            } => return self.sent(peer, Channel::Members, request_id, true),
            request_response::Event::OutboundFailure {
                peer, request_id, ..
            } => return self.sent(peer, Channel::Members, request_id, false),
            _ => return,
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .members
            .send_response(channel, Frames::default());
        if !self.is_live(&peer) {
            return;
        }
        // A member's message shows that it admitted this node too (the protocol is
        // held until then).
        if self.reach.answered(peer) {
            self.quic_to_relays();
            self.dial_through(peer);
        }
        // One message per request (the codec reads no more); none is malformed.
        let message = request.0.into_iter().next().unwrap_or_default();
        #[cfg(test)]
        if let Some(hostile) = &self.hostile_answer {
            if let Some(answer) = hostile.answer(&message) {
                self.swarm
                    .behaviour_mut()
                    .members
                    .send_request(&peer, Frames::from(vec![answer]));
            }
            return;
        }
        self.received(peer, Channel::Members, &[message]);
    }
}
