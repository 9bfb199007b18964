//! The membership store: every device certificate, `devices:admit` grant and
//! revocation of the mesh, replicated to every device.
//!
//! It is a grow-only set of owner-rooted documents, so merging is a union and any two
//! devices that have seen the same documents hold the same membership, whatever the
//! order. A device leaves by revocation, never by deletion: its certificate stays (to
//! list it as revoked) but no longer counts. Every document is checked before it is
//! taken in: a certificate or grant must chain to the owner key and be in its time
//! window, a revocation must carry a valid signature (and, for a key, the owner's).
//!
//! Two devices compare [`Membership::digest`]s and send a [`Snapshot`] only when they
//! differ, so an unchanged membership costs 32 bytes per exchange. The digest covers
//! every revocation; a snapshot carries one page of them ([`Membership::page`]), and
//! the sender pages on until the digests agree or it has sent them all, so the set
//! is never cut short however large it grows.
//!
//! Snapshot encoding (canonical binary, at most [`MAX_SNAPSHOT_BYTES`]; the same
//! format, with every revocation, is the membership file):
//!
//! ```text
//! "HMEM" 01
//! varint n, n × (varint len, chain)        device certificates, by node key
//! varint n, n × (varint len, chain)        devices:admit grants, by capability id
//! varint n, n × (varint len, revocation)   revocations: up to PRIORITY_KEYS key
//!                                          revocations, then the page (keys by key,
//!                                          capabilities by id and issuer)
//! ```

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::capability::{
    Actions, CapId, Chain, Position, Resource, RevocationSet, SignedRevocation, Verifier,
};
use crate::device::{self, Device};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::PublicKey;
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HMEM";
const VERSION: u8 = 1;
/// Largest snapshot on the wire or on disk.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;
/// Most device certificates a membership holds.
pub const MAX_DEVICES: usize = 256;
/// Most `devices:admit` grants a membership holds.
pub const MAX_ADMITS: usize = 64;
/// Most revocations one page of the exchange carries (see [`Membership::page`]).
pub const MAX_REVOCATIONS: usize = 1024;
/// Most key revocations repeated at the head of every page.
pub const PRIORITY_KEYS: usize = 256;
/// Most revocations the membership file holds.
pub const MAX_STORED_REVOCATIONS: usize =
    crate::capability::MAX_CAPABILITY_REVOCATIONS + crate::capability::MAX_KEY_REVOCATIONS;
/// Largest membership file.
pub const MAX_STORED_BYTES: usize = 256 * 1024 * 1024;
/// Largest single document in a snapshot.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

// Whatever a revocation set and a membership hold fits in a file they can be read back
// from: the most certificates and grants, the most key revocations (kept without
// proofs) and the bytes of capability revocations the set allows, with their lengths.
const _: () = assert!(
    16 + (MAX_DEVICES + MAX_ADMITS) * (MAX_DOCUMENT_BYTES + 3)
        + crate::capability::MAX_KEY_REVOCATIONS
            * (crate::capability::MAX_PLAIN_REVOCATION_BYTES + 3)
        + crate::capability::MAX_CAPABILITY_REVOCATION_BYTES
        <= MAX_STORED_BYTES
);

/// Every document of a membership, as exchanged between devices and stored on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Device certificates.
    pub devices: Vec<Chain>,
    /// `devices:admit` grants.
    pub admits: Vec<Chain>,
    /// Revocations.
    pub revocations: Vec<SignedRevocation>,
}

impl Snapshot {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1024);
        w.raw(MAGIC);
        w.u8(VERSION);
        for list in [&self.devices, &self.admits] {
            w.varint(list.len() as u64);
            for chain in list {
                let bytes = chain.encode();
                w.varint(bytes.len() as u64);
                w.raw(&bytes);
            }
        }
        w.varint(self.revocations.len() as u64);
        for revocation in &self.revocations {
            let bytes = revocation.encode();
            w.varint(bytes.len() as u64);
            w.raw(&bytes);
        }
        w.into_bytes()
    }

    /// Decodes a snapshot; refuses oversized, malformed or over-full input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_within(bytes, MAX_SNAPSHOT_BYTES, MAX_REVOCATIONS)
    }

    /// Decodes a snapshot kept on disk, which holds every revocation (at most
    /// [`MAX_STORED_REVOCATIONS`]).
    pub fn decode_stored(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_within(bytes, MAX_STORED_BYTES, MAX_STORED_REVOCATIONS)
    }

    fn decode_within(
        bytes: &[u8],
        max_bytes: usize,
        max_revocations: usize,
    ) -> Result<Self, DecodeError> {
        const WHAT: &str = "membership snapshot";
        let mut r = Reader::bounded(bytes, max_bytes, WHAT)?;
        r.magic(MAGIC, VERSION, WHAT)?;
        let devices = read_chains(&mut r, MAX_DEVICES, "device certificates")?;
        let admits = read_chains(&mut r, MAX_ADMITS, "admit grants")?;
        let count = r.len(max_revocations, "revocations")?;
        let mut revocations = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.len(crate::capability::MAX_REVOCATION_BYTES, "revocation")?;
            revocations.push(SignedRevocation::decode(r.take(len, "revocation")?)?);
        }
        r.finish(WHAT)?;
        Ok(Self {
            devices,
            admits,
            revocations,
        })
    }
}

