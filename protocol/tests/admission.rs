//! Admission and pairing, driven as two sans-IO machines exchanging messages.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::time::Duration;

use hearth_protocol::capability::{
    Chain, Revocation, RevocationSet, RevocationTarget, Role, Verifier, VerifierConfig,
};
use hearth_protocol::device;
use hearth_protocol::key::{NodeKey, OwnerKey, PublicKey};
use hearth_protocol::mesh::admission::{Config, Connection, Event, Gate, Issuer, Message, Opening};
use hearth_protocol::mesh::ticket::Ticket;
use hearth_protocol::time::UnixMillis;

const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

fn cert(owner: &OwnerKey, node: &NodeKey, name: &str, role: Role, expires: UnixMillis) -> Chain {
    device::issue_certificate(
        owner.secret(),
        None,
        node.public(),
        name,
        role,
        UnixMillis(0),
        expires,
        [1; 16],
    )
    .unwrap()
}

fn gate(owner: PublicKey, local: &NodeKey, issuer: Option<&OwnerKey>) -> Gate {
    Gate::new(
        local.public(),
        Verifier::new(owner, VerifierConfig::default()),
        RevocationSet::new(owner),
        issuer.map(|o| Issuer {
            key: o.secret().clone(),
            admit: None,
        }),
    )
}

/// Delivers messages both ways until neither side has anything to send.
fn pump(a: &mut Connection, ga: &mut Gate, b: &mut Connection, gb: &mut Gate) {
    for _ in 0..10 {
        let mut moved = false;
        while let Some(m) = a.poll_transmit() {
            b.handle_message(NOW, &m, gb);
            moved = true;
        }
        while let Some(m) = b.poll_transmit() {
            a.handle_message(NOW, &m, ga);
            moved = true;
        }
        if !moved {
            return;
        }
    }
    panic!("the machines kept talking");
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

struct Mesh {
    owner: OwnerKey,
    home: NodeKey,
    phone: NodeKey,
}

fn mesh() -> Mesh {
    Mesh {
        owner: OwnerKey::from_seed([1; 32]),
        home: NodeKey::from_seed([2; 32]),
        phone: NodeKey::from_seed([3; 32]),
    }
}

fn connect(m: &Mesh, phone_cert: Chain) -> (Connection, Gate, Connection, Gate) {
    let home_cert = cert(
        &m.owner,
        &m.home,
        "home",
        Role::Home,
        UnixMillis(u64::MAX / 2),
    );
    let config = Config::default();
    let home_gate = gate(m.owner.public(), &m.home, Some(&m.owner));
    let phone_gate = gate(m.owner.public(), &m.phone, None);
    // The phone dials; home answers.
    let home = Connection::respond(NOW, m.phone.public(), Opening::Member(home_cert), &config);
    let phone = Connection::new(NOW, m.home.public(), Opening::Member(phone_cert), &config);
    (home, home_gate, phone, phone_gate)
}

/// Every message `c` has queued, decoded.
fn sent(c: &mut Connection) -> Vec<Message> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|m| Message::decode(&m).unwrap())
        .collect()
}

#[test]
fn an_answering_member_shows_its_certificate_only_to_an_admitted_peer() {
    let m = mesh();
    let good = cert(
        &m.owner,
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(u64::MAX / 2),
    );
    // Nothing is sent before the dialler has presented something.
    let (mut home, mut hg, mut phone, _) = connect(&m, good.clone());
    assert!(sent(&mut home).is_empty());
    // A certificate of this mesh's owner whose signature was tampered with.
    let mut tampered = good.encode();
    *tampered.last_mut().unwrap() ^= 1;
    let forged = Chain::decode(&tampered)
        .map(Message::Hello)
        .map(|m| m.encode())
        .unwrap_or(tampered);
    home.handle_message(NOW, &forged, &mut hg);
    assert!(home.is_refused());
    assert!(matches!(sent(&mut home).as_slice(), [Message::Refuse(_)]));

    // Garbage, a stranger's certificate and a wrong ticket secret get only a refusal.
    let stranger = cert(
        &OwnerKey::from_seed([9; 32]),
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(u64::MAX / 2),
    );
    let join = Message::Join {
        ticket: [7; 16],
        proof: [0; 32],
        name: "x".into(),
        role: Role::Mobile,
    };
    for opening in [
        b"\x00\x01garbage".to_vec(),
        Message::Hello(stranger).encode(),
        join.encode(),
    ] {
        let (mut home, mut hg, _, _) = connect(&m, good.clone());
        home.handle_message(NOW, &opening, &mut hg);
        assert!(home.is_refused());
        assert!(matches!(sent(&mut home).as_slice(), [Message::Refuse(_)]));
    }
    // A refused connection does not open later either.
    home.initiate();
    assert!(sent(&mut home).is_empty());

    // The phone's valid certificate: home answers with its own, both admitted.
    let (mut home, mut hg, _, _) = connect(&m, good.clone());
    let opening = phone.poll_transmit().unwrap();
    home.handle_message(NOW, &opening, &mut hg);
    assert!(home.is_admitted());
    assert!(
        matches!(sent(&mut home).as_slice(), [Message::Hello(c)] if c.encode() != good.encode())
    );

    // Two answering sides (both dialled at once): one opens after all.
    let (mut home, mut hg, _, _) = connect(&m, good.clone());
    let mut phone = Connection::respond(
        NOW,
        m.home.public(),
        Opening::Member(good),
        &Config::default(),
    );
    let mut pg = gate(m.owner.public(), &m.phone, None);
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(!home.is_admitted() && !phone.is_admitted());
    phone.initiate();
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(home.is_admitted() && phone.is_admitted());
}

