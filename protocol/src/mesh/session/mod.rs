//! One session with one peer, sans-IO: admission first, then the membership and address
//! exchange and the sync traffic, with flow control, over one connection.
//!
//! A [`Session`] is what node/ and netsim/ both drive per connected peer, so that the
//! order of admission, when memberships are exchanged and how much sync data may be in
//! flight are decided once. It owns an admission [`Connection`]; the
//! [`Gate`] and the [`Membership`] are shared by all sessions of a device and lent to
//! each call that needs them in a [`Context`]. The sync [`Engine`](crate::sync::Engine)
//! stays one per device: the driver hands the session what the engine sends to the
//! peer ([`Session::send_sync`]) and the engine what the session delivers
//! ([`Action::Sync`]).
//!
//! Messages travel on three [`Channel`]s, each message acknowledged or failed by the
//! transport (a libp2p request and its response, a modelled link in netsim):
//!
//! - [`Channel::Admission`] carries [`admission::Message`]s.
//! - [`Channel::Members`] carries [`Exchange`]s, once admitted. Each side sends one right after
//!   admission and then periodically, asking for an answer; the answer never asks for
//!   one. The period starts at [`Config::members_every`] and doubles after each
//!   exchange that found both digests equal and nothing new to list, up to
//!   [`Config::members_idle`]; a difference, a change here or new addresses bring it
//!   back to [`Config::members_every`]. A change here is told at once. At most one
//!   exchange is on its way at a time: what is to be sent while one is (an answer, a
//!   change, the next exchange) goes as one message once it is acknowledged, so a peer
//!   that asks without end gets one answer per acknowledgement. A message carries a
//!   page of the sender's membership only while the receiver's last digest differs
//!   from the sender's: the whole set at most once per [`Config::round_every`], a page
//!   at a time (the next once the last was acknowledged, the same again if it
//!   failed), the first page otherwise; a round during which the membership here
//!   changed is followed by another.
//! - [`Channel::Sync`] carries the sync engine's messages, once admitted, under a window of
//!   [`Config::max_in_flight`] unacknowledged bytes and a queue of at most
//!   [`Config::max_waiting`] bytes behind it; beyond that a message is dropped and the
//!   engine's repair carries what it held.
//!
//! Anything else before admission (a members or sync message to a responder, more
//! early messages than [`Config::max_early`] bytes to an initiator, which may see the
//! responder's messages overtake its admission answer on another stream), a malformed
//! message or one past its channel's limit, refuses the peer: the session closes and
//! nothing it carried is taken in.
//!
//! The driver calls, in this order: [`Session::new`] when a connection opens (as
//! initiator: it dialled; as responder: the peer dialled), or
//! [`Session::handle_opened_as_initiator`] when both dialled at once and this side must
//! open after all; then, for every input, one of [`Session::handle_received`],
//! [`Session::handle_sent`], [`Session::handle_failed`], [`Session::handle_timeout`],
//! [`Session::send_sync`], [`Session::handle_membership_changed`] or
//! [`Session::set_listed`]; after each, [`Session::poll_action`] until it returns `None`
//! (acting on each [`Action`]), then [`Session::poll_timeout`] to arm its timer. Time is
//! always passed in. Local changes to stores are the device's, not a peer's:
//! [`LocalChanges`] turns them into what the sync engine must do.

mod local;
mod members;
mod window;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

pub use local::{LocalAction, LocalChanges};
pub use members::{
    Exchange, Listed, MAX_ADDRESS_LEN, MAX_ADDRESSES, MAX_EXCHANGE_BYTES, MAX_LISTED,
};
pub use window::{Queued, SendId, Window};

