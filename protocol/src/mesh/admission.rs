//! Admission: the first protocol on every connection. Each side presents its device
//! certificate (or, for a device being paired, redeems a ticket); a peer that does not
//! present a valid, unrevoked certificate for this mesh's owner before the deadline is
//! refused, and nothing else is served to it before it is admitted.
//!
//! Messages (canonical binary, each at most [`MAX_MESSAGE_BYTES`]):
//!
//! ```text
//! "HADM" 01 tag body
//! tag 1 Hello    chain                      "I am this mesh's device; here is my certificate"
//! tag 2 Join     id(16) proof(32) name role "I hold ticket id; make me a device"
//! tag 3 Welcome  chain                      "here is your certificate"
//! tag 4 Refuse   reason                     "no" (then the connection closes)
//! ```
//!
//! The driver (node/) owns one [`Connection`] per connection and calls, in this order:
//! [`Connection::new`] when it opened the connection (the opening is sent at once) or
//! [`Connection::respond`] when the peer opened it (this side's certificate is sent
//! only once the peer's opening has been accepted, so a stranger learns nothing of the
//! mesh), then repeatedly
//! [`Connection::poll_transmit`] (send each message), [`Connection::poll_event`]
//! (act on it), [`Connection::poll_timeout`] (arm a timer); and
//! [`Connection::handle_message`] for each message received or
//! [`Connection::handle_timeout`] when the timer fires. A [`Gate`] shared by all
//! connections holds what the decisions need: the owner key, the verifier, the
//! revocations, the open tickets and, on a node that may admit devices, the key that
//! signs certificates.

use std::collections::VecDeque;
use std::time::Duration;

use crate::capability::{Chain, ChainError, Resource, RevocationSet, Role, Verifier};
use crate::device::{self, Device, DeviceError};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::{PublicKey, SecretKey};
use crate::mesh::ticket::{Invitations, JoinError};
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HADM";
const VERSION: u8 = 1;
/// Largest admission message.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest refusal reason.
pub const MAX_REASON_BYTES: usize = 512;
/// Device certificates issued at pairing last this long.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// An admission message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A member's certificate.
    Hello(Chain),
    /// A ticket redemption by a device being paired.
    Join {
        /// The ticket's id.
        ticket: [u8; 16],
        /// HMAC proof of the ticket secret.
        proof: [u8; 32],
        /// The name the device asks for.
        name: String,
        /// The role it asks for.
        role: Role,
    },
    /// The certificate issued to a device that joined.
    Welcome(Chain),
    /// A refusal, with the reason.
    Refuse(String),
}

impl Message {
    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.raw(MAGIC);
        w.u8(VERSION);
        match self {
            Message::Hello(chain) => {
                w.u8(1);
                w.raw(&chain.encode());
            }
            Message::Join {
                ticket,
                proof,
                name,
                role,
            } => {
                w.u8(2);
                w.raw(ticket);
                w.raw(proof);
                w.str(name);
                w.u8(role.tag());
            }
            Message::Welcome(chain) => {
                w.u8(3);
                w.raw(&chain.encode());
            }
            Message::Refuse(reason) => {
                w.u8(4);
                let mut end = reason.len().min(MAX_REASON_BYTES);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                w.str(reason.get(..end).unwrap_or_default());
            }
        }
        w.into_bytes()
    }

    /// Decodes a message; refuses oversized, malformed or non-canonical input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "admission message";
        let mut r = Reader::bounded(bytes, MAX_MESSAGE_BYTES, WHAT)?;
        r.magic(MAGIC, VERSION, WHAT)?;
        let message = match r.u8("message tag")? {
            1 => Message::Hello(Chain::decode(r.rest())?),
            3 => Message::Welcome(Chain::decode(r.rest())?),
            2 => {
                let ticket = r.array("ticket id")?;
                let proof = r.array("proof")?;
                let name = r
                    .str(crate::capability::MAX_NAME_LEN, "device name")?
                    .to_owned();
                let role = Role::from_tag(r.u8("role")?)?;
                Message::Join {
                    ticket,
                    proof,
                    name,
                    role,
                }
            }
            4 => Message::Refuse(r.str(MAX_REASON_BYTES, "reason")?.to_owned()),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "admission message",
                    tag,
                });
            }
        };
        r.finish(WHAT)?;
        Ok(message)
    }
}

