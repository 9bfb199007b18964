//! Nothing but admission before admission: the mesh protocols (membership, sync,
//! compute) are wrapped so that a stream a peer opens on one of them is held, unread,
//! until that peer is admitted, and closed if it is not admitted in time. A peer that
//! is never admitted never gets a byte of such a stream read, so it cannot make the
//! node buffer requests it would only throw away.
//!
//! The hold (rather than refusing the protocol outright) covers the moment right after
//! admission: the side that admits first starts talking at once, and its first stream
//! may reach the other side a moment before that side has read the admission answer.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, FullyNegotiatedInbound, InboundUpgradeSend, ListenUpgradeError,
    UpgradeInfoSend,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream};

/// How long a stream is held for its peer's admission (beyond the admission deadline).
const HOLD: Duration = Duration::from_secs(10);

/// The peers admitted now, shared by the mesh loop (which writes it) and the
/// connection handlers (which wait on it).
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    peers: Mutex<BTreeSet<PeerId>>,
    changed: tokio::sync::Notify,
}

impl Admitted {
    /// Makes the set equal to `peers`.
    pub(crate) fn set(&self, peers: BTreeSet<PeerId>) {
        let changed = match self.peers.lock() {
            Ok(mut current) if *current != peers => {
                *current = peers;
                true
            }
            _ => false,
        };
        if changed {
            self.changed.notify_waiters();
        }
    }

    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.peers.lock().is_ok_and(|peers| peers.contains(peer))
    }

    /// Whether `peer` is admitted within `limit`.
    async fn wait(&self, peer: PeerId, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if self.contains(&peer) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.contains(&peer);
            }
        }
    }
}

/// At most this many addresses admitted devices saw this node at are remembered.
const MAX_VOUCHED: usize = 16;

/// The addresses admitted devices saw this node at. Identify reports the address every
/// connected peer says it sees this node at, strangers included; libp2p's AutoNAT keeps
/// every such candidate (without bound) and postpones its next probe at each new one,
/// and DCUtR offers its last 20 to the other end of a hole punch. The AutoNAT and DCUtR
/// of the mesh hear only the candidates that an admitted device reported: the mesh loop
/// vouches for them once the reporting peer is admitted, and they are announced again
/// then (identify announced them before admission, when they were held back).
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    state: Mutex<CandidateState>,
}

#[derive(Debug, Default)]
struct CandidateState {
    vouched: VecDeque<Multiaddr>,
    /// Vouched for but not yet announced.
    pending: VecDeque<Multiaddr>,
    waker: Option<Waker>,
}

impl Candidates {
    /// An admitted device saw this node at `addrs`: they may be candidates from now on.
    pub(crate) fn vouch(&self, addrs: impl IntoIterator<Item = Multiaddr>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let mut woke = false;
        for addr in addrs {
            if state.vouched.contains(&addr) {
                continue;
            }
            if state.vouched.len() >= MAX_VOUCHED {
                state.vouched.pop_front();
            }
            state.vouched.push_back(addr.clone());
            if state.pending.len() < MAX_VOUCHED {
                state.pending.push_back(addr);
            }
            woke = true;
        }
        if woke && let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    fn allows(&self, addr: &Multiaddr) -> bool {
        self.state
            .lock()
            .is_ok_and(|state| state.vouched.contains(addr))
    }

    fn next_pending(&self, cx: &Context<'_>) -> Option<Multiaddr> {
        let mut state = self.state.lock().ok()?;
        let next = state.pending.pop_front();
        if next.is_none() {
            state.waker = Some(cx.waker().clone());
        }
        next
    }
}

/// What a gated behaviour does with the address candidates the swarm tells it of.
enum CandidateFilter {
    /// Hears them all (the mesh protocols ignore them).
    All,
    /// Hears only vouched ones.
    Vouched(Arc<Candidates>),
    /// Hears only vouched ones, and announces them to the swarm once vouched for.
    Announce(Arc<Candidates>),
}

/// A behaviour whose inbound streams wait for their peer's admission.
pub(crate) struct Gated<B> {
    inner: B,
    admitted: Arc<Admitted>,
    candidates: CandidateFilter,
}

impl<B> Gated<B> {
    pub(crate) fn new(inner: B, admitted: Arc<Admitted>) -> Self {
        Self {
            inner,
            admitted,
            candidates: CandidateFilter::All,
        }
    }

