//! Replication of stores between devices: a sans-IO engine that decides what to send
//! to each peer, driven by the node over the network and by the simulator over
//! modelled links.
//!
//! A store is one or more automerge documents (units): the single document of a kv or
//! doc store, or one document per time window of a timeseries store. The engine
//! reaches them through the [`Replica`] trait, which the store layer implements.
//!
//! The conversation with one peer:
//!
//! 1. On connect each side sends a [`Message::Summary`]: one digest over every store it
//!    holds that the other should hold too. Equal summaries end it: unchanged stores
//!    cost one message each way.
//! 2. Otherwise each side sends [`Message::Digests`], the digest of every shared store
//!    (and what a device needs to create a replica it lacks, if its policy says it
//!    should hold one).
//! 3. For a store whose digests differ each side sends [`Message::Units`], the heads of
//!    each of its documents. A closed chunk the peer lacks is sent whole
//!    ([`Message::Chunk`]); a document that differs runs automerge's sync protocol
//!    ([`Message::Sync`]) until both sides have nothing more to send.
//! 4. Live: a local write is pushed at once ([`Message::Push`]) to every peer whose
//!    digest was ours before the write (confirmed, or expected after earlier pushes).
//! 5. Whoever applies something answers [`Message::Have`] with its digest, so each side
//!    knows, as confirmed by the peer, whether the peer's replica equals its own.
//!    Whatever still differs when a store has been quiet for [`Config::settle`] starts
//!    step 3 again, backing off from [`Config::retry`]: that repairs lost messages,
//!    and passes on what one peer received from another.
//!
//! Bounded: at most [`Config::max_queued_bytes`] wait to be sent per peer; beyond that
//! pushes and sync rounds are not queued but left to the catch-up of step 5 (a writer
//! is never blocked by a slow peer, and nothing is lost: it is on the writer's disk).
//! Every message is at most [`message::MAX_MESSAGE_BYTES`], and the automerge data of
//! one (pushed changes, a chunk sent whole, the changes of a sync message) inflates to
//! at most [`inflate::MAX_INFLATED_BYTES`], checked before a replica sees it. A
//! message that does not decode, automerge data past that limit, or data the replica
//! refuses, ends the conversation with [`Event::Misbehaved`]: the driver disconnects
//! that peer.
//!
//! The driver calls, in this order: [`Engine::handle_connected`] when a peer is
//! admitted, [`Engine::handle_message`] for each message from it, [`Engine::local_change`]
//! after each local write, [`Engine::store_added`] when a store is created here,
//! [`Engine::handle_disconnected`] when it goes; after each of these it drains
//! [`Engine::poll_transmit`] and [`Engine::poll_event`], and arms a timer for
//! [`Engine::poll_timeout`], calling [`Engine::handle_timeout`] when it fires.

pub mod authority;
pub mod erasure;
pub mod inflate;
pub mod message;
pub mod placement;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use automerge::sync::{Message as SyncMessage, State as SyncState};
use sha2::{Digest as _, Sha256};

pub use inflate::InflateError;
pub use message::{Digest, Head, Message, StoreKind, StoreRef, Unit, UnitHeads};

use crate::time::UnixMillis;

/// Why a replica operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// What the peer sent cannot be applied (malformed, or not for this store).
    #[error("the peer sent bad data: {0}")]
    Peer(String),
    /// What the peer sent would inflate past [`inflate::MAX_INFLATED_BYTES`] (or does
    /// not parse far enough to tell): refused before automerge read it.
    #[error("the peer sent {0}")]
    Inflate(#[from] InflateError),
    /// This device failed (its disk, say); the peer is not at fault.
    #[error("{0}")]
    Local(String),
}

