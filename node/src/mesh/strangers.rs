//! What strangers can cost a device: peers that are not devices of the mesh (and
//! devices whose admission is refused) connect, present bad certificates or tickets,
//! and break the protocols' limits.
//!
//! - Their refusals are counted per source (the address they connect from; a device
//!   of the mesh by its name) and window ([`crate::tally`]): the first of a window is
//!   recorded, the rest as one summary entry when the window ends.
//! - A connection is judged once: a request for admission on a connection already
//!   refused is not looked at.
//! - At most [`MAX_INCOMING`] connections with peers that are not devices of the mesh
//!   (either side dialled) are kept at once; past that a new one is closed as it
//!   opens, so the other slots of the connection limit stay free for the owner's
//!   devices.
//! - The mesh's audit entries are written by [`AuditWriter`], on a thread of its own:
//!   the mesh loop never waits for the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use hearth_stores::audit::{AuditLog, Event as AuditEvent};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use crate::tally::{Due, Tally};

/// Incoming connections kept at once from peers that are not devices of the mesh;
/// the connection limit allows 128 incoming in all.
pub(super) const MAX_INCOMING: usize = 64;

/// Entries waiting to be written before the mesh loop waits for the writer.
const AUDIT_QUEUE: usize = 4096;

/// What the writer is handed.
enum Queued {
    /// An entry to write.
    Entry(AuditEvent),
    /// Something to do once every entry before it is written (an answer to the owner),
    /// told why one of them could not be written since the last, if one could not.
    Then(Box<dyn FnOnce(Option<String>) + Send>),
    /// Something to do once every entry before it is written, skipped when any entry
    /// could not be written since the writer started (or before: `spawn`'s
    /// `all_written`).
    IfAllWritten(Box<dyn FnOnce() + Send>),
}