/// How connections are judged. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time a peer has to be admitted after the connection opens. Default 5 seconds.
    pub deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Sets [`Config::deadline`].
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

/// Who may sign device certificates on this node.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The signing key: the owner key, or a key holding a `devices:admit` capability.
    pub key: SecretKey,
    /// That capability, when the key is not the owner's.
    pub admit: Option<Chain>,
}

/// What all connections of one node share.
#[derive(Debug)]
pub struct Gate {
    local: PublicKey,
    verifier: Verifier,
    /// Revoked capabilities and keys.
    pub revocations: RevocationSet,
    /// Open pairing tickets.
    pub invitations: Invitations,
    /// Names of the mesh's unrevoked devices: a joiner cannot take one.
    pub taken: std::collections::BTreeSet<String>,
    issuer: Option<Issuer>,
    nonce_counter: u64,
}

impl Gate {
    /// A gate for the node with key `local` in the mesh of `verifier`'s owner.
    pub fn new(
        local: PublicKey,
        verifier: Verifier,
        revocations: RevocationSet,
        issuer: Option<Issuer>,
    ) -> Self {
        Self {
            local,
            verifier,
            revocations,
            invitations: Invitations::new(),
            taken: std::collections::BTreeSet::new(),
            issuer,
            nonce_counter: 0,
        }
    }

    /// The mesh owner's key.
    pub fn owner(&self) -> &PublicKey {
        self.verifier.owner()
    }

    /// Can this node admit new devices?
    pub fn can_admit(&self) -> bool {
        self.issuer.is_some()
    }

    /// Sets (or, with `None`, removes) who signs device certificates here: used when a
    /// `devices:admit` grant for this node arrives, or is revoked.
    pub fn set_issuer(&mut self, issuer: Option<Issuer>) {
        self.issuer = issuer;
    }

    /// The `devices:admit` grant this node signs under, when it is not the owner.
    pub fn admit_grant(&self) -> Option<&Chain> {
        self.issuer.as_ref().and_then(|i| i.admit.as_ref())
    }

    /// Checks a member's certificate presented by the peer whose key is `remote`.
    pub fn check(
        &mut self,
        now: UnixMillis,
        remote: &PublicKey,
        chain: &Chain,
    ) -> Result<Device, String> {
        let device = device::verify_certificate(&mut self.verifier, chain, now, &self.revocations)
            .map_err(|err| match err {
                DeviceError::Chain(ChainError::WrongIssuer { .. }) => {
                    "the certificate is for another mesh".to_owned()
                }
                other => format!("invalid device certificate: {other}"),
            })?;
        if device.node_key != *remote {
            return Err("the certificate belongs to another device".into());
        }
        Ok(device)
    }

