//! Where the devices are: every device this node has admitted, with its addresses,
//! remembered across restarts (`peers.json`); lost devices, bootstrap addresses and
//! devices mDNS finds on the LAN are dialled again with backoff.

use std::collections::BTreeMap;

use hearth_protocol::statefile;
use libp2p::{Multiaddr, PeerId, mdns};

use super::MeshLoop;
use super::sessions::PeerSession;
use super::{now, peer_key};

pub(super) struct Known {
    pub(super) name: String,
    pub(super) role: String,
    pub(super) connected: bool,
    pub(super) last_seen: u64,
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) retry: Backoff,
}

/// How long a LAN peer that was refused (not a device of this mesh) waits before it
/// is dialled again.
pub(super) const STRANGER_RETRY_MS: u64 = 10 * 60 * 1000;

/// When to try a lost device again: 2 s after losing it, doubling to 30 s.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) next: u64,
    pub(super) delay_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: 0,
            delay_ms: 2_000,
        }
    }
}

impl Backoff {
    /// Is an attempt due at `now`? If so, schedules the next one further out.
    pub(super) fn due(&mut self, now: u64) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.delay_ms;
        self.delay_ms = (self.delay_ms * 2).min(30_000);
        true
    }
}

/// One remembered device in the peers file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Remembered {
    peer_id: String,
    name: String,
    role: String,
    last_seen: u64,
    addrs: Vec<String>,
}

/// The remembered address book. One that cannot be read is reported and started
/// afresh: it holds only where devices were last reached, never who may connect.
pub(super) fn load_peers(path: &std::path::Path) -> BTreeMap<PeerId, Known> {
    let bytes = match statefile::read_state(path, PEERS_KIND, MAX_PEERS_BYTES) {
        Ok(Some(state)) => state.payload,
        Ok(None) => return BTreeMap::new(),
        Err(err) => {
            tracing::warn!(error = %err, "ignoring an unreadable peers file; devices are found again as they connect");
            return BTreeMap::new();
        }
    };
    let list: Vec<Remembered> = match serde_json::from_slice(&bytes) {
        Ok(list) => list,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "ignoring an unreadable peers file");
            return BTreeMap::new();
        }
    };
    list.into_iter()
        .take(1024)
        .filter_map(|r| {
            let peer = r.peer_id.parse().ok()?;
            let addrs = r
                .addrs
                .iter()
                .take(16)
                .filter_map(|a| a.parse().ok())
                .collect();
            Some((
                peer,
                Known {
                    name: r.name,
                    role: r.role,
                    connected: false,
                    last_seen: r.last_seen,
                    addrs,
                    retry: Backoff::default(),
                },
            ))
        })
        .collect()
}

/// What the address book's state file header calls it.
const PEERS_KIND: &str = "peers";
/// The largest address book read (1,024 devices of 16 addresses).
const MAX_PEERS_BYTES: u64 = 16 << 20;

