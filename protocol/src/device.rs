//! Device certificates: capabilities that say "this node key is my device named N
//! with role R".

use crate::capability::{
    Actions, Capability, Chain, ChainError, Grant, Resource, RevocationSet, Role, SignError,
    Verifier,
};
use crate::key::{PublicKey, SecretKey};
use crate::time::UnixMillis;

/// A device admitted to the mesh, as its certificate states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device's name in the mesh.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its node key (its libp2p identity).
    pub node_key: PublicKey,
    /// When the certificate expires.
    pub expires: UnixMillis,
}

/// Why a device certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The chain itself is invalid.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The chain is valid but its leaf is not a device certificate.
    #[error("the capability is not a device certificate")]
    NotACertificate,
}

/// A device name: a valid name (see [`crate::capability::is_valid_name`]) that does
/// not look like a peer id (`12D3KooW…`, as every device's is), so that naming a
/// device by name or by peer id is never ambiguous.
pub fn is_valid_device_name(name: &str) -> bool {
    crate::capability::is_valid_name(name) && !name.starts_with("12D3KooW")
}

/// Issues a device certificate for `node_key`, signed by `issuer` (the owner, or an
/// admitter holding a `devices:admit` grant whose capability is `parent`).
#[allow(clippy::too_many_arguments)]
pub fn issue_certificate(
    issuer: &SecretKey,
    parent: Option<&Chain>,
    node_key: PublicKey,
    name: &str,
    role: Role,
    not_before: UnixMillis,
    expires: UnixMillis,
    nonce: [u8; 16],
) -> Result<Chain, SignError> {
    let signed = Capability {
        issuer: issuer.public(),
        audience: node_key,
        parent: parent.map(|p| p.leaf().id()),
        grants: vec![Grant::new(
            Resource::Device {
                name: name.to_owned(),
                role,
            },
            Actions::NONE,
        )],
        not_before,
        expires,
        nonce,
    }
    .sign(issuer)?;
    match parent {
        None => Ok(Chain::root(signed)),
        Some(parent) => parent
            .extend(signed)
            .map_err(|err| SignError::Invalid(err.to_string())),
    }
}

/// Verifies a device certificate chain and returns the device it certifies.
pub fn verify_certificate(
    verifier: &mut Verifier,
    chain: &Chain,
    now: UnixMillis,
    revocations: &RevocationSet,
) -> Result<Device, DeviceError> {
    let verified = verifier.verify(chain, now, revocations)?;
    let leaf = chain.leaf().capability();
    let (name, role) = leaf.device().ok_or(DeviceError::NotACertificate)?;
    Ok(Device {
        name: name.to_owned(),
        role,
        node_key: verified.holder,
        expires: verified.expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_name_never_looks_like_a_peer_id() {
        assert!(is_valid_device_name("phone"));
        assert!(is_valid_device_name("12D3-kitchen"));
        assert!(!is_valid_device_name(
            "12D3KooWLpTayT68pEiDcnNC2sY28khhikRhDMZYfn4QGuonTv9Z"
        ));
        assert!(!is_valid_device_name("12D3KooW"));
        assert!(!is_valid_device_name(""));
        assert!(!is_valid_device_name("two words"));
    }
}