use crate::capability::{Chain, Position};
use crate::device::Device;
use crate::key::PublicKey;
use crate::mesh::admission::{self, Connection, Gate, Opening};
use crate::mesh::membership::{Membership, Merged, Snapshot};
use crate::time::UnixMillis;

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This side dialled: it presents its certificate first.
    Initiator,
    /// The peer dialled: this side's certificate goes only once the peer's was accepted.
    Responder,
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    /// Admission (`/hearth/admission/1` on the node).
    Admission,
    /// The membership and address exchange (`/hearth/members/2`).
    Members,
    /// Store replication (`/hearth/sync/1`).
    Sync,
}

impl Channel {
    /// The largest message accepted on the channel.
    pub fn max_bytes(self) -> usize {
        match self {
            Channel::Admission => admission::MAX_MESSAGE_BYTES,
            Channel::Members => MAX_EXCHANGE_BYTES,
            Channel::Sync => crate::sync::message::MAX_MESSAGE_BYTES,
        }
    }
}

/// How sessions behave. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct Config {
    /// Admission, with its deadline. Default [`admission::Config::default`] (5 s).
    pub admission: admission::Config,
    /// Time between two membership exchanges asked of the peer while anything differs
    /// or changed. Default 2 seconds.
    pub members_every: Duration,
    /// Time between two membership exchanges at most, once both sides agree: the period
    /// doubles from [`Config::members_every`] up to this. Default 30 seconds.
    pub members_idle: Duration,
    /// Least time between two rounds that page the whole membership to the peer: a
    /// peer whose digest keeps changing gets the first page otherwise. Default 10
    /// seconds.
    pub round_every: Duration,
    /// Sync bytes sent and not yet acknowledged, at most (one larger message still goes
    /// when nothing else is in flight). Default 16 MiB.
    pub max_in_flight: usize,
    /// Sync bytes held back while the window is full, at most (one larger message may
    /// wait alone). Default 16 MiB.
    pub max_waiting: usize,
    /// Bytes of members and sync messages an initiator holds while its admission answer
    /// is still on its way, at most. Default 1 MiB.
    pub max_early: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admission: admission::Config::default(),
            members_every: Duration::from_secs(2),
            members_idle: Duration::from_secs(30),
            round_every: Duration::from_secs(10),
            max_in_flight: 16 * 1024 * 1024,
            max_waiting: 16 * 1024 * 1024,
            max_early: 1024 * 1024,
        }
    }
}

impl Config {
    /// Sets [`Config::admission`].
    pub fn with_admission(mut self, admission: admission::Config) -> Self {
        self.admission = admission;
        self
    }

    /// Sets [`Config::members_every`].
    pub fn with_members_every(mut self, every: Duration) -> Self {
        self.members_every = every;
        self
    }

    /// Sets [`Config::members_idle`].
    pub fn with_members_idle(mut self, idle: Duration) -> Self {
        self.members_idle = idle;
        self
    }

    /// Sets [`Config::round_every`].
    pub fn with_round_every(mut self, every: Duration) -> Self {
        self.round_every = every;
        self
    }

    /// Sets [`Config::max_in_flight`].
    pub fn with_max_in_flight(mut self, bytes: usize) -> Self {
        self.max_in_flight = bytes;
        self
    }

    /// Sets [`Config::max_waiting`].
    pub fn with_max_waiting(mut self, bytes: usize) -> Self {
        self.max_waiting = bytes;
        self
    }

    /// Sets [`Config::max_early`].
    pub fn with_max_early(mut self, bytes: usize) -> Self {
        self.max_early = bytes;
        self
    }
}

