//! Entry points shared by the fuzz targets (`fuzz/`) and their regression tests, and
//! a builder of inflate bombs for the tests of the bound on automerge data.
//! Each takes arbitrary bytes, must never panic on them, and asserts the invariants
//! that hold for any input that is accepted.

use crate::capability::{
    Capability, Chain, RevocationSet, SignedCapability, SignedInvocation, SignedRevocation,
    Verifier, VerifierConfig,
};
use crate::key::OwnerKey;
use crate::manifest::Manifest;
use crate::time::UnixMillis;

/// Every decoder of signed documents, and the verifier on whatever decodes.
pub fn capability_input(data: &[u8]) {
    if let Ok(chain) = Chain::decode(data) {
        // Canonical: what decodes re-encodes to the same bytes.
        assert_eq!(
            chain.encode(),
            data,
            "a decoded chain re-encodes differently"
        );
        let owner = chain.root_link().capability().issuer;
        let mut verifier = Verifier::new(owner, VerifierConfig::default());
        let revocations = RevocationSet::new(owner);
        let at = chain.leaf().capability().not_before;
        let first = verifier.verify(&chain, at, &revocations);
        // The cache never changes a verdict.
        assert_eq!(first, verifier.verify(&chain, at, &revocations));
        let _ = Chain::from_text(&chain.to_text()).map(|c| assert_eq!(c, chain));
    }
    if let Ok(signed) = SignedCapability::decode(data) {
        assert_eq!(signed.encode(), data);
        let _ = signed.signature_is_valid();
    }
    if let Ok(cap) = Capability::decode(data) {
        assert_eq!(cap.encode(), data);
    }
    if let Ok(revocation) = SignedRevocation::decode(data) {
        assert_eq!(revocation.encode(), data);
        let mut set = RevocationSet::new(revocation.revocation().issuer);
        let _ = set.insert(&revocation);
    }
    if let Ok(invocation) = SignedInvocation::decode(data) {
        assert_eq!(invocation.encode(), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Chain::from_text(text);
        let _ = text.parse::<crate::key::PublicKey>();
    }
}

/// The manifest parser, and the grants an approval of an accepted manifest would sign.
pub fn manifest_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text) else {
        return;
    };
    let _ = manifest.render_plain();
    let owner = OwnerKey::from_seed([1; 32]);
    let grants = manifest.to_grants(
        crate::capability::ModuleHash([2; 32]),
        UnixMillis(1_000_000_000_000),
    );
    for grant in &grants {
        assert_eq!(
            grant.validate(),
            Ok(()),
            "an accepted manifest produced an invalid grant"
        );
    }
    let signed = Capability {
        issuer: owner.public(),
        audience: owner.public(),
        parent: None,
        grants,
        not_before: UnixMillis(1_000_000_000_000),
        expires: UnixMillis(1_000_086_400_000),
        nonce: [0; 16],
    }
    .sign(owner.secret());
    assert!(
        signed.is_ok(),
        "an accepted manifest could not be approved: {signed:?}"
    );
}

/// The admission decoder, and a connection fed whatever decodes (or not).
pub fn admission_input(data: &[u8]) {
    use crate::capability::{RevocationSet, Verifier, VerifierConfig};
    use crate::key::NodeKey;
    use crate::mesh::admission::{Config, Connection, Gate, Message, Opening};

    if let Ok(message) = Message::decode(data) {
        assert_eq!(
            message.encode(),
            data,
            "a decoded admission message re-encodes differently"
        );
    }
    let owner = OwnerKey::from_seed([1; 32]);
    let local = NodeKey::from_seed([2; 32]);
    let remote = NodeKey::from_seed([3; 32]).public();
    let mut gate = Gate::new(
        local.public(),
        Verifier::new(owner.public(), VerifierConfig::default()),
        RevocationSet::new(owner.public()),
        Some(crate::mesh::admission::Issuer {
            key: owner.secret().clone(),
            admit: None,
        }),
    );
    let opening = Opening::Joiner {
        ticket: [0; 16],
        proof: [0; 32],
        name: "fuzz".into(),
        role: crate::capability::Role::Mobile,
    };
    let mut connection = Connection::new(UnixMillis(1), remote, opening, &Config::default());
    connection.handle_message(UnixMillis(2), data, &mut gate);
    while connection.poll_transmit().is_some() {}
    while connection.poll_event().is_some() {}
    // The same bytes to a member answering a connection: a join reaches ticket
    // redemption and certificate signing.
    let certificate = crate::device::issue_certificate(
        owner.secret(),
        None,
        local.public(),
        "home",
        crate::capability::Role::Home,
        UnixMillis(0),
        UnixMillis(u64::MAX / 2),
        [1; 16],
    );
    if let Ok(certificate) = certificate {
        gate.invitations.issue(
            owner.public(),
            local.public(),
            Vec::new(),
            [0; 16],
            [0; 32],
            UnixMillis(u64::MAX / 2),
            None,
            None,
        );
        let mut member = Connection::respond(
            UnixMillis(1),
            remote,
            Opening::Member(certificate),
            &Config::default(),
        );
        member.handle_message(UnixMillis(2), data, &mut gate);
        while member.poll_transmit().is_some() {}
        while member.poll_event().is_some() {}
    }
}

