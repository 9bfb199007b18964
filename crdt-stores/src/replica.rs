//! A node's stores as the sync engine's [`Replica`], under a placement policy.

use hearth_protocol::sync::{
    Digest, Replica, ReplicaError, StoreKind, StoreRef, SyncMessage, SyncState, Unit, UnitHeads,
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

/// What the sync protocol needs to know of a store.
pub fn store_ref(meta: &StoreMeta) -> StoreRef {
    StoreRef {
        id: meta.id.clone(),
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

    fn store(&self, id: &str) -> Result<std::sync::Arc<Store>, ReplicaError> {
        self.stores
            .get_by_id(id)
            .ok_or_else(|| ReplicaError::Local(format!("store {id} is not here")))
    }
}

impl<P, L: Placement<P>> Replica<P> for StoresReplica<'_, L> {
    fn shared_with(&mut self, peer: &P) -> Vec<StoreRef> {
        self.stores
            .all()
            .iter()
            .map(|store| store_ref(store.meta()))
            .filter(|store| self.placement.peer_holds(peer, store))
            .collect()
    }

    fn accept(&mut self, peer: &P, store: &StoreRef) -> bool {
        // Both: a peer the placement does not name is served nothing of the store and
        // has nothing of it applied, whatever it offers.
        if !self.placement.peer_holds(peer, store) || !self.placement.we_hold(peer, store) {
            return false;
        }
        if self.stores.get_by_id(&store.id).is_some() {
            return true;
        }
        let meta = StoreMeta {
            name: store.name.clone(),
            id: store.id.clone(),
            kind: match store.kind {
                StoreKind::Kv => Kind::Kv,
                StoreKind::Timeseries => Kind::Timeseries,
                StoreKind::Doc => Kind::Doc,
            },
            created: self.now,
            window_ms: store.window_ms,
        };
        match self.stores.create_replica(meta) {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(store = %store.name, error = %err, "cannot hold a replica");
                false
            }
        }
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

    fn receive(
        &mut self,
        store: &str,
        unit: Unit,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<(), ReplicaError> {
        self.store(store)?.sync_receive(unit, state, message)
    }

    fn closed_chunk(&mut self, store: &str, start: u64) -> Result<Option<Vec<u8>>, ReplicaError> {
        self.store(store)?.closed_chunk(start)
    }

    fn merge_chunk(&mut self, store: &str, start: u64, save: &[u8]) -> Result<(), ReplicaError> {
        self.store(store)?.apply_changes(Unit::Chunk(start), save)
    }

    fn apply(&mut self, store: &str, unit: Unit, changes: &[u8]) -> Result<(), ReplicaError> {
        self.store(store)?.apply_changes(unit, changes)
    }
}