/// What a device's sessions share, lent to each call that may need it.
#[derive(Debug)]
pub struct Context<'a> {
    /// Admission decisions and the revocations.
    pub gate: &'a mut Gate,
    /// The device's membership store.
    pub membership: &'a mut Membership,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `bytes` on `channel`; report the outcome with [`Session::handle_sent`] or
    /// [`Session::handle_failed`] and `id`.
    Send {
        /// The channel.
        channel: Channel,
        /// The message's id.
        id: SendId,
        /// The message.
        bytes: Vec<u8>,
    },
    /// The peer is admitted: its device. Tell the sync engine it is connected.
    Admitted(Device),
    /// A new device joined through this session (audit it; it is in the membership).
    Joined(Device),
    /// This device was given its certificate (store it).
    Welcomed(Chain),
    /// The peer is refused (before admission) or dropped (after): close the connection
    /// once what was sent is out, and tell the sync engine if it was admitted.
    Refused {
        /// Why (for the audit log).
        reason: String,
    },
    /// The peer's membership documents were merged into the membership: act on what
    /// changed (store it, drop revoked devices) and on what was left out.
    Merged(Merged),
    /// The devices the peer knows and where they listen.
    Listed(Vec<Listed>),
    /// A sync message from the peer: hand it to the sync engine.
    Sync(Vec<u8>),
    /// A sync message was dropped: the window and its queue were full.
    SyncDropped {
        /// Its size.
        bytes: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Admitting,
    Admitted,
    Closed,
}

/// Where the membership exchange with the peer stands.
#[derive(Debug, Default)]
struct Paging {
    /// The peer's digest, as it last sent it.
    peer_digest: Option<[u8; 32]>,
    /// Where the next page starts (`None`: at the first revocation).
    after: Option<Position>,
    /// The digests (ours when the round began, theirs) once the last page of a round
    /// went: while both stay the same, paging again would not help (the peer refuses
    /// something), so only the first page is sent. Ours is taken at the round's start:
    /// what changed here during a round may lie behind its cursor, and then a new
    /// round is needed.
    round_done: Option<([u8; 32], Option<[u8; 32]>)>,
    /// Our digest when the current round's first page went.
    round_from: Option<[u8; 32]>,
    /// When a new round may start.
    next_round: UnixMillis,
    /// The page of a round sent last, while it is not acknowledged, and where that
    /// page started: the next goes once it is acknowledged, the same again if it
    /// failed.
    awaiting: Option<(SendId, Option<Position>)>,
    /// The exchange message sent last, while it is not acknowledged: at most one is
    /// on its way to the peer; what is to be sent meanwhile waits for it (one message
    /// then carries all of it), so questions, changes and pages cannot pile up.
    in_flight: Option<SendId>,
    /// An exchange is due once the one in flight is acknowledged, and whether it asks
    /// for an answer.
    due: Option<bool>,
}

/// The session with one peer over one connection.
#[derive(Debug)]
pub struct Session {
    config: Config,
    side: Side,
    state: State,
    admission: Connection,
    next_id: u64,
    actions: VecDeque<Action>,
    /// Members and sync messages received by an initiator before it admitted the peer.
    early: VecDeque<(Channel, Vec<u8>)>,
    early_bytes: usize,
    window: Window,
    paging: Paging,
    listed: Vec<Listed>,
    /// The listing changed since the last periodic exchange.
    listed_changed: bool,
    next_exchange: Option<UnixMillis>,
    /// The current period of the exchange.
    period: Duration,
}

impl Session {
    /// A session on a connection that just opened with the peer whose authenticated key
    /// is `remote`. An initiator's opening is queued at once.
    pub fn new(
        now: UnixMillis,
        remote: PublicKey,
        side: Side,
        opening: Opening,
        config: Config,
    ) -> Self {
        let admission = match side {
            Side::Initiator => Connection::new(now, remote, opening, &config.admission),
            Side::Responder => Connection::respond(now, remote, opening, &config.admission),
        };
        let window = Window::new(config.max_in_flight, config.max_waiting);
        let mut session = Self {
            config,
            side,
            state: State::Admitting,
            admission,
            next_id: 0,
            actions: VecDeque::new(),
            early: VecDeque::new(),
            early_bytes: 0,
            window,
            paging: Paging::default(),
            listed: Vec::new(),
            listed_changed: false,
            next_exchange: None,
            period: Duration::ZERO,
        };
        session.period = session.config.members_every;
        session.flush_admission();
        session
    }