/// The stores of one device, as the engine needs them.
pub trait Replica<P> {
    /// The stores this device holds that `peer` should hold too, by policy.
    fn shared_with(&mut self, peer: &P) -> Vec<StoreRef>;
    /// `peer` offers `store`: may the peer hold it, and should this device hold it too?
    /// If the policy says both, make sure a local replica exists (empty if new) and
    /// return true. A store this returns false for is neither sent to the peer nor
    /// written with what it sends.
    fn accept(&mut self, peer: &P, store: &StoreRef) -> bool;
    /// Does this device's placement put `store` here (so that it keeps its replica
    /// until a holder confirms it)? Told to peers with each [`Message::Have`].
    fn keeps(&mut self, _store: &str) -> bool {
        true
    }
    /// The store's documents and their heads.
    fn units(&mut self, store: &str) -> Result<Vec<UnitHeads>, ReplicaError>;
    /// The store's records (readings or keys).
    fn records(&mut self, store: &str) -> u64;
    /// The store's digest; by default computed from [`Replica::units`].
    fn digest(&mut self, store: &str) -> Result<Digest, ReplicaError> {
        Ok(digest_of(&self.units(store)?))
    }
    /// The next automerge sync message for one document, if any.
    fn generate(
        &mut self,
        store: &str,
        unit: Unit,
        state: &mut SyncState,
    ) -> Result<Option<SyncMessage>, ReplicaError>;
    /// Applies a sync message to one document (creating it if missing), durably. The
    /// engine has checked its changes with [`inflate::check`].
    fn receive(
        &mut self,
        store: &str,
        unit: Unit,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<(), ReplicaError>;
    /// A closed chunk's document, saved whole.
    fn closed_chunk(&mut self, store: &str, start: u64) -> Result<Option<Vec<u8>>, ReplicaError>;
    /// Merges a chunk document received whole, durably. The engine has checked it
    /// with [`inflate::check`].
    fn merge_chunk(&mut self, store: &str, start: u64, save: &[u8]) -> Result<(), ReplicaError>;
    /// Applies pushed changes to one document, durably. The engine has checked them
    /// with [`inflate::check`].
    fn apply(&mut self, store: &str, unit: Unit, changes: &[u8]) -> Result<(), ReplicaError>;
}

/// The digest of a store from its units: SHA-256 over each unit, in order, with its
/// sorted heads.
pub fn digest_of(units: &[UnitHeads]) -> Digest {
    let mut sorted: Vec<&UnitHeads> = units.iter().collect();
    sorted.sort_by_key(|u| u.unit);
    let mut hasher = Sha256::new();
    hasher.update(b"hearth/v1/store");
    for unit in sorted {
        match unit.unit {
            Unit::Whole => hasher.update([0u8]),
            Unit::Chunk(start) => {
                hasher.update([1u8]);
                hasher.update(start.to_be_bytes());
            }
        }
        let mut heads = unit.heads.clone();
        heads.sort_unstable();
        hasher.update((heads.len() as u64).to_be_bytes());
        for head in heads {
            hasher.update(head);
        }
    }
    hasher.finalize().into()
}

fn root_of(entries: &[(String, Digest)]) -> Digest {
    let mut sorted: Vec<&(String, Digest)> = entries.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    hasher.update(b"hearth/v1/summary");
    for (id, digest) in sorted {
        hasher.update((id.len() as u64).to_be_bytes());
        hasher.update(id.as_bytes());
        hasher.update(digest);
    }
    hasher.finalize().into()
}

/// How the engine behaves. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes that may wait to be sent to one peer. Default 8 MiB.
    pub max_queued_bytes: usize,
    /// Quiet time after which a store that still differs from a peer's is compared
    /// again. Default 500 ms.
    pub settle: Duration,
    /// First delay between comparisons of a store that keeps differing; doubles up to
    /// [`Config::max_retry`]. Default 2 s.
    pub retry: Duration,
    /// Longest delay between comparisons. Default 60 s.
    pub max_retry: Duration,
    /// Stores listed in one `Digests` message; more are split over several. Default
    /// (and at most) [`message::MAX_STORES`], what a receiver accepts.
    pub max_stores_per_message: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_queued_bytes: 8 * 1024 * 1024,
            settle: Duration::from_millis(500),
            retry: Duration::from_secs(2),
            max_retry: Duration::from_secs(60),
            max_stores_per_message: message::MAX_STORES,
        }
    }
}

impl Config {
    /// Sets [`Config::max_stores_per_message`] (kept between 1 and
    /// [`message::MAX_STORES`]).
    pub fn with_max_stores_per_message(mut self, stores: usize) -> Self {
        self.max_stores_per_message = stores.clamp(1, message::MAX_STORES);
        self
    }

    /// Sets [`Config::max_queued_bytes`].
    pub fn with_max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Sets [`Config::settle`].
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Sets [`Config::retry`].
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// The peer sent something malformed or unusable: disconnect it (and audit).
    Misbehaved {
        /// The peer.
        peer: P,
        /// Why.
        reason: String,
    },
    /// Data from the peer changed a store here (audit it).
    Received {
        /// The peer.
        peer: P,
        /// The store id.
        store: String,
        /// Bytes of the message that carried it.
        bytes: u64,
    },
    /// Data of a store was queued for the peer (audit it).
    Sent {
        /// The peer.
        peer: P,
        /// The store id.
        store: String,
        /// Bytes of the message.
        bytes: u64,
    },
    /// The peer named a store this device does not share with it (offered it, or sent
    /// its heads, changes or chunks): nothing of it was sent or applied. The driver
    /// audits it when the placement says the peer may not hold the store.
    Unshared {
        /// The peer.
        peer: P,
        /// The store id.
        store: String,
    },
    /// A store here could not be read or written.
    LocalError {
        /// The store id.
        store: String,
        /// Why.
        reason: String,
    },
}

/// What this device knows of one store at one peer.
#[derive(Debug)]
struct PeerStore {
    /// The peer's digest and records, as it last confirmed.
    confirmed: Option<(Digest, u64)>,
    /// The digest the peer should have after applying the pushes sent since.
    expected: Option<Digest>,
    /// Our digest as we last told the peer, and when.
    told: Option<(Digest, UnixMillis)>,
    /// Automerge sync states, per document, of the current round.
    syncs: BTreeMap<Unit, SyncState>,
    /// Our units were sent in the current round.
    units_sent: bool,
    /// When to compare again, if the store still differs.
    due: Option<UnixMillis>,
    /// The delay before the next comparison after this one.
    backoff: Duration,
    /// Last message about this store, either way.
    active: UnixMillis,
    /// Last message about this store from the peer.
    heard: UnixMillis,
    /// Since when a due comparison has been put off because the store was busy.
    busy_since: Option<UnixMillis>,
    /// The digest the peer last said it holds and keeps (its placement puts the
    /// store on it), and when it said so.
    kept: Option<(Digest, UnixMillis)>,
}

