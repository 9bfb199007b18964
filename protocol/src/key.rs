//! Keys: the owner key (root of a mesh's authority), node keys (one per device,
//! its libp2p identity) and holder keys (developers and apps).
//!
//! All three are ed25519. Secret keys zeroize on drop and print as
//! `SecretKey(..)`; public keys print in full hex with [`PublicKey::short`] for logs.
//! Generation takes its randomness as an argument: this crate draws none of its own.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::encoding::DecodeError;

/// Length of an ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// An ed25519 public key.
///
/// Held as its 32 bytes: decoding a document does not pay for point decompression,
/// which happens only when a signature is checked (an invalid point never verifies).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Wraps 32 bytes. Whether they are a valid point is checked when verifying, or
    /// up front with [`PublicKey::is_valid_point`].
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Are the bytes a valid ed25519 point?
    pub fn is_valid_point(&self) -> bool {
        VerifyingKey::from_bytes(&self.0).is_ok()
    }

    /// The X25519 public key of this ed25519 key (its Montgomery form), or None if it
    /// is not a valid point.
    pub(crate) fn x25519(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(|k| k.to_montgomery().to_bytes())
    }

    /// The first ten hex digits, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..5])
    }

    /// Checks `signature` over `message` with strict ed25519 rules (no small-order
    /// keys, no malleable signatures). An invalid point never verifies.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).is_ok()
    }

    /// The libp2p PeerId of a node with this key, in its usual base58 text form.
    pub fn peer_id(&self) -> String {
        // Identity multihash (0x00, length 36) of the protobuf-encoded public key
        // (field 1 = KeyType Ed25519 (1), field 2 = 32 key bytes).
        let mut bytes = Vec::with_capacity(38);
        bytes.extend_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        bytes.extend_from_slice(self.as_bytes());
        bs58::encode(bytes).into_string()
    }

    /// A short stable identifier of the mesh whose owner has this key.
    pub fn mesh_id(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"hearth/v1/mesh-id");
        hasher.update(self.as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        hex::encode(&digest[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = DecodeError;

    /// Parses the 64 hex digits that [`Display`](fmt::Display) prints.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| DecodeError::BadText {
            what: "public key",
            reason: format!(
                "expected {} hex digits, got {:?}",
                PUBLIC_KEY_LEN * 2,
                truncate_for_message(s)
            ),
        })?;
        let key = Self(bytes);
        if !key.is_valid_point() {
            return Err(DecodeError::BadKey { what: "public key" });
        }
        Ok(key)
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub(crate) [u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps 64 raw bytes.
    pub fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Self(bytes)
    }

    /// The 64 raw bytes.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..4]))
    }
}

/// An ed25519 secret key. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// The key whose 32-byte seed is `seed` (take it from a CSPRNG).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        Self(SigningKey::from_bytes(&seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }

    /// The X25519 secret matching [`PublicKey::x25519`] (the key sealed stores' keys
    /// are wrapped to; see `crate::sealed`).
    pub(crate) fn x25519(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_scalar_bytes())
    }

    fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// What a secret key is for. Stored in key files so one kind is never loaded as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// The mesh owner's root key.
    Owner,
    /// A device's own key (its libp2p identity).
    Node,
    /// A developer's or app's key that holds capabilities.
    Holder,
}

impl KeyRole {
    /// The word used in key files.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Owner => "owner",
            KeyRole::Node => "node",
            KeyRole::Holder => "holder",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(KeyRole::Owner),
            "node" => Some(KeyRole::Node),
            "holder" => Some(KeyRole::Holder),
            _ => None,
        }
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! role_key {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name(SecretKey);

        impl $name {
            /// The role written into this key's file.
            pub const ROLE: KeyRole = $role;

            /// The key whose 32-byte seed is `seed` (take it from a CSPRNG).
            pub fn from_seed(seed: [u8; 32]) -> Self {
                Self(SecretKey::from_seed(seed))
            }

            /// The matching public key.
            pub fn public(&self) -> PublicKey {
                self.0.public()
            }

            /// The underlying secret key, for signing.
            pub fn secret(&self) -> &SecretKey {
                &self.0
            }

            /// The key file text: a comment line and the role-tagged key.
            pub fn to_file_text(&self) -> Zeroizing<String> {
                key_file_text(Self::ROLE, &self.0)
            }

            /// Parses key file text, refusing a key of another role.
            pub fn from_file_text(text: &str) -> Result<Self, KeyFileError> {
                parse_key_file(text, Self::ROLE).map(Self)
            }

            /// Reads a key file.
            pub fn read(path: &Path) -> Result<Self, KeyFileError> {
                let text = read_secret_file(path)?;
                Self::from_file_text(&text)
            }

            /// Writes a new key file with mode 0600; refuses to replace an existing file.
            pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
                write_secret_file(path, self.to_file_text().as_bytes())
            }
        }
    };
}