fn read_chains(
    r: &mut Reader<'_>,
    max: usize,
    what: &'static str,
) -> Result<Vec<Chain>, DecodeError> {
    let count = r.len(max, what)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.len(MAX_DOCUMENT_BYTES, what)?;
        out.push(Chain::decode(r.take(len, what)?)?);
    }
    Ok(out)
}

/// What [`Membership::add_device`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// A device not known before.
    New(Device),
    /// A known device with a certificate that lasts longer.
    Renewed(Device),
    /// Nothing new.
    Known,
}

/// What a merge changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Devices not known before.
    pub new_devices: Vec<Device>,
    /// Known devices whose certificate was replaced by one lasting longer.
    pub renewed: Vec<Device>,
    /// Keys revoked by revocations not known before.
    pub revoked_keys: Vec<PublicKey>,
    /// Number of revocations not known before (of keys and of capabilities).
    pub new_revocations: usize,
    /// Number of `devices:admit` grants not known before.
    pub new_admits: usize,
    /// Documents left out, with the reason.
    pub rejected: Vec<String>,
}

impl Merged {
    /// Did anything change?
    pub fn changed(&self) -> bool {
        !self.new_devices.is_empty()
            || !self.renewed.is_empty()
            || self.new_revocations > 0
            || self.new_admits > 0
    }
}

/// One device of the mesh as the membership knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// What its certificate says.
    pub device: Device,
    /// Is its key revoked?
    pub revoked: bool,
}

/// The membership store of one device. The revocations live in the [`RevocationSet`]
/// the admission gate checks against, and are passed in where needed.
#[derive(Debug)]
pub struct Membership {
    verifier: Verifier,
    devices: BTreeMap<PublicKey, (Device, Chain)>,
    admits: BTreeMap<CapId, (PublicKey, Chain)>,
    /// The last digest, while nothing it covers changed (cleared by every change to
    /// the certificates and grants).
    digest_cache: std::sync::Mutex<Option<DigestCache>>,
}

/// A digest and what it holds for.
#[derive(Debug, Clone, Copy)]
struct DigestCache {
    /// The revocations' digest it was made with.
    revocations: [u8; 32],
    /// It holds from this time (it was made then)...
    from: UnixMillis,
    /// ... until the first live document in it expires.
    until: UnixMillis,
    digest: [u8; 32],
}

impl Membership {
    /// An empty membership for the mesh whose owner key is `owner`.
    pub fn new(owner: PublicKey) -> Self {
        Self {
            verifier: Verifier::new(owner, Default::default()),
            devices: BTreeMap::new(),
            admits: BTreeMap::new(),
            digest_cache: std::sync::Mutex::new(None),
        }
    }

    /// Forgets the cached digest (the certificates or grants changed).
    fn changed(&mut self) {
        if let Ok(cache) = self.digest_cache.get_mut() {
            *cache = None;
        } else {
            self.digest_cache = std::sync::Mutex::new(None);
        }
    }

    /// Adds a device certificate if it is valid now (revoked or not: a revoked device
    /// is listed as such). Keeps one certificate per node key, ranked so that every
    /// device keeps the same one: an unrevoked one (under `revocations`) over a
    /// revoked one, then one the owner key signs over one issued under a
    /// `devices:admit` grant, then the one that expires last, the shorter chain, the
    /// smaller id.
    ///
    /// A certificate issued under a grant (by a device, not the owner) never replaces
    /// one kept for the same key from elsewhere (only a renewal under the same grant),
    /// and cannot take the name of another key's unrevoked device: an admitter cannot
    /// re-certify, rename or impersonate a device the owner or another admitter
    /// certified.
    pub fn add_device(
        &mut self,
        now: UnixMillis,
        chain: &Chain,
        revocations: &RevocationSet,
    ) -> Result<Added, String> {
        let unrevoked = RevocationSet::new(*self.verifier.owner());
        let device = device::verify_certificate(&mut self.verifier, chain, now, &unrevoked)
            .map_err(|err| format!("device certificate: {err}"))?;
        let live = |chain: &Chain| revocations.revoked_link(chain).is_none();
        let by_owner = |chain: &Chain| chain.links().len() == 1;
        let rank = |device: &Device, chain: &Chain| {
            (
                live(chain),
                by_owner(chain),
                device.expires,
                std::cmp::Reverse(chain.links().len()),
                std::cmp::Reverse(chain.leaf().id()),
            )
        };
        if !by_owner(chain)
            && live(chain)
            && let Some((other, _)) = self
                .devices
                .iter()
                .find(|(key, (d, c))| **key != device.node_key && d.name == device.name && live(c))
        {
            return Err(format!(
                "a certificate issued under a devices:admit grant names {:?}, the name of \
                 another device ({})",
                device.name,
                other.short()
            ));
        }
        match self.devices.get(&device.node_key) {
            Some((known, known_chain)) if rank(known, known_chain) >= rank(&device, chain) => {
                Ok(Added::Known)
            }
            Some((known, known_chain))
                if !by_owner(chain) && known_chain.root_link().id() != chain.root_link().id() =>
            {
                Err(format!(
                    "a certificate for device {:?} issued under a devices:admit grant does \
                     not replace the one it holds from elsewhere",
                    known.name
                ))
            }
            Some((known, _)) if known.name != device.name || known.role != device.role => {
                Err(format!(
                    "a second certificate for device {:?} names it {:?} ({})",
                    known.name, device.name, device.role
                ))
            }
            Some(_) => {
                self.changed();
                self.devices
                    .insert(device.node_key, (device.clone(), chain.clone()));
                Ok(Added::Renewed(device))
            }
            None if self.devices.len() >= MAX_DEVICES => Err(format!(
                "the membership already holds {MAX_DEVICES} devices"
            )),
            None => {
                self.changed();
                self.devices
                    .insert(device.node_key, (device.clone(), chain.clone()));
                Ok(Added::New(device))
            }
        }
    }

