//! A node's stores as the sync engine's [`Replica`], under a placement policy.

use std::collections::{BTreeMap, BTreeSet};

use hearth_protocol::capability::Role;
use hearth_protocol::sync::erasure::Selector;
use hearth_protocol::sync::placement::Policy;
use hearth_protocol::sync::{
    Digest, Engine, Replica, ReplicaError, StoreKind, StoreRef, SyncMessage, SyncState, Unit,
    UnitHeads,
};

use crate::registry::Stores;
use crate::store::{Kind, Store, StoreMeta};

/// Who holds which store: the placement policy, as the sync engine asks it.
pub trait Placement<P> {
    /// May `peer` hold a replica of `store`? Nothing of a store is sent to a peer, or
    /// taken from it, unless this is true.
    fn peer_holds(&self, peer: &P, store: &StoreRef) -> bool;
    /// Should this device hold `store`, which `peer` offers?
    fn we_hold(&self, peer: &P, store: &StoreRef) -> bool;
    /// Does the placement put the store `id` on this device (so it keeps its replica
    /// until a holder confirms it)?
    fn keeps(&self, _id: &str) -> bool {
        true
    }
    /// The text fields a doc store declares (its placement document says), for a new
    /// replica of it.
    fn text_fields(&self, _store: &StoreRef) -> Vec<String> {
        Vec::new()
    }
    /// The erasures of the store `id` this device knows of (verified), in order, if it
    /// tracks them: a new replica is made only at that count, so a peer cannot make
    /// this device hold a replica no honest holder will ever sync with, and what peers
    /// send it is checked against them.
    fn erasures(&self, _id: &str) -> Option<Vec<Selector>> {
        None
    }
    /// The retention (ms) of the store `id`, for a new replica of it.
    fn keep_ms(&self, _id: &str) -> Option<u64> {
        None
    }
}

/// A store's id in the sync protocol after `erasures` erasures: the id itself, then
/// `~N`. Replicas with different counts are different stores to the engine, so no
/// change crosses an erasure in either direction.
pub fn sync_id(id: &str, erasures: u64) -> String {
    if erasures == 0 {
        id.to_owned()
    } else {
        format!("{id}~{erasures}")
    }
}

/// Splits a sync id into the store id and its erasure count (`None` if malformed).
pub fn parse_sync_id(sync: &str) -> Option<(&str, u64)> {
    match sync.split_once('~') {
        None => Some((sync, 0)),
        Some((id, n)) => {
            let n: u64 = n.parse().ok()?;
            (n > 0 && n.to_string().len() == sync.len() - id.len() - 1).then_some((id, n))
        }
    }
}

/// Every device holds every store: for tests and single-purpose meshes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Everywhere;

impl<P> Placement<P> for Everywhere {
    fn peer_holds(&self, _: &P, _: &StoreRef) -> bool {
        true
    }

    fn we_hold(&self, _: &P, _: &StoreRef) -> bool {
        true
    }
}

/// The placement of a mesh's stores as one device sees it: each store's origin and
/// policy (from its verified placement document), and the devices connected.
#[derive(Debug, Clone)]
pub struct Policies<P> {
    /// This device's name and role.
    pub me: (String, Role),
    /// A store every device holds (the catalogue), if any.
    pub everyone: Option<String>,
    /// Connected devices: name and role.
    pub devices: BTreeMap<P, (String, Role)>,
    /// Each listed store's origin and policy, by id.
    pub policies: BTreeMap<String, (String, Policy)>,
    /// Stores removed from the mesh.
    pub removed: BTreeSet<String>,
    /// The text fields of the doc stores that declare any, by id.
    pub text: BTreeMap<String, Vec<String>>,
    /// The erasures of each store the catalogue holds verified, in order, by id.
    pub erasures: BTreeMap<String, Vec<Selector>>,
    /// The retention (ms) of each store that has one, by id.
    pub keeps: BTreeMap<String, u64>,
}

/// What to do with a local replica, given the placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep it: the placement puts it here, or no document lists it.
    Keep,
    /// The placement no longer puts it here, but no holder it names has confirmed it
    /// yet: keep it for now.
    Wait,
    /// Drop it: removed from the mesh, or a holder the placement names confirmed it.
    Drop,
}