/// The membership snapshot decoder, and a membership merging whatever decodes.
pub fn membership_input(data: &[u8]) {
    use crate::mesh::membership::{Membership, Snapshot};

    let Ok(snapshot) = Snapshot::decode(data) else {
        return;
    };
    assert_eq!(
        snapshot.encode(),
        data,
        "a decoded membership snapshot re-encodes differently"
    );
    let owner = OwnerKey::from_seed([1; 32]);
    let mut membership = Membership::new(owner.public());
    let mut revocations = RevocationSet::new(owner.public());
    let now = UnixMillis(1_000_000_000_000);
    membership.merge(now, &snapshot, &mut revocations);
    // Merging is idempotent: the same documents again change nothing.
    let digest = membership.digest(now, &revocations);
    assert!(!membership.merge(now, &snapshot, &mut revocations).changed());
    assert_eq!(digest, membership.digest(now, &revocations));
}

/// The sync message decoder, and a sync engine (over one in-memory automerge
/// document) fed whatever arrives.
pub fn sync_input(data: &[u8]) {
    use crate::sync::{
        Config, Engine, Message, Replica, ReplicaError, StoreKind, StoreRef, SyncMessage,
        SyncState, Unit, UnitHeads,
    };
    use automerge::sync::SyncDoc as _;

    if let Ok(message) = Message::decode(data) {
        assert_eq!(
            message.encode(),
            data,
            "a decoded sync message re-encodes differently"
        );
    }

    /// One kv store of one document.
    struct One(automerge::AutoCommit);

    impl Replica<u8> for One {
        fn shared_with(&mut self, _: &u8) -> Vec<StoreRef> {
            vec![StoreRef {
                id: "s".into(),
                name: "s".into(),
                kind: StoreKind::Kv,
                window_ms: 1,
            }]
        }
        fn accept(&mut self, _: &u8, store: &StoreRef) -> bool {
            store.id == "s"
        }
        fn units(&mut self, store: &str) -> Result<Vec<UnitHeads>, ReplicaError> {
            if store != "s" {
                return Err(ReplicaError::Local("no such store".into()));
            }
            Ok(vec![UnitHeads {
                unit: Unit::Whole,
                closed: false,
                heads: self.0.get_heads().iter().map(|h| h.0).collect(),
            }])
        }
        fn records(&mut self, _: &str) -> u64 {
            0
        }
        fn generate(
            &mut self,
            _: &str,
            _: Unit,
            state: &mut SyncState,
        ) -> Result<Option<SyncMessage>, ReplicaError> {
            Ok(self.0.sync().generate_sync_message(state))
        }
        fn receive(
            &mut self,
            _: &str,
            unit: Unit,
            state: &mut SyncState,
            message: SyncMessage,
        ) -> Result<(), ReplicaError> {
            if unit != Unit::Whole {
                return Err(ReplicaError::Peer("no such unit".into()));
            }
            self.0
                .sync()
                .receive_sync_message(state, message)
                .map_err(|err| ReplicaError::Peer(err.to_string()))
        }
        fn closed_chunk(&mut self, _: &str, _: u64) -> Result<Option<Vec<u8>>, ReplicaError> {
            Ok(None)
        }
        fn merge_chunk(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), ReplicaError> {
            Err(ReplicaError::Peer("not a timeseries store".into()))
        }
        fn apply(&mut self, _: &str, _: Unit, changes: &[u8]) -> Result<(), ReplicaError> {
            self.0
                .load_incremental(changes)
                .map(|_| ())
                .map_err(|err| ReplicaError::Peer(err.to_string()))
        }
    }

    let mut replica = One(automerge::AutoCommit::new());
    let mut engine = Engine::new(Config::default());
    engine.handle_connected(UnixMillis(1), 7u8, &mut replica);
    engine.handle_message(UnixMillis(2), &7u8, data, &mut replica);
    engine.handle_timeout(UnixMillis(10_000), &mut replica);
    while engine.poll_transmit().is_some() {}
    while engine.poll_event().is_some() {}
}