    /// The certificate kept for the device with this node key.
    pub fn certificate(&self, key: &PublicKey) -> Option<&Chain> {
        self.devices.get(key).map(|(_, chain)| chain)
    }

    /// Adds a `devices:admit` grant if it is valid now. Returns whether it was new.
    pub fn add_admit(&mut self, now: UnixMillis, chain: &Chain) -> Result<bool, String> {
        let id = chain.leaf().id();
        if self.admits.contains_key(&id) {
            return Ok(false);
        }
        let unrevoked = RevocationSet::new(*self.verifier.owner());
        let verified = self
            .verifier
            .verify(chain, now, &unrevoked)
            .map_err(|err| format!("admit grant: {err}"))?;
        let admits = verified.grants.iter().any(|grant| {
            grant.actions.contains(Actions::ADMIT)
                && matches!(&grant.resource, Resource::DevicesAdmit { roles, .. } if !roles.is_empty())
        });
        if !admits {
            return Err(
                "the capability does not grant devices:admit for any role (a grant of an \
                 earlier format admits nothing; the owner issues a new one)"
                    .into(),
            );
        }
        if self.admits.len() >= MAX_ADMITS {
            return Err(format!(
                "the membership already holds {MAX_ADMITS} admit grants"
            ));
        }
        self.changed();
        self.admits.insert(id, (verified.holder, chain.clone()));
        Ok(true)
    }

    /// Takes in a peer's snapshot: revocations first (into `revocations`), then
    /// certificates and grants. Invalid documents are left out and reported.
    pub fn merge(
        &mut self,
        now: UnixMillis,
        snapshot: &Snapshot,
        revocations: &mut RevocationSet,
    ) -> Merged {
        let mut merged = Merged::default();
        for revocation in &snapshot.revocations {
            match revocations.insert(revocation) {
                Ok(true) => {
                    merged.new_revocations += 1;
                    if let crate::capability::RevocationTarget::Key(key) =
                        revocation.revocation().target
                    {
                        merged.revoked_keys.push(key);
                    }
                }
                Ok(false) => {}
                Err(err) => merged.rejected.push(format!("revocation: {err}")),
            }
        }
        for chain in &snapshot.devices {
            match self.add_device(now, chain, revocations) {
                Ok(Added::New(device)) => merged.new_devices.push(device),
                Ok(Added::Renewed(device)) => merged.renewed.push(device),
                Ok(Added::Known) => {}
                Err(reason) => merged.rejected.push(reason),
            }
        }
        for chain in &snapshot.admits {
            match self.add_admit(now, chain) {
                Ok(true) => merged.new_admits += 1,
                Ok(false) => {}
                Err(reason) => merged.rejected.push(reason),
            }
        }
        merged
    }

    /// Every device, revoked ones included, ordered by node key.
    pub fn members(&self, revocations: &RevocationSet) -> Vec<Member> {
        self.devices
            .values()
            .map(|(device, chain)| Member {
                device: device.clone(),
                revoked: revocations.revoked_link(chain).is_some(),
            })
            .collect()
    }

    /// A `devices:admit` grant held by `holder`, valid at `now` and unrevoked (the one
    /// that expires last).
    pub fn admit_for(
        &mut self,
        holder: &PublicKey,
        now: UnixMillis,
        revocations: &RevocationSet,
    ) -> Option<Chain> {
        let candidates: Vec<Chain> = self
            .admits
            .values()
            .filter(|(h, _)| h == holder)
            .map(|(_, chain)| chain.clone())
            .collect();
        candidates
            .into_iter()
            .filter_map(|chain| {
                let verified = self.verifier.verify(&chain, now, revocations).ok()?;
                Some((verified.expires, chain))
            })
            .max_by_key(|(expires, _)| *expires)
            .map(|(_, chain)| chain)
    }

    /// What is passed on first: the certificates and grants that are unrevoked and
    /// unexpired at `now`, and the first page of revocations.
    pub fn snapshot(&self, now: UnixMillis, revocations: &RevocationSet) -> Snapshot {
        self.page(now, revocations, None).snapshot
    }

