//! The session machine driven as two peers over a perfect, in-order link.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use super::*;
use crate::capability::{
    Revocation, RevocationSet, RevocationTarget, Role, Verifier, VerifierConfig,
};
use crate::device;
use crate::key::{NodeKey, OwnerKey};

const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

fn owner(seed: u8) -> OwnerKey {
    OwnerKey::from_seed([seed; 32])
}

fn node(seed: u8) -> NodeKey {
    NodeKey::from_seed([seed; 32])
}

fn cert(owner: &OwnerKey, node: &NodeKey, name: &str) -> Chain {
    device::issue_certificate(
        owner.secret(),
        None,
        node.public(),
        name,
        Role::Home,
        UnixMillis(0),
        UnixMillis(NOW.0 + 365 * 86_400_000),
        [1; 16],
    )
    .unwrap()
}

/// One device: its key, certificate, gate and membership.
struct Device {
    key: NodeKey,
    certificate: Chain,
    gate: Gate,
    membership: Membership,
}

impl Device {
    fn new(owner: &OwnerKey, key: NodeKey, name: &str) -> Self {
        let certificate = cert(owner, &key, name);
        let gate = Gate::new(
            key.public(),
            Verifier::new(owner.public(), VerifierConfig::default()),
            RevocationSet::new(owner.public()),
            None,
        );
        let mut membership = Membership::new(owner.public());
        membership
            .add_device(NOW, &certificate, &RevocationSet::new(owner.public()))
            .unwrap();
        Self {
            key,
            certificate,
            gate,
            membership,
        }
    }

    fn cx(&mut self) -> Context<'_> {
        Context {
            gate: &mut self.gate,
            membership: &mut self.membership,
        }
    }

    fn digest(&self) -> [u8; 32] {
        self.membership.digest(NOW, &self.gate.revocations)
    }

    fn session(&self, remote: &Device, side: Side, config: &Config) -> Session {
        Session::new(
            NOW,
            remote.key.public(),
            side,
            Opening::Member(self.certificate.clone()),
            config.clone(),
        )
    }
}

/// Two devices and their sessions with each other; what each session did besides
/// sending is kept in `done`.
struct Pair {
    a: Device,
    b: Device,
    sa: Session,
    sb: Session,
    done_a: Vec<Action>,
    done_b: Vec<Action>,
    /// Sends not yet acknowledged, as (from a?, id, channel, bytes).
    in_transit: Vec<(bool, SendId, Channel, Vec<u8>)>,
    now: UnixMillis,
}

impl Pair {
    fn new(a: Device, b: Device, side_a: Side, side_b: Side, config: &Config) -> Self {
        let sa = a.session(&b, side_a, config);
        let sb = b.session(&a, side_b, config);
        Self {
            a,
            b,
            sa,
            sb,
            done_a: Vec::new(),
            done_b: Vec::new(),
            in_transit: Vec::new(),
            now: NOW,
        }
    }

    fn household(side_a: Side, side_b: Side) -> Self {
        let o = owner(1);
        Self::new(
            Device::new(&o, node(2), "home"),
            Device::new(&o, node(3), "phone"),
            side_a,
            side_b,
            &Config::default(),
        )
    }

    /// Moves every action of both sessions: sends go in transit, the rest to `done`.
    fn collect(&mut self) {
        while let Some(action) = self.sa.poll_action() {
            match action {
                Action::Send { channel, id, bytes } => {
                    self.in_transit.push((true, id, channel, bytes));
                }
                other => self.done_a.push(other),
            }
        }
        while let Some(action) = self.sb.poll_action() {
            match action {
                Action::Send { channel, id, bytes } => {
                    self.in_transit.push((false, id, channel, bytes));
                }
                other => self.done_b.push(other),
            }
        }
    }

    /// Delivers, in order, everything in transit until nothing moves; acknowledges
    /// each message when `ack`.
    fn run(&mut self, ack: bool) {
        for _ in 0..1000 {
            if !self.deliver_one(if ack { Fate::Acked } else { Fate::Unacked }) {
                return;
            }
        }
        panic!("the sessions kept talking");
    }

    /// Delivers the first message in transit; false if there was none.
    fn deliver_one(&mut self, fate: Fate) -> bool {
        self.collect();
        if self.in_transit.is_empty() {
            return false;
        }
        let (from_a, id, channel, bytes) = self.in_transit.remove(0);
        let now = self.now;
        let (sender, sender_device, receiver, receiver_device) = if from_a {
            (&mut self.sa, &mut self.a, &mut self.sb, &mut self.b)
        } else {
            (&mut self.sb, &mut self.b, &mut self.sa, &mut self.a)
        };
        receiver.handle_received(now, channel, &bytes, &mut receiver_device.cx());
        if let Fate::Acked = fate {
            sender.handle_sent(now, id, &mut sender_device.cx());
        }
        self.collect();
        true
    }

