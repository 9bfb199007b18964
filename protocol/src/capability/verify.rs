//! Chain verification with a cache of chains whose signatures were already checked.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::{CapId, Chain, Grant, RevocationSet};
use crate::key::{PublicKey, Signature};
use crate::time::UnixMillis;

/// How a [`Verifier`] judges chains. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Longest chain accepted, root included. Default 5: owner → app → three delegations.
    pub max_depth: usize,
    /// Tolerance for clocks that disagree: a document is accepted from
    /// `not_before - skew` until `expires + skew`. Default 60 seconds.
    pub clock_skew: Duration,
    /// Chains whose signatures are remembered. Default 4096; 0 disables the cache.
    pub cache_capacity: usize,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            max_depth: 5,
            clock_skew: Duration::from_secs(60),
            cache_capacity: 4096,
        }
    }
}

impl VerifierConfig {
    /// Sets [`VerifierConfig::max_depth`].
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Sets [`VerifierConfig::clock_skew`].
    pub fn with_clock_skew(mut self, clock_skew: Duration) -> Self {
        self.clock_skew = clock_skew;
        self
    }

    /// Sets [`VerifierConfig::cache_capacity`].
    pub fn with_cache_capacity(mut self, cache_capacity: usize) -> Self {
        self.cache_capacity = cache_capacity;
        self
    }
}

/// The kind of a [`ChainError`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainErrorKind {
    /// Longer than the depth limit.
    TooDeep,
    /// The root is not signed by the mesh owner.
    WrongIssuer,
    /// A link does not name its predecessor or is not issued by its audience.
    BrokenLink,
    /// A link grants more than its parent.
    NotAttenuated,
    /// A link is not valid yet.
    NotYetValid,
    /// A link has expired.
    Expired,
    /// A link is revoked.
    Revoked,
    /// A signature does not verify.
    BadSignature,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// Longer than the depth limit.
    #[error("the capability chain has {depth} links, more than the limit of {max}")]
    TooDeep {
        /// Links in the chain.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// The root is not signed by the mesh owner.
    #[error("the capability is not issued by this mesh's owner (issued by {issuer})")]
    WrongIssuer {
        /// The root's issuer.
        issuer: String,
    },
    /// A link does not follow from the one before it.
    #[error("link {index} of the capability chain {reason}")]
    BrokenLink {
        /// Link position, root = 0.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A link grants more than its parent.
    #[error("link {index} of the capability chain grants more than its parent")]
    NotAttenuated {
        /// Link position, root = 0.
        index: usize,
    },
    /// A link is not valid yet.
    #[error("the capability (link {index}) is not valid before {not_before}")]
    NotYetValid {
        /// Link position, root = 0.
        index: usize,
        /// When it becomes valid.
        not_before: UnixMillis,
    },
    /// A link has expired.
    #[error("the capability (link {index}) expired at {expires}")]
    Expired {
        /// Link position, root = 0.
        index: usize,
        /// When it expired.
        expires: UnixMillis,
    },
    /// A link, its issuer or its holder is revoked.
    #[error("the capability (link {index}, {id}) is revoked")]
    Revoked {
        /// Link position, root = 0.
        index: usize,
        /// The link's id, short form.
        id: String,
    },
    /// A signature does not verify.
    #[error("the signature on link {index} of the capability chain is not valid")]
    BadSignature {
        /// Link position, root = 0.
        index: usize,
    },
}

impl ChainError {
    /// The kind of refusal.
    pub fn kind(&self) -> ChainErrorKind {
        match self {
            ChainError::TooDeep { .. } => ChainErrorKind::TooDeep,
            ChainError::WrongIssuer { .. } => ChainErrorKind::WrongIssuer,
            ChainError::BrokenLink { .. } => ChainErrorKind::BrokenLink,
            ChainError::NotAttenuated { .. } => ChainErrorKind::NotAttenuated,
            ChainError::NotYetValid { .. } => ChainErrorKind::NotYetValid,
            ChainError::Expired { .. } => ChainErrorKind::Expired,
            ChainError::Revoked { .. } => ChainErrorKind::Revoked,
            ChainError::BadSignature { .. } => ChainErrorKind::BadSignature,
        }
    }
}

/// What a valid chain establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The leaf's id: the capability the holder uses.
    pub leaf: CapId,
    /// The key that holds it and must sign invocations.
    pub holder: PublicKey,
    /// The leaf's grants; attenuation makes them the effective ones.
    pub grants: Vec<Grant>,
    /// Valid from (the leaf's not-before; it lies inside every ancestor's window).
    pub not_before: UnixMillis,
    /// Valid until (the leaf's expiry).
    pub expires: UnixMillis,
    /// Number of links.
    pub depth: usize,
}

/// A chain whose structure and signatures were checked: only time and revocation
/// remain to be checked on a later use.
#[derive(Debug)]
struct CachedChain {
    ids: Vec<CapId>,
    signatures: Vec<Signature>,
}