    /// The live certificates and grants with one page of revocations: the owner's key
    /// revocations first (at most [`PRIORITY_KEYS`] of them, on every page, so a
    /// device revocation never waits behind others), then those after `after` in the
    /// order of [`RevocationSet::after`], as many as fit in [`MAX_REVOCATIONS`] and
    /// [`MAX_SNAPSHOT_BYTES`]. Paging from `None` through each [`Page::next`] until it
    /// is `None` carries every revocation.
    pub fn page(
        &self,
        now: UnixMillis,
        revocations: &RevocationSet,
        after: Option<&Position>,
    ) -> Page {
        let mut snapshot = self.documents(now, revocations);
        // Room left for revocations, with space for each one's length prefix and the
        // count.
        let mut room = MAX_SNAPSHOT_BYTES.saturating_sub(snapshot.encode().len() + 8);
        let mut fits = |signed: &SignedRevocation| {
            let size = signed.encode().len() + 3;
            let fits = size <= room;
            if fits {
                room -= size;
            }
            fits
        };
        // The priority part, unless the page starts at the beginning anyway.
        let mut last_priority = None;
        if after.is_some() {
            for (position, signed) in revocations.key_revocations().take(PRIORITY_KEYS) {
                if !fits(signed) {
                    break;
                }
                snapshot.revocations.push(signed.clone());
                last_priority = Some(position);
            }
        }
        let mut rest = revocations
            .after(after)
            .filter(|(position, _)| last_priority.is_none_or(|last| *position > last))
            .peekable();
        let mut last = None;
        while let Some((position, signed)) = rest.peek() {
            if snapshot.revocations.len() >= MAX_REVOCATIONS || !fits(signed) {
                break;
            }
            snapshot.revocations.push((*signed).clone());
            last = Some(*position);
            rest.next();
        }
        // More to come only if this page made progress (a page that cannot carry
        // even one more revocation ends the round rather than repeating itself).
        let next = last.filter(|_| rest.peek().is_some());
        Page { snapshot, next }
    }

    /// The certificates and grants that are unrevoked and unexpired at `now`.
    fn documents(&self, now: UnixMillis, revocations: &RevocationSet) -> Snapshot {
        let live = |chain: &Chain| {
            revocations.revoked_link(chain).is_none()
                && chain.links().iter().all(|l| l.capability().expires > now)
        };
        Snapshot {
            devices: self
                .devices
                .values()
                .map(|(_, chain)| chain)
                .filter(|c| live(c))
                .cloned()
                .collect(),
            admits: self
                .admits
                .values()
                .map(|(_, chain)| chain)
                .filter(|c| live(c))
                .cloned()
                .collect(),
            revocations: Vec::new(),
        }
    }

    /// Everything held, revoked certificates included, to store on disk.
    pub fn stored(&self, revocations: &RevocationSet) -> Snapshot {
        Snapshot {
            devices: self.devices.values().map(|(_, c)| c.clone()).collect(),
            admits: self.admits.values().map(|(_, c)| c.clone()).collect(),
            revocations: revocations.iter().cloned().collect(),
        }
    }

    /// A digest of the live certificates and grants and of every revocation: two
    /// devices with equal digests hold the same live membership.
    ///
    /// Kept from one call to the next while the certificates, grants and revocations
    /// stay the same and no live document expires (the exchange asks for it with every
    /// message).
    pub fn digest(&self, now: UnixMillis, revocations: &RevocationSet) -> [u8; 32] {
        let revoked = revocations.digest();
        let mut cache = self.digest_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref()
            && c.revocations == revoked
            && c.from <= now
            && now < c.until
        {
            return c.digest;
        }
        let documents = self.documents(now, revocations);
        let until = documents
            .devices
            .iter()
            .chain(&documents.admits)
            .flat_map(|chain| chain.links().iter().map(|l| l.capability().expires))
            .min()
            .unwrap_or(UnixMillis(u64::MAX));
        let mut hasher = Sha256::new();
        hasher.update(documents.encode());
        hasher.update(revoked);
        let digest = hasher.finalize().into();
        *cache = Some(DigestCache {
            revocations: revoked,
            from: now,
            until,
            digest,
        });
        digest
    }
}