    /// Both sides dialled at once and this side first saw the peer's connection: it
    /// opens after all (its certificate goes now, unless it already answered).
    pub fn handle_opened_as_initiator(&mut self) {
        self.side = Side::Initiator;
        self.admission.initiate();
        self.flush_admission();
    }

    /// Which side this session is on.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Is the peer admitted (and not dropped since)?
    pub fn is_admitted(&self) -> bool {
        self.state == State::Admitted
    }

    /// Has the session ended (refused or dropped)?
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The peer's device, once its certificate was accepted.
    pub fn peer(&self) -> Option<&Device> {
        self.admission.peer()
    }

    /// The peer's certificate, once checked.
    pub fn peer_certificate(&self) -> Option<&Chain> {
        self.admission.peer_certificate()
    }

    /// The peer's membership digest, as it last sent it.
    pub fn peer_digest(&self) -> Option<[u8; 32]> {
        self.paging.peer_digest
    }

    /// Sync bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.window.in_flight()
    }

    /// Sync bytes waiting behind the window.
    pub fn waiting(&self) -> usize {
        self.window.waiting_bytes()
    }

    /// The current period of the membership exchange.
    pub fn members_period(&self) -> Duration {
        self.period
    }

    /// Sets the devices this side tells the peer of in its next exchanges, itself
    /// first (at most [`MAX_LISTED`]). A listing that differs from the last one is told
    /// within [`Config::members_every`].
    pub fn set_listed(&mut self, now: UnixMillis, mut listed: Vec<Listed>) {
        listed.truncate(MAX_LISTED);
        if listed != self.listed {
            self.listed = listed;
            self.listed_changed = true;
            self.hurry(now);
        }
    }

    /// Something differs or changed: the exchange goes back to its fastest period, and
    /// the next one is due within it.
    fn hurry(&mut self, now: UnixMillis) {
        self.period = self.config.members_every;
        let soon = now.saturating_add(self.period);
        if let Some(due) = self.next_exchange.as_mut() {
            *due = (*due).min(soon);
        }
    }

    fn id(&mut self) -> SendId {
        self.next_id += 1;
        SendId(self.next_id)
    }

    fn send(&mut self, channel: Channel, bytes: Vec<u8>) {
        let id = self.id();
        self.actions.push_back(Action::Send { channel, id, bytes });
    }

    fn refuse(&mut self, reason: String) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.early.clear();
        self.early_bytes = 0;
        self.window.clear();
        self.next_exchange = None;
        self.actions.push_back(Action::Refused { reason });
    }

    /// Moves what admission queued and decided into the actions.
    fn flush_admission(&mut self) {
        while let Some(bytes) = self.admission.poll_transmit() {
            self.send(Channel::Admission, bytes);
        }
        while let Some(event) = self.admission.poll_event() {
            match event {
                admission::Event::Admitted(device) => {
                    if self.state == State::Admitting {
                        self.state = State::Admitted;
                        self.actions.push_back(Action::Admitted(device));
                    }
                }
                admission::Event::Joined(device) => self.actions.push_back(Action::Joined(device)),
                admission::Event::Welcomed(chain) => {
                    self.actions.push_back(Action::Welcomed(chain));
                }
                admission::Event::Refused { reason } => self.refuse(reason),
            }
        }
    }

    /// Handles one message from the peer on `channel`.
    pub fn handle_received(
        &mut self,
        now: UnixMillis,
        channel: Channel,
        bytes: &[u8],
        cx: &mut Context<'_>,
    ) {
        if self.state == State::Closed {
            return;
        }
        if bytes.len() > channel.max_bytes() {
            return self.refuse(format!(
                "a {} message of {} bytes, over the limit of {}",
                channel.name(),
                bytes.len(),
                channel.max_bytes()
            ));
        }
        match (channel, self.state) {
            (Channel::Admission, _) => {
                let was = self.state;
                self.admission.handle_message(now, bytes, cx.gate);
                self.flush_admission();
                if was == State::Admitting && self.state == State::Admitted {
                    self.start(now, cx);
                }
            }
            (_, State::Admitting) => {
                // A responder's peer speaks only after it was answered; an initiator
                // may see the responder's first messages overtake its answer.
                if self.side == Side::Responder {
                    return self.refuse(format!("a {} message before admission", channel.name()));
                }
                let total = self.early_bytes.saturating_add(bytes.len());
                if total > self.config.max_early {
                    return self.refuse(format!(
                        "more than {} bytes of messages before admission",
                        self.config.max_early
                    ));
                }
                self.early_bytes = total;
                self.early.push_back((channel, bytes.to_vec()));
            }
            (Channel::Members, _) => self.members_received(now, bytes, cx),
            (Channel::Sync, _) => self.actions.push_back(Action::Sync(bytes.to_vec())),
        }
    }

    /// Admission is done: the first exchange, then what arrived early.
    fn start(&mut self, now: UnixMillis, cx: &mut Context<'_>) {
        self.send_members(now, true, cx);
        self.listed_changed = false;
        self.next_exchange = Some(now.saturating_add(self.period));
        self.early_bytes = 0;
        let early = std::mem::take(&mut self.early);
        for (channel, bytes) in early {
            self.handle_received(now, channel, &bytes, cx);
        }
    }

    fn members_received(&mut self, now: UnixMillis, bytes: &[u8], cx: &mut Context<'_>) {
        let exchange = match Exchange::decode(bytes) {
            Ok(exchange) => exchange,
            Err(err) => return self.refuse(format!("malformed membership exchange: {err}")),
        };
        let snapshot = if exchange.page.is_empty() {
            None
        } else {
            match Snapshot::decode(&exchange.page) {
                Ok(snapshot) => Some(snapshot),
                Err(err) => {
                    return self.refuse(format!("malformed membership snapshot: {err}"));
                }
            }
        };
        if let Some(snapshot) = snapshot {
            let merged = cx
                .membership
                .merge(now, &snapshot, &mut cx.gate.revocations);
            if merged.changed() || !merged.rejected.is_empty() {
                self.actions.push_back(Action::Merged(merged));
            }
        }
        self.paging.peer_digest = Some(exchange.digest);
        if !exchange.listed.is_empty() {
            self.actions.push_back(Action::Listed(exchange.listed));
        }
        let ours = if exchange.request {
            self.send_members(now, false, cx)
        } else {
            cx.membership.digest(now, &cx.gate.revocations)
        };
        if exchange.digest != ours {
            self.hurry(now);
        }
    }

    /// Sends an exchange: the digest, and a page of the membership while the peer's
    /// last digest differs. The pages of a round go one at a time, each once the one
    /// before was acknowledged; meanwhile an exchange carries no page. Returns our
    /// digest.
    fn send_members(&mut self, now: UnixMillis, request: bool, cx: &mut Context<'_>) -> [u8; 32] {
        let revocations = &cx.gate.revocations;
        let ours = cx.membership.digest(now, revocations);
        if self.paging.in_flight.is_some() {
            self.paging.due = Some(request || self.paging.due == Some(true));
            return ours;
        }
        self.paging.due = None;
        let theirs = self.paging.peer_digest;
        let mut page_from = None;
        let (page, more) = if theirs == Some(ours) {
            self.paging.after = None;
            (Vec::new(), false)
        } else if self.paging.round_done == Some((ours, theirs))
            || (self.paging.after.is_none() && now < self.paging.next_round)
        {
            let page = cx.membership.page(now, revocations, None);
            (page.snapshot.encode(), false)
        } else {
            if self.paging.after.is_none() {
                self.paging.next_round = now.saturating_add(self.config.round_every);
                self.paging.round_from = Some(ours);
            }
            let page = cx
                .membership
                .page(now, revocations, self.paging.after.as_ref());
            page_from = self.paging.after;
            self.paging.after = page.next;
            if page.next.is_none() {
                self.paging.round_done = Some((self.paging.round_from.unwrap_or(ours), theirs));
            }
            (page.snapshot.encode(), page.next.is_some())
        };
        let paged = more && !page.is_empty();
        let exchange = Exchange {
            request,
            more,
            digest: ours,
            page,
            listed: self.listed.clone(),
        };
        let id = self.id();
        self.actions.push_back(Action::Send {
            channel: Channel::Members,
            id,
            bytes: exchange.encode(),
        });
        self.paging.in_flight = Some(id);
        if paged {
            self.paging.awaiting = Some((id, page_from));
        }
        ours
    }

    /// The membership changed here (an owner's action, a merge from another peer): the
    /// peer is told now rather than at the next exchange.
    pub fn handle_membership_changed(&mut self, now: UnixMillis, cx: &mut Context<'_>) {
        if self.state == State::Admitted {
            self.send_members(now, true, cx);
            self.hurry(now);
        }
    }

    /// Queues a sync message for the peer, sent as the window allows. Ignored unless
    /// the peer is admitted.
    pub fn send_sync(&mut self, bytes: Vec<u8>) {
        if self.state != State::Admitted {
            return;
        }
        let len = bytes.len();
        if self.window.push(bytes) == Queued::Dropped {
            self.actions.push_back(Action::SyncDropped { bytes: len });
        }
        self.pump_window();
    }

    fn pump_window(&mut self) {
        loop {
            let id = SendId(self.next_id + 1);
            let Some(bytes) = self.window.next(id) else {
                return;
            };
            self.next_id += 1;
            self.actions.push_back(Action::Send {
                channel: Channel::Sync,
                id,
                bytes,
            });
        }
    }

    /// The message `id` was acknowledged by the peer: the next page of a round goes.
    pub fn handle_sent(&mut self, now: UnixMillis, id: SendId, cx: &mut Context<'_>) {
        if self.paging.in_flight == Some(id) {
            self.paging.in_flight = None;
            let paging = self
                .paging
                .awaiting
                .take()
                .is_some_and(|(sent, _)| sent == id)
                && self.paging.after.is_some();
            if self.state == State::Admitted && (paging || self.paging.due.is_some()) {
                let request = self.paging.due == Some(true);
                self.send_members(now, request, cx);
            }
        } else if self.window.done(id) {
            self.pump_window();
        }
    }

    /// The message `id` could not be delivered: sync bytes leave the window (the sync
    /// engine's repair resends what matters); a round's page is sent again, from where
    /// it started, with the next exchange (the round goes on: a failure does not start
    /// a new one before its time).
    pub fn handle_failed(&mut self, id: SendId) {
        if self.paging.in_flight == Some(id) {
            self.paging.in_flight = None;
            if let Some((sent, from)) = self.paging.awaiting.take()
                && sent == id
            {
                self.paging.after = from;
            }
        } else if self.window.done(id) {
            self.pump_window();
        }
    }

    /// Handles the timer set by [`Session::poll_timeout`].
    pub fn handle_timeout(&mut self, now: UnixMillis, cx: &mut Context<'_>) {
        match self.state {
            State::Admitting => {
                self.admission.handle_timeout(now);
                self.flush_admission();
            }
            State::Admitted => {
                if self.next_exchange.is_some_and(|due| now >= due) {
                    let ours = self.send_members(now, true, cx);
                    self.period = if self.paging.peer_digest == Some(ours) && !self.listed_changed {
                        self.period.saturating_mul(2).min(self.config.members_idle)
                    } else {
                        self.config.members_every
                    };
                    self.listed_changed = false;
                    self.next_exchange = Some(now.saturating_add(self.period));
                }
            }
            State::Closed => {}
        }
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        match self.state {
            State::Admitting => self.admission.poll_timeout(),
            State::Admitted => self.next_exchange,
            State::Closed => None,
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::Admission => "admission",
            Channel::Members => "membership",
            Channel::Sync => "sync",
        }
    }
}