impl<P: Ord> Policies<P> {
    /// No stores, no devices.
    pub fn new(name: &str, role: Role, everyone: Option<String>) -> Self {
        Self {
            me: (name.to_owned(), role),
            everyone,
            devices: BTreeMap::new(),
            policies: BTreeMap::new(),
            removed: BTreeSet::new(),
            text: BTreeMap::new(),
            erasures: BTreeMap::new(),
            keeps: BTreeMap::new(),
        }
    }

    /// Does the placement of the store `id` name `peer` as a holder?
    pub fn named(&self, peer: &P, id: &str) -> bool {
        let Some((name, role)) = self.devices.get(peer) else {
            return false;
        };
        if self.everyone.as_deref() == Some(id) {
            return true;
        }
        self.policies
            .get(id)
            .is_some_and(|(origin, policy)| policy.holds(name, *role, origin))
    }

    /// May `peer` sync the store `id` with this device? The holders the placement
    /// names, and the store's origin device: the data comes from it, and when a
    /// placement moves a store off its origin, the origin hands its copy over before it
    /// drops it (it never counts as a holder that confirms a copy).
    pub fn holds(&self, peer: &P, id: &str) -> bool {
        self.named(peer, id)
            || self.devices.get(peer).is_some_and(|(name, _)| {
                self.policies
                    .get(id)
                    .is_some_and(|(origin, _)| origin == name)
            })
    }

    /// Does the placement put the store `id` on this device?
    pub fn held_here(&self, id: &str) -> bool {
        if self.everyone.as_deref() == Some(id) {
            return true;
        }
        self.policies
            .get(id)
            .is_some_and(|(origin, policy)| policy.holds(&self.me.0, self.me.1, origin))
    }

    /// What to do with this device's replica of `id` (known to the engine as `sync`),
    /// whose digest is `ours`: a
    /// replica the placement no longer puts here is dropped only once a device the
    /// placement names has confirmed, over sync, that it holds the same and keeps it
    /// (a claim from a device it does not name proves nothing).
    pub fn keep(&self, engine: &Engine<P>, id: &str, sync: &str, ours: Digest) -> Keep
    where
        P: Clone,
    {
        if self.removed.contains(id) {
            return Keep::Drop;
        }
        if !self.policies.contains_key(id) || self.held_here(id) {
            return Keep::Keep;
        }
        // Only a holder that said it keeps the store counts: two devices whose
        // placements disagree for a moment must not each drop on the other's word.
        let confirmed = engine
            .replicas(sync)
            .iter()
            .any(|r| self.named(&r.peer, id) && r.kept == Some(ours));
        if confirmed { Keep::Drop } else { Keep::Wait }
    }
}

impl<P: Ord> Placement<P> for Policies<P> {
    fn peer_holds(&self, peer: &P, store: &StoreRef) -> bool {
        self.holds(peer, &store.id)
    }

    fn we_hold(&self, _: &P, store: &StoreRef) -> bool {
        self.held_here(&store.id)
    }

    fn keeps(&self, id: &str) -> bool {
        self.held_here(id)
    }

    fn text_fields(&self, store: &StoreRef) -> Vec<String> {
        self.text.get(&store.id).cloned().unwrap_or_default()
    }

    fn erasures(&self, id: &str) -> Option<Vec<Selector>> {
        Some(self.erasures.get(id).cloned().unwrap_or_default())
    }

    fn keep_ms(&self, id: &str) -> Option<u64> {
        self.keeps.get(id).copied()
    }
}

/// What the sync protocol needs to know of a store (with the erasure count of `meta`;
/// [`Store::sync_id`] is the count now).
pub fn store_ref(meta: &StoreMeta) -> StoreRef {
    StoreRef {
        id: sync_id(&meta.id, meta.erasures),
        name: meta.name.clone(),
        kind: match meta.kind {
            Kind::Kv => StoreKind::Kv,
            Kind::Timeseries => StoreKind::Timeseries,
            Kind::Doc => StoreKind::Doc,
        },
        window_ms: meta.window_ms,
    }
}

/// The stores of one node, seen by the sync engine through `placement`. `now` stamps
/// replicas created here.
#[derive(Debug)]
pub struct StoresReplica<'a, L> {
    stores: &'a Stores,
    placement: &'a L,
    now: u64,
}

impl<'a, L> StoresReplica<'a, L> {
    /// The replica view of `stores`.
    pub fn new(stores: &'a Stores, placement: &'a L, now: u64) -> Self {
        Self {
            stores,
            placement,
            now,
        }
    }