impl PeerStore {
    fn new(now: UnixMillis, config: &Config) -> Self {
        Self {
            confirmed: None,
            expected: None,
            told: None,
            syncs: BTreeMap::new(),
            units_sent: false,
            due: None,
            backoff: config.retry,
            active: now,
            heard: now,
            busy_since: None,
            kept: None,
        }
    }

    /// Compares the store again at `at` at the latest.
    fn arm(&mut self, at: UnixMillis) {
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// Compares the store again soon (at `at`), unless the peer has never confirmed
    /// anything of it: then the comparison already due (offers backing off) stands, so
    /// that writes to a store the peer does not take cannot make it offer more often.
    fn arm_soon(&mut self, at: UnixMillis) {
        if self.confirmed.is_some() || self.due.is_none() {
            self.arm(at);
        }
    }

    /// The peer confirmed our digest: nothing is due, and the next repair starts from
    /// the first delay again.
    fn settled(&mut self, retry: Duration) {
        self.due = None;
        self.busy_since = None;
        self.backoff = retry;
    }
}

#[derive(Debug, Default)]
struct Peer {
    stores: BTreeMap<String, PeerStore>,
    queue: VecDeque<Vec<u8>>,
    queued: usize,
}

/// The replica of one store at one peer, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReplica<P> {
    /// The peer.
    pub peer: P,
    /// Its digest and records as it last confirmed them, if it did.
    pub confirmed: Option<(Digest, u64)>,
    /// The digest it last said it holds and keeps (its placement puts the store on
    /// it), in answer to this device's latest [`Engine::hand_over`] of the store: what a
    /// device the placement moves the store off may drop on. An answer from before
    /// that hand-over does not count (the peer may have dropped its copy since).
    pub kept: Option<Digest>,
}

/// The sync engine of one device: what to send to each connected peer.
#[derive(Debug)]
pub struct Engine<P> {
    config: Config,
    peers: BTreeMap<P, Peer>,
    events: VecDeque<Event<P>>,
    /// Round-robin position for [`Engine::poll_transmit`].
    next_peer: Option<P>,
    /// When each store was last handed over ([`Engine::hand_over`]).
    handed_over: BTreeMap<String, UnixMillis>,
}

impl<P: Ord + Clone> Engine<P> {
    /// An engine with no peers.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
            next_peer: None,
            handed_over: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A peer was admitted: sends it the summary of the stores it shares with us.
    pub fn handle_connected(&mut self, now: UnixMillis, peer: P, replica: &mut impl Replica<P>) {
        self.peers.insert(peer.clone(), Peer::default());
        self.send_summary(now, &peer, replica);
    }

    /// The peer is gone: forgets everything about it.
    pub fn handle_disconnected(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.peers.keys()
    }

    /// Each connected peer that shares `store`, with its confirmed digest.
    pub fn replicas(&self, store: &str) -> Vec<PeerReplica<P>> {
        let since = self.handed_over.get(store).copied();
        self.peers
            .iter()
            .filter_map(|(peer, p)| {
                p.stores.get(store).map(|s| PeerReplica {
                    peer: peer.clone(),
                    confirmed: s.confirmed,
                    kept: s
                        .kept
                        .filter(|(_, at)| since.is_some_and(|since| *at >= since))
                        .map(|(digest, _)| digest),
                })
            })
            .collect()
    }

    fn send_summary(&mut self, now: UnixMillis, peer: &P, replica: &mut impl Replica<P>) {
        let shared = replica.shared_with(peer);
        let mut entries = Vec::with_capacity(shared.len());
        for store in &shared {
            match replica.digest(&store.id) {
                Ok(digest) => entries.push((store.id.clone(), digest)),
                Err(err) => self.local_error(&store.id, &err),
            }
        }
        // Until the peer answers, every shared store counts as differing: if the
        // summary or the answer is lost, the comparison starts again at its deadline.
        let config = self.config.clone();
        let at = now.saturating_add(config.retry);
        if let Some(p) = self.peers.get_mut(peer) {
            for (id, _) in &entries {
                p.stores
                    .entry(id.clone())
                    .or_insert_with(|| PeerStore::new(now, &config))
                    .arm(at);
            }
        }
        let message = Message::Summary {
            root: root_of(&entries),
            stores: entries.len() as u64,
        };
        self.send(peer, &message, false);
    }

    /// What this device knows of `store` at `peer`, if they share it.
    fn peer_store(&mut self, peer: &P, store: &str) -> Option<&mut PeerStore> {
        self.peers
            .get_mut(peer)
            .and_then(|p| p.stores.get_mut(store))
    }