/// The bound on what automerge data from a peer inflates to: never panics; a total it
/// accepts is within the limit, and exact (one byte less of limit refuses the same
/// data for its size, since nothing else differs on the way).
pub fn inflate_input(data: &[u8]) {
    use crate::sync::inflate::{InflateError, check_within};

    const LIMIT: u64 = 1024 * 1024;
    if let Ok(total) = check_within([data], LIMIT) {
        assert!(total <= LIMIT, "accepted {total} bytes past the limit");
        if let Some(less) = total.checked_sub(1) {
            assert_eq!(
                check_within([data], less),
                Err(InflateError::TooLarge { limit: less }),
                "a limit one byte under the total does not refuse it"
            );
        }
    }
}

/// The compute decoders: the first byte picks one (0 job, 1 reply, 2 signed receipt),
/// the rest is its input. Whatever decodes re-encodes to the same bytes, and a
/// decoded receipt's verification answers without panicking.
pub fn compute_input(data: &[u8]) {
    use crate::compute::{Job, JobReply, SignedReceipt};

    let Some((which, data)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(job) = Job::decode(data) {
                assert_eq!(job.encode(), data, "a decoded job re-encodes differently");
                let _ = job.id();
            }
        }
        1 => {
            if let Ok(reply) = JobReply::decode(data) {
                assert_eq!(
                    reply.encode(),
                    data,
                    "a decoded reply re-encodes differently"
                );
            }
        }
        _ => {
            if let Ok(receipt) = SignedReceipt::decode(data) {
                assert_eq!(
                    receipt.encode(),
                    data,
                    "a decoded receipt re-encodes differently"
                );
                let owner = OwnerKey::from_seed([1; 32]);
                let _ = receipt.verify(&owner.public(), Some("{}"));
            }
        }
    }
}

// ---- building inflate bombs (the fuzz seeds and the tests of the bound) ------------

/// Appends `value` as an unsigned LEB128 number, as automerge writes it.
pub fn leb128(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// The `len` low bits of `code` in reverse order.
fn reversed(code: u64, len: u32) -> u64 {
    (0..len).fold(0, |r, i| (r << 1) | ((code >> i) & 1))
}

/// Bits of a DEFLATE stream, least significant first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc.to_le_bytes()[0]);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, which DEFLATE writes most significant bit first.
    fn code(&mut self, code: u64, len: u32) {
        self.put(reversed(code, len), len);
    }

    /// A literal/length symbol in DEFLATE's fixed code (RFC 1951, 3.2.6).
    fn symbol(&mut self, symbol: u16) {
        let s = u64::from(symbol);
        match symbol {
            0..=143 => self.code(0x30 + s, 8),
            144..=255 => self.code(0x190 + s - 144, 9),
            256..=279 => self.code(s - 256, 7),
            _ => self.code(0xc0 + s - 280, 8),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc.to_le_bytes()[0]);
        }
        self.out
    }
}

/// Raw DEFLATE, built by hand: one block of fixed codes holding `prefix` as literals,
/// then `zeros` zero bytes as one literal and back-references of 258 bytes at distance
/// 1, 13 bits each (a GiB in 6.6 MB).
pub fn deflate_then_zeros(prefix: &[u8], zeros: u64) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(1, 1); // the last block
    bits.put(1, 2); // of fixed codes
    for byte in prefix {
        bits.symbol(u16::from(*byte));
    }
    if zeros > 0 {
        bits.symbol(0);
        // Length 258 (symbol 285, code 11000101), then distance 1 (code 00000).
        let repeat = reversed(0b1100_0101, 8);
        let mut left = zeros - 1;
        while left >= 258 {
            bits.put(repeat, 13);
            left -= 258;
        }
        for _ in 0..left {
            bits.symbol(0);
        }
    }
    bits.symbol(256); // end of block
    bits.finish()
}