    /// The store whose sync id is `sync`: the store with that id, at that erasure
    /// count.
    fn store(&self, sync: &str) -> Result<std::sync::Arc<Store>, ReplicaError> {
        parse_sync_id(sync)
            .and_then(|(id, erasures)| {
                self.stores
                    .get_by_id(id)
                    .filter(|store| store.erasures() == erasures)
            })
            .ok_or_else(|| ReplicaError::Local(format!("store {sync} is not here")))
    }
}

impl<P, L: Placement<P>> Replica<P> for StoresReplica<'_, L> {
    fn shared_with(&mut self, peer: &P) -> Vec<StoreRef> {
        self.stores
            .all()
            .iter()
            .filter(|store| self.placement.peer_holds(peer, &store_ref(store.meta())))
            .map(|store| StoreRef {
                id: store.sync_id(),
                ..store_ref(store.meta())
            })
            .collect()
    }

    fn accept(&mut self, peer: &P, store: &StoreRef) -> bool {
        let Some((id, erasures)) = parse_sync_id(&store.id) else {
            return false;
        };
        let plain = StoreRef {
            id: id.to_owned(),
            ..store.clone()
        };
        // Both: a peer the placement does not name is served nothing of the store and
        // has nothing of it applied, whatever it offers.
        if !self.placement.peer_holds(peer, &plain) || !self.placement.we_hold(peer, &plain) {
            return false;
        }
        if let Some(local) = self.stores.get_by_id(id) {
            // A replica on another side of an erasure is not synced with.
            return local.erasures() == erasures;
        }
        let known = self.placement.erasures(id);
        if known
            .as_ref()
            .is_some_and(|known| known.len() as u64 != erasures)
        {
            return false;
        }
        let meta = StoreMeta {
            name: store.name.clone(),
            id: id.to_owned(),
            kind: match store.kind {
                StoreKind::Kv => Kind::Kv,
                StoreKind::Timeseries => Kind::Timeseries,
                StoreKind::Doc => Kind::Doc,
            },
            created: self.now,
            window_ms: store.window_ms,
            text: self.placement.text_fields(&plain),
            erasures,
            erased: known.unwrap_or_default(),
        };
        match self.stores.create_replica(meta) {
            Ok(replica) => {
                // Past its retention it takes nothing, from the first exchange on.
                replica.set_keep(self.placement.keep_ms(id));
                true
            }
            Err(err) => {
                tracing::warn!(store = %store.name, error = %err, "cannot hold a replica");
                false
            }
        }
    }

    fn keeps(&mut self, store: &str) -> bool {
        self.placement
            .keeps(parse_sync_id(store).map_or(store, |(id, _)| id))
    }

    fn units(&mut self, store: &str) -> Result<Vec<UnitHeads>, ReplicaError> {
        Ok(self.store(store)?.units())
    }

    fn records(&mut self, store: &str) -> u64 {
        self.store(store)
            .ok()
            .and_then(|s| s.records().ok())
            .unwrap_or(0)
    }

    fn digest(&mut self, store: &str) -> Result<Digest, ReplicaError> {
        Ok(self.store(store)?.digest())
    }

    fn generate(
        &mut self,
        store: &str,
        unit: Unit,
        state: &mut SyncState,
    ) -> Result<Option<SyncMessage>, ReplicaError> {
        self.store(store)?.sync_generate(unit, state)
    }

    // `receive`, `merge_chunk` and `apply` reach automerge through the store, which
    // bounds what the peer's data inflates to before automerge reads it (the engine has
    // checked too, but the store's methods are public on their own).
    fn receive(
        &mut self,
        store: &str,
        unit: Unit,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<(), ReplicaError> {
        let (_, erasures) = parse_sync_id(store).unwrap_or_default();
        self.store(store)?
            .sync_receive_at(erasures, unit, state, message)
    }

    fn closed_chunk(&mut self, store: &str, start: u64) -> Result<Option<Vec<u8>>, ReplicaError> {
        self.store(store)?.closed_chunk(start)
    }

    fn merge_chunk(&mut self, store: &str, start: u64, save: &[u8]) -> Result<(), ReplicaError> {
        let (_, erasures) = parse_sync_id(store).unwrap_or_default();
        self.store(store)?
            .apply_changes_at(erasures, Unit::Chunk(start), save)
    }

    fn apply(&mut self, store: &str, unit: Unit, changes: &[u8]) -> Result<(), ReplicaError> {
        let (_, erasures) = parse_sync_id(store).unwrap_or_default();
        self.store(store)?.apply_changes_at(erasures, unit, changes)
    }
}
