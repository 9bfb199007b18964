//! What can go wrong in the mesh, for its callers.

/// Why the mesh could not start or a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The transport could not be set up.
    #[error("cannot start the mesh: {0}")]
    Start(String),
    /// An address could not be listened on.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The mesh loop has stopped.
    #[error("the mesh has stopped")]
    Stopped,
    /// This node cannot invite (no owner key).
    #[error(
        "this device cannot admit new devices: it holds neither the owner key nor a devices:admit capability"
    )]
    CannotAdmit,
    /// The node has no address to put in a ticket yet (it is still starting to listen).
    #[error("this node is not listening on any address yet; try again in a moment")]
    NotListening,
    /// Pairing failed.
    #[error("{0}")]
    Join(String),
    /// No device has that name.
    #[error("no device is named {0:?}")]
    NoSuchDevice(String),
    /// That device is not connected now.
    #[error("device {0:?} is not connected")]
    NotConnected(String),
    /// Only the owner key can do this.
    #[error("only the device holding the owner key can {0}")]
    NotOwner(&'static str),
    /// The owner key could not sign.
    #[error("cannot sign: {0}")]
    Sign(String),
    /// The change was made but its audit entry could not be written.
    #[error(
        "the change was made but its audit entry cannot be written ({0}); fix the disk \
         and check `hearth audit verify`"
    )]
    Unaudited(String),
    /// A change of the membership was made but could not be stored on this device.
    #[error(
        "the change was made but cannot be stored here ({0}); it holds until this node \
         stops and reaches the devices connected now. Free the disk or fix the data \
         directory, then do it again"
    )]
    Unsaved(String),
    /// A device of that name exists already.
    #[error("the mesh already has a device named {0:?}: choose another name")]
    NameTaken(String),
    /// More than one device has that name.
    #[error("{name:?} names more than one device ({peers}); name the one you mean by its peer id")]
    Ambiguous {
        /// The name.
        name: String,
        /// Their peer ids.
        peers: String,
    },
    /// An address for an invitation that a new device could not dial.
    #[error("invalid address for the ticket: {0}")]
    BadAddress(String),
    /// A `devices:admit` scope that names nothing.
    #[error("invalid admit scope: {0}")]
    BadScope(String),
    /// The device's certificate no longer holds, so there is nothing to approve.
    #[error("{0:?} cannot be approved: its certificate no longer holds ({1}); invite it again")]
    NotApprovable(String, String),
    /// This device would revoke itself.
    #[error(
        "{0:?} is this device: revoke it from another device of the mesh (the owner key can move with `hearth init --recover`)"
    )]
    RevokeSelf(String),
}
