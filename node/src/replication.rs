//! Replication: the sync engine (`hearth_protocol::sync`) driven against this node's
//! stores, under the placement policies of the catalogue.
//!
//! An actor: `spawn` starts its loop, which a [`ReplicationHandle`] talks to. The mesh
//! loop feeds it admitted peers and their sync messages; a small task per store feeds
//! it local writes; it sends through the [`MeshHandle`] (a bounded channel, so a slow
//! network holds it back rather than queueing without end).
//!
//! ```text
//! mesh loop ──Connected/Message──▶ replication loop ──SyncSend──▶ mesh loop
//! store writes ──LocalChange──────▶   (Engine<PeerId>, stores, catalogue)
//! ```
//!
//! Store reads and writes block (a write waits for the disk), so they run on tokio's
//! blocking-capable worker via `block_in_place`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hearth_protocol::capability::Role;
use hearth_protocol::mesh::session::{LocalAction, LocalChanges};
use hearth_protocol::sync::placement::Policy;
use hearth_protocol::sync::{Config, Digest, Engine, Event};
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::{AuditLog, Event as AuditEvent};
use hearth_stores::replica::{Keep, Policies, StoresReplica};
use hearth_stores::{LocalChange, Stores};
use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::catalogue::{self, Catalogue};
use crate::mesh::MeshHandle;
use crate::sealed::{self, Sealed};

/// How often each device records what it holds in the catalogue (when it changed).
const STATS_EVERY: Duration = Duration::from_secs(30);
/// How often a device asks the holders of a replica it no longer holds to confirm it.
const HAND_OVER_EVERY: Duration = Duration::from_secs(2);
/// How often sync traffic is summed up into the audit log.
const AUDIT_EVERY: Duration = Duration::from_secs(5);
/// How often stores with a retention drop what it no longer keeps.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// What the replication loop is told.
#[derive(Debug)]
pub(crate) enum Input {
    /// A peer was admitted.
    Connected {
        peer: PeerId,
        name: String,
        role: Role,
    },
    /// A peer's last connection closed.
    Disconnected(PeerId),
    /// A sync message from an admitted peer.
    Message { peer: PeerId, bytes: Vec<u8> },
    /// A local write (None: writes were missed).
    Local {
        store: String,
        change: Option<LocalChange>,
    },
    /// The catalogue was written here (a store created, a policy changed).
    CatalogueChanged,
    /// The mesh's revocations changed (a grant withdrawn can change a placement).
    Revocations(hearth_protocol::capability::RevocationSet),
    /// Where every store stands with every connected peer.
    Status(oneshot::Sender<Vec<StoreSync>>),
    /// Restore sealed stores: place each one this device cannot read yet on it too
    /// (the owner's device only).
    Restore,
    /// Where fetching sealed stores stands.
    Sealed(oneshot::Sender<SealedStatus>),
    /// Every unrevoked device of the mesh (name, role, node key): sealed stores' keys
    /// are shared with those their policies name.
    Members(Vec<(String, Role, hearth_protocol::key::PublicKey)>),
}

/// Where fetching sealed stores stands, for `hearth restore`.
#[derive(Debug, Clone)]
pub struct SealedStatus {
    /// Sealed holders connected now whose copy of the catalogue equals ours.
    pub catalogue_from: Vec<String>,
    /// Each sealed store this device reads, per sealed holder.
    pub stores: Vec<sealed::Progress>,
}

/// One store's sync state, for `hearth status`.
#[derive(Debug, Clone)]
pub struct StoreSync {
    /// The store id.
    pub id: String,
    /// Our digest.
    pub digest: Digest,
    /// Our records.
    pub records: u64,
    /// Each connected peer sharing it: its name and what it confirmed (digest, records).
    pub peers: Vec<(String, Option<(Digest, u64)>)>,
    /// Each device holding it sealed: its name, and whether it has stored everything
    /// this device holds.
    pub sealed: Vec<(String, bool)>,
}

/// A handle to the replication loop.
#[derive(Debug, Clone)]
pub struct ReplicationHandle {
    inputs: mpsc::Sender<Input>,
    /// Bytes of peers' sync messages waiting in `inputs`.
    inbox_bytes: Arc<AtomicUsize>,
}