/// One page of a membership exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// What to send.
    pub snapshot: Snapshot,
    /// Where the next page starts, or `None` when this page reached the last
    /// revocation.
    pub next: Option<Position>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::capability::{Capability, Revocation, RevocationTarget, Role};
    use crate::key::{NodeKey, OwnerKey};

    const NOW: UnixMillis = UnixMillis(1_000_000);
    const LATER: UnixMillis = UnixMillis(10_000_000);

    fn cert(owner: &OwnerKey, node: &NodeKey, name: &str, expires: UnixMillis) -> Chain {
        device::issue_certificate(
            owner.secret(),
            None,
            node.public(),
            name,
            Role::Home,
            UnixMillis(0),
            expires,
            [0; 16],
        )
        .unwrap()
    }

    fn admit(owner: &OwnerKey, node: &NodeKey) -> Chain {
        Chain::root(
            Capability {
                issuer: owner.public(),
                audience: node.public(),
                parent: None,
                grants: vec![crate::capability::Grant::new(
                    Resource::DevicesAdmit {
                        roles: crate::capability::Roles::of([Role::Mobile]),
                        names: "*".into(),
                    },
                    Actions::ADMIT,
                )],
                not_before: UnixMillis(0),
                expires: LATER,
                nonce: [7; 16],
            }
            .sign(owner.secret())
            .unwrap(),
        )
    }

    /// The digest kept between calls is the one made afresh, through every change:
    /// a device, a grant, a revocation, a certificate expiring, the clock going back.
    #[test]
    fn the_kept_digest_follows_every_change() {
        let owner = OwnerKey::from_seed([1; 32]);
        let mut revocations = RevocationSet::new(owner.public());
        let mut m = Membership::new(owner.public());
        let fresh = |m: &Membership, now, revocations: &RevocationSet| {
            let mut copy = Membership::new(owner.public());
            copy.merge(now, &m.stored(revocations), &mut revocations.clone());
            let mut hasher = Sha256::new();
            hasher.update(copy.documents(now, revocations).encode());
            hasher.update(revocations.digest());
            <[u8; 32]>::from(hasher.finalize())
        };
        let short = NodeKey::from_seed([2; 32]);
        m.add_device(
            NOW,
            &cert(&owner, &short, "phone", UnixMillis(2_000_000)),
            &revocations,
        )
        .unwrap();
        let first = m.digest(NOW, &revocations);
        assert_eq!(first, fresh(&m, NOW, &revocations));
        assert_eq!(m.digest(NOW, &revocations), first);

        let hub = NodeKey::from_seed([3; 32]);
        m.add_device(NOW, &cert(&owner, &hub, "hub", LATER), &revocations)
            .unwrap();
        let second = m.digest(NOW, &revocations);
        assert_ne!(second, first);
        assert_eq!(second, fresh(&m, NOW, &revocations));

        m.add_admit(NOW, &admit(&owner, &hub)).unwrap();
        let third = m.digest(NOW, &revocations);
        assert_ne!(third, second);
        assert_eq!(third, fresh(&m, NOW, &revocations));

        revocations.insert(&revoke(&owner, &short)).unwrap();
        let fourth = m.digest(NOW, &revocations);
        assert_ne!(fourth, third);
        assert_eq!(fourth, fresh(&m, NOW, &revocations));

        // The hub's certificate expires: the digest moves at that instant.
        let before = UnixMillis(LATER.0 - 1);
        assert_eq!(m.digest(before, &revocations), fourth);
        let expired = m.digest(LATER, &revocations);
        assert_ne!(expired, fourth);
        assert_eq!(expired, fresh(&m, LATER, &revocations));
        // The clock goes back: the digest of that time again.
        assert_eq!(m.digest(NOW, &revocations), fourth);
    }

    fn revoke(owner: &OwnerKey, node: &NodeKey) -> SignedRevocation {
        Revocation {
            issuer: owner.public(),
            target: RevocationTarget::Key(node.public()),
            issued_at: NOW,
            reason: "lost".into(),
        }
        .sign(owner.secret())
        .unwrap()
    }

    #[test]
    fn merging_in_any_order_converges() {
        let owner = OwnerKey::from_seed([1; 32]);
        let nodes: Vec<NodeKey> = (2..6).map(|i| NodeKey::from_seed([i; 32])).collect();
        let certs: Vec<Chain> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| cert(&owner, n, &format!("d{i}"), LATER))
            .collect();
        let mut a = Membership::new(owner.public());
        let mut ra = RevocationSet::new(owner.public());
        let mut b = Membership::new(owner.public());
        let mut rb = RevocationSet::new(owner.public());
        a.add_device(NOW, &certs[0], &ra).unwrap();
        a.add_device(NOW, &certs[1], &ra).unwrap();
        ra.insert(&revoke(&owner, &nodes[1])).unwrap();
        b.add_device(NOW, &certs[3], &rb).unwrap();
        b.add_device(NOW, &certs[2], &rb).unwrap();
        b.add_admit(NOW, &admit(&owner, &nodes[2])).unwrap();
        assert_ne!(a.digest(NOW, &ra), b.digest(NOW, &rb));

        let from_b = b.snapshot(NOW, &rb);
        let merged = a.merge(NOW, &from_b, &mut ra);
        assert_eq!(merged.new_devices.len(), 2);
        assert_eq!(merged.new_admits, 1);
        let from_a = Snapshot::decode(&a.snapshot(NOW, &ra).encode()).unwrap();
        let merged = b.merge(NOW, &from_a, &mut rb);
        assert_eq!(merged.revoked_keys, vec![nodes[1].public()]);
        assert_eq!(a.digest(NOW, &ra), b.digest(NOW, &rb));
        // The revoked device is listed as revoked, and not passed on.
        let members = b.members(&rb);
        assert_eq!(members.len(), 3);
        assert_eq!(members.iter().filter(|m| m.revoked).count(), 0);
        assert!(a.members(&ra).iter().any(|m| m.revoked));
        assert_eq!(a.snapshot(NOW, &ra).devices.len(), 3);
        // A second merge changes nothing.
        assert!(!a.merge(NOW, &from_b, &mut ra).changed());
    }

    #[test]
    fn foreign_and_expired_documents_are_left_out() {
        let owner = OwnerKey::from_seed([1; 32]);
        let stranger = OwnerKey::from_seed([9; 32]);
        let node = NodeKey::from_seed([2; 32]);
        let mut m = Membership::new(owner.public());
        let mut revocations = RevocationSet::new(owner.public());
        let snapshot = Snapshot {
            devices: vec![
                cert(&stranger, &node, "spy", LATER),
                cert(&owner, &node, "old", UnixMillis(10)),
            ],
            admits: vec![cert(&owner, &node, "not-an-admit", LATER)],
            revocations: vec![revoke(&stranger, &node)],
        };
        let merged = m.merge(NOW, &snapshot, &mut revocations);
        assert!(!merged.changed());
        assert_eq!(merged.rejected.len(), 4, "{:?}", merged.rejected);
        assert!(m.members(&revocations).is_empty());
        assert!(revocations.is_empty());
    }

    #[test]
    fn an_admitter_cannot_recertify_rename_or_impersonate_a_device() {
        let owner = OwnerKey::from_seed([1; 32]);
        let cloud = NodeKey::from_seed([3; 32]);
        let tablet = NodeKey::from_seed([4; 32]);
        let phone = NodeKey::from_seed([2; 32]);
        let (by_cloud, by_tablet) = (admit(&owner, &cloud), admit(&owner, &tablet));
        let issue = |signer: &NodeKey, grant: &Chain, node: &NodeKey, name: &str, expires, n| {
            device::issue_certificate(
                signer.secret(),
                Some(grant),
                node.public(),
                name,
                Role::Mobile,
                UnixMillis(0),
                expires,
                [n; 16],
            )
            .unwrap()
        };
        let by_owner = |node: &NodeKey, name: &str, expires, n| {
            device::issue_certificate(
                owner.secret(),
                None,
                node.public(),
                name,
                Role::Mobile,
                UnixMillis(0),
                expires,
                [n; 16],
            )
            .unwrap()
        };
        let mut m = Membership::new(owner.public());
        let mut revocations = RevocationSet::new(owner.public());
        let phone_cert = by_owner(&phone, "phone", UnixMillis(5_000_000), 1);
        m.add_device(NOW, &phone_cert, &revocations).unwrap();
        let pad = NodeKey::from_seed([5; 32]);
        let pad_cert = issue(&tablet, &by_tablet, &pad, "pad", UnixMillis(5_000_000), 2);
        m.add_device(NOW, &pad_cert, &revocations).unwrap();
        let before = m.stored(&revocations);

        // The cloud re-certifies the phone for longer: the owner's certificate stays.
        let longer = issue(&cloud, &by_cloud, &phone, "phone", LATER, 3);
        assert_eq!(m.add_device(NOW, &longer, &revocations), Ok(Added::Known));
        // ...certifies a key of its own under the phone's name: refused.
        let impostor = NodeKey::from_seed([6; 32]);
        let named = issue(&cloud, &by_cloud, &impostor, "phone", LATER, 4);
        assert!(m.add_device(NOW, &named, &revocations).is_err());
        // ...takes over the pad the tablet admitted: refused.
        let taken = issue(&cloud, &by_cloud, &pad, "pad", LATER, 5);
        assert!(m.add_device(NOW, &taken, &revocations).is_err());
        assert_eq!(m.stored(&revocations), before, "nothing changed");
        let merged = m.merge(
            NOW,
            &Snapshot {
                devices: vec![longer, named, taken],
                ..Snapshot::default()
            },
            &mut revocations,
        );
        assert_eq!(merged.rejected.len(), 2, "{:?}", merged.rejected);
        assert_eq!(m.stored(&revocations), before);

        // The tablet renews its pad; the owner approves it (signs it outright).
        let renewed = issue(&tablet, &by_tablet, &pad, "pad", LATER, 6);
        assert!(matches!(
            m.add_device(NOW, &renewed, &revocations),
            Ok(Added::Renewed(_))
        ));
        let approved = by_owner(&pad, "pad", UnixMillis(4_000_000), 7);
        assert!(matches!(
            m.add_device(NOW, &approved, &revocations),
            Ok(Added::Renewed(_))
        ));
        assert_eq!(m.certificate(&pad.public()), Some(&approved));

        // A revoked certificate never stands in for a live one, whatever its expiry.
        revocations
            .insert(
                &Revocation {
                    issuer: owner.public(),
                    target: RevocationTarget::Capability(phone_cert.leaf().id()),
                    issued_at: NOW,
                    reason: "reissued".into(),
                }
                .sign(owner.secret())
                .unwrap(),
            )
            .unwrap();
        let reissued = by_owner(&phone, "phone", UnixMillis(2_000_000), 8);
        assert!(matches!(
            m.add_device(NOW, &reissued, &revocations),
            Ok(Added::Renewed(_))
        ));
        assert_eq!(
            m.add_device(NOW, &phone_cert, &revocations),
            Ok(Added::Known)
        );
        assert_eq!(m.certificate(&phone.public()), Some(&reissued));
        // With the phone's old certificate revoked, its name is still the phone's.
        assert!(
            m.add_device(
                NOW,
                &issue(&cloud, &by_cloud, &impostor, "phone", LATER, 9),
                &revocations
            )
            .is_err()
        );
    }

    #[test]
    fn an_admitter_cannot_mint_a_device_beyond_its_grant() {
        // The cloud holds a grant for mobile devices and signs certificates itself,
        // outside its own gate: a home device, and a mobile one.
        let owner = OwnerKey::from_seed([1; 32]);
        let cloud = NodeKey::from_seed([3; 32]);
        let grant = admit(&owner, &cloud);
        let minted = |role, name: &str, seed| {
            device::issue_certificate(
                cloud.secret(),
                Some(&grant),
                NodeKey::from_seed([seed; 32]).public(),
                name,
                role,
                UnixMillis(0),
                LATER,
                [seed; 16],
            )
            .unwrap()
        };
        let mut m = Membership::new(owner.public());
        let mut revocations = RevocationSet::new(owner.public());
        let merged = m.merge(
            NOW,
            &Snapshot {
                devices: vec![
                    minted(Role::Home, "hub", 20),
                    minted(Role::Mobile, "pad", 21),
                ],
                ..Snapshot::default()
            },
            &mut revocations,
        );
        assert_eq!(merged.new_devices.len(), 1);
        assert_eq!(merged.new_devices[0].name, "pad");
        assert_eq!(merged.rejected.len(), 1, "{:?}", merged.rejected);
        // Withdrawing the grant ends the device it admitted.
        let withdrawn = Revocation {
            issuer: owner.public(),
            target: RevocationTarget::Capability(grant.leaf().id()),
            issued_at: NOW,
            reason: String::new(),
        }
        .sign(owner.secret())
        .unwrap();
        revocations.insert(&withdrawn).unwrap();
        assert!(m.members(&revocations).iter().all(|member| member.revoked));
    }

    #[test]
    fn admit_grants_are_found_for_their_holder_until_revoked() {
        let owner = OwnerKey::from_seed([1; 32]);
        let cloud = NodeKey::from_seed([3; 32]);
        let mut m = Membership::new(owner.public());
        let mut revocations = RevocationSet::new(owner.public());
        let grant = admit(&owner, &cloud);
        assert!(m.add_admit(NOW, &grant).unwrap());
        assert_eq!(m.admit_for(&cloud.public(), NOW, &revocations), Some(grant));
        assert_eq!(m.admit_for(&owner.public(), NOW, &revocations), None);
        revocations.insert(&revoke(&owner, &cloud)).unwrap();
        assert_eq!(m.admit_for(&cloud.public(), NOW, &revocations), None);
    }

    #[test]
    fn a_flood_of_foreign_revocations_never_crowds_out_a_device_revocation() {
        use crate::capability::{Grant, RevocationError};
        let owner = OwnerKey::from_seed([1; 32]);
        let phone = NodeKey::from_seed([2; 32]);
        let developer = NodeKey::from_seed([4; 32]);
        let m = Membership::new(owner.public());
        let mut revocations = RevocationSet::new(owner.public());
        let revocation = |by: &NodeKey, id: CapId| {
            Revocation {
                issuer: by.public(),
                target: RevocationTarget::Capability(id),
                issued_at: NOW,
                reason: String::new(),
            }
            .sign(by.secret())
            .unwrap()
        };
        // A member signs capability revocations with throwaway keys: without a chain
        // that puts the key above the capability, every one is refused.
        for i in 0..200u64 {
            let junk = NodeKey::from_seed([u8::try_from(i % 200).unwrap() + 20; 32]);
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            assert_eq!(
                revocations.insert(&revocation(&junk, CapId(id))),
                Err(RevocationError::NoProof)
            );
        }
        assert!(revocations.is_empty());
        // A developer holding a real capability may revoke what it delegated, with
        // the chain as proof; the same proof does not let another key revoke it, and
        // a chain not rooted at the owner proves nothing.
        let grant = Chain::root(
            Capability {
                issuer: owner.public(),
                audience: developer.public(),
                parent: None,
                grants: vec![Grant::new(Resource::Store("*".into()), Actions::READ)],
                not_before: UnixMillis(0),
                expires: LATER,
                nonce: [1; 16],
            }
            .sign(owner.secret())
            .unwrap(),
        );
        let delegate = |i: u64| {
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&i.to_be_bytes());
            grant
                .extend(
                    Capability {
                        issuer: developer.public(),
                        audience: NodeKey::from_seed([9; 32]).public(),
                        parent: Some(grant.leaf().id()),
                        grants: vec![Grant::new(Resource::Store("*".into()), Actions::READ)],
                        not_before: UnixMillis(0),
                        expires: LATER,
                        nonce,
                    }
                    .sign(developer.secret())
                    .unwrap(),
                )
                .unwrap()
        };
        let chain = delegate(0);
        let id = chain.leaf().id();
        let stranger = NodeKey::from_seed([5; 32]);
        assert_eq!(
            revocations.insert(&revocation(&stranger, id).with_proof(chain.clone())),
            Err(RevocationError::NoProof)
        );
        let forged_root = Chain::root(
            Capability {
                issuer: stranger.public(),
                audience: developer.public(),
                parent: None,
                grants: vec![Grant::new(Resource::Store("*".into()), Actions::READ)],
                not_before: UnixMillis(0),
                expires: LATER,
                nonce: [1; 16],
            }
            .sign(stranger.secret())
            .unwrap(),
        );
        assert_eq!(
            revocations
                .insert(&revocation(&developer, forged_root.leaf().id()).with_proof(forged_root)),
            Err(RevocationError::NoProof)
        );
        let by_developer = revocation(&developer, id).with_proof(chain.clone());
        let bytes = by_developer.encode();
        let decoded = SignedRevocation::decode(&bytes).unwrap();
        assert_eq!(decoded, by_developer);
        assert_eq!(revocations.insert(&decoded), Ok(true));
        assert_eq!(revocations.revoked_link(&chain), Some(1));
        // Even a holder of a real capability cannot grow the set without end: it has
        // an allowance under its grant...
        let mut refused = 0;
        for i in 1..=(crate::capability::MAX_FOREIGN_PER_GRANT as u64) {
            let chain = delegate(i);
            let r = revocation(&developer, chain.leaf().id()).with_proof(chain);
            if revocations.insert(&r) == Err(RevocationError::TooManyUnderGrant) {
                refused += 1;
            }
        }
        assert_eq!(refused, 1, "bounded: the last is refused");
        // ...then the owner revokes the phone: it heads the first page.
        revocations.insert(&revoke(&owner, &phone)).unwrap();
        let snapshot = m.snapshot(NOW, &revocations);
        assert_eq!(
            snapshot.revocations.first().map(|r| r.revocation().target),
            Some(RevocationTarget::Key(phone.public()))
        );
        let mut other = RevocationSet::new(owner.public());
        let merged = Membership::new(owner.public()).merge(NOW, &snapshot, &mut other);
        assert_eq!(merged.revoked_keys, vec![phone.public()]);
        assert!(merged.rejected.is_empty(), "{:?}", merged.rejected);
        // The file keeps every one, proofs included.
        let stored = m.stored(&revocations).encode();
        let back = Snapshot::decode_stored(&stored).unwrap();
        assert_eq!(back.revocations.len(), revocations.len());
        let mut again = RevocationSet::new(owner.public());
        let merged = Membership::new(owner.public()).merge(NOW, &back, &mut again);
        assert!(merged.rejected.is_empty(), "{:?}", merged.rejected);
        assert_eq!(again.digest(), revocations.digest());
    }

    /// Pages `from`'s membership to `to` as the mesh does, until the digests agree or
    /// a round ends; returns the pages sent.
    fn page_across(
        from: (&Membership, &RevocationSet),
        to: (&mut Membership, &mut RevocationSet),
    ) -> Vec<Snapshot> {
        let mut sent = Vec::new();
        let mut after = None;
        loop {
            if from.0.digest(NOW, from.1) == to.0.digest(NOW, to.1) {
                return sent;
            }
            let page = from.0.page(NOW, from.1, after.as_ref());
            let bytes = page.snapshot.encode();
            assert!(bytes.len() <= MAX_SNAPSHOT_BYTES);
            let snapshot = Snapshot::decode(&bytes).unwrap();
            let merged = to.0.merge(NOW, &snapshot, to.1);
            assert!(merged.rejected.is_empty(), "{:?}", merged.rejected);
            sent.push(snapshot);
            match page.next {
                Some(next) => after = Some(next),
                None => return sent,
            }
        }
    }

    fn revoke_capability(owner: &OwnerKey, i: u64) -> SignedRevocation {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_be_bytes());
        Revocation {
            issuer: owner.public(),
            target: RevocationTarget::Capability(CapId(id)),
            issued_at: NOW,
            reason: format!("revocation {i}"),
        }
        .sign(owner.secret())
        .unwrap()
    }

    #[test]
    fn a_hundred_thousand_revocations_are_paged_to_the_last_with_device_revocations_on_every_page()
    {
        let owner = OwnerKey::from_seed([1; 32]);
        let phone = NodeKey::from_seed([2; 32]);
        let home = NodeKey::from_seed([3; 32]);
        let mut a = Membership::new(owner.public());
        let mut ra = RevocationSet::new(owner.public());
        a.add_device(NOW, &cert(&owner, &home, "home", LATER), &ra)
            .unwrap();
        a.add_device(NOW, &cert(&owner, &phone, "phone", LATER), &ra)
            .unwrap();
        for i in 0..100_000 {
            assert!(ra.insert(&revoke_capability(&owner, i)).unwrap());
        }
        let mut b = Membership::new(owner.public());
        let mut rb = RevocationSet::new(owner.public());
        // b knows most revocations, not the last ten in paging order; then the phone
        // is revoked.
        for i in 0..99_990 {
            rb.insert(&revoke_capability(&owner, i)).unwrap();
        }
        ra.insert(&revoke(&owner, &phone)).unwrap();
        let pages = page_across((&a, &ra), (&mut b, &mut rb));
        assert!(pages.len() >= 98, "{} pages", pages.len());
        assert!(pages.iter().all(|p| p.revocations.len() <= MAX_REVOCATIONS));
        // The device revocation heads every page, the first included.
        for page in &pages {
            assert_eq!(
                page.revocations.first().map(|r| r.revocation().target),
                Some(RevocationTarget::Key(phone.public()))
            );
        }
        assert_eq!(rb.len(), 100_001);
        assert!(rb.is_key_revoked(&phone.public()));
        assert_eq!(a.digest(NOW, &ra), b.digest(NOW, &rb));
        // An agreeing pair sends nothing more.
        assert!(page_across((&a, &ra), (&mut b, &mut rb)).is_empty());
    }

    #[test]
    fn two_documents_revoking_the_same_thing_count_once() {
        let owner = OwnerKey::from_seed([1; 32]);
        let mut ra = RevocationSet::new(owner.public());
        let mut rb = RevocationSet::new(owner.public());
        let first = revoke_capability(&owner, 7);
        let mut other = first.revocation().clone();
        other.reason = "said differently".into();
        let second = other.sign(owner.secret()).unwrap();
        assert!(ra.insert(&first).unwrap());
        assert!(rb.insert(&second).unwrap());
        assert!(!ra.insert(&second).unwrap());
        assert_eq!(ra.digest(), rb.digest());
        // A forged copy of a held revocation changes nothing.
        let mut forged = first.encode();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let forged = SignedRevocation::decode(&forged).unwrap();
        assert!(!ra.insert(&forged).unwrap());
        assert_eq!(ra.len(), 1);
    }

    #[test]
    fn decoding_refuses_garbage_and_round_trips() {
        let owner = OwnerKey::from_seed([1; 32]);
        let node = NodeKey::from_seed([2; 32]);
        let snapshot = Snapshot {
            devices: vec![cert(&owner, &node, "home", LATER)],
            admits: vec![admit(&owner, &node)],
            revocations: vec![revoke(&owner, &node)],
        };
        let bytes = snapshot.encode();
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snapshot);
        for cut in 0..bytes.len() {
            assert!(Snapshot::decode(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Snapshot::decode(&long).is_err());
        assert!(Snapshot::decode(&vec![0; MAX_SNAPSHOT_BYTES + 1]).is_err());
    }
}
