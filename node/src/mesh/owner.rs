//! The owner's authority over the mesh, exercised from this device: revoking devices
//! and capabilities, inviting, letting a device admit others, approving the devices it
//! admitted. Each needs the owner key (inviting: the owner key or a `devices:admit`
//! grant), is audited, and is sent on to the connected devices at once.

use std::time::Duration;

use hearth_protocol::capability::{Chain, Role};
use hearth_protocol::key::PublicKey;
use hearth_protocol::mesh::admission::{self, Issuer};
use hearth_protocol::mesh::membership::Snapshot;
use hearth_protocol::statefile;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::handle::AdmitScope;
use super::{MeshError, MeshLoop, now, peer_id, peer_key};

impl MeshLoop {
    /// The unrevoked device called `name`, or whose peer id is `name`; refused when the
    /// name is ambiguous.
    pub(super) fn device_named(&self, name: &str) -> Result<PublicKey, MeshError> {
        let members: Vec<_> = self
            .membership
            .members(&self.gate.revocations)
            .into_iter()
            .filter(|m| !m.revoked)
            .collect();
        // A peer id names exactly one device, whatever any device is called.
        if let Some(member) = members
            .iter()
            .find(|m| peer_id(&m.device.node_key).is_some_and(|p| p.to_string() == name))
        {
            return Ok(member.device.node_key);
        }
        let live: Vec<PublicKey> = members
            .iter()
            .filter(|m| m.device.name == name)
            .map(|m| m.device.node_key)
            .collect();
        match live.as_slice() {
            [] => Err(MeshError::NoSuchDevice(name.to_owned())),
            [key] => Ok(*key),
            keys => Err(MeshError::Ambiguous {
                name: name.to_owned(),
                peers: keys
                    .iter()
                    .filter_map(peer_id)
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Names of the unrevoked devices, for the gate (a joiner cannot take one).
    pub(super) fn refresh_names(&mut self) {
        self.gate.taken = self
            .membership
            .members(&self.gate.revocations)
            .into_iter()
            .filter(|m| !m.revoked)
            .map(|m| m.device.name)
            .collect();
    }

    pub(super) fn revoke(&mut self, name: &str) -> Result<String, MeshError> {
        if self.owner_key.is_none() {
            return Err(MeshError::NotOwner("revoke devices"));
        }
        let key = self.device_named(name)?;
        if key == self.node_key.public() {
            return Err(MeshError::RevokeSelf(name.to_owned()));
        }
        let peer = peer_id(&key).ok_or_else(|| MeshError::NoSuchDevice(name.to_owned()))?;
        self.sign_revocation(
            hearth_protocol::capability::RevocationTarget::Key(key),
            format!("device {name} revoked by the owner"),
            "revoke devices",
        )?;
        Ok(peer.to_string())
    }

    /// Signs a revocation with the owner key, takes it in and sends it on at once.
    pub(super) fn sign_revocation(
        &mut self,
        target: hearth_protocol::capability::RevocationTarget,
        reason: String,
        what: &'static str,
    ) -> Result<(), MeshError> {
        let Some(owner_key) = self.owner_key.clone() else {
            return Err(MeshError::NotOwner(what));
        };
        let revocation = hearth_protocol::capability::Revocation {
            issuer: owner_key.public(),
            target,
            issued_at: now(),
            reason,
        }
        .sign(owner_key.secret())
        .map_err(|err| MeshError::Sign(err.to_string()))?;
        self.take_in(&Snapshot {
            revocations: vec![revocation],
            ..Snapshot::default()
        });
        // Tell every connected device now rather than at the next exchange.
        self.stored()
    }

    pub(super) fn allow_admit(
        &mut self,
        name: &str,
        ttl: Duration,
        scope: AdmitScope,
    ) -> Result<String, MeshError> {
        let Some(owner_key) = self.owner_key.clone() else {
            return Err(MeshError::NotOwner("let other devices admit devices"));
        };
        if scope.roles.is_empty()
            || !hearth_protocol::capability::is_valid_store_pattern(&scope.names)
        {
            return Err(MeshError::BadScope(format!(
                "name at least one role and a name pattern (`name`, `prefix*` or `*`), not {:?}",
                scope.names
            )));
        }
        let key = self.device_named(name)?;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|err| MeshError::Sign(err.to_string()))?;
        let grant = hearth_protocol::capability::Capability {
            issuer: owner_key.public(),
            audience: key,
            parent: None,
            grants: vec![hearth_protocol::capability::Grant::new(
                hearth_protocol::capability::Resource::DevicesAdmit {
                    roles: scope.roles,
                    names: scope.names,
                },
                hearth_protocol::capability::Actions::ADMIT,
            )],
            not_before: now(),
            expires: now().saturating_add(ttl),
            nonce,
        }
        .sign(owner_key.secret())
        .map_err(|err| MeshError::Sign(err.to_string()))?;
        let id = grant.id();
        self.take_in(&Snapshot {
            admits: vec![Chain::root(grant)],
            ..Snapshot::default()
        });
        self.audit("mesh.allow-admit", name, "allowed");
        self.stored()?;
        Ok(id.to_string())
    }

    /// Hands the revocations to replication: a withdrawn grant can change a placement.
    pub(super) fn tell_revocations(&self) {
        if let Some(replication) = &self.replication {
            replication.deliver(crate::replication::Input::Revocations(
                self.gate.revocations.clone(),
            ));
        }
    }

    /// On the owner's device, at the owner's word: replaces the certificate of a
    /// device admitted under a `devices:admit` grant with one the owner key signs, of
    /// full lifetime, for the same key, name and role. Until then the device's
    /// certificate ends with the grant, and revoking the grant (or its holder's key)
    /// ends the device's membership too.
    pub(super) fn approve(&mut self, name: &str) -> Result<bool, MeshError> {
        let Some(owner_key) = self.owner_key.clone() else {
            return Err(MeshError::NotOwner("approve devices"));
        };
        let key = self.device_named(name)?;
        let Some(chain) = self.membership.certificate(&key) else {
            return Err(MeshError::NoSuchDevice(name.to_owned()));
        };
        if chain.links().len() == 1 {
            return Ok(false);
        }
        let now = now();
        let device = match self.gate.check(now, &key, chain) {
            Ok(device) => device,
            Err(reason) => return Err(MeshError::NotApprovable(name.to_owned(), reason)),
        };
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|err| MeshError::Sign(err.to_string()))?;
        let signed = hearth_protocol::device::issue_certificate(
            owner_key.secret(),
            None,
            device.node_key,
            &device.name,
            device.role,
            now,
            now.saturating_add(admission::CERTIFICATE_LIFETIME),
            nonce,
        )
        .map_err(|err| MeshError::Sign(err.to_string()))?;
        self.take_in(&Snapshot {
            devices: vec![signed],
            ..Snapshot::default()
        });
        self.audit("mesh.approve", &device.name, "allowed");
        self.stored()?;
        Ok(true)
    }

    /// Presents (and keeps on disk) the longest-lasting certificate the membership
    /// holds for this device, once the owner has approved it.
    pub(super) fn adopt_own_certificate(&mut self) {
        let Some(best) = self.membership.certificate(&self.node_key.public()) else {
            return;
        };
        if *best == self.certificate {
            return;
        }
        self.certificate = best.clone();
        tracing::info!("this device's certificate was renewed by the owner");
        if let Some(path) = &self.config.certificate_file {
            let text = format!("{}\n", self.certificate.to_text());
            if let Err(err) = statefile::write_durable(path, text.as_bytes()) {
                tracing::error!(path = %path.display(), error = %err, "cannot store the renewed certificate");
            }
        }
    }

    /// A node without the owner key signs certificates while it holds a valid
    /// `devices:admit` grant, and stops when the grant is revoked or expires.
    pub(super) fn refresh_issuer(&mut self) {
        if self.owner_key.is_some() {
            return;
        }
        let grant =
            self.membership
                .admit_for(&self.node_key.public(), now(), &self.gate.revocations);
        if grant.as_ref() != self.gate.admit_grant() {
            if grant.is_some() {
                tracing::info!("this device may now admit new devices");
            }
            self.gate.set_issuer(grant.map(|admit| Issuer {
                key: self.node_key.secret().clone(),
                admit: Some(admit),
            }));
        }
    }

    pub(super) fn invite(
        &mut self,
        ttl: Duration,
        name: Option<String>,
        role: Option<Role>,
        given: &[String],
    ) -> Result<String, MeshError> {
        if !self.gate.can_admit() {
            return Err(MeshError::CannotAdmit);
        }
        let me = *self.swarm.local_peer_id();
        let addrs: Vec<String> = if given.is_empty() {
            self.swarm
                .listeners()
                .map(|a| a.clone().with(Protocol::P2p(me)).to_string())
                .collect()
        } else {
            ticket_addrs(given, me)?
        };
        // A ticket without an address could not be used: refuse rather than issue it.
        if addrs.is_empty() {
            return Err(MeshError::NotListening);
        }
        if let Some(name) = &name
            && self.gate.taken.contains(name)
        {
            return Err(MeshError::NameTaken(name.clone()));
        }
        let mut id = [0u8; 16];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|err| MeshError::Start(err.to_string()))?;
        getrandom::fill(&mut secret).map_err(|err| MeshError::Start(err.to_string()))?;
        let local = peer_key(&me)
            .ok_or_else(|| MeshError::Start("the local PeerId is not ed25519".into()))?;
        let expires = now().saturating_add(ttl);
        self.gate.invitations.expire(now());
        let ticket = self
            .gate
            .invitations
            .issue(self.owner, local, addrs, id, secret, expires, name, role);
        self.audit("mesh.invite", &hex::encode(id), "allowed");
        Ok(ticket.to_text().to_string())
    }
}

/// At most this many addresses in a ticket given by the owner.
const MAX_TICKET_ADDRS: usize = 8;

/// The addresses the owner gave for a ticket (a DNS name, a forwarded port), checked:
/// each a host (`ip4`, `ip6`, `dns`, `dns4`, `dns6`) then `tcp/PORT` or
/// `udp/PORT/quic-v1`, and optionally this node's own `/p2p/` id, which is added when
/// missing.
pub(super) fn ticket_addrs(given: &[String], me: PeerId) -> Result<Vec<String>, MeshError> {
    if given.len() > MAX_TICKET_ADDRS {
        return Err(MeshError::BadAddress(format!(
            "{} addresses; a ticket holds at most {MAX_TICKET_ADDRS}",
            given.len()
        )));
    }
    given
        .iter()
        .map(|text| {
            let bad = |why: &str| MeshError::BadAddress(format!("{text:?}: {why}"));
            let addr: Multiaddr = text
                .trim()
                .parse()
                .map_err(|_| bad("not a multiaddr (e.g. /dns4/cloud.example.org/udp/4001/quic-v1)"))?;
            let mut protocols: Vec<Protocol<'_>> = addr.iter().collect();
            if let Some(Protocol::P2p(peer)) = protocols.last() {
                if *peer != me {
                    return Err(bad("it names another node's /p2p/ id"));
                }
                protocols.pop();
            }
            let host = |p: &Protocol<'_>| {
                matches!(
                    p,
                    Protocol::Ip4(_)
                        | Protocol::Ip6(_)
                        | Protocol::Dns(_)
                        | Protocol::Dns4(_)
                        | Protocol::Dns6(_)
                )
            };
            match protocols.as_slice() {
                [h, Protocol::Tcp(port)] | [h, Protocol::Udp(port), Protocol::QuicV1]
                    if host(h) && *port != 0 => {}
                _ => {
                    return Err(bad(
                        "use /ip4, /ip6, /dns, /dns4 or /dns6, then /tcp/PORT or /udp/PORT/quic-v1, and optionally this node's /p2p/ id",
                    ));
                }
            }
            let dialable: Multiaddr = protocols.into_iter().collect();
            Ok(dialable.with(Protocol::P2p(me)).to_string())
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn ticket_addresses_are_dialable_and_name_this_node() {
        let me = PeerId::random();
        let other = PeerId::random();
        let given = [
            "/dns4/vm.example.org/udp/4001/quic-v1".to_owned(),
            format!("/ip6/2001:db8::1/tcp/4001/p2p/{me}"),
            " /ip4/203.0.113.5/tcp/4001 ".to_owned(),
        ];
        assert_eq!(
            ticket_addrs(&given, me).unwrap(),
            vec![
                format!("/dns4/vm.example.org/udp/4001/quic-v1/p2p/{me}"),
                format!("/ip6/2001:db8::1/tcp/4001/p2p/{me}"),
                format!("/ip4/203.0.113.5/tcp/4001/p2p/{me}"),
            ]
        );
        for bad in [
            format!("/ip4/1.2.3.4/tcp/4001/p2p/{other}"),
            format!("/p2p/{me}"),
            "/ip4/1.2.3.4".to_owned(),
            "/ip4/1.2.3.4/udp/4001".to_owned(),
            "/ip4/1.2.3.4/udp/4001/quic-v1/webtransport".to_owned(),
            format!("/ip4/1.2.3.4/tcp/1/p2p/{me}/p2p/{me}"),
            "/ip4/1.2.3.4/tcp/0".to_owned(),
            "".to_owned(),
        ] {
            assert!(
                matches!(
                    ticket_addrs(std::slice::from_ref(&bad), me),
                    Err(MeshError::BadAddress(_))
                ),
                "{bad}"
            );
        }
        let many = vec!["/ip4/1.2.3.4/tcp/1".to_owned(); MAX_TICKET_ADDRS + 1];
        assert!(ticket_addrs(&many, me).is_err());
    }
}