#[test]
fn members_admit_each_other() {
    let m = mesh();
    let phone_cert = cert(
        &m.owner,
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(u64::MAX / 2),
    );
    let (mut home, mut hg, mut phone, mut pg) = connect(&m, phone_cert);
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(home.is_admitted() && phone.is_admitted());
    match events(&mut home).as_slice() {
        [Event::Admitted(d)] => assert_eq!((d.name.as_str(), d.role), ("phone", Role::Mobile)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(events(&mut phone).as_slice(), [Event::Admitted(d)] if d.name == "home"));
    assert_eq!(home.poll_timeout(), None);
}

fn refused(c: &mut Connection) -> String {
    assert!(c.is_refused());
    events(c)
        .into_iter()
        .find_map(|e| match e {
            Event::Refused { reason } => Some(reason),
            _ => None,
        })
        .unwrap()
}

#[test]
fn outsiders_forgeries_expired_and_revoked_devices_are_refused() {
    let m = mesh();
    // Another mesh's device.
    let stranger_owner = OwnerKey::from_seed([9; 32]);
    let stranger_cert = cert(
        &stranger_owner,
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(u64::MAX / 2),
    );
    let (mut home, mut hg, mut phone, mut pg) = connect(&m, stranger_cert);
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(refused(&mut home).contains("another mesh"));
    assert!(!phone.is_admitted());

    // Home's own certificate replayed by the phone.
    let home_cert = cert(
        &m.owner,
        &m.home,
        "home",
        Role::Home,
        UnixMillis(u64::MAX / 2),
    );
    let (mut home, mut hg, mut phone, mut pg) = connect(&m, home_cert);
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(refused(&mut home).contains("another device"));

    // A forged certificate: signed by the phone's own key, not the owner's.
    let forger = OwnerKey::from_seed([3; 32]);
    let forged = device::issue_certificate(
        forger.secret(),
        None,
        m.phone.public(),
        "phone",
        Role::Home,
        UnixMillis(0),
        UnixMillis(u64::MAX / 2),
        [0; 16],
    )
    .unwrap();
    let (mut home, mut hg, mut phone, mut pg) = connect(&m, forged);
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(home.is_refused());

    // Expired.
    let expired = cert(
        &m.owner,
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(NOW.0 - 3_600_000),
    );
    let (mut home, mut hg, mut phone, mut pg) = connect(&m, expired);
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(refused(&mut home).contains("expired"));

    // Revoked (the phone's key, as `hearth devices revoke` does).
    let phone_cert = cert(
        &m.owner,
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(u64::MAX / 2),
    );
    let (mut home, mut hg, mut phone, mut pg) = connect(&m, phone_cert);
    let revocation = Revocation {
        issuer: m.owner.public(),
        target: RevocationTarget::Key(m.phone.public()),
        issued_at: NOW,
        reason: "lost".into(),
    }
    .sign(m.owner.secret())
    .unwrap();
    hg.revocations.insert(&revocation).unwrap();
    pump(&mut home, &mut hg, &mut phone, &mut pg);
    assert!(refused(&mut home).contains("revoked"));
}

#[test]
fn silence_and_garbage_are_refused() {
    let m = mesh();
    let phone_cert = cert(
        &m.owner,
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(u64::MAX / 2),
    );
    let (mut home, mut hg, _, _) = connect(&m, phone_cert);
    let deadline = home.poll_timeout().unwrap();
    home.handle_timeout(UnixMillis(deadline.0 - 1));
    assert!(!home.is_refused());
    home.handle_timeout(deadline);
    assert!(refused(&mut home).contains("deadline"));

    let (mut home, _, _, _) = connect(
        &m,
        cert(
            &m.owner,
            &m.phone,
            "p",
            Role::Mobile,
            UnixMillis(u64::MAX / 2),
        ),
    );
    home.handle_message(NOW, b"\x00\x01garbage", &mut hg);
    assert!(refused(&mut home).contains("malformed"));
    // Nothing is accepted after a refusal.
    let good = Message::Hello(cert(
        &m.owner,
        &m.phone,
        "phone",
        Role::Mobile,
        UnixMillis(u64::MAX / 2),
    ))
    .encode();
    home.handle_message(NOW, &good, &mut hg);
    assert!(!home.is_admitted());
}

fn pairing(
    m: &Mesh,
    ticket: &Ticket,
    joiner: &NodeKey,
    proof: [u8; 32],
    hg: &mut Gate,
) -> (Connection, Connection, Gate) {
    let config = Config::default().with_deadline(Duration::from_secs(5));
    let home_cert = cert(
        &m.owner,
        &m.home,
        "home",
        Role::Home,
        UnixMillis(u64::MAX / 2),
    );
    let mut home = Connection::respond(NOW, joiner.public(), Opening::Member(home_cert), &config);
    // A joiner knows the owner only from the ticket.
    let mut jg = gate(ticket.owner, joiner, None);
    let mut join = Connection::new(
        NOW,
        ticket.inviter,
        Opening::Joiner {
            ticket: ticket.id,
            proof,
            name: "laptop".into(),
            role: Role::Mobile,
        },
        &config,
    );
    pump(&mut home, hg, &mut join, &mut jg);
    (home, join, jg)
}

#[test]
fn pairing_works_once_and_only_with_the_secret() {
    let m = mesh();
    let mut hg = gate(m.owner.public(), &m.home, Some(&m.owner));
    let ticket = hg.invitations.issue(
        m.owner.public(),
        m.home.public(),
        vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
        [7; 16],
        [8; 32],
        UnixMillis(NOW.0 + 600_000),
        None,
        None,
    );
    let parsed = Ticket::from_text(&ticket.to_text()).unwrap();
    assert_eq!(parsed, ticket);
    let laptop = NodeKey::from_seed([4; 32]);

    // A wrong secret is refused and leaves the ticket open.
    let mut wrong = ticket.clone();
    wrong.secret = zeroize::Zeroizing::new([0; 32]);
    let (mut home, join, _) = pairing(&m, &ticket, &laptop, wrong.proof(&laptop.public()), &mut hg);
    assert!(refused(&mut home).contains("wrong ticket secret"));
    assert!(join.is_refused());
    assert_eq!(hg.invitations.len(), 1);

    // The right secret: a certificate for the laptop, both sides admitted.
    let (mut home, mut join, _) = pairing(
        &m,
        &ticket,
        &laptop,
        ticket.proof(&laptop.public()),
        &mut hg,
    );
    assert!(home.is_admitted() && join.is_admitted());
    let home_events = events(&mut home);
    assert!(
        matches!(&home_events[0], Event::Joined(d) if d.name == "laptop" && d.role == Role::Mobile && d.node_key == laptop.public())
    );
    let join_events = events(&mut join);
    let cert = join_events
        .iter()
        .find_map(|e| match e {
            Event::Welcomed(chain) => Some(chain.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(cert.leaf().capability().audience, laptop.public());
    assert!(
        join_events
            .iter()
            .any(|e| matches!(e, Event::Admitted(d) if d.name == "home"))
    );

    // Used once: a second redemption is refused, even with the right proof.
    let other = NodeKey::from_seed([5; 32]);
    let (mut home, _, _) = pairing(&m, &ticket, &other, ticket.proof(&other.public()), &mut hg);
    assert!(refused(&mut home).contains("already used"));

    // An expired ticket is refused.
    let late = hg.invitations.issue(
        m.owner.public(),
        m.home.public(),
        vec![],
        [9; 16],
        [9; 32],
        UnixMillis(NOW.0 - 1),
        None,
        None,
    );
    let (mut home, _, _) = pairing(&m, &late, &other, late.proof(&other.public()), &mut hg);
    assert!(refused(&mut home).contains("expired"));

    // A node without the owner key cannot admit anyone.
    let mut phone_gate = gate(m.owner.public(), &m.phone, None);
    let t = phone_gate.invitations.issue(
        m.owner.public(),
        m.phone.public(),
        vec![],
        [3; 16],
        [3; 32],
        UnixMillis(NOW.0 + 1000),
        None,
        None,
    );
    let (mut phone, _, _) = pairing(&m, &t, &other, t.proof(&other.public()), &mut phone_gate);
    assert!(refused(&mut phone).contains("cannot admit"));
}

#[test]
fn a_device_with_an_admit_grant_issues_certificates_that_end_with_the_grant() {
    let m = mesh();
    let grant_expires = UnixMillis(NOW.0 + 3_600_000);
    let grant = admit_grant(&m, "mobile", "lap*", grant_expires);
    // "home" here holds only the grant, not the owner key.
    let mut hg = Gate::new(
        m.home.public(),
        Verifier::new(m.owner.public(), VerifierConfig::default()),
        RevocationSet::new(m.owner.public()),
        Some(Issuer {
            key: m.home.secret().clone(),
            admit: Some(grant.clone()),
        }),
    );
    assert_eq!(hg.admit_grant(), Some(&grant));
    let ticket = hg.invitations.issue(
        m.owner.public(),
        m.home.public(),
        vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
        [7; 16],
        [8; 32],
        UnixMillis(NOW.0 + 600_000),
        None,
        None,
    );
    let laptop = NodeKey::from_seed([4; 32]);
    let (home, mut join, _) = pairing(
        &m,
        &ticket,
        &laptop,
        ticket.proof(&laptop.public()),
        &mut hg,
    );
    assert!(home.is_admitted() && join.is_admitted());
    let cert = home.peer_certificate().unwrap().clone();
    assert_eq!(cert.links().len(), 2);
    assert_eq!(cert.links()[0], grant.links()[0]);
    assert_eq!(cert.leaf().capability().expires, grant_expires);
    assert!(
        events(&mut join)
            .iter()
            .any(|e| matches!(e, Event::Welcomed(c) if *c == cert))
    );
    // Without an issuer, pairing is refused.
    hg.set_issuer(None);
    assert!(!hg.can_admit());
}

fn admit_grant(m: &Mesh, roles: &str, names: &str, expires: UnixMillis) -> Chain {
    use hearth_protocol::capability::{Actions, Capability, Grant, Resource};
    Chain::root(
        Capability {
            issuer: m.owner.public(),
            audience: m.home.public(),
            parent: None,
            grants: vec![Grant::new(
                Resource::DevicesAdmit {
                    roles: roles.parse().unwrap(),
                    names: names.into(),
                },
                Actions::ADMIT,
            )],
            not_before: UnixMillis(0),
            expires,
            nonce: [9; 16],
        }
        .sign(m.owner.secret())
        .unwrap(),
    )
}

#[test]
fn an_admit_grant_admits_only_the_roles_and_names_it_names() {
    let m = mesh();
    let expires = UnixMillis(NOW.0 + 3_600_000);
    // The joiner asks to be "laptop", a mobile device.
    for (roles, names, allowed) in [
        ("mobile", "*", true),
        ("mobile,cloud", "laptop", true),
        ("home", "*", false),
        ("cloud,home", "*", false),
        ("mobile", "phone*", false),
    ] {
        let mut hg = Gate::new(
            m.home.public(),
            Verifier::new(m.owner.public(), VerifierConfig::default()),
            RevocationSet::new(m.owner.public()),
            Some(Issuer {
                key: m.home.secret().clone(),
                admit: Some(admit_grant(&m, roles, names, expires)),
            }),
        );
        let ticket = hg.invitations.issue(
            m.owner.public(),
            m.home.public(),
            vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
            [7; 16],
            [8; 32],
            UnixMillis(NOW.0 + 600_000),
            None,
            None,
        );
        let laptop = NodeKey::from_seed([4; 32]);
        let (mut home, _, _) = pairing(
            &m,
            &ticket,
            &laptop,
            ticket.proof(&laptop.public()),
            &mut hg,
        );
        if allowed {
            assert!(home.is_admitted(), "{roles} {names}");
        } else {
            let reason = refused(&mut home);
            assert!(
                reason.contains("may admit only") && reason.contains("\"laptop\" (mobile)"),
                "{roles} {names}: {reason}"
            );
        }
    }
}