role_key!(
    /// The mesh owner's key: signs device certificates, root capabilities and revocations.
    OwnerKey,
    KeyRole::Owner
);
role_key!(
    /// A device's own key; its public half is the node's libp2p identity.
    NodeKey,
    KeyRole::Node
);
role_key!(
    /// A developer's or app's key: the audience of capabilities, signs invocations.
    HolderKey,
    KeyRole::Holder
);

impl NodeKey {
    /// The 32-byte seed, for building the node's libp2p identity.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        self.0.seed()
    }
}

impl OwnerKey {
    /// The 24-word BIP-39 English recovery phrase that encodes this key's seed.
    pub fn recovery_phrase(&self) -> Zeroizing<String> {
        let seed = self.0.seed();
        // 32 bytes of entropy is always a valid BIP-39 length.
        let phrase = match bip39::Mnemonic::from_entropy(seed.as_slice()) {
            Ok(mnemonic) => mnemonic.to_string(),
            Err(_) => String::new(),
        };
        Zeroizing::new(phrase)
    }

    /// Restores an owner key from its recovery phrase (case and spacing are forgiven).
    pub fn from_recovery_phrase(phrase: &str) -> Result<Self, RecoveryPhraseError> {
        let normalized = Zeroizing::new(
            phrase
                .split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" "),
        );
        let words = normalized.split(' ').filter(|w| !w.is_empty()).count();
        if words != 24 {
            return Err(RecoveryPhraseError::WordCount { found: words });
        }
        let mnemonic = bip39::Mnemonic::parse_in(bip39::Language::English, normalized.as_str())
            .map_err(|err| RecoveryPhraseError::Invalid {
                reason: err.to_string(),
            })?;
        let entropy = Zeroizing::new(mnemonic.to_entropy());
        let seed: [u8; 32] = entropy
            .as_slice()
            .try_into()
            .map_err(|_| RecoveryPhraseError::WordCount { found: words })?;
        Ok(Self::from_seed(seed))
    }
}

/// Why a recovery phrase was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryPhraseError {
    /// The phrase does not have 24 words.
    #[error("a recovery phrase has 24 words, this one has {found}")]
    WordCount {
        /// Words found.
        found: usize,
    },
    /// A word is unknown or the checksum does not match.
    #[error("the recovery phrase is not valid: {reason}")]
    Invalid {
        /// What the BIP-39 decoder said.
        reason: String,
    },
}

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file does not exist.
    #[error("key file {path} does not exist")]
    NotFound {
        /// The path.
        path: String,
    },
    /// The file exists already and was left alone.
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists {
        /// The path.
        path: String,
    },
    /// Reading or writing failed.
    #[error("cannot access key file {path}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a Hearth key file.
    #[error("not a Hearth key file: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The file holds a key of another role.
    #[error("this is a {found} key, but a {expected} key is needed")]
    WrongRole {
        /// The role needed.
        expected: KeyRole,
        /// The role in the file.
        found: KeyRole,
    },
}

const KEY_LINE_PREFIX: &str = "hearth-secret-key:";

fn key_file_text(role: KeyRole, key: &SecretKey) -> Zeroizing<String> {
    let seed = key.seed();
    let hex_seed = Zeroizing::new(hex::encode(seed.as_slice()));
    Zeroizing::new(format!(
        "# Hearth {role} secret key (public key {public}). Keep this file private.\n{KEY_LINE_PREFIX}{role}:{hex}\n",
        public = key.public(),
        hex = hex_seed.as_str(),
    ))
}