    /// A store was created here: offers it to every peer that should hold it.
    pub fn store_added(
        &mut self,
        now: UnixMillis,
        store: &StoreRef,
        replica: &mut impl Replica<P>,
    ) {
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        for peer in peers {
            if !replica.shared_with(&peer).iter().any(|s| s.id == store.id) {
                continue;
            }
            let (Ok(digest), records) = (replica.digest(&store.id), replica.records(&store.id))
            else {
                continue;
            };
            let config = self.config.clone();
            if let Some(p) = self.peers.get_mut(&peer) {
                let s = p
                    .stores
                    .entry(store.id.clone())
                    .or_insert_with(|| PeerStore::new(now, &config));
                s.told = Some((digest, now));
                s.arm(now.saturating_add(config.retry));
            }
            self.send(
                &peer,
                &Message::Digests(vec![(store.clone(), digest, records)]),
                false,
            );
        }
    }

    /// Which stores are shared, or their policies, may have changed: sends every peer a
    /// fresh summary, so that stores newly shared are offered and compared.
    pub fn rescan(&mut self, now: UnixMillis, replica: &mut impl Replica<P>) {
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        for peer in peers {
            // Stores no longer shared with the peer are forgotten for it.
            let shared: std::collections::BTreeSet<String> = replica
                .shared_with(&peer)
                .into_iter()
                .map(|s| s.id)
                .collect();
            if let Some(p) = self.peers.get_mut(&peer) {
                p.stores.retain(|id, _| shared.contains(id));
            }
            self.send_summary(now, &peer, replica);
        }
    }

    /// `store` changed here in a way the engine did not see (a missed local change):
    /// compares it with every peer soon.
    pub fn recheck(&mut self, now: UnixMillis, store: &str) {
        let at = now.saturating_add(self.config.settle);
        for p in self.peers.values_mut() {
            if let Some(s) = p.stores.get_mut(store) {
                s.expected = None;
                s.arm_soon(at);
            }
        }
    }