    /// Redeems a ticket and signs a certificate for the joiner.
    pub fn join(
        &mut self,
        now: UnixMillis,
        remote: &PublicKey,
        ticket: &[u8; 16],
        proof: &[u8; 32],
        name: &str,
        role: Role,
    ) -> Result<(Device, Chain), String> {
        let Some(issuer) = self.issuer.clone() else {
            return Err("this device cannot admit new devices".into());
        };
        if !crate::device::is_valid_device_name(name) {
            return Err(format!("{name:?} is not a valid device name"));
        }
        let redeemed = self
            .invitations
            .redeem(now, ticket, proof, remote, &self.local, name, role)
            .map_err(|err: JoinError| format!("pairing refused: {err}"))?;
        if let Some(grant) = &issuer.admit {
            let scopes: Vec<&Resource> = grant
                .leaf()
                .capability()
                .grants
                .iter()
                .map(|g| &g.resource)
                .filter(|r| matches!(r, Resource::DevicesAdmit { .. }))
                .collect();
            if !scopes
                .iter()
                .any(|r| r.admits(&redeemed.name, redeemed.role))
            {
                let allowed: Vec<String> = scopes.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "pairing refused: this device may admit only what its grant names ({}), \
                     not {:?} ({}); the owner's device can admit it",
                    allowed.join("; "),
                    redeemed.name,
                    redeemed.role
                ));
            }
        }
        if self.taken.contains(&redeemed.name) {
            return Err(format!(
                "pairing refused: the mesh already has a device named {:?}; ask for a new \
                 invitation and join under another name",
                redeemed.name
            ));
        }
        self.nonce_counter += 1;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.nonce_counter.to_be_bytes());
        nonce[8..].copy_from_slice(&ticket[..8]);
        // Under a devices:admit grant the certificate ends with the grant; the owner
        // may approve the device later (`hearth devices approve`) for the full lifetime.
        let expires = issuer
            .admit
            .iter()
            .flat_map(|grant| grant.links())
            .map(|link| link.capability().expires)
            .fold(now.saturating_add(CERTIFICATE_LIFETIME), std::cmp::min);
        let chain = device::issue_certificate(
            &issuer.key,
            issuer.admit.as_ref(),
            *remote,
            &redeemed.name,
            redeemed.role,
            now,
            expires,
            nonce,
        )
        .map_err(|err| format!("cannot sign a certificate: {err}"))?;
        let device = self.check(now, remote, &chain)?;
        Ok((device, chain))
    }
}