/// Verifies capability chains for one mesh. Holds a bounded cache so that the
/// signatures of a chain seen before are not verified again.
///
/// ```
/// use hearth_protocol::capability::{Actions, Capability, Chain, Grant, Resource, RevocationSet, Verifier, VerifierConfig};
/// use hearth_protocol::key::{HolderKey, OwnerKey};
/// use hearth_protocol::time::UnixMillis;
///
/// let owner = OwnerKey::from_seed([1; 32]);
/// let app = HolderKey::from_seed([2; 32]);
/// let root = Capability {
///     issuer: owner.public(),
///     audience: app.public(),
///     parent: None,
///     grants: vec![Grant::new(Resource::Store("location".into()), Actions::READ)],
///     not_before: UnixMillis(0),
///     expires: UnixMillis(10_000),
///     nonce: [0; 16],
/// }
/// .sign(owner.secret())?;
/// let mut verifier = Verifier::new(owner.public(), VerifierConfig::default());
/// let verified = verifier.verify(&Chain::root(root), UnixMillis(5_000), &RevocationSet::new(owner.public()))?;
/// assert_eq!(verified.holder, app.public());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Verifier {
    owner: PublicKey,
    config: VerifierConfig,
    cache: HashMap<CapId, CachedChain>,
    order: VecDeque<CapId>,
}

impl Verifier {
    /// A verifier for the mesh whose owner key is `owner`.
    pub fn new(owner: PublicKey, config: VerifierConfig) -> Self {
        Self {
            owner,
            config,
            cache: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The mesh owner's key.
    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Checks `chain` at instant `now` against `revocations`.
    ///
    /// Checks, in order: depth, root issuer, links (parent id, issuer = previous
    /// audience), attenuation, signatures (skipped when the same chain verified
    /// before), then time windows and revocation (always).
    pub fn verify(
        &mut self,
        chain: &Chain,
        now: UnixMillis,
        revocations: &RevocationSet,
    ) -> Result<VerifiedChain, ChainError> {
        let links = chain.links();
        let depth = links.len();
        if depth > self.config.max_depth {
            return Err(ChainError::TooDeep {
                depth,
                max: self.config.max_depth,
            });
        }
        let leaf = chain.leaf();
        if !self.is_cached(chain) {
            self.check_structure(chain)?;
            self.remember(chain);
        }
        self.check_time(chain, now)?;
        if let Some(index) = revocations.revoked_link(chain) {
            let id = links.get(index).map(|l| l.id().short()).unwrap_or_default();
            return Err(ChainError::Revoked { index, id });
        }
        let capability = leaf.capability();
        Ok(VerifiedChain {
            leaf: leaf.id(),
            holder: capability.audience,
            grants: capability.grants.clone(),
            not_before: capability.not_before,
            expires: capability.expires,
            depth,
        })
    }

    fn is_cached(&self, chain: &Chain) -> bool {
        let leaf = chain.leaf();
        match self.cache.get(&leaf.id()) {
            Some(cached) => {
                cached.ids.len() == chain.links().len()
                    && chain
                        .links()
                        .iter()
                        .zip(cached.ids.iter().zip(&cached.signatures))
                        .all(|(link, (id, sig))| link.id() == *id && link.signature() == sig)
            }
            None => false,
        }
    }

    fn remember(&mut self, chain: &Chain) {
        if self.config.cache_capacity == 0 {
            return;
        }
        let leaf = chain.leaf().id();
        if self.cache.contains_key(&leaf) {
            // Same leaf id, different signatures: keep the entry that was stored first.
            return;
        }
        while self.cache.len() >= self.config.cache_capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.cache.remove(&oldest);
                }
                None => break,
            }
        }
        self.cache.insert(
            leaf,
            CachedChain {
                ids: chain.links().iter().map(|l| l.id()).collect(),
                signatures: chain.links().iter().map(|l| *l.signature()).collect(),
            },
        );
        self.order.push_back(leaf);
    }

    fn check_structure(&self, chain: &Chain) -> Result<(), ChainError> {
        let links = chain.links();
        let root = chain.root_link().capability();
        if root.issuer != self.owner {
            return Err(ChainError::WrongIssuer {
                issuer: root.issuer.short(),
            });
        }
        if root.parent.is_some() {
            return Err(ChainError::BrokenLink {
                index: 0,
                reason: "names a parent but is presented as the root",
            });
        }
        for (index, pair) in links.windows(2).enumerate() {
            let [parent, child] = pair else { continue };
            let index = index + 1;
            let (p, c) = (parent.capability(), child.capability());
            if c.parent != Some(parent.id()) {
                return Err(ChainError::BrokenLink {
                    index,
                    reason: "does not name the link before it as its parent",
                });
            }
            if c.issuer != p.audience {
                return Err(ChainError::BrokenLink {
                    index,
                    reason: "is not issued by the holder of the link before it",
                });
            }
            // A device certificate says "this key is my device"; passed on to another
            // key it would make a second device of the same name (a clone).
            if p.device().is_some() {
                return Err(ChainError::BrokenLink {
                    index,
                    reason: "delegates a device certificate, which cannot be delegated",
                });
            }
            if !c.within(p) {
                return Err(ChainError::NotAttenuated { index });
            }
        }
        for (index, link) in links.iter().enumerate() {
            if !link.signature_is_valid() {
                return Err(ChainError::BadSignature { index });
            }
        }
        Ok(())
    }

    fn check_time(&self, chain: &Chain, now: UnixMillis) -> Result<(), ChainError> {
        for (index, link) in chain.links().iter().enumerate() {
            let c = link.capability();
            if now < c.not_before.saturating_sub(self.config.clock_skew) {
                return Err(ChainError::NotYetValid {
                    index,
                    not_before: c.not_before,
                });
            }
            if now >= c.expires.saturating_add(self.config.clock_skew) {
                return Err(ChainError::Expired {
                    index,
                    expires: c.expires,
                });
            }
        }
        Ok(())
    }
}