/// The mesh's audit entries, written in order by a thread of their own; each is
/// durable when the thread has written it (the log syncs every entry). When
/// [`AUDIT_QUEUE`] entries wait (a disk that stopped answering), the loop waits for
/// the writer rather than lose one.
pub(super) struct AuditWriter {
    queue: Option<std_mpsc::SyncSender<Queued>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditWriter {
    /// Starts the thread writing to `log`; `all_written` says whether every entry meant
    /// for it before now was written.
    pub(super) fn spawn(log: Arc<AuditLog>, all_written: bool) -> std::io::Result<Self> {
        let (queue, entries) = std_mpsc::sync_channel::<Queued>(AUDIT_QUEUE);
        let thread = std::thread::Builder::new()
            .name("mesh-audit".into())
            .spawn(move || {
                let mut failed = None;
                let mut all_written = all_written;
                for queued in entries {
                    match queued {
                        Queued::Entry(event) => {
                            if let Err(err) = log.record(event) {
                                tracing::error!(error = %err, "cannot write the audit log");
                                failed.get_or_insert(err.to_string());
                                all_written = false;
                            }
                        }
                        Queued::Then(then) => then(failed.take()),
                        Queued::IfAllWritten(then) => {
                            if all_written {
                                then();
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues an entry (waits while the queue is full).
    pub(super) fn record(&self, event: AuditEvent) {
        self.queue(Queued::Entry(event));
    }

    /// Runs `then` on the writer once every entry queued before it is written, with why
    /// one of them (since the last `then`) could not be, if one could not.
    pub(super) fn then(&self, then: impl FnOnce(Option<String>) + Send + 'static) {
        self.queue(Queued::Then(Box::new(then)));
    }

    /// Runs `then` on the writer once every entry queued before it is written, unless
    /// one entry, any since the writer started, could not be.
    pub(super) fn if_all_written(&self, then: impl FnOnce() + Send + 'static) {
        self.queue(Queued::IfAllWritten(Box::new(then)));
    }

    fn queue(&self, queued: Queued) {
        let Some(queue) = &self.queue else {
            return;
        };
        let queued = match queue.try_send(queued) {
            Ok(()) => return,
            Err(std_mpsc::TrySendError::Full(queued)) => {
                tracing::warn!(
                    "the audit log is {AUDIT_QUEUE} entries behind; waiting for the disk"
                );
                queued
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => {
                tracing::error!("the mesh's audit writer has stopped; an entry is not written");
                return;
            }
        };
        if queue.send(queued).is_err() {
            tracing::error!("the mesh's audit writer has stopped; an entry is not written");
        }
    }

    /// Writes what is queued and stops the thread.
    pub(super) async fn close(mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        // Dropped without `close`: the thread still writes what is queued, then ends.
        self.queue = None;
    }
}

/// Where a connection comes from, as refusals are counted: the IPv4 address of
/// `remote`, its IPv6 /64, or the whole address when it names none.
pub(super) fn source_of(remote: &Multiaddr) -> String {
    remote
        .iter()
        .find_map(|p| match p {
            Protocol::Ip4(ip) => Some(ip.to_string()),
            // One network hands out a /64 to each of its hosts.
            Protocol::Ip6(ip) => Some(match ip.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let net = u128::from(ip) & !((1u128 << 64) - 1);
                    format!("{}/64", std::net::Ipv6Addr::from(net))
                }
            }),
            _ => None,
        })
        .unwrap_or_else(|| remote.to_string())
}

/// The state [`super`] keeps about strangers.
#[derive(Debug, Default)]
pub(super) struct Strangers {
    /// Refusals per source and window.
    tally: Tally,
    /// Where each connected peer's latest connection comes from.
    sources: BTreeMap<PeerId, String>,
    /// Open connections with peers that are not devices of the mesh.
    incoming: BTreeSet<ConnectionId>,
    /// Connections whose admission was refused.
    refused: BTreeSet<ConnectionId>,
}

impl Strangers {
    /// A connection opened. `member`: the peer is a device of the mesh. `false` when
    /// it is to be closed at once: one with a stranger past
    /// [`MAX_INCOMING`].
    pub(super) fn opened(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        remote: &Multiaddr,
        member: bool,
    ) -> bool {
        self.sources.insert(peer, source_of(remote));
        // Connections this node dialled count too: a LAN peer can announce any number
        // of names over mDNS, each of which is dialled.
        if member {
            return true;
        }
        if self.incoming.len() >= MAX_INCOMING {
            return false;
        }
        self.incoming.insert(connection);
        true
    }

    /// A connection closed; `last`: the peer has none left.
    pub(super) fn closed(&mut self, peer: PeerId, connection: ConnectionId, last: bool) {
        self.incoming.remove(&connection);
        self.refused.remove(&connection);
        if last {
            self.sources.remove(&peer);
        }
    }

    /// The admission of `peer` was refused on `connections`.
    pub(super) fn refuse(&mut self, connections: impl IntoIterator<Item = ConnectionId>) {
        self.refused.extend(connections);
    }

    /// Was admission refused on `connection` already?
    pub(super) fn was_refused(&self, connection: ConnectionId) -> bool {
        self.refused.contains(&connection)
    }

    /// Where `peer` connects from, as far as this knows.
    pub(super) fn source(&self, peer: &PeerId) -> String {
        self.sources
            .get(peer)
            .cloned()
            .unwrap_or_else(|| "an unknown address".to_owned())
    }

    /// Counts a refusal of `peer` for `reason`, `peer` known as `device` when it is a
    /// device of the mesh; returns where it came from and whether to record it now
    /// (the first for that reason in its source's window).
    pub(super) fn count(
        &mut self,
        peer: &PeerId,
        device: Option<&str>,
        reason: &str,
        now: Instant,
    ) -> (String, bool) {
        let source = match device {
            Some(name) => format!("{name} at {}", self.source(peer)),
            None => self.source(peer),
        };
        let first = self.tally.refused_as(&source, reason, now);
        (source, first)
    }

    /// Summaries of windows that ended by `now` (all of them when `all`).
    pub(super) fn due(&mut self, now: Instant, all: bool) -> Vec<Due> {
        if all {
            self.tally.drain(now)
        } else {
            self.tally.due(now)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn sources_are_ip_addresses() {
        let tcp: Multiaddr = "/ip4/192.0.2.7/tcp/4001".parse().unwrap();
        assert_eq!(source_of(&tcp), "192.0.2.7");
        let quic: Multiaddr = "/ip6/::1/udp/9/quic-v1".parse().unwrap();
        assert_eq!(source_of(&quic), "::/64");
        let v6: Multiaddr = "/ip6/2001:db8:1:2:aaaa:bbbb:cccc:dddd/tcp/1"
            .parse()
            .unwrap();
        assert_eq!(source_of(&v6), "2001:db8:1:2::/64");
        assert_eq!(source_of(&Multiaddr::empty()), "");
    }

    #[test]
    fn strangers_get_at_most_their_share_of_incoming_slots() {
        let mut strangers = Strangers::default();
        let remote: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        for i in 0..MAX_INCOMING {
            assert!(strangers.opened(
                PeerId::random(),
                ConnectionId::new_unchecked(i),
                &remote,
                false
            ));
        }
        let one_more = ConnectionId::new_unchecked(1000);
        assert!(!strangers.opened(PeerId::random(), one_more, &remote, false));
        // Devices of the mesh are not counted; connections to strangers this side
        // dialled are.
        assert!(strangers.opened(
            PeerId::random(),
            ConnectionId::new_unchecked(1001),
            &remote,
            true
        ));
        assert!(!strangers.opened(
            PeerId::random(),
            ConnectionId::new_unchecked(1002),
            &remote,
            false
        ));
        // A stranger's connection closing frees its slot.
        strangers.closed(PeerId::random(), ConnectionId::new_unchecked(0), true);
        assert!(strangers.opened(
            PeerId::random(),
            ConnectionId::new_unchecked(1003),
            &remote,
            false
        ));
    }

    #[test]
    fn refusals_are_counted_per_source_and_device() {
        let mut strangers = Strangers::default();
        let now = Instant::now();
        let remote: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let mut firsts = 0;
        for i in 0..300 {
            let peer = PeerId::random();
            strangers.opened(peer, ConnectionId::new_unchecked(i), &remote, false);
            let (source, first) = strangers.count(&peer, None, "wrong ticket secret", now);
            assert_eq!(source, "127.0.0.1");
            firsts += usize::from(first);
            strangers.closed(peer, ConnectionId::new_unchecked(i), true);
        }
        assert_eq!(firsts, 1);
        // A device of the mesh refused from the same address is recorded apart.
        let phone = PeerId::random();
        strangers.opened(phone, ConnectionId::new_unchecked(500), &remote, true);
        assert_eq!(
            strangers.count(&phone, Some("phone"), "revoked", now),
            ("phone at 127.0.0.1".to_owned(), true)
        );
        let due = strangers.due(now + crate::tally::WINDOW, false);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].source.as_str(), due[0].count), ("127.0.0.1", 299));
    }
}