/// The session machine's exchange decoder, and two sessions fed the bytes: a responder
/// that has admitted no one (anything but admission must refuse the peer and take
/// nothing in) and an initiator whose peer is admitted. The first byte picks the
/// channel (0 admission, 1 members, 2 sync, taken modulo 3); the rest is the message.
pub fn session_input(data: &[u8]) {
    use crate::device;
    use crate::key::NodeKey;
    use crate::mesh::admission::{Gate, Opening};
    use crate::mesh::membership::Membership;
    use crate::mesh::session::{Action, Channel, Config, Context, Exchange, Session, Side};

    let Some((&pick, message)) = data.split_first() else {
        return;
    };
    if let Ok(exchange) = Exchange::decode(message) {
        assert_eq!(
            exchange.encode(),
            message,
            "a decoded exchange re-encodes differently"
        );
    }
    let channel = match pick % 3 {
        0 => Channel::Admission,
        1 => Channel::Members,
        _ => Channel::Sync,
    };
    let now = UnixMillis(1_800_000_000_000);
    let owner = OwnerKey::from_seed([1; 32]);
    let device = |seed: u8, name: &str| {
        let key = NodeKey::from_seed([seed; 32]);
        let certificate = device::issue_certificate(
            owner.secret(),
            None,
            key.public(),
            name,
            crate::capability::Role::Home,
            UnixMillis(0),
            UnixMillis(now.0 + 86_400_000),
            [seed; 16],
        );
        let gate = Gate::new(
            key.public(),
            Verifier::new(owner.public(), VerifierConfig::default()),
            RevocationSet::new(owner.public()),
            None,
        );
        let mut membership = Membership::new(owner.public());
        if let Ok(certificate) = &certificate {
            let _ = membership.add_device(now, certificate, &RevocationSet::new(owner.public()));
        }
        (key, certificate, gate, membership)
    };
    let (a_key, Ok(a_cert), mut a_gate, mut a_members) = device(2, "home") else {
        return;
    };
    let (b_key, Ok(b_cert), mut b_gate, mut b_members) = device(3, "phone") else {
        return;
    };
    let digest = a_members.digest(now, &a_gate.revocations);

    // A responder: nothing but admission before the peer is admitted.
    let mut responder = Session::new(
        now,
        b_key.public(),
        Side::Responder,
        Opening::Member(a_cert.clone()),
        Config::default(),
    );
    let mut cx = Context {
        gate: &mut a_gate,
        membership: &mut a_members,
    };
    responder.handle_received(now, channel, message, &mut cx);
    let actions: Vec<Action> = std::iter::from_fn(|| responder.poll_action()).collect();
    if channel != Channel::Admission {
        assert!(
            responder.is_closed(),
            "a responder took a message before admission"
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Sync(_) | Action::Merged(_) | Action::Listed(_))),
            "a responder passed on a message before admission"
        );
        assert_eq!(digest, a_members.digest(now, &a_gate.revocations));
    }

    // An initiator admitted by its peer, then fed the bytes.
    let mut initiator = Session::new(
        now,
        b_key.public(),
        Side::Initiator,
        Opening::Member(a_cert),
        Config::default(),
    );
    let mut peer = Session::new(
        now,
        a_key.public(),
        Side::Responder,
        Opening::Member(b_cert),
        Config::default(),
    );
    for _ in 0..4 {
        let mut a_cx = Context {
            gate: &mut a_gate,
            membership: &mut a_members,
        };
        let mut b_cx = Context {
            gate: &mut b_gate,
            membership: &mut b_members,
        };
        while let Some(action) = initiator.poll_action() {
            if let Action::Send { channel, bytes, .. } = action {
                peer.handle_received(now, channel, &bytes, &mut b_cx);
            }
        }
        while let Some(action) = peer.poll_action() {
            if let Action::Send { channel, bytes, .. } = action {
                initiator.handle_received(now, channel, &bytes, &mut a_cx);
            }
        }
    }
    let mut cx = Context {
        gate: &mut a_gate,
        membership: &mut a_members,
    };
    initiator.handle_received(now, channel, message, &mut cx);
    while initiator.poll_action().is_some() {}
    initiator.send_sync(message.to_vec());
    while initiator.poll_action().is_some() {}
    assert!(initiator.in_flight() <= message.len().max(Config::default().max_in_flight));
}