/// What this side sends first.
#[derive(Debug, Clone)]
pub enum Opening {
    /// A member: its certificate.
    Member(Chain),
    /// A device being paired: the ticket proof and what it asks to be.
    Joiner {
        /// The ticket id.
        ticket: [u8; 16],
        /// The proof of its secret.
        proof: [u8; 32],
        /// Requested name.
        name: String,
        /// Requested role.
        role: Role,
    },
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer is admitted: serve the mesh protocols to it.
    Admitted(Device),
    /// A new device joined through this node (audit it; add it to the membership store).
    Joined(Device),
    /// This device was given its certificate (store it).
    Welcomed(Chain),
    /// The peer is refused: close the connection after sending what is queued.
    Refused {
        /// Why (for the audit log).
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's first message (and, for a joiner, its Welcome).
    Waiting,
    /// Admitted.
    Admitted,
    /// Refused; nothing more is accepted.
    Refused,
}

/// Admission of one connection.
#[derive(Debug)]
pub struct Connection {
    remote: PublicKey,
    joining: bool,
    state: State,
    peer_device: Option<Device>,
    peer_certificate: Option<Chain>,
    welcomed: bool,
    /// This side's opening, until it is queued.
    opening: Option<Vec<u8>>,
    deadline: UnixMillis,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl Connection {
    /// Starts admission on a connection this side opened to the peer whose
    /// (Noise-authenticated) key is `remote`; queues this side's opening message.
    pub fn new(now: UnixMillis, remote: PublicKey, opening: Opening, config: &Config) -> Self {
        let mut connection = Self::respond(now, remote, opening, config);
        connection.initiate();
        connection
    }

    /// Starts admission on a connection the peer opened: this side's opening is held
    /// back until the peer's opening (a valid certificate, or a ticket redeemed) has
    /// been accepted, so a peer that presents nothing, or something refused, is told
    /// only the refusal.
    pub fn respond(now: UnixMillis, remote: PublicKey, opening: Opening, config: &Config) -> Self {
        let (joining, message) = match opening {
            Opening::Member(chain) => (false, Message::Hello(chain)),
            Opening::Joiner {
                ticket,
                proof,
                name,
                role,
            } => (
                true,
                Message::Join {
                    ticket,
                    proof,
                    name,
                    role,
                },
            ),
        };
        Self {
            remote,
            joining,
            state: State::Waiting,
            peer_device: None,
            peer_certificate: None,
            welcomed: false,
            opening: Some(message.encode()),
            deadline: now.saturating_add(config.deadline),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Queues this side's opening now if it has not been sent yet: for a connection
    /// begun with [`Connection::respond`] that this side must open after all (both
    /// sides dialled at once and each first saw the other's connection).
    pub fn initiate(&mut self) {
        if self.state != State::Refused
            && let Some(opening) = self.opening.take()
        {
            self.transmit.push_back(opening);
        }
    }

    /// Is the peer admitted?
    pub fn is_admitted(&self) -> bool {
        self.state == State::Admitted
    }

    /// Has the connection been refused?
    pub fn is_refused(&self) -> bool {
        self.state == State::Refused
    }

    /// The admitted peer's device.
    pub fn peer(&self) -> Option<&Device> {
        self.peer_device.as_ref()
    }

    /// The peer's certificate (presented, or issued to it at pairing) once checked.
    pub fn peer_certificate(&self) -> Option<&Chain> {
        self.peer_certificate.as_ref()
    }

    fn refuse(&mut self, reason: String, tell_peer: bool) {
        if self.state == State::Refused {
            return;
        }
        if tell_peer {
            self.transmit
                .push_back(Message::Refuse(reason.clone()).encode());
        }
        self.state = State::Refused;
        self.events.push_back(Event::Refused { reason });
    }

    fn maybe_admit(&mut self) {
        if self.state != State::Waiting {
            return;
        }
        if let Some(device) = &self.peer_device
            && (!self.joining || self.welcomed)
        {
            self.state = State::Admitted;
            self.events.push_back(Event::Admitted(device.clone()));
        }
    }

    /// Handles one message from the peer.
    pub fn handle_message(&mut self, now: UnixMillis, bytes: &[u8], gate: &mut Gate) {
        if self.state == State::Refused {
            return;
        }
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(err) => return self.refuse(format!("malformed admission message: {err}"), true),
        };
        match message {
            Message::Hello(chain) => {
                if self.peer_device.is_some() {
                    return self.refuse("a second hello".into(), true);
                }
                // A joiner has no owner to check against but the ticket's: the gate
                // of a joiner is built with the ticket's owner key.
                match gate.check(now, &self.remote, &chain) {
                    Ok(device) => {
                        self.peer_device = Some(device);
                        self.peer_certificate = Some(chain);
                        self.initiate();
                        self.maybe_admit();
                    }
                    Err(reason) => self.refuse(reason, true),
                }
            }
            Message::Join {
                ticket,
                proof,
                name,
                role,
            } => {
                if self.joining || self.peer_device.is_some() {
                    return self.refuse("unexpected join".into(), true);
                }
                match gate.join(now, &self.remote, &ticket, &proof, &name, role) {
                    Ok((device, chain)) => {
                        self.transmit
                            .push_back(Message::Welcome(chain.clone()).encode());
                        self.initiate();
                        self.events.push_back(Event::Joined(device.clone()));
                        self.peer_device = Some(device);
                        self.peer_certificate = Some(chain);
                        self.maybe_admit();
                    }
                    Err(reason) => self.refuse(reason, true),
                }
            }
            Message::Welcome(chain) => {
                if !self.joining || self.welcomed {
                    return self.refuse("unexpected welcome".into(), true);
                }
                // The certificate must be for this device, in the ticket's mesh.
                match gate.check(now, &gate.local.clone(), &chain) {
                    Ok(_) => {
                        self.welcomed = true;
                        self.events.push_back(Event::Welcomed(chain));
                        self.maybe_admit();
                    }
                    Err(reason) => self.refuse(
                        format!("the certificate offered is not valid: {reason}"),
                        true,
                    ),
                }
            }
            Message::Refuse(reason) => self.refuse(format!("the peer refused: {reason}"), false),
        }
    }

    /// Handles the deadline passing.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        if self.state == State::Waiting && now >= self.deadline {
            self.refuse(
                "no valid certificate before the admission deadline".into(),
                true,
            );
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        (self.state == State::Waiting).then_some(self.deadline)
    }
}