    /// This device's placement no longer puts `store` here: asks every peer sharing it
    /// to say what it holds (offers it again), so that a holder that keeps it confirms
    /// the same digest (a [`Message::Have`] with `keeps`) before this device drops its
    /// copy.
    pub fn hand_over(&mut self, now: UnixMillis, store: &str, replica: &mut impl Replica<P>) {
        let Ok(digest) = replica.digest(store) else {
            return;
        };
        // Only answers to the latest hand-over count: an older one may come from a
        // peer that has dropped its copy since.
        self.handed_over.insert(store.to_owned(), now);
        let peers: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.stores.contains_key(store))
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in peers {
            self.offer(now, &peer, vec![(store.to_owned(), digest)], replica);
        }
    }

    /// `store` is gone from this device: nothing more is sent or accepted for it.
    pub fn forget_store(&mut self, store: &str) {
        self.handed_over.remove(store);
        for p in self.peers.values_mut() {
            p.stores.remove(store);
        }
    }

    /// A local write changed `store` from digest `before`; `units` are the encoded
    /// automerge changes of each document it touched. Pushes them to every peer that
    /// had `before`.
    pub fn local_change<B: AsRef<[u8]>>(
        &mut self,
        now: UnixMillis,
        store: &str,
        units: &[(Unit, B)],
        before: Digest,
        replica: &mut impl Replica<P>,
    ) {
        let after = match replica.digest(store) {
            Ok(digest) => digest,
            Err(err) => return self.local_error(store, &err),
        };
        let messages: Vec<Vec<u8>> = units
            .iter()
            .map(|(unit, data)| {
                Message::Push {
                    store: store.to_owned(),
                    unit: *unit,
                    digest: after,
                    data: data.as_ref().to_vec(),
                }
                .encode()
            })
            .collect();
        let size: usize = messages.iter().map(Vec::len).sum();
        let settle = self.config.settle;
        let retry = self.config.retry;
        let max = self.config.max_queued_bytes;
        for (peer, p) in &mut self.peers {
            let Some(s) = p.stores.get_mut(store) else {
                continue;
            };
            let current = s.expected.or(s.confirmed.map(|(d, _)| d));
            if current == Some(before) && p.queued + size <= max {
                p.queued += size;
                p.queue.extend(messages.iter().cloned());
                s.expected = Some(after);
                s.active = now;
                // A push that is lost (or whose answer is) is repaired at this deadline.
                s.arm(now.saturating_add(retry));
                self.events.push_back(Event::Sent {
                    peer: peer.clone(),
                    store: store.to_owned(),
                    bytes: size as u64,
                });
            } else {
                // Behind, unknown or congested: the catch-up comparison sends it.
                s.expected = None;
                s.arm_soon(now.saturating_add(settle));
            }
        }
    }

    /// Handles one message from `peer`.
    pub fn handle_message(
        &mut self,
        now: UnixMillis,
        peer: &P,
        bytes: &[u8],
        replica: &mut impl Replica<P>,
    ) {
        if !self.peers.contains_key(peer) {
            self.peers.insert(peer.clone(), Peer::default());
        }
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(err) => return self.misbehaved(peer, format!("malformed sync message: {err}")),
        };
        let result = match message {
            Message::Summary { root, .. } => {
                self.on_summary(now, peer, root, replica);
                Ok(())
            }
            Message::Digests(entries) => {
                self.on_digests(now, peer, entries, replica);
                Ok(())
            }
            Message::Units { store, units } => self.on_units(now, peer, &store, units, replica),
            Message::Sync { store, unit, data } => {
                self.on_sync(now, peer, &store, unit, &data, replica)
            }
            Message::Chunk { store, start, data } => {
                self.on_data(now, peer, &store, Data::Chunk(start), &data, replica)
            }
            Message::Push {
                store,
                unit,
                digest,
                data,
            } => self.on_data(
                now,
                peer,
                &store,
                Data::Changes(unit, digest),
                &data,
                replica,
            ),
            Message::Have {
                store,
                digest,
                records,
                keeps,
            } => {
                self.on_have(now, peer, &store, digest, records, keeps, replica);
                Ok(())
            }
        };
        if let Err(reason) = result {
            self.misbehaved(peer, reason);
        }
    }

    fn on_summary(
        &mut self,
        now: UnixMillis,
        peer: &P,
        root: Digest,
        replica: &mut impl Replica<P>,
    ) {
        let shared = replica.shared_with(peer);
        let mut entries = Vec::with_capacity(shared.len());
        let mut digests = Vec::with_capacity(shared.len());
        for store in shared {
            match replica.digest(&store.id) {
                Ok(digest) => {
                    let records = replica.records(&store.id);
                    digests.push((store.id.clone(), digest));
                    entries.push((store, digest, records));
                }
                Err(err) => self.local_error(&store.id, &err),
            }
        }
        let config = self.config.clone();
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        for (store, _, _) in &entries {
            p.stores
                .entry(store.id.clone())
                .or_insert_with(|| PeerStore::new(now, &config));
        }
        if root == root_of(&digests) {
            // The peer holds exactly what we hold: every shared store is in sync. (The
            // peer's summary starts a new exchange: what we told it before no longer
            // counts, so a later offer of a store is answered.)
            for (store, digest, records) in &entries {
                if let Some(s) = p.stores.get_mut(&store.id) {
                    s.confirmed = Some((*digest, *records));
                    s.heard = now;
                    s.told = None;
                    s.expected = None;
                    s.settled(config.retry);
                }
            }
            return;
        }
        // The digests answer the summary; if they are lost, or the peer's answers
        // are, the comparison starts again at its deadline.
        let at = now.saturating_add(config.retry);
        for (store, digest, _) in &entries {
            if let Some(s) = p.stores.get_mut(&store.id) {
                s.told = Some((*digest, now));
                s.heard = now;
                s.arm(at);
            }
        }
        // In messages the receiver accepts (each entry stands on its own).
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let part: Vec<_> = entries
                .by_ref()
                .take(
                    self.config
                        .max_stores_per_message
                        .clamp(1, message::MAX_STORES),
                )
                .collect();
            self.send(peer, &Message::Digests(part), false);
        }
    }

    fn on_digests(
        &mut self,
        now: UnixMillis,
        peer: &P,
        entries: Vec<(StoreRef, Digest, u64)>,
        replica: &mut impl Replica<P>,
    ) {
        let settle = self.config.settle;
        let retry = self.config.retry;
        for (store, digest, records) in entries {
            let known = self
                .peers
                .get(peer)
                .is_some_and(|p| p.stores.contains_key(&store.id));
            if !known {
                if !replica.accept(peer, &store) {
                    // A device the placement no longer names hands its copy over: it
                    // drops it once a holder confirms the same digest. Only an equal
                    // digest is confirmed (that tells the peer nothing it did not
                    // know); nothing else of the store is sent or taken.
                    let ours = replica.digest(&store.id).ok();
                    if ours == Some(digest) {
                        let message = Message::Have {
                            store: store.id.clone(),
                            digest,
                            records,
                            keeps: replica.keeps(&store.id),
                        };
                        self.send(peer, &message, false);
                    } else {
                        self.unshared(peer, &store.id);
                    }
                    continue;
                }
                let config = self.config.clone();
                if let Some(p) = self.peers.get_mut(peer) {
                    p.stores
                        .insert(store.id.clone(), PeerStore::new(now, &config));
                }
            }
            let ours = match replica.digest(&store.id) {
                Ok(ours) => ours,
                Err(err) => {
                    self.local_error(&store.id, &err);
                    continue;
                }
            };
            let Some(s) = self.peer_store(peer, &store.id) else {
                continue;
            };
            s.confirmed = Some((digest, records));
            s.active = now;
            s.heard = now;
            if digest != ours {
                self.send_units(now, peer, &store.id, replica);
            } else {
                s.settled(retry);
                // Our own digest, sent just now, is crossing this one: the peer will
                // see that we agree. Otherwise (nothing sent, or sent long ago and
                // perhaps lost) it has not heard that we agree.
                let crossing = s
                    .told
                    .is_some_and(|(d, at)| d == ours && at.saturating_add(settle) > now);
                if !crossing {
                    self.send_have(now, peer, &store.id, replica);
                }
            }
        }
    }

    fn send_units(
        &mut self,
        now: UnixMillis,
        peer: &P,
        store: &str,
        replica: &mut impl Replica<P>,
    ) {
        let units = match replica.units(store) {
            Ok(units) => units,
            Err(err) => return self.local_error(store, &err),
        };
        let retry = self.config.retry;
        if let Some(s) = self.peer_store(peer, store) {
            s.units_sent = true;
            s.active = now;
            s.due = Some(now.saturating_add(s.backoff.max(retry)));
        }
        let message = Message::Units {
            store: store.to_owned(),
            units,
        };
        self.send(peer, &message, true);
    }

    fn on_units(
        &mut self,
        now: UnixMillis,
        peer: &P,
        store: &str,
        theirs: Vec<UnitHeads>,
        replica: &mut impl Replica<P>,
    ) -> Result<(), String> {
        let Some(s) = self.peer_store(peer, store) else {
            // Not a store this device shares with the peer: nothing of it is sent.
            self.unshared(peer, store);
            return Ok(());
        };
        s.active = now;
        s.heard = now;
        let units_sent = s.units_sent;
        let ours = match replica.units(store) {
            Ok(units) => units,
            Err(err) => {
                self.local_error(store, &err);
                return Ok(());
            }
        };
        let theirs: BTreeMap<Unit, UnitHeads> = theirs.into_iter().map(|u| (u.unit, u)).collect();
        let mut differs = theirs.len() != ours.len();
        for unit in &ours {
            match theirs.get(&unit.unit) {
                None if unit.closed => {
                    differs = true;
                    if let Unit::Chunk(start) = unit.unit {
                        match replica.closed_chunk(store, start) {
                            Ok(Some(data)) => {
                                let message = Message::Chunk {
                                    store: store.to_owned(),
                                    start,
                                    data,
                                };
                                self.send(peer, &message, true);
                            }
                            Ok(None) => {}
                            Err(err) => self.local_error(store, &err),
                        }
                    }
                }
                Some(t) if sorted(&t.heads) == sorted(&unit.heads) => {}
                _ => {
                    differs = true;
                    self.start_sync(peer, store, unit.unit, replica);
                }
            }
        }
        if differs && !units_sent {
            self.send_units(now, peer, store, replica);
        }
        if !differs {
            self.send_have(now, peer, store, replica);
        }
        Ok(())
    }

    fn start_sync(&mut self, peer: &P, store: &str, unit: Unit, replica: &mut impl Replica<P>) {
        let Some(s) = self.peer_store(peer, store) else {
            return;
        };
        let state = s.syncs.entry(unit).or_insert_with(SyncState::new);
        *state = SyncState::new();
        let generated = replica.generate(store, unit, state);
        self.send_generated(peer, store, unit, generated);
    }

    /// Sends what automerge generated for one document; true when it had nothing more
    /// to say.
    fn send_generated(
        &mut self,
        peer: &P,
        store: &str,
        unit: Unit,
        generated: Result<Option<SyncMessage>, ReplicaError>,
    ) -> bool {
        match generated {
            Ok(Some(message)) => {
                let message = Message::Sync {
                    store: store.to_owned(),
                    unit,
                    data: message.encode(),
                };
                self.send(peer, &message, true);
                false
            }
            Ok(None) => true,
            Err(err) => {
                self.local_error(store, &err);
                false
            }
        }
    }

    fn on_sync(
        &mut self,
        now: UnixMillis,
        peer: &P,
        store: &str,
        unit: Unit,
        data: &[u8],
        replica: &mut impl Replica<P>,
    ) -> Result<(), String> {
        let message = SyncMessage::decode(data)
            .map_err(|err| format!("malformed automerge sync message for {store}: {err}"))?;
        let Some(s) = self.peer_store(peer, store) else {
            self.unshared(peer, store);
            return Ok(());
        };
        inflate::check(message.changes.iter())
            .map_err(|err| format!("automerge sync message for {store}: {err}"))?;
        s.active = now;
        s.heard = now;
        let state = s.syncs.entry(unit).or_insert_with(SyncState::new);
        let before = replica.digest(store).ok();
        match replica.receive(store, unit, state, message) {
            Ok(()) => {}
            Err(ReplicaError::Peer(reason)) => return Err(reason),
            Err(err @ ReplicaError::Inflate(_)) => return Err(err.to_string()),
            Err(err) => {
                self.local_error(store, &err);
                return Ok(());
            }
        }
        let reply = replica.generate(store, unit, state);
        self.after_data(now, peer, store, data.len(), before, replica);
        if self.send_generated(peer, store, unit, reply) {
            self.send_have(now, peer, store, replica);
        }
        Ok(())
    }

    fn on_data(
        &mut self,
        now: UnixMillis,
        peer: &P,
        store: &str,
        what: Data,
        data: &[u8],
        replica: &mut impl Replica<P>,
    ) -> Result<(), String> {
        let Some(s) = self.peer_store(peer, store) else {
            self.unshared(peer, store);
            return Ok(());
        };
        s.active = now;
        s.heard = now;
        inflate::check([data]).map_err(|err| match what {
            Data::Chunk(start) => format!("chunk {start} of {store}: {err}"),
            Data::Changes(..) => format!("changes pushed for {store}: {err}"),
        })?;
        let before = replica.digest(store).ok();
        let applied = match what {
            Data::Chunk(start) => replica.merge_chunk(store, start, data),
            Data::Changes(unit, _) => replica.apply(store, unit, data),
        };
        let len = data.len();
        match applied {
            Ok(()) => {}
            Err(ReplicaError::Peer(reason)) => return Err(reason),
            Err(err @ ReplicaError::Inflate(_)) => return Err(err.to_string()),
            Err(err) => {
                self.local_error(store, &err);
                return Ok(());
            }
        }
        self.after_data(now, peer, store, len, before, replica);
        if let Data::Changes(_, theirs) = what {
            let records = replica.records(store);
            let same = replica.digest(store).ok() == Some(theirs);
            let settle = self.config.settle;
            let retry = self.config.retry;
            if let Some(s) = self.peer_store(peer, store) {
                if same {
                    // The push says what the sender holds with it: we now hold the same.
                    s.confirmed = Some((theirs, records));
                    s.settled(retry);
                } else {
                    // An earlier push was lost, or one side holds what the other lacks:
                    // the push says what the sender holds now (its record count comes
                    // with its next answer), and this side compares too, even while
                    // the sender keeps writing.
                    s.confirmed = Some((theirs, s.confirmed.map_or(0, |(_, records)| records)));
                    s.arm_soon(now.saturating_add(settle));
                }
            }
        }
        self.send_have(now, peer, store, replica);
        Ok(())
    }

    /// After data from `peer` was applied: reports a change, and schedules other peers
    /// that may now lag behind for comparison.
    fn after_data(
        &mut self,
        now: UnixMillis,
        peer: &P,
        store: &str,
        len: usize,
        before: Option<Digest>,
        replica: &mut impl Replica<P>,
    ) {
        let after = replica.digest(store).ok();
        if after == before {
            return;
        }
        self.events.push_back(Event::Received {
            peer: peer.clone(),
            store: store.to_owned(),
            bytes: len as u64,
        });
        let settle = self.config.settle;
        for (other, p) in &mut self.peers {
            if other == peer {
                continue;
            }
            if let Some(s) = p.stores.get_mut(store) {
                s.expected = None;
                let at = now.saturating_add(settle);
                s.arm_soon(at);
            }
        }
    }

    fn send_have(&mut self, now: UnixMillis, peer: &P, store: &str, replica: &mut impl Replica<P>) {
        let digest = match replica.digest(store) {
            Ok(digest) => digest,
            Err(err) => return self.local_error(store, &err),
        };
        let records = replica.records(store);
        let keeps = replica.keeps(store);
        if let Some(s) = self.peer_store(peer, store) {
            s.told = Some((digest, now));
        }
        let message = Message::Have {
            store: store.to_owned(),
            digest,
            records,
            keeps,
        };
        self.send(peer, &message, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_have(
        &mut self,
        now: UnixMillis,
        peer: &P,
        store: &str,
        digest: Digest,
        records: u64,
        keeps: bool,
        replica: &mut impl Replica<P>,
    ) {
        let ours = replica.digest(store).ok();
        let settle = self.config.settle;
        let retry = self.config.retry;
        let Some(s) = self.peer_store(peer, store) else {
            // A claim about a store the peer does not share with us proves nothing.
            self.unshared(peer, store);
            return;
        };
        s.active = now;
        s.heard = now;
        s.confirmed = Some((digest, records));
        s.kept = keeps.then_some((digest, now));
        if s.expected == Some(digest) {
            s.expected = None;
        }
        if Some(digest) == ours {
            s.settled(retry);
            s.units_sent = false;
            s.syncs.clear();
        } else {
            let at = now.saturating_add(settle);
            s.due = Some(s.due.map_or(at, |d| d.max(at)));
        }
    }

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(P, Vec<u8>)> {
        let order: Vec<P> = match &self.next_peer {
            Some(next) => self
                .peers
                .range(next.clone()..)
                .chain(self.peers.range(..next.clone()))
                .map(|(p, _)| p.clone())
                .collect(),
            None => self.peers.keys().cloned().collect(),
        };
        for peer in order {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            if let Some(bytes) = p.queue.pop_front() {
                p.queued = p.queued.saturating_sub(bytes.len());
                self.next_peer = self
                    .peers
                    .range((
                        std::ops::Bound::Excluded(peer.clone()),
                        std::ops::Bound::Unbounded,
                    ))
                    .next()
                    .map(|(p, _)| p.clone());
                return Some((peer, bytes));
            }
        }
        None
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        self.peers
            .values()
            .flat_map(|p| p.stores.values().filter_map(|s| s.due))
            .min()
    }

    /// Compares again every store whose time came and that still differs.
    pub fn handle_timeout(&mut self, now: UnixMillis, replica: &mut impl Replica<P>) {
        let due: Vec<(P, String)> = self
            .peers
            .iter()
            .flat_map(|(peer, p)| {
                p.stores
                    .iter()
                    .filter(|(_, s)| s.due.is_some_and(|at| at <= now))
                    .map(|(store, _)| (peer.clone(), store.clone()))
            })
            .collect();
        let settle = self.config.settle;
        let retry = self.config.retry;
        let max_retry = self.config.max_retry;
        let mut offers: BTreeMap<P, Vec<(String, Digest)>> = BTreeMap::new();
        for (peer, store) in due {
            let ours = match replica.digest(&store) {
                Ok(digest) => digest,
                Err(err) => {
                    self.local_error(&store, &err);
                    // Try again later, not at once (the error would repeat).
                    if let Some(s) = self.peer_store(&peer, &store) {
                        s.due = Some(now.saturating_add(s.backoff));
                        s.backoff = (s.backoff * 2).min(max_retry);
                    }
                    continue;
                }
            };
            let Some(s) = self.peer_store(&peer, &store) else {
                continue;
            };
            // Only what the peer confirmed counts: an expected digest may rest on a
            // push that was lost.
            if s.confirmed.map(|(d, _)| d) == Some(ours) {
                s.settled(retry);
                continue;
            }
            // Still busy: a round whose messages are still moving, or every write
            // pushed and the peer answering (a writer faster than the round trip is
            // never confirmed exactly). Wait until it has been quiet for `settle`, but
            // not longer than the backoff: a writer that never pauses must not hold
            // the repair off for ever.
            let quiet = if s.units_sent {
                s.active.saturating_add(settle)
            } else {
                UnixMillis(0)
            };
            let answering = if s.expected == Some(ours) {
                s.heard.saturating_add(settle)
            } else {
                UnixMillis(0)
            };
            let busy = quiet.max(answering);
            if busy > now {
                let limit = s.busy_since.get_or_insert(now).saturating_add(s.backoff);
                if now < limit {
                    s.due = Some(busy.min(limit));
                    continue;
                }
            }
            // A new round: what was in flight may be lost.
            s.busy_since = None;
            s.syncs.clear();
            s.units_sent = false;
            s.expected = None;
            let backoff = s.backoff;
            s.backoff = (backoff * 2).min(max_retry);
            s.due = Some(now.saturating_add(backoff));
            if s.confirmed.is_none() {
                // The peer never said what it holds of this store (its summary or
                // digests, or ours, were lost; or it lacks the store): offer it again,
                // as the digests after a summary do.
                offers.entry(peer).or_default().push((store, ours));
            } else {
                self.send_units(now, &peer, &store, replica);
                if let Some(s) = self.peer_store(&peer, &store) {
                    s.due = Some(now.saturating_add(backoff));
                }
            }
        }
        for (peer, stores) in offers {
            self.offer(now, &peer, stores, replica);
        }
    }

    /// Sends `peer` the digests of `stores` (and what it needs to create a replica of
    /// each), in as few messages as it accepts; forgets those no longer shared with it.
    fn offer(
        &mut self,
        now: UnixMillis,
        peer: &P,
        stores: Vec<(String, Digest)>,
        replica: &mut impl Replica<P>,
    ) {
        let shared: BTreeMap<String, StoreRef> = replica
            .shared_with(peer)
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mut entries = Vec::with_capacity(stores.len());
        for (id, digest) in stores {
            let Some(store) = shared.get(&id) else {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.stores.remove(&id);
                }
                continue;
            };
            let records = replica.records(&id);
            if let Some(s) = self.peer_store(peer, &id) {
                s.told = Some((digest, now));
                s.active = now;
            }
            entries.push((store.clone(), digest, records));
        }
        let per_message = self
            .config
            .max_stores_per_message
            .clamp(1, message::MAX_STORES);
        for part in entries.chunks(per_message) {
            self.send(peer, &Message::Digests(part.to_vec()), false);
        }
    }

    /// Queues `message` for `peer`. A droppable message is not queued when the peer's
    /// queue is full; the store's next comparison makes up for it.
    fn send(&mut self, peer: &P, message: &Message, droppable: bool) {
        let bytes = message.encode();
        let max = self.config.max_queued_bytes;
        let settle = self.config.settle;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if droppable && p.queued + bytes.len() > max {
            if let Some(s) = message.store().and_then(|id| p.stores.get_mut(id)) {
                s.syncs.clear();
                s.units_sent = false;
                s.due = Some(s.active.saturating_add(settle));
            }
            return;
        }
        p.queued += bytes.len();
        let len = bytes.len() as u64;
        p.queue.push_back(bytes);
        if let Message::Sync { store, .. }
        | Message::Chunk { store, .. }
        | Message::Push { store, .. } = message
        {
            self.events.push_back(Event::Sent {
                peer: peer.clone(),
                store: store.clone(),
                bytes: len,
            });
        }
    }

    fn misbehaved(&mut self, peer: &P, reason: String) {
        self.peers.remove(peer);
        self.events.push_back(Event::Misbehaved {
            peer: peer.clone(),
            reason,
        });
    }

    fn unshared(&mut self, peer: &P, store: &str) {
        self.events.push_back(Event::Unshared {
            peer: peer.clone(),
            store: store.to_owned(),
        });
    }

    fn local_error(&mut self, store: &str, err: &ReplicaError) {
        self.events.push_back(Event::LocalError {
            store: store.to_owned(),
            reason: err.to_string(),
        });
    }
}

fn sorted(heads: &[Head]) -> Vec<Head> {
    let mut heads = heads.to_vec();
    heads.sort_unstable();
    heads
}

/// What a data message carries.
#[derive(Debug, Clone, Copy)]
enum Data {
    /// A closed chunk, whole.
    Chunk(u64),
    /// Pushed changes of one unit, and the sender's digest with them applied.
    Changes(Unit, Digest),
}