    fn admitted(&self) -> bool {
        self.sa.is_admitted() && self.sb.is_admitted()
    }
}

/// What becomes of a message in transit.
#[derive(Clone, Copy)]
enum Fate {
    /// Delivered and acknowledged.
    Acked,
    /// Delivered; the acknowledgement has not come back (yet).
    Unacked,
}

fn refusals(done: &[Action]) -> Vec<String> {
    done.iter()
        .filter_map(|a| match a {
            Action::Refused { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn admissions(done: &[Action]) -> usize {
    done.iter()
        .filter(|a| matches!(a, Action::Admitted(_)))
        .count()
}

#[test]
fn initiator_and_responder_are_admitted() {
    let mut pair = Pair::household(Side::Initiator, Side::Responder);
    pair.run(true);
    assert!(pair.admitted());
    assert_eq!(admissions(&pair.done_a), 1);
    assert_eq!(admissions(&pair.done_b), 1);
    assert_eq!(pair.sa.peer().unwrap().name, "phone");
    assert_eq!(pair.sb.peer().unwrap().name, "home");
}

#[test]
fn either_side_may_dial() {
    let mut pair = Pair::household(Side::Responder, Side::Initiator);
    pair.run(true);
    assert!(pair.admitted());
    assert_eq!(pair.sa.side(), Side::Responder);
}

#[test]
fn a_responder_says_nothing_before_the_initiator_presents() {
    let o = owner(1);
    let a = Device::new(&o, node(2), "home");
    let b = Device::new(&o, node(3), "phone");
    let mut responder = a.session(&b, Side::Responder, &Config::default());
    assert_eq!(responder.poll_action(), None);
}

#[test]
fn simultaneous_open_admits_both_once() {
    // Both dialled and each first saw the other's connection as listener; then each
    // learns its own dial went through.
    let mut pair = Pair::household(Side::Responder, Side::Responder);
    pair.collect();
    assert!(pair.in_transit.is_empty());
    pair.sa.handle_opened_as_initiator();
    pair.sb.handle_opened_as_initiator();
    pair.run(true);
    assert!(pair.admitted());
    assert_eq!(admissions(&pair.done_a), 1);
    assert_eq!(admissions(&pair.done_b), 1);
    // Both as initiators from the start.
    let mut pair = Pair::household(Side::Initiator, Side::Initiator);
    pair.run(true);
    assert!(pair.admitted());
}

#[test]
fn a_revoked_device_is_refused() {
    let o = owner(1);
    let mut a = Device::new(&o, node(2), "home");
    let b = Device::new(&o, node(3), "phone");
    let revocation = Revocation {
        issuer: o.public(),
        target: RevocationTarget::Key(b.key.public()),
        issued_at: NOW,
        reason: "lost".into(),
    }
    .sign(o.secret())
    .unwrap();
    a.gate.revocations.insert(&revocation).unwrap();
    let mut pair = Pair::new(a, b, Side::Responder, Side::Initiator, &Config::default());
    pair.run(true);
    assert!(!pair.sa.is_admitted() && !pair.sb.is_admitted());
    assert!(pair.sa.is_closed() && pair.sb.is_closed());
    assert_eq!(refusals(&pair.done_a).len(), 1);
    assert!(refusals(&pair.done_b)[0].contains("the peer refused"));
    assert_eq!(admissions(&pair.done_a) + admissions(&pair.done_b), 0);
}

#[test]
fn a_foreign_certificate_is_refused() {
    let a = Device::new(&owner(1), node(2), "home");
    let b = Device::new(&owner(9), node(3), "phone");
    let before = a.digest();
    let mut pair = Pair::new(a, b, Side::Responder, Side::Initiator, &Config::default());
    pair.run(true);
    assert!(refusals(&pair.done_a)[0].contains("another mesh"));
    assert!(pair.sb.is_closed());
    assert_eq!(pair.a.digest(), before);
}

#[test]
fn membership_digests_converge() {
    let o = owner(1);
    let mut a = Device::new(&o, node(2), "home");
    let mut b = Device::new(&o, node(3), "phone");
    // Each knows a device the other does not.
    let laptop = cert(&o, &node(4), "laptop");
    let vm = cert(&o, &node(5), "vm");
    a.membership
        .add_device(NOW, &laptop, &RevocationSet::new(o.public()))
        .unwrap();
    b.membership
        .add_device(NOW, &vm, &RevocationSet::new(o.public()))
        .unwrap();
    assert_ne!(a.digest(), b.digest());
    let mut pair = Pair::new(a, b, Side::Initiator, Side::Responder, &Config::default());
    pair.run(true);
    assert!(pair.admitted());
    assert_eq!(pair.a.digest(), pair.b.digest());
    assert_eq!(pair.a.membership.members(&pair.a.gate.revocations).len(), 4);
    assert_eq!(pair.sa.peer_digest(), Some(pair.b.digest()));
    assert!(pair.done_a.iter().any(|a| matches!(a, Action::Merged(_))));

    // A revocation made on one side reaches the other at the next exchange.
    let revocation = Revocation {
        issuer: o.public(),
        target: RevocationTarget::Key(node(5).public()),
        issued_at: NOW,
        reason: "sold".into(),
    }
    .sign(o.secret())
    .unwrap();
    pair.a.gate.revocations.insert(&revocation).unwrap();
    assert_ne!(pair.a.digest(), pair.b.digest());
    let due = pair.sa.poll_timeout().unwrap();
    assert_eq!(due, NOW.saturating_add(Duration::from_secs(2)));
    pair.now = due;
    pair.sa.handle_timeout(due, &mut pair.a.cx());
    pair.run(true);
    assert_eq!(pair.a.digest(), pair.b.digest());
    assert!(pair.b.gate.revocations.is_key_revoked(&node(5).public()));

    // Equal digests: an exchange carries no page.
    let due = pair.sb.poll_timeout().unwrap();
    pair.now = due;
    pair.sb.handle_timeout(due, &mut pair.b.cx());
    pair.collect();
    for (_, _, channel, bytes) in &pair.in_transit {
        assert_eq!(*channel, Channel::Members);
        assert!(Exchange::decode(bytes).unwrap().page.is_empty());
    }
    pair.run(true);
    assert_eq!(pair.a.digest(), pair.b.digest());
}

#[test]
fn a_changed_membership_is_told_at_once() {
    // The household's owner, to sign what changes.
    let o = owner(1);
    let mut pair = Pair::household(Side::Initiator, Side::Responder);
    pair.run(true);
    pair.a
        .membership
        .add_device(
            NOW,
            &cert(&o, &node(6), "tv"),
            &RevocationSet::new(o.public()),
        )
        .unwrap();
    pair.sa.handle_membership_changed(NOW, &mut pair.a.cx());
    pair.run(true);
    assert_eq!(pair.a.digest(), pair.b.digest());
}

#[test]
fn addresses_are_listed_to_the_peer() {
    let mut pair = Pair::household(Side::Initiator, Side::Responder);
    let listed = vec![Listed {
        key: node(2).public(),
        addresses: vec!["/ip4/10.0.0.2/udp/7000/quic-v1".into()],
    }];
    pair.sa.set_listed(NOW, listed.clone());
    pair.run(true);
    assert!(pair.done_b.contains(&Action::Listed(listed)));
}

/// Fires `a`'s exchange timer once it is due and delivers what follows; returns the
/// period it armed next.
fn next_exchange(pair: &mut Pair) -> Duration {
    let due = pair.sa.poll_timeout().unwrap();
    pair.now = due;
    pair.sa.handle_timeout(due, &mut pair.a.cx());
    pair.run(true);
    let next = pair.sa.poll_timeout().unwrap();
    Duration::from_millis(next.0 - due.0)
}

#[test]
fn the_exchange_slows_while_both_agree_and_hurries_on_a_change() {
    // The household's owner, to sign what changes.
    let o = owner(1);
    let mut pair = Pair::household(Side::Initiator, Side::Responder);
    pair.run(true);
    assert_eq!(pair.sa.members_period(), Duration::from_secs(2));
    let periods: Vec<u64> = (0..6).map(|_| next_exchange(&mut pair).as_secs()).collect();
    assert_eq!(periods, [4, 8, 16, 30, 30, 30]);

    // A change here is told at once and the period is fast again.
    pair.a
        .membership
        .add_device(
            pair.now,
            &cert(&o, &node(6), "tv"),
            &RevocationSet::new(o.public()),
        )
        .unwrap();
    let now = pair.now;
    pair.sa.handle_membership_changed(now, &mut pair.a.cx());
    assert_eq!(
        pair.sa.poll_timeout(),
        Some(now.saturating_add(Duration::from_secs(2)))
    );
    pair.run(true);
    assert_eq!(pair.a.digest(), pair.b.digest());
    // The peer merged it; its own exchange hurried too, since ours differed.
    assert_eq!(pair.sb.members_period(), Duration::from_secs(2));
    assert_eq!(next_exchange(&mut pair).as_secs(), 4);

    // New addresses are told within the fast period, and slow down again after.
    let now = pair.now;
    pair.sa.set_listed(
        now,
        vec![Listed {
            key: node(2).public(),
            addresses: vec!["/ip4/10.0.0.2/tcp/7000".into()],
        }],
    );
    assert_eq!(
        pair.sa.poll_timeout(),
        Some(now.saturating_add(Duration::from_secs(2)))
    );
    assert_eq!(next_exchange(&mut pair).as_secs(), 2);
    assert!(
        pair.done_b
            .iter()
            .any(|a| matches!(a, Action::Listed(l) if l[0].addresses.len() == 1))
    );
    assert_eq!(next_exchange(&mut pair).as_secs(), 4);
    // The same listing again is no news.
    pair.sa.set_listed(
        pair.now,
        vec![Listed {
            key: node(2).public(),
            addresses: vec!["/ip4/10.0.0.2/tcp/7000".into()],
        }],
    );
    assert_eq!(next_exchange(&mut pair).as_secs(), 8);
}

/// A member whose digest changes with every message (as if its membership never
/// settled) and that asks for an answer each time: each is answered, but the whole
/// set is paged to it at most once per round interval, the first page otherwise.
#[test]
fn a_peer_whose_digest_keeps_changing_gets_the_whole_set_once_per_round() {
    use crate::mesh::membership::MAX_REVOCATIONS;

    let o = owner(1);
    let mut a = Device::new(&o, node(2), "home");
    // Three pages of the owner's revocations.
    let last = revoke_many(&mut a, &o, 0, (3 * MAX_REVOCATIONS - 100) as u64)
        .pop()
        .unwrap();
    let b = Device::new(&o, node(3), "phone");
    let mut pair = Pair::new(a, b, Side::Initiator, Side::Responder, &Config::default());
    pair.run(true);
    assert!(pair.admitted());

    // Twenty seconds of the hostile peer asking every half second with a new digest.
    let mut answers = Vec::new();
    for i in 0..40u8 {
        let now = NOW.saturating_add(Duration::from_millis(500 * (u64::from(i) + 1)));
        let exchange = Exchange {
            request: true,
            more: true,
            digest: [i + 1; 32],
            page: Vec::new(),
            listed: Vec::new(),
        };
        pair.sa
            .handle_received(now, Channel::Members, &exchange.encode(), &mut pair.a.cx());
        // Each answer is acknowledged (the next page of a round goes then).
        while let Some(action) = pair.sa.poll_action() {
            if let Action::Send { id, bytes, .. } = action {
                answers.push(Exchange::decode(&bytes).unwrap());
                pair.sa.handle_sent(now, id, &mut pair.a.cx());
            }
        }
    }
    assert!(!pair.sa.is_closed());
    let rounds = answers
        .iter()
        .filter(|e| {
            Snapshot::decode(&e.page)
                .unwrap()
                .revocations
                .iter()
                .any(|r| r.encode() == last)
        })
        .count();
    // One round at 10 s and one at 20 s (the first went at admission).
    assert_eq!(rounds, 2, "the whole set was paged {rounds} times in 20 s");
    // Otherwise one message per question.
    assert_eq!(answers.len(), 40 + 2 * 2);
}

/// `n` revocations of capabilities by the owner, their ids in order from `first`.
fn revoke_many(device: &mut Device, owner: &OwnerKey, first: u64, n: u64) -> Vec<Vec<u8>> {
    use crate::capability::CapId;
    (first..first + n)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            let revocation = Revocation {
                issuer: owner.public(),
                target: RevocationTarget::Capability(CapId(id)),
                issued_at: NOW,
                reason: String::new(),
            }
            .sign(owner.secret())
            .unwrap();
            device.gate.revocations.insert(&revocation).unwrap();
            revocation.encode()
        })
        .collect()
}

fn members_sends(pair: &Pair, from_a: bool) -> usize {
    pair.in_transit
        .iter()
        .filter(|(a, _, channel, _)| *a == from_a && *channel == Channel::Members)
        .count()
}

/// Delivers and acknowledges messages until `a` has sent the `n`th page of a round
/// (it is in transit).
fn until_page(pair: &mut Pair, n: usize) {
    let mut pages = 0;
    while pages < n {
        let awaiting = pair.sa.paging.awaiting;
        assert!(pair.deliver_one(Fate::Acked));
        if pair.sa.paging.awaiting.is_some() && pair.sa.paging.awaiting != awaiting {
            pages += 1;
        }
    }
}

/// A member that asks without end, and never acknowledges, gets one answer: the
/// next waits for the acknowledgement, and then one message answers all it asked.
#[test]
fn a_peer_that_keeps_asking_gets_one_answer_per_acknowledgement() {
    let mut pair = Pair::household(Side::Initiator, Side::Responder);
    pair.run(true);
    assert!(pair.admitted());
    let mut ids = Vec::new();
    for i in 0..100u8 {
        let exchange = Exchange {
            request: true,
            more: false,
            digest: [i; 32],
            page: Vec::new(),
            listed: Vec::new(),
        };
        let now = pair.now;
        pair.sa
            .handle_received(now, Channel::Members, &exchange.encode(), &mut pair.a.cx());
        while let Some(action) = pair.sa.poll_action() {
            if let Action::Send { id, channel, .. } = action {
                assert_eq!(channel, Channel::Members);
                ids.push(id);
            }
        }
    }
    assert_eq!(ids.len(), 1, "answers sent without acknowledgement");
    // The exchange timer while one is on its way sends nothing either.
    let due = pair.sa.poll_timeout().unwrap();
    pair.now = due;
    pair.sa.handle_timeout(due, &mut pair.a.cx());
    pair.collect();
    assert_eq!(members_sends(&pair, true), 0);
    // The acknowledgement lets one message go, answering all of it.
    let now = pair.now;
    pair.sa.handle_sent(now, ids[0], &mut pair.a.cx());
    pair.collect();
    assert_eq!(members_sends(&pair, true), 1);
    let (_, _, _, bytes) = pair.in_transit.last().unwrap();
    assert!(Exchange::decode(bytes).unwrap().request);
    // A failure frees the way as well.
    let (_, id, _, _) = pair.in_transit.pop().unwrap();
    pair.sa.handle_failed(id);
    pair.run(true);
    assert_eq!(pair.a.digest(), pair.b.digest());
}

/// A page that failed goes again, from where it started, and the round goes on: a
/// peer that fails pages on purpose does not get the whole set more often.
#[test]
fn a_failed_page_goes_again_within_the_round() {
    use crate::mesh::membership::MAX_REVOCATIONS;

    let o = owner(1);
    let mut a = Device::new(&o, node(2), "home");
    let all = revoke_many(&mut a, &o, 0, (3 * MAX_REVOCATIONS - 100) as u64);
    let b = Device::new(&o, node(3), "phone");
    let mut pair = Pair::new(a, b, Side::Initiator, Side::Responder, &Config::default());
    // Admission and the first page, acknowledged: until the second page is on its way.
    until_page(&mut pair, 2);
    // It fails.
    let second = pair
        .in_transit
        .iter()
        .position(|(from_a, id, _, _)| {
            *from_a && pair.sa.paging.awaiting.map(|(s, _)| s) == Some(*id)
        })
        .unwrap();
    let failed = pair.in_transit.remove(second);
    let failed_page = Exchange::decode(&failed.3).unwrap().page;
    pair.sa.handle_failed(failed.1);
    pair.run(true);
    assert_ne!(pair.a.digest(), pair.b.digest());
    // The next exchange, well before the next round could start, carries the same
    // page again (not the first: the round is not started over).
    let due = pair.sa.poll_timeout().unwrap();
    assert!(due < NOW.saturating_add(Duration::from_secs(10)));
    pair.now = due;
    pair.sa.handle_timeout(due, &mut pair.a.cx());
    pair.collect();
    let (_, _, _, bytes) = pair
        .in_transit
        .iter()
        .find(|(from_a, _, channel, _)| *from_a && *channel == Channel::Members)
        .unwrap();
    assert_eq!(Exchange::decode(bytes).unwrap().page, failed_page);
    pair.run(true);
    assert_eq!(pair.a.digest(), pair.b.digest());
    assert_eq!(pair.b.gate.revocations.len(), all.len());
}

/// A revocation made here during a round, behind the round's cursor, is not lost to
/// the peer: the round that missed it is followed by another. The peer here asks every
/// 2 s with a digest that does not change (it refuses something of ours, say), and
/// acknowledges every message.
#[test]
fn a_revocation_made_during_a_round_reaches_the_peer() {
    use crate::mesh::membership::MAX_REVOCATIONS;

    let o = owner(1);
    let mut a = Device::new(&o, node(2), "home");
    // Ids 0, 2, 4, ...: room for one between any two; three pages.
    for i in 0..(3 * MAX_REVOCATIONS - 100) as u64 {
        revoke_many(&mut a, &o, 2 * i, 1);
    }
    let b = Device::new(&o, node(3), "phone");
    let mut pair = Pair::new(a, b, Side::Initiator, Side::Responder, &Config::default());
    pair.run(true);
    assert!(pair.admitted());

    let mut late = None;
    let mut pages = Vec::new();
    for i in 0..15u64 {
        let now = NOW.saturating_add(Duration::from_secs(10 + 2 * i));
        let question = Exchange {
            request: true,
            more: false,
            digest: [7; 32],
            page: Vec::new(),
            listed: Vec::new(),
        };
        pair.sa
            .handle_received(now, Channel::Members, &question.encode(), &mut pair.a.cx());
        while let Some(action) = pair.sa.poll_action() {
            let Action::Send { id, bytes, .. } = action else {
                continue;
            };
            let exchange = Exchange::decode(&bytes).unwrap();
            pages.push((late.is_some(), exchange.page));
            // Once the second page of the first round is out: a revocation behind the
            // cursor (in the second page), told at once.
            if late.is_none() && pages.len() == 2 {
                late = revoke_many(&mut pair.a, &o, 3001, 1).pop();
                pair.sa.handle_membership_changed(now, &mut pair.a.cx());
            }
            pair.sa.handle_sent(now, id, &mut pair.a.cx());
        }
    }
    let late = late.unwrap();
    let carried = pages.iter().filter(|(after, page)| {
        *after
            && Snapshot::decode(page)
                .unwrap()
                .revocations
                .iter()
                .any(|r| r.encode() == late)
    });
    assert!(
        carried.count() >= 1,
        "the revocation never went to the peer"
    );
}

fn sync_sends(pair: &Pair, from_a: bool) -> usize {
    pair.in_transit
        .iter()
        .filter(|(a, _, channel, _)| *a == from_a && *channel == Channel::Sync)
        .count()
}

#[test]
fn the_window_never_exceeds_its_limit_and_drains_on_acks() {
    let o = owner(1);
    let config = Config::default()
        .with_max_in_flight(1_000)
        .with_max_waiting(1_500);
    let mut pair = Pair::new(
        Device::new(&o, node(2), "home"),
        Device::new(&o, node(3), "phone"),
        Side::Initiator,
        Side::Responder,
        &config,
    );
    pair.run(true);
    assert!(pair.admitted());
    for k in 0..10u8 {
        pair.sa.send_sync(vec![k; 300]);
        assert!(pair.sa.in_flight() <= 1_000);
        assert!(pair.sa.waiting() <= 1_500);
    }
    pair.collect();
    // Three fit the window, five wait, two are dropped.
    assert_eq!(pair.sa.in_flight(), 900);
    assert_eq!(sync_sends(&pair, true), 3);
    assert_eq!(pair.sa.waiting(), 1_500);
    let dropped = pair
        .done_a
        .iter()
        .filter(|a| matches!(a, Action::SyncDropped { bytes: 300 }))
        .count();
    assert_eq!(dropped, 2);
    // Acknowledgements let the rest through, never past the window.
    for _ in 0..100 {
        pair.collect();
        if pair.in_transit.is_empty() {
            break;
        }
        let (from_a, id, channel, bytes) = pair.in_transit.remove(0);
        assert!(from_a);
        pair.sb
            .handle_received(pair.now, channel, &bytes, &mut pair.b.cx());
        let now = pair.now;
        pair.sa.handle_sent(now, id, &mut pair.a.cx());
        assert!(pair.sa.in_flight() <= 1_000);
    }
    assert_eq!(pair.sa.in_flight(), 0);
    assert_eq!(pair.sa.waiting(), 0);
    let received: Vec<u8> = pair
        .done_b
        .iter()
        .filter_map(|a| match a {
            Action::Sync(bytes) => bytes.first().copied(),
            _ => None,
        })
        .collect();
    assert_eq!(received, vec![0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn a_message_larger_than_the_window_goes_alone() {
    let config = Config::default().with_max_in_flight(100);
    let mut pair = Pair::new(
        Device::new(&owner(1), node(2), "home"),
        Device::new(&owner(1), node(3), "phone"),
        Side::Initiator,
        Side::Responder,
        &config,
    );
    pair.run(true);
    pair.sa.send_sync(vec![1; 500]);
    pair.sa.send_sync(vec![2; 10]);
    pair.collect();
    assert_eq!(sync_sends(&pair, true), 1);
    assert_eq!(pair.sa.in_flight(), 500);
    pair.run(true);
    assert_eq!(pair.sa.in_flight(), 0);
}

#[test]
fn a_failed_send_leaves_the_window() {
    let config = Config::default().with_max_in_flight(100);
    let mut pair = Pair::new(
        Device::new(&owner(1), node(2), "home"),
        Device::new(&owner(1), node(3), "phone"),
        Side::Initiator,
        Side::Responder,
        &config,
    );
    pair.run(true);
    pair.sa.send_sync(vec![1; 80]);
    pair.sa.send_sync(vec![2; 80]);
    pair.collect();
    let (_, id, _, _) = pair
        .in_transit
        .iter()
        .find(|(a, _, c, _)| *a && *c == Channel::Sync)
        .cloned()
        .unwrap();
    pair.in_transit.clear();
    assert_eq!(pair.sa.in_flight(), 80);
    pair.sa.handle_failed(id);
    // The second message takes its place.
    assert_eq!(pair.sa.in_flight(), 80);
    assert_eq!(pair.sa.waiting(), 0);
    pair.collect();
    assert_eq!(sync_sends(&pair, true), 1);
    // A failure reported twice, or for an unknown id, changes nothing.
    pair.sa.handle_failed(id);
    pair.sa.handle_failed(SendId(9_999));
    assert_eq!(pair.sa.in_flight(), 80);
}

#[test]
fn nothing_is_synced_before_admission() {
    let mut pair = Pair::household(Side::Initiator, Side::Responder);
    pair.sa.send_sync(vec![1; 10]);
    pair.collect();
    assert_eq!(sync_sends(&pair, true), 0);
    assert_eq!(pair.sa.in_flight(), 0);
}

#[test]
fn an_initiator_holds_what_overtakes_its_answer() {
    let mut pair = Pair::household(Side::Initiator, Side::Responder);
    pair.collect();
    // The initiator's hello reaches the responder, which admits it and at once
    // sends its hello, its first exchange and a sync message.
    let (_, _, channel, hello) = pair.in_transit.remove(0);
    pair.sb
        .handle_received(NOW, channel, &hello, &mut pair.b.cx());
    pair.sb.send_sync(b"sync".to_vec());
    pair.collect();
    assert!(pair.sb.is_admitted());
    // The members and sync messages arrive before the hello.
    pair.in_transit.rotate_left(1);
    assert_eq!(pair.in_transit.last().unwrap().2, Channel::Admission);
    pair.run(true);
    assert!(pair.admitted());
    assert!(pair.done_a.contains(&Action::Sync(b"sync".to_vec())));
    assert!(refusals(&pair.done_a).is_empty());
}

#[test]
fn a_lagged_change_leads_to_one_recheck() {
    let mut local = LocalChanges::new();
    local.handle_change("s1", 1);
    local.handle_lagged("s1");
    local.handle_lagged("s1");
    local.handle_lagged("s2");
    local.handle_change("s1", 2);
    let actions: Vec<LocalAction<i32>> = std::iter::from_fn(|| local.poll_action()).collect();
    assert_eq!(
        actions,
        vec![
            LocalAction::Apply {
                store: "s1".into(),
                change: 1
            },
            LocalAction::Recheck { store: "s1".into() },
            LocalAction::Recheck { store: "s2".into() },
            LocalAction::Apply {
                store: "s1".into(),
                change: 2
            },
        ]
    );
    // Once polled, a later lag asks again.
    local.handle_lagged("s1");
    assert_eq!(
        local.poll_action(),
        Some(LocalAction::Recheck { store: "s1".into() })
    );
}

#[test]
fn the_admission_deadline_refuses_a_silent_peer() {
    let mut pair = Pair::household(Side::Responder, Side::Initiator);
    pair.collect();
    pair.in_transit.clear();
    let due = pair.sa.poll_timeout().unwrap();
    pair.sa.handle_timeout(due, &mut pair.a.cx());
    pair.collect();
    assert!(refusals(&pair.done_a)[0].contains("deadline"));
    assert_eq!(pair.sa.poll_timeout(), None);
}

/// A hostile peer: garbage, messages out of order before admission, oversized
/// messages. Each is refused and leaves the device's membership and gate as they were.
#[test]
fn a_hostile_peer_is_refused_and_changes_nothing() {
    let o = owner(1);
    let stranger = Device::new(&owner(7), node(8), "evil");
    let hostile_inputs: Vec<(Channel, Vec<u8>)> = vec![
        (Channel::Admission, b"\x00garbage".to_vec()),
        (Channel::Admission, vec![0xff; 3]),
        (Channel::Members, b"HMEX\x01".to_vec()),
        (
            Channel::Members,
            Exchange {
                request: true,
                more: false,
                digest: [0; 32],
                page: Snapshot {
                    devices: vec![stranger.certificate.clone()],
                    ..Snapshot::default()
                }
                .encode(),
                listed: Vec::new(),
            }
            .encode(),
        ),
        (Channel::Sync, b"sync before admission".to_vec()),
        (
            Channel::Admission,
            vec![0; admission::MAX_MESSAGE_BYTES + 1],
        ),
    ];
    for (channel, bytes) in hostile_inputs {
        let mut home = Device::new(&o, node(2), "home");
        let phone = Device::new(&o, node(3), "phone");
        let digest = home.digest();
        let revocations = home.gate.revocations.len();
        let mut session = home.session(&phone, Side::Responder, &Config::default());
        session.handle_received(NOW, channel, &bytes, &mut home.cx());
        // Anything after the refusal is ignored.
        session.handle_received(
            NOW,
            Channel::Admission,
            &admission::Message::Hello(phone.certificate.clone()).encode(),
            &mut home.cx(),
        );
        let actions: Vec<Action> = std::iter::from_fn(|| session.poll_action()).collect();
        assert!(
            session.is_closed(),
            "{channel:?} {:?}",
            &bytes[..bytes.len().min(8)]
        );
        assert_eq!(refusals(&actions).len(), 1);
        assert_eq!(admissions(&actions), 0);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Sync(_) | Action::Merged(_) | Action::Listed(_)))
        );
        assert_eq!(home.digest(), digest);
        assert_eq!(home.gate.revocations.len(), revocations);
        assert_eq!(session.poll_timeout(), None);
    }
}

/// After admission: a malformed exchange, a snapshot that does not decode, an
/// oversized sync message. Each drops the peer and takes nothing in.
#[test]
fn a_hostile_member_is_dropped_and_changes_nothing() {
    let page_garbage = Exchange {
        request: true,
        more: false,
        digest: [0; 32],
        page: b"not a snapshot".to_vec(),
        listed: Vec::new(),
    }
    .encode();
    let inputs: Vec<(Channel, Vec<u8>)> = vec![
        (Channel::Members, b"HMEX\x01\x09".to_vec()),
        (Channel::Members, page_garbage),
        (
            Channel::Sync,
            vec![0; crate::sync::message::MAX_MESSAGE_BYTES + 1],
        ),
        (Channel::Members, vec![0; MAX_EXCHANGE_BYTES + 1]),
    ];
    for (channel, bytes) in inputs {
        let mut pair = Pair::household(Side::Initiator, Side::Responder);
        pair.run(true);
        assert!(pair.admitted());
        pair.done_a.clear();
        let digest = pair.a.digest();
        pair.sa
            .handle_received(NOW, channel, &bytes, &mut pair.a.cx());
        pair.sa.send_sync(b"after".to_vec());
        pair.collect();
        assert!(pair.sa.is_closed());
        assert_eq!(refusals(&pair.done_a).len(), 1);
        assert!(
            !pair
                .done_a
                .iter()
                .any(|a| matches!(a, Action::Sync(_) | Action::Merged(_) | Action::Listed(_)))
        );
        assert_eq!(sync_sends(&pair, true), 0);
        assert_eq!(pair.a.digest(), digest);
    }
}

#[test]
fn exchanges_round_trip() {
    let exchange = Exchange {
        request: false,
        more: true,
        digest: [7; 32],
        page: vec![1, 2, 3],
        listed: vec![Listed {
            key: node(2).public(),
            addresses: vec!["a".into(), "b".into()],
        }],
    };
    assert_eq!(Exchange::decode(&exchange.encode()).unwrap(), exchange);
    let mut trailing = exchange.encode();
    trailing.push(0);
    assert!(Exchange::decode(&trailing).is_err());
    let mut flags = exchange.encode();
    flags[5] = 4;
    assert!(Exchange::decode(&flags).is_err());
}