/// Bytes of peers' sync messages that may wait for the replication loop (one larger
/// message may wait alone); beyond it a message is dropped and the engine's repair
/// sends what it carried.
const MAX_INBOX_BYTES: usize = 64 * 1024 * 1024;

impl ReplicationHandle {
    /// Delivers `input`, waiting for room if the loop is busy (for inputs that must
    /// not be lost: connections, catalogue changes).
    pub(crate) fn deliver(&self, input: Input) {
        match self.inputs.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(input)) => {
                let inputs = self.inputs.clone();
                tokio::spawn(async move {
                    let _ = inputs.send(input).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Delivers a peer's sync message, or drops it when the loop is busy (the engine
    /// compares again later, so nothing is lost for good).
    pub(crate) fn offer(&self, peer: PeerId, bytes: Vec<u8>) {
        let len = bytes.len();
        let waiting = self.inbox_bytes.fetch_add(len, Ordering::SeqCst);
        if waiting > 0 && waiting.saturating_add(len) > MAX_INBOX_BYTES {
            self.inbox_bytes.fetch_sub(len, Ordering::SeqCst);
            tracing::debug!(%peer, "replication busy (inbox full); dropping a sync message");
            return;
        }
        if self
            .inputs
            .try_send(Input::Message { peer, bytes })
            .is_err()
        {
            self.inbox_bytes.fetch_sub(len, Ordering::SeqCst);
            tracing::debug!(%peer, "replication busy; dropping a sync message");
        }
    }

    /// The catalogue changed here.
    pub(crate) fn catalogue_changed(&self) {
        self.deliver(Input::CatalogueChanged);
    }

    /// Restores sealed stores (see [`Input::Restore`]).
    pub(crate) fn restore(&self) {
        self.deliver(Input::Restore);
    }

    /// Where fetching sealed stores stands.
    pub async fn sealed(&self) -> Option<SealedStatus> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Sealed(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Each store's sync state with connected peers.
    pub async fn status(&self) -> Option<Vec<StoreSync>> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Status(reply)).await.ok()?;
        answer.await.ok()
    }
}

/// The inlet the mesh loop needs before the replication loop starts.
pub(crate) fn channel() -> (ReplicationHandle, mpsc::Receiver<Input>) {
    let (inputs, receiver) = mpsc::channel(1024);
    (
        ReplicationHandle {
            inputs,
            inbox_bytes: Arc::new(AtomicUsize::new(0)),
        },
        receiver,
    )
}

/// The placement as the engine asks it: what the verified placement documents of the
/// catalogue say (a store without one is held by nobody new).
type NodePlacement = Policies<PeerId>;

fn now() -> UnixMillis {
    crate::clock::now()
}

/// Runs blocking store work without stalling the runtime's other tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The sealed side's view of the actor (a macro: it borrows fields, not `self`).
macro_rules! sealed_ctx {
    ($actor:expr) => {
        sealed::Ctx {
            me: (&$actor.placement.me.0, $actor.placement.me.1),
            stores: &$actor.stores,
            catalogue: &$actor.catalogue,
            listing: &$actor.listing,
            devices: &$actor.placement.devices,
        }
    };
}

struct Actor {
    engine: Engine<PeerId>,
    /// Local writes seen or missed, on their way to the engine.
    local: LocalChanges<LocalChange>,
    stores: Arc<Stores>,
    catalogue: Arc<Catalogue>,
    placement: NodePlacement,
    mesh: MeshHandle,
    audit: Arc<AuditLog>,
    metrics: Arc<crate::metrics::Metrics>,
    inputs: mpsc::Sender<Input>,
    /// Bytes of peers' messages waiting in the inbox (shared with the handle).
    inbox_bytes: Arc<AtomicUsize>,
    /// Stores whose local writes are forwarded here.
    watched: BTreeSet<String>,
    /// Sync traffic not yet audited: (peer name, store id, sent?) -> (bytes, messages).
    traffic: BTreeMap<(String, String, bool), (u64, u64)>,
    /// Messages refused because the peer may not hold the store, not yet audited:
    /// (peer name, store id) -> messages.
    refused: BTreeMap<(String, String), u64>,
    /// A replica this device no longer holds waits for a holder's confirmation.
    pending_drop: bool,
    /// When the holders of each such replica were last asked to confirm it.
    handing_over: BTreeMap<String, Instant>,
    last_audit: Instant,
    last_stats: Instant,
    last_expire: Instant,
    /// The sync id each local store had when last looked at (an erasure changes it).
    sync_ids: BTreeMap<String, String>,
    /// A retention pass is running.
    expiring: Arc<std::sync::atomic::AtomicBool>,
    /// Sealed replicas: what this device keeps sealed, and sends to and fetches from
    /// sealed holders.
    sealed: Sealed,
    /// The catalogue as last read.
    listing: catalogue::Listing,
    /// Restoring: every sealed store this device can open is placed on it too.
    restoring: bool,
}

/// Where the sealed side of replication keeps its files, and this device's key.
#[derive(Debug, Clone)]
pub(crate) struct Sealing {
    /// The node's data directory.
    pub data_dir: std::path::PathBuf,
    /// Its node key.
    pub node_key: hearth_protocol::key::PublicKey,
}

/// Starts the replication loop for `stores` (whose catalogue is `catalogue`) on the
/// device `name` with `role`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    handle: &ReplicationHandle,
    receiver: mpsc::Receiver<Input>,
    stores: Arc<Stores>,
    catalogue: Arc<Catalogue>,
    name: String,
    role: Role,
    mesh: MeshHandle,
    audit: Arc<AuditLog>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    sealing: Sealing,
) {
    let sealed = match Sealed::open(&sealing.data_dir, sealing.node_key, audit.clone()) {
        Ok(sealed) => sealed,
        Err(err) => {
            tracing::error!(error = %err, "cannot open the sealed stores; replication does not start");
            return;
        }
    };
    let mut actor = Actor {
        engine: Engine::new(Config::default()),
        local: LocalChanges::new(),
        placement: NodePlacement::new(&name, role, Some(catalogue.id().to_owned())),
        stores,
        catalogue,
        mesh,
        audit,
        metrics,
        inputs: handle.inputs.clone(),
        inbox_bytes: handle.inbox_bytes.clone(),
        watched: BTreeSet::new(),
        traffic: BTreeMap::new(),
        refused: BTreeMap::new(),
        pending_drop: false,
        handing_over: BTreeMap::new(),
        last_audit: Instant::now(),
        last_expire: Instant::now(),
        sync_ids: BTreeMap::new(),
        expiring: Arc::default(),
        sealed,
        listing: catalogue::Listing::default(),
        restoring: false,
        last_stats: Instant::now()
            .checked_sub(STATS_EVERY)
            .unwrap_or_else(Instant::now),
    };
    blocking(|| actor.reload_catalogue(false));
    tokio::spawn(actor.run(receiver, shutdown));
}

impl Actor {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        self.watch_stores();
        loop {
            let timeout = self
                .engine
                .poll_timeout()
                .map_or(Duration::from_secs(1), |at| {
                    Duration::from_millis(at.0.saturating_sub(now().0)).min(Duration::from_secs(1))
                });
            let input = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(input) = inputs.recv() => Some(input),
                () = tokio::time::sleep(timeout) => None,
            };
            // One hand-off to a blocking thread per turn: the input (store work) and
            // the engine's timers.
            blocking(|| {
                if let Some(input) = input {
                    self.input(input);
                }
                self.tick();
            });
            self.flush().await;
        }
        self.audit_traffic();
        tracing::info!("replication stopped");
    }

    fn input(&mut self, input: Input) {
        let at = now();
        match input {
            Input::Connected { peer, name, role } => {
                self.placement.devices.insert(peer, (name, role));
                let mut replica = StoresReplica::new(&self.stores, &self.placement, at.0);
                self.engine.handle_connected(at, peer, &mut replica);
                self.share_keys();
                let ctx = sealed_ctx!(self);
                self.sealed.connected(peer, &ctx);
            }
            Input::Disconnected(peer) => {
                self.placement.devices.remove(&peer);
                self.engine.handle_disconnected(&peer);
                self.sealed.disconnected(&peer);
            }
            Input::Message { peer, bytes } => {
                self.inbox_bytes.fetch_sub(bytes.len(), Ordering::SeqCst);
                if !self.placement.devices.contains_key(&peer) {
                    return;
                }
                if hearth_protocol::sealed::message::is_sealed(&bytes) {
                    let ctx = sealed_ctx!(self);
                    self.sealed.message(peer, &bytes, &ctx);
                    return;
                }
                let mut replica = StoresReplica::new(&self.stores, &self.placement, at.0);
                self.engine.handle_message(at, &peer, &bytes, &mut replica);
            }
            Input::Local { store, change } => {
                match change {
                    Some(change) => {
                        self.sealed.changed(&store);
                        // The engine knows a store by its sync id; a write made before
                        // an erasure was applied belongs to the replica as it was (the
                        // rewritten one is offered whole instead).
                        let Some(current) = self.stores.get_by_id(&store) else {
                            return;
                        };
                        if current.erasures() == change.erasures {
                            self.local.handle_change(&store, change);
                        } else {
                            self.local.handle_lagged(&store);
                        }
                    }
                    None => self.local.handle_lagged(&store),
                }
                while let Some(action) = self.local.poll_action() {
                    match action {
                        LocalAction::Apply { store, change } => {
                            let Some(sync) = self.stores.get_by_id(&store).map(|s| s.sync_id())
                            else {
                                continue;
                            };
                            let mut replica =
                                StoresReplica::new(&self.stores, &self.placement, at.0);
                            self.engine.local_change(
                                at,
                                &sync,
                                &change.units,
                                change.before,
                                &mut replica,
                            );
                        }
                        LocalAction::Recheck { store } => {
                            if let Some(sync) = self.stores.get_by_id(&store).map(|s| s.sync_id()) {
                                self.engine.recheck(at, &sync);
                            }
                        }
                    }
                }
            }
            Input::CatalogueChanged => self.reload_catalogue(true),
            Input::Revocations(revocations) => {
                self.catalogue.set_revocations(revocations);
                // A revoked device may hold a sealed store's key: new epochs.
                if let Err(err) = self.catalogue.rotate_revoked() {
                    tracing::warn!(error = %err, "cannot move sealed stores to a new key epoch");
                }
                self.reload_catalogue(true);
            }
            Input::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Input::Members(devices) => match self.catalogue.share_keys(&devices) {
                Ok(0) => {}
                Ok(_) => self.reload_catalogue(false),
                Err(err) => tracing::warn!(error = %err, "cannot share sealed stores' keys"),
            },
            Input::Restore => {
                self.restoring = true;
                self.reload_catalogue(true);
            }
            Input::Sealed(reply) => {
                let ctx = sealed_ctx!(self);
                let stores = self.sealed.progress(&ctx);
                let ours = self.catalogue.store().digest();
                let sync = self.catalogue.store().sync_id();
                let catalogue_from = self
                    .engine
                    .replicas(&sync)
                    .iter()
                    .filter(|r| r.confirmed.is_some_and(|(d, _)| d == ours))
                    .filter_map(|r| self.placement.devices.get(&r.peer))
                    .filter(|(name, role)| {
                        self.listing.custody.values().any(|v| v.keeps(name, *role))
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                let _ = reply.send(SealedStatus {
                    catalogue_from,
                    stores,
                });
            }
        }
    }

    fn tick(&mut self) {
        let at = now();
        if self.engine.poll_timeout().is_some_and(|t| t <= at) {
            let mut replica = StoresReplica::new(&self.stores, &self.placement, at.0);
            self.engine.handle_timeout(at, &mut replica);
        }
        if self.pending_drop {
            self.drop_unheld();
        }
        if self.last_stats.elapsed() >= STATS_EVERY {
            self.last_stats = Instant::now();
            self.write_stats();
        }
        if self.last_audit.elapsed() >= AUDIT_EVERY {
            self.last_audit = Instant::now();
            self.audit_traffic();
        }
        if self.last_expire.elapsed() >= EXPIRE_EVERY {
            self.last_expire = Instant::now();
            self.expire();
        }
        let ctx = sealed_ctx!(self);
        self.sealed.tick(&ctx);
    }

    /// While restoring, on the owner's device: places every sealed store this device
    /// can open but is not a plaintext holder of on it too (a new key epoch each), so
    /// that sealed holders serve it.
    fn place_sealed_here(&mut self) {
        if !self.catalogue.is_owner_device() {
            return;
        }
        let (me, role) = (self.placement.me.0.clone(), self.placement.me.1);
        let mut placed = Vec::new();
        for (id, sid) in &self.listing.sealed {
            let (Some(view), Some(entry)) =
                (self.listing.custody.get(sid), self.listing.stores.get(id))
            else {
                continue;
            };
            if view.removed || view.reads(&me, role) {
                continue;
            }
            let policy = match Policy::parse(&format!("{},{me}", entry.replicas)) {
                Ok(policy) => policy,
                Err(err) => {
                    tracing::warn!(store = %entry.name, error = %err, "cannot place a sealed store here");
                    continue;
                }
            };
            placed.push((entry.name.clone(), policy));
        }
        if !placed.is_empty() {
            // Read again next turn, with the new custody documents.
            let _ = self.inputs.try_send(Input::CatalogueChanged);
        }
        for (name, policy) in placed {
            match self.catalogue.place(&name, &policy, None) {
                Ok(_) => self.record(
                    "sealed.restore",
                    &name,
                    &format!("allowed: placed on this device too ({policy})"),
                    0,
                ),
                Err(err) => {
                    tracing::warn!(store = %name, error = %err, "cannot place a sealed store here");
                    self.record("sealed.restore", &name, &format!("failed: {err}"), 0);
                }
            }
        }
    }

    /// Wraps sealed stores' keys to the devices of the mesh (connected or not) that
    /// hold them in plaintext and lack them: asks the mesh for its devices, and takes
    /// the answer as [`Input::Members`].
    fn share_keys(&mut self) {
        if self.listing.custody.is_empty() {
            return;
        }
        let mesh = self.mesh.clone();
        let inputs = self.inputs.clone();
        let ask = async move {
            let Ok(devices) = mesh.devices().await else {
                return;
            };
            let members = devices
                .into_iter()
                .filter(|d| !d.revoked)
                .filter_map(|d| {
                    let role = d.role.parse().ok()?;
                    let peer: PeerId = d.peer_id.parse().ok()?;
                    Some((d.name, role, crate::mesh::peer_key(&peer)?))
                })
                .collect();
            let _ = inputs.send(Input::Members(members)).await;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(ask);
        }
    }

    /// Drops what each store's retention no longer keeps, on a thread of its own: a
    /// pass that drops something rewrites the store's file, which takes time in
    /// proportion to the store, and sync goes on meanwhile.
    fn expire(&mut self) {
        if self.expiring.swap(true, Ordering::SeqCst) {
            return;
        }
        // Replicas made since the catalogue was read learn their retention here.
        for store in self.stores.all() {
            let keep = self.placement.keeps.get(&store.meta().id).copied();
            if store.keep() != keep {
                store.set_keep(keep);
            }
        }
        let stores: Vec<_> = self
            .stores
            .all()
            .into_iter()
            .filter(|s| s.keep().is_some())
            .collect();
        let audit = self.audit.clone();
        let expiring = self.expiring.clone();
        let inputs = self.inputs.clone();
        let pass = move || {
            for store in stores {
                match store.expire() {
                    Ok(expired) if expired.chunks > 0 => {
                        record_to(
                            &audit,
                            "store.expire",
                            store.name(),
                            &format!(
                                "allowed: {} readings in {} chunks past the retention",
                                expired.readings, expired.chunks
                            ),
                            0,
                        );
                        // The store changed where the engine did not see it: compare
                        // it with the peers again (they dropped the same, or will).
                        let _ = inputs.try_send(Input::Local {
                            store: store.meta().id.clone(),
                            change: None,
                        });
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(store = %store.name(), error = %err, "cannot apply the retention");
                    }
                }
            }
            expiring.store(false, Ordering::SeqCst);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(pass);
            }
            Err(_) => pass(),
        }
    }

    /// Applies to the local replicas what the catalogue says of them beyond where they
    /// are held: each store's retention, and the erasures it has not applied yet (in
    /// order, each audited). True if a store's sync id changed (the engine then knows
    /// it as another store, and the old one is forgotten).
    fn apply_lifecycle(&mut self, listing: &catalogue::Listing) -> bool {
        let mut changed = false;
        self.placement.keeps = listing
            .stores
            .iter()
            .filter_map(|(id, e)| Some((id.clone(), e.keep_ms?)))
            .collect();
        for store in self.stores.all() {
            let id = store.meta().id.clone();
            if let Some(entry) = listing.stores.get(&id)
                && store.keep() != entry.keep_ms
            {
                store.set_keep(entry.keep_ms);
                self.last_expire = Instant::now()
                    .checked_sub(EXPIRE_EVERY)
                    .unwrap_or_else(Instant::now);
            }
            let erasures = listing.erasures.get(&id).map_or(&[][..], Vec::as_slice);
            for (seq, selector) in (1u64..).zip(erasures) {
                if seq <= store.erasures() {
                    continue;
                }
                let outcome = match store.erase(seq, selector) {
                    Ok(erased) if selector.is_keys() => format!(
                        "allowed: erasure {seq} ({selector}); {} values",
                        erased.keys
                    ),
                    Ok(erased) => format!(
                        "allowed: erasure {seq} ({selector}); {} readings in {} chunks",
                        erased.readings, erased.chunks
                    ),
                    Err(err) => {
                        tracing::error!(store = %store.name(), error = %err, "cannot apply an erasure");
                        self.record(
                            "store.erase",
                            store.name(),
                            &format!("failed: erasure {seq}: {err}"),
                            0,
                        );
                        break;
                    }
                };
                self.record("store.erase", store.name(), &outcome, 0);
            }
            let sync = store.sync_id();
            if let Some(old) = self.sync_ids.insert(id, sync.clone())
                && old != sync
            {
                self.engine.forget_store(&old);
                changed = true;
            }
        }
        changed
    }

    /// Sends what the engine queued, acts on its events, and follows new stores.
    async fn flush(&mut self) {
        let sealed = self.sealed.take_output();
        if !sealed.changed.is_empty() {
            blocking(|| {
                let mut replica = StoresReplica::new(&self.stores, &self.placement, now().0);
                self.engine.rescan(now(), &mut replica);
            });
        }
        for (peer, bytes) in sealed.send {
            if self.mesh.sync_send(peer, bytes).await.is_err() {
                return;
            }
        }
        while let Some((peer, bytes)) = self.engine.poll_transmit() {
            if self.mesh.sync_send(peer, bytes).await.is_err() {
                return;
            }
        }
        let mut catalogue_changed = false;
        while let Some(event) = self.engine.poll_event() {
            match event {
                Event::Misbehaved { peer, reason } => {
                    let name = self.peer_name(&peer);
                    self.record("sync.receive", &name, &format!("refused: {reason}"), 0);
                    tracing::warn!(%peer, %reason, "disconnecting a peer that sent bad sync data");
                    self.placement.devices.remove(&peer);
                    let _ = self.mesh.disconnect(peer).await;
                }
                Event::Received { peer, store, bytes } => {
                    if self.placement.everyone.as_deref() == Some(store.as_str()) {
                        catalogue_changed = true;
                    }
                    if let Some((id, _)) = hearth_stores::replica::parse_sync_id(&store) {
                        self.sealed.changed(id);
                    }
                    self.metrics.sync(&store, false, bytes);
                    let name = self.peer_name(&peer);
                    let t = self.traffic.entry((name, store, false)).or_default();
                    t.0 += bytes;
                    t.1 += 1;
                }
                Event::Sent { peer, store, bytes } => {
                    self.metrics.sync(&store, true, bytes);
                    let name = self.peer_name(&peer);
                    let t = self.traffic.entry((name, store, true)).or_default();
                    t.0 += bytes;
                    t.1 += 1;
                }
                Event::Unshared { peer, store } => {
                    // Audited when the placement says the peer may not hold the store
                    // (not for a store this device has no document for yet: the
                    // document may still be on its way).
                    let id = hearth_stores::replica::parse_sync_id(&store)
                        .map_or(store.as_str(), |(id, _)| id)
                        .to_owned();
                    if self.placement.policies.contains_key(&id)
                        && !self.placement.holds(&peer, &id)
                    {
                        let name = self.peer_name(&peer);
                        *self.refused.entry((name, id)).or_default() += 1;
                    }
                }
                Event::LocalError { store, reason } => {
                    tracing::warn!(%store, %reason, "replication cannot use a store");
                }
            }
        }
        if catalogue_changed {
            blocking(|| self.reload_catalogue(true));
        }
        self.watch_stores();
    }

    fn peer_name(&self, peer: &PeerId) -> String {
        self.placement
            .devices
            .get(peer)
            .map_or_else(|| peer.to_string(), |(name, _)| name.clone())
    }

    /// Forwards local writes of every store not followed yet (replicas made by sync
    /// included) into the loop.
    fn watch_stores(&mut self) {
        let stores = self.stores.all();
        // A removed store's task ends with it; forget it, so a replica made again later
        // is followed again.
        let ids: std::collections::HashSet<&str> =
            stores.iter().map(|s| s.meta().id.as_str()).collect();
        self.watched.retain(|id| ids.contains(id.as_str()));
        for store in stores {
            let id = store.meta().id.clone();
            if !self.watched.insert(id.clone()) {
                continue;
            }
            // A new replica here: say so in the catalogue at the next tick.
            self.last_stats = Instant::now()
                .checked_sub(STATS_EVERY)
                .unwrap_or_else(Instant::now);
            let mut changes = store.subscribe_local();
            let inputs = self.inputs.clone();
            tokio::spawn(async move {
                loop {
                    let change = match changes.recv().await {
                        Ok(change) => Some(change),
                        Err(broadcast::error::RecvError::Lagged(_)) => None,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    let input = Input::Local {
                        store: id.clone(),
                        change,
                    };
                    if inputs.send(input).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// Rereads the placements (writing back documents a member deleted); forgets, for
    /// each peer, the stores it may no longer hold and offers those newly shared; drops
    /// replicas this device no longer holds (never before a holder confirmed them).
    fn reload_catalogue(&mut self, rescan: bool) {
        match self.catalogue.reconcile() {
            Ok(true) => self.last_stats = Instant::now(),
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "cannot reconcile the catalogue"),
        }
        let listing = match self.catalogue.read() {
            Ok(listing) => listing,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the catalogue");
                return;
            }
        };
        let sealed_changed =
            listing.custody != self.listing.custody || listing.sealed != self.listing.sealed;
        self.listing = listing.clone();
        if self.restoring && sealed_changed {
            self.place_sealed_here();
        }
        if sealed_changed {
            let ctx = sealed_ctx!(self);
            self.sealed.catalogue_changed(&ctx);
            if rescan {
                self.share_keys();
            }
        }
        let policies: BTreeMap<String, (String, Policy)> = listing
            .stores
            .iter()
            .map(|(id, e)| (id.clone(), (e.origin.clone(), e.policy())))
            .collect();
        let erasures = listing.erasures.clone();
        let changed = policies != self.placement.policies
            || listing.removed != self.placement.removed
            || erasures != self.placement.erasures;
        self.placement.erasures = erasures;
        let changed = self.apply_lifecycle(&listing) || changed;
        self.placement.policies = policies;
        self.placement.removed = listing.removed;
        self.placement.text = listing
            .stores
            .iter()
            .filter(|(_, e)| !e.text.is_empty())
            .map(|(id, e)| (id.clone(), e.text.clone()))
            .collect();
        if !changed {
            return;
        }
        if rescan {
            let mut replica = StoresReplica::new(&self.stores, &self.placement, now().0);
            self.engine.rescan(now(), &mut replica);
        }
        self.drop_unheld();
    }

    /// Removes local replicas the placement no longer puts here: at once for a store
    /// removed from the mesh; otherwise once a device the placement names has
    /// confirmed, over sync, that it holds what this one holds. A store no valid
    /// document lists is kept.
    fn drop_unheld(&mut self) {
        self.pending_drop = false;
        for store in self.stores.all() {
            let id = store.meta().id.clone();
            let sync = store.sync_id();
            let removed = match self
                .placement
                .keep(&self.engine, &id, &sync, store.digest())
            {
                Keep::Keep => continue,
                Keep::Wait => {
                    self.pending_drop = true;
                    // Ask the holders to confirm, now and then.
                    let due = self
                        .handing_over
                        .get(&id)
                        .is_none_or(|at| at.elapsed() >= HAND_OVER_EVERY);
                    if due {
                        self.handing_over.insert(id.clone(), Instant::now());
                        let mut replica =
                            StoresReplica::new(&self.stores, &self.placement, now().0);
                        self.engine.hand_over(now(), &sync, &mut replica);
                    }
                    continue;
                }
                Keep::Drop => self.placement.removed.contains(&id),
            };
            let name = store.name().to_owned();
            drop(store);
            self.handing_over.remove(&id);
            self.engine.forget_store(&sync);
            self.watched.remove(&id);
            match self.stores.remove(&name) {
                Ok(()) => {
                    let why = if removed {
                        "removed from the mesh"
                    } else {
                        "the placement no longer puts it here; a holder confirmed it"
                    };
                    tracing::info!(store = %name, why, "dropped a replica");
                    self.record("store.drop", &name, &format!("allowed: {why}"), 0);
                }
                Err(err) => tracing::warn!(store = %name, error = %err, "cannot drop a replica"),
            }
        }
    }

    fn status(&mut self) -> Vec<StoreSync> {
        self.stores
            .all()
            .iter()
            .map(|store| {
                let id = store.meta().id.clone();
                let sealed = self
                    .listing
                    .sealed
                    .get(&id)
                    .map(|sid| self.sealed.status(sid, store))
                    .unwrap_or_default();
                StoreSync {
                    sealed,
                    digest: store.digest(),
                    records: store.records().unwrap_or(0),
                    peers: self
                        .engine
                        .replicas(&store.sync_id())
                        .into_iter()
                        .map(|r| (self.peer_name(&r.peer), r.confirmed))
                        .collect(),
                    id,
                }
            })
            .collect()
    }

    fn write_stats(&mut self) {
        let me = self.placement.me.0.clone();
        let listing = self.catalogue.read().unwrap_or_default();
        for info in self.stores.list() {
            // A sealed store's figures would tell its sealed holders how much it holds
            // and when it grows: they stay on this device.
            if self.placement.everyone.as_deref() == Some(info.id.as_str())
                || !listing.stores.contains_key(&info.id)
                || listing.sealed.contains_key(&info.id)
            {
                continue;
            }
            let Some(store) = self.stores.get_by_id(&info.id) else {
                continue;
            };
            let stats = catalogue::ReplicaStats {
                records: info.records.unwrap_or(0),
                bytes: info.bytes,
                digest: hex::encode(store.digest()),
                updated: now().0,
            };
            if let Err(err) = catalogue::put_stats(self.catalogue.store(), &info.id, &me, &stats) {
                tracing::warn!(error = %err, "cannot write replica statistics");
            }
        }
    }

    fn record(&self, action: &str, object: &str, outcome: &str, bytes: u64) {
        record_to(&self.audit, action, object, outcome, bytes);
    }

    /// One audit entry per peer, store and direction for the traffic since the last,
    /// and one per peer and store for what was refused.
    fn audit_traffic(&mut self) {
        self.sealed.audit();
        for ((peer, store), messages) in std::mem::take(&mut self.refused) {
            let name = self
                .catalogue
                .read()
                .ok()
                .and_then(|l| l.stores.get(&store).map(|e| e.name.clone()))
                .unwrap_or_else(|| store.clone());
            tracing::warn!(%peer, store = %name, messages, "a peer named a store the placement does not give it");
            self.record(
                "sync.receive",
                &format!("{name} from {peer}"),
                &format!(
                    "refused: the placement does not give {peer} this store ({messages} messages)"
                ),
                0,
            );
        }
        let traffic = std::mem::take(&mut self.traffic);
        for ((peer, store, sent), (bytes, messages)) in traffic {
            let name = hearth_stores::replica::parse_sync_id(&store)
                .and_then(|(id, _)| self.stores.get_by_id(id))
                .map_or(store.clone(), |s| s.name().to_owned());
            let (action, object) = if sent {
                ("sync.send", format!("{name} to {peer}"))
            } else {
                ("sync.receive", format!("{name} from {peer}"))
            };
            self.record(
                action,
                &object,
                &format!("allowed ({messages} messages)"),
                bytes,
            );
        }
    }
}

/// Writes one audit entry of the replication loop (and its sealed side).
pub(crate) fn record_to(audit: &AuditLog, action: &str, object: &str, outcome: &str, bytes: u64) {
    if let Err(err) = audit.record(AuditEvent {
        actor: "sync".into(),
        action: action.into(),
        object: object.into(),
        cap_id: None,
        outcome: outcome.into(),
        bytes,
    }) {
        tracing::error!(error = %err, "cannot write the audit log");
    }
}