fn parse_key_file(text: &str, expected: KeyRole) -> Result<SecretKey, KeyFileError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    let line = lines.next().ok_or_else(|| KeyFileError::Malformed {
        reason: "the file has no key line".into(),
    })?;
    if lines.next().is_some() {
        return Err(KeyFileError::Malformed {
            reason: "the file has more than one key line".into(),
        });
    }
    let rest = line
        .strip_prefix(KEY_LINE_PREFIX)
        .ok_or_else(|| KeyFileError::Malformed {
            reason: format!("the key line does not start with {KEY_LINE_PREFIX:?}"),
        })?;
    let (role, hex_seed) = rest
        .split_once(':')
        .ok_or_else(|| KeyFileError::Malformed {
            reason: "the key line has no role".into(),
        })?;
    let found = KeyRole::parse(role).ok_or_else(|| KeyFileError::Malformed {
        reason: format!("unknown key role {:?}", truncate_for_message(role)),
    })?;
    if found != expected {
        return Err(KeyFileError::WrongRole { expected, found });
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_seed, seed.as_mut_slice()).map_err(|_| KeyFileError::Malformed {
        reason: "the key is not 64 hex digits".into(),
    })?;
    Ok(SecretKey::from_seed(*seed))
}

/// Reads a file that holds secret material, keeping the text zeroized.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(KeyFileError::NotFound {
            path: path.display().to_string(),
        }),
        Err(source) => Err(KeyFileError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Creates `path` with mode 0600 (owner read and write only) and writes `contents`,
/// refusing to replace an existing file. The file and its directory are synced before
/// returning.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    use std::io::Write as _;
    let io = |source: std::io::Error| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeyFileError::Exists {
                path: path.display().to_string(),
            });
        }
        Err(err) => return Err(io(err)),
    };
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    crate::statefile::sync_parent(path).map_err(io)
}

pub(crate) fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_never_print() {
        let key = OwnerKey::from_seed([7; 32]);
        let printed = format!("{key:?} {:?}", key.secret());
        assert!(!printed.contains(&hex::encode([7u8; 32])));
        assert!(printed.contains("SecretKey(..)"));
    }

    #[test]
    fn key_file_round_trip_and_role_check() {
        let key = HolderKey::from_seed([1; 32]);
        let text = key.to_file_text();
        let back = HolderKey::from_file_text(&text).unwrap();
        assert_eq!(back.public(), key.public());
        let err = OwnerKey::from_file_text(&text).unwrap_err();
        assert!(matches!(
            err,
            KeyFileError::WrongRole {
                expected: KeyRole::Owner,
                found: KeyRole::Holder
            }
        ));
        assert!(matches!(
            HolderKey::from_file_text("hello"),
            Err(KeyFileError::Malformed { .. })
        ));
    }

    #[test]
    fn key_files_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = NodeKey::from_seed([2; 32]);
        key.write_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&path).unwrap();
        let other = NodeKey::from_seed([3; 32]);
        assert!(matches!(
            other.write_new(&path),
            Err(KeyFileError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(NodeKey::read(&path).unwrap().public(), key.public());
    }

    #[test]
    fn recovery_phrase_round_trip() {
        let key = OwnerKey::from_seed([9; 32]);
        let phrase = key.recovery_phrase();
        assert_eq!(phrase.split(' ').count(), 24);
        let shouty = format!("  {}  ", phrase.to_uppercase().replace(' ', "   "));
        let back = OwnerKey::from_recovery_phrase(&shouty).unwrap();
        assert_eq!(back.public(), key.public());
        // One wrong word breaks the checksum (or the word list).
        let mut words: Vec<&str> = phrase.split(' ').collect();
        words[3] = if words[3] == "abandon" {
            "ability"
        } else {
            "abandon"
        };
        assert!(OwnerKey::from_recovery_phrase(&words.join(" ")).is_err());
        assert!(matches!(
            OwnerKey::from_recovery_phrase("abandon abandon"),
            Err(RecoveryPhraseError::WordCount { found: 2 })
        ));
    }

    #[test]
    fn public_key_text_round_trip() {
        let key = HolderKey::from_seed([4; 32]).public();
        let parsed: PublicKey = key.to_string().parse().unwrap();
        assert_eq!(parsed, key);
        assert!("zz".parse::<PublicKey>().is_err());
    }

    #[test]
    fn peer_id_has_libp2p_shape() {
        // Ed25519 PeerIds are identity multihashes; in base58 they begin "12D3KooW".
        let id = NodeKey::from_seed([5; 32]).public().peer_id();
        assert!(id.starts_with("12D3KooW"), "{id}");
        assert_eq!(id.len(), 52);
    }
}