impl MeshLoop {
    pub(super) fn save_peers(&self) {
        let Some(path) = &self.config.peers_file else {
            return;
        };
        let list: Vec<Remembered> = self
            .known
            .iter()
            .map(|(peer, k)| Remembered {
                peer_id: peer.to_string(),
                name: k.name.clone(),
                role: k.role.clone(),
                last_seen: k.last_seen,
                addrs: k.addrs.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let Ok(bytes) = serde_json::to_vec_pretty(&list) else {
            return;
        };
        if let Err(err) = statefile::write_state(path, PEERS_KIND, 1, &bytes) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remember peers");
        }
    }

    /// Redials admitted peers that dropped, and bootstrap addresses not connected; asks
    /// connected peers which devices they know.
    pub(super) fn redial(&mut self) {
        self.refresh_listing();
        let now = now().0;
        // A bootstrap address of a device we know is one more address of it, dialled
        // with the others: a dial of its own (to where the device was when this one
        // joined, say) would hold back the dial to where it is now, as libp2p dials a
        // device once at a time.
        let mut bootstrap: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        let mut strangers = Vec::new();
        for addr in &self.config.bootstrap {
            match bootstrap_peer(addr) {
                Some((peer, bare)) if self.known.contains_key(&peer) => {
                    bootstrap.entry(peer).or_default().push(bare);
                }
                _ => strangers.push(addr.clone()),
            }
        }
        let mut targets: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, k) in &mut self.known {
            let lost = !k.connected
                && !self.swarm.is_connected(peer)
                && !peer_key(peer).is_some_and(|key| self.gate.revocations.is_key_revoked(&key));
            // Nothing to dial yet (only relayed addresses, through relays that have
            // not admitted this node) does not count as an attempt.
            let addrs = self.reach.dialable(k.addrs.clone());
            if lost && !addrs.is_empty() && k.retry.due(now) {
                let mut addrs = addrs;
                for addr in bootstrap.remove(peer).unwrap_or_default() {
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
                targets.push((*peer, addrs));
            }
        }
        for (peer, addrs) in targets {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
        self.redial_lan(now);
        for addr in strangers {
            let connected = addr.iter().any(|p| match p {
                libp2p::multiaddr::Protocol::P2p(peer) => self.swarm.is_connected(&peer),
                _ => false,
            });
            let retry = self.bootstrap_retry.entry(addr.to_string()).or_default();
            if connected {
                *retry = Backoff::default();
            } else if retry.due(now)
                && let Err(err) = self.swarm.dial(addr.clone())
            {
                tracing::warn!(%addr, error = %err, "cannot dial a bootstrap address");
            }
        }
    }

    /// Dials every LAN peer that is not connected and whose next attempt is due.
    pub(super) fn redial_lan(&mut self, now: u64) {
        let mut targets: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, (addrs, retry)) in &mut self.lan {
            let admitted = self.known.get(peer).is_some_and(|k| k.connected);
            if admitted && self.swarm.is_connected(peer) {
                *retry = Backoff::default();
                continue;
            }
            if !self.swarm.is_connected(peer)
                && !self.sessions.get(peer).is_some_and(PeerSession::admitting)
                && retry.due(now)
            {
                targets.push((*peer, addrs.clone()));
            }
        }
        for (peer, addrs) in targets {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    pub(super) fn mdns_event(&mut self, event: mdns::Event) {
        match event {
            mdns::Event::Discovered(found) => {
                let mut new: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
                for (peer, addr) in found {
                    new.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in new {
                    let (known, _) = self.lan.entry(peer).or_default();
                    add_addrs(known, addrs);
                }
                // Dial now rather than at the next tick.
                self.redial_lan(now().0);
            }
            mdns::Event::Expired(gone) => {
                for (peer, addr) in gone {
                    if let Some((addrs, _)) = self.lan.get_mut(&peer) {
                        addrs.retain(|a| *a != addr);
                        if addrs.is_empty() {
                            self.lan.remove(&peer);
                        }
                    }
                }
            }
        }
    }
}

/// The device a bootstrap address names (`…/p2p/PEER`), and the address without it.
fn bootstrap_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut peer = None;
    let bare: Multiaddr = addr
        .iter()
        .filter(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => {
                peer = Some(*id);
                false
            }
            _ => true,
        })
        .collect();
    peer.map(|peer| (peer, bare))
}

/// Adds the addresses in `new` that `known` lacks, in front (a device that restarted on
/// new ports is dialled there first), and keeps the 16 most recent. True if it changed.
pub(super) fn add_addrs(known: &mut Vec<Multiaddr>, new: Vec<Multiaddr>) -> bool {
    let mut fresh: Vec<Multiaddr> = Vec::new();
    for addr in new {
        if !known.contains(&addr) && !fresh.contains(&addr) {
            fresh.push(addr);
        }
    }
    if fresh.is_empty() {
        return false;
    }
    known.splice(0..0, fresh);
    known.truncate(16);
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_device_restarting_on_new_ports_is_remembered_where_it_is_now() {
        let addr = |port: u16| -> Multiaddr {
            format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
                .parse()
                .unwrap()
        };
        let mut known = Vec::new();
        // Twenty restarts, each on two new ports.
        for restart in 0..20u16 {
            let now = vec![addr(1000 + 2 * restart), addr(1001 + 2 * restart)];
            assert!(add_addrs(&mut known, now.clone()));
            assert_eq!(
                known[..2],
                now[..],
                "restart {restart}: the new ports come first"
            );
            assert!(known.len() <= 16);
            // Hearing of them again changes nothing (the address book is not rewritten).
            assert!(!add_addrs(&mut known, now.clone()));
            assert!(!add_addrs(&mut known, vec![now[1].clone(), now[0].clone()]));
        }
        assert_eq!(known.len(), 16);
        assert!(!known.contains(&addr(1000)), "the oldest went");
    }
}