    /// The same, hearing only the address candidates of `candidates`; with
    /// `announce`, this behaviour is the one that announces them (exactly one should).
    pub(crate) fn with_candidates(
        inner: B,
        admitted: Arc<Admitted>,
        candidates: Arc<Candidates>,
        announce: bool,
    ) -> Self {
        Self {
            inner,
            admitted,
            candidates: if announce {
                CandidateFilter::Announce(candidates)
            } else {
                CandidateFilter::Vouched(candidates)
            },
        }
    }
}

impl<B> Gated<B> {
    /// The candidates this behaviour hears, if it filters them.
    pub(crate) fn candidates(&self) -> Option<&Arc<Candidates>> {
        match &self.candidates {
            CandidateFilter::All => None,
            CandidateFilter::Vouched(c) | CandidateFilter::Announce(c) => Some(c),
        }
    }
}

impl<B> std::ops::Deref for Gated<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Gated<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = GatedHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        Ok(GatedHandler {
            inner,
            peer,
            admitted: self.admitted.clone(),
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(GatedHandler {
            inner,
            peer,
            admitted: self.admitted.clone(),
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::NewExternalAddrCandidate(candidate) = &event
            && let CandidateFilter::Vouched(c) | CandidateFilter::Announce(c) = &self.candidates
            && !c.allows(candidate.addr)
        {
            return;
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let CandidateFilter::Announce(c) = &self.candidates
            && let Some(addr) = c.next_pending(cx)
        {
            return Poll::Ready(ToSwarm::NewExternalAddrCandidate(addr));
        }
        self.inner.poll(cx)
    }
}

/// A connection handler whose inbound streams wait for the peer's admission.
pub(crate) struct GatedHandler<H> {
    inner: H,
    peer: PeerId,
    admitted: Arc<Admitted>,
}

/// Why a held stream was closed.
#[derive(Debug)]
pub(crate) enum HoldError<E> {
    /// The inner protocol's own upgrade failed.
    Inner(E),
    /// The peer was not admitted in time.
    NotAdmitted,
}

/// An inbound upgrade that first waits for the peer's admission.
pub(crate) struct Hold<U> {
    inner: U,
    peer: PeerId,
    admitted: Arc<Admitted>,
}

impl<U: UpgradeInfoSend> UpgradeInfo for Hold<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.inner.protocol_info()
    }
}

impl<U: InboundUpgradeSend> InboundUpgrade<Stream> for Hold<U> {
    type Output = U::Output;
    type Error = HoldError<U::Error>;
    type Future = BoxFuture<'static, Result<U::Output, HoldError<U::Error>>>;

    fn upgrade_inbound(self, stream: Stream, info: U::Info) -> Self::Future {
        let Self {
            inner,
            peer,
            admitted,
        } = self;
        async move {
            if !admitted.wait(peer, HOLD).await {
                return Err(HoldError::NotAdmitted);
            }
            inner
                .upgrade_inbound(stream, info)
                .await
                .map_err(HoldError::Inner)
        }
        .boxed()
    }
}

impl<H: ConnectionHandler> ConnectionHandler for GatedHandler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = Hold<H::InboundProtocol>;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        let (peer, admitted) = (self.peer, self.admitted.clone());
        self.inner.listen_protocol().map_upgrade(|inner| Hold {
            inner,
            peer,
            admitted,
        })
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            '_,
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info }) => {
                ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info })
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error }) => {
                match error {
                    HoldError::Inner(error) => {
                        ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error })
                    }
                    HoldError::NotAdmitted => return,
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(e) => {
                ConnectionEvent::FullyNegotiatedOutbound(e)
            }
            ConnectionEvent::DialUpgradeError(e) => ConnectionEvent::DialUpgradeError(e),
            ConnectionEvent::AddressChange(e) => ConnectionEvent::AddressChange(e),
            ConnectionEvent::LocalProtocolsChange(e) => ConnectionEvent::LocalProtocolsChange(e),
            ConnectionEvent::RemoteProtocolsChange(e) => ConnectionEvent::RemoteProtocolsChange(e),
            _ => return,
        };
        self.inner.on_connection_event(event);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use libp2p::swarm::{NewExternalAddrCandidate, dummy};

    use super::*;

    /// A behaviour that only listens: the candidates it was told of.
    #[derive(Default)]
    struct Heard(Vec<Multiaddr>);

    impl NetworkBehaviour for Heard {
        type ConnectionHandler = dummy::ConnectionHandler;
        type ToSwarm = ();

        fn handle_established_inbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }

        fn handle_established_outbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }

        fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
            if let FromSwarm::NewExternalAddrCandidate(c) = event {
                self.0.push(c.addr.clone());
            }
        }

        fn on_connection_handler_event(
            &mut self,
            _: PeerId,
            _: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            match event {}
        }

        fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
            Poll::Pending
        }
    }

    fn addr(i: u32) -> Multiaddr {
        format!("/ip4/10.{}.{}.1/udp/4001/quic-v1", i / 250, i % 250)
            .parse()
            .unwrap()
    }

    fn tell(b: &mut Gated<Heard>, a: &Multiaddr) {
        b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
            NewExternalAddrCandidate { addr: a },
        ));
    }

    #[test]
    fn only_candidates_admitted_devices_saw_are_heard_and_they_are_bounded() {
        let candidates = Arc::new(Candidates::default());
        let admitted = Arc::new(Admitted::default());
        let mut announcer =
            Gated::with_candidates(Heard::default(), admitted.clone(), candidates.clone(), true);
        let mut listener = Gated::with_candidates(
            Heard::default(),
            admitted.clone(),
            candidates.clone(),
            false,
        );
        let mut all = Gated::new(Heard::default(), admitted);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);

        // What strangers report is heard by neither, however many.
        for i in 0..1000 {
            tell(&mut announcer, &addr(i));
            tell(&mut listener, &addr(i));
            tell(&mut all, &addr(i));
        }
        assert!(announcer.inner.0.is_empty());
        assert!(listener.inner.0.is_empty());
        assert_eq!(
            all.inner.0.len(),
            1000,
            "ungated behaviours hear everything"
        );
        assert!(announcer.poll(&mut cx).is_pending());

        // An admitted device's report is announced once, then heard by both.
        let seen = addr(5000);
        candidates.vouch([seen.clone(), seen.clone()]);
        let Poll::Ready(ToSwarm::NewExternalAddrCandidate(announced)) = announcer.poll(&mut cx)
        else {
            panic!("the vouched candidate is announced");
        };
        assert_eq!(announced, seen);
        assert!(announcer.poll(&mut cx).is_pending(), "announced once");
        assert!(
            listener.poll(&mut cx).is_pending(),
            "only the announcer announces"
        );
        tell(&mut announcer, &seen);
        tell(&mut listener, &seen);
        assert_eq!(announcer.inner.0, vec![seen.clone()]);
        assert_eq!(listener.inner.0, vec![seen.clone()]);

        // The vouched set is bounded: the oldest is forgotten.
        candidates.vouch((0..100).map(|i| addr(10_000 + i)));
        let state = candidates.state.lock().unwrap();
        assert_eq!(state.vouched.len(), MAX_VOUCHED);
        assert!(state.pending.len() <= MAX_VOUCHED);
        drop(state);
        assert!(!candidates.allows(&seen));
        assert!(candidates.allows(&addr(10_099)));
    }
}
