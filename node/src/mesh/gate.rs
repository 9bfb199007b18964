//! Nothing but admission before admission: the mesh protocols (membership, sync,
//! compute) are wrapped so that a stream a peer opens on one of them is held, unread,
//! until that peer is admitted, and closed if it is not admitted in time. A peer that
//! is never admitted never gets a byte of such a stream read, so it cannot make the
//! node buffer requests it would only throw away.
//!
//! The hold (rather than refusing the protocol outright) covers the moment right after
//! admission: the side that admits first starts talking at once, and its first stream
//! may reach the other side a moment before that side has read the admission answer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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

/// A behaviour whose inbound streams wait for their peer's admission.
pub(crate) struct Gated<B> {
    inner: B,
    admitted: Arc<Admitted>,
}

impl<B> Gated<B> {
    pub(crate) fn new(inner: B, admitted: Arc<Admitted>) -> Self {
        Self { inner, admitted }
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
