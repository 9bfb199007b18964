//! Exports: the one way data leaves a mesh. This module holds the rules every node
//! applies to a destination before sending to it, and the signature each request
//! carries so that the destination can check which device of which mesh sent it.
//!
//! ```text
//! signed   "hearth/v1/export" || export id(16) || str source || str destination
//!          || sha256(body)(32)
//! header   Hearth-Signature: v1; node=<64 hex>; export=<32 hex>; source=<source>; sig=<base64url>
//! ```
//!
//! `source` names what produced the body: `job:<32 hex>` (the job id its receipt
//! names) or `app:<name>@<deployed>#<run>` (a continuous app's run).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::capability::MAX_DESTINATION_LEN;
use crate::encoding::Writer;
use crate::key::{PublicKey, SecretKey, Signature};

/// What an export's signature covers: this, then the fields above.
const SIGNATURE_DOMAIN: &[u8] = b"hearth/v1/export";
/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Hearth-Signature";
/// Longest `source` a signature names.
pub const MAX_SOURCE_LEN: usize = 200;

/// Whether a destination is sent to over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTPS, the only scheme for a destination that is not this machine.
    Https,
    /// Plain HTTP: only to a loopback address, only when the node's config allows it.
    Http,
}

/// The host part of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, in lower case.
    Name(String),
    /// An address written literally (IPv6 in brackets in the URL).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
        }
    }
}

/// A destination URL taken apart: what the gateway connects to and asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// HTTPS or HTTP.
    pub scheme: Scheme,
    /// The host.
    pub host: Host,
    /// The port (443 or 80 when the URL names none).
    pub port: u16,
    /// The path and query, starting with `/`.
    pub target: String,
    /// `host` or `host:port`, as the URL writes it (the Host header).
    pub authority: String,
}

/// Why a URL is not a destination the gateway sends to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DestinationError(String);

fn bad(reason: impl Into<String>) -> DestinationError {
    DestinationError(reason.into())
}

/// Is `label` a DNS label of lower-case letters, digits and inner hyphens?
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_host(text: &str) -> Result<Host, DestinationError> {
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| bad("an IPv6 address in a URL is written in brackets"))?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| bad(format!("{inner:?} is not an IPv6 address")))?;
        return Ok(Host::Ip(IpAddr::V6(ip)));
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Only the canonical dotted quad: `127.1` or `0177.0.0.1` would name an
        // address the grant does not spell.
        let ip: Ipv4Addr = text
            .parse()
            .map_err(|_| bad(format!("{text:?} is not an IPv4 address")))?;
        if ip.to_string() != text {
            return Err(bad(format!("{text:?} is not written as {ip}")));
        }
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    if text.len() > 253 || !text.split('.').all(valid_label) {
        return Err(bad(format!(
            "{text:?} is not a host name (lower-case letters, digits, '-' and '.')"
        )));
    }
    Ok(Host::Name(text.to_owned()))
}

/// Checks the path and query: printable ASCII, `%` followed by two hex digits, no
/// `.` or `..` segments (spelled out or percent-encoded), no backslash or fragment.
fn check_target(target: &str) -> Result<(), DestinationError> {
    if target.contains('#') || target.contains('\\') {
        return Err(bad("a destination has no fragment ('#') and no backslash"));
    }
    let bytes = target.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex_ok = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !hex_ok {
                return Err(bad("a '%' in a destination is followed by two hex digits"));
            }
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
        return Err(bad(
            "a destination's path has no percent-encoded '.', '/' or '\\'",
        ));
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(bad("a destination's path has no '.' or '..' segments"));
    }
    Ok(())
}

impl Destination {
    /// Takes an `https://` (or `http://`) URL apart, refusing anything that could be
    /// read two ways: user info, fragments, dot segments, a non-canonical address,
    /// upper-case or non-ASCII host names.
    pub fn parse(url: &str) -> Result<Self, DestinationError> {
        if url.len() > MAX_DESTINATION_LEN {
            return Err(bad(format!(
                "a destination is at most {MAX_DESTINATION_LEN} bytes"
            )));
        }
        if !url.bytes().all(|b| b.is_ascii_graphic()) || url.contains('*') {
            return Err(bad(
                "a destination is printable ASCII with no spaces and no '*'",
            ));
        }
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(bad("a destination starts with https:// (or http://)"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("a destination names no user or password"));
        }
        let (host, port) = match authority.rfind(':') {
            Some(colon) if !authority.ends_with(']') => {
                let (host, port) = authority.split_at(colon);
                let port = port.get(1..).unwrap_or("");
                let valid = !port.is_empty()
                    && port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && !port.starts_with('0');
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|_| valid)
                    .ok_or_else(|| bad(format!("{port:?} is not a port number")))?;
                (host, port)
            }
            _ => (
                authority,
                match scheme {
                    Scheme::Https => 443,
                    Scheme::Http => 80,
                },
            ),
        };
        let host = parse_host(host)?;
        check_target(target)?;
        let target = if target.starts_with('/') {
            target.to_owned()
        } else {
            format!("/{target}")
        };
        Ok(Self {
            scheme,
            host,
            port,
            target,
            authority: authority.to_owned(),
        })
    }
}

/// Does an `export:` grant's `pattern` allow sending to `url`? Exactly equal, or, for
/// a pattern ending in `*`, `url` starts with the rest. A prefix must name the whole
/// scheme, host and port and at least the `/` that starts the path, so that
/// `https://example.org*` cannot stretch to `https://example.org.evil.net/`.
pub fn grant_allows(pattern: &str, url: &str) -> bool {
    if Destination::parse(url).is_err() {
        return false;
    }
    match pattern.strip_suffix('*') {
        None => pattern == url,
        Some(prefix) => check_pattern(pattern).is_ok() && url.starts_with(prefix),
    }
}

/// Checks an `export:` grant's destination: a URL the gateway can send to, or a
/// prefix ending in `*` that names the scheme, host, port and the `/` that starts
/// the path.
pub fn check_pattern(pattern: &str) -> Result<(), DestinationError> {
    let Some(prefix) = pattern.strip_suffix('*') else {
        return Destination::parse(pattern).map(|_| ());
    };
    Destination::parse(prefix)?;
    let after_scheme = prefix
        .strip_prefix("https://")
        .or_else(|| prefix.strip_prefix("http://"))
        .unwrap_or("");
    if after_scheme.contains('/') {
        Ok(())
    } else {
        Err(bad(
            "a destination ending in `*` names the host and the `/` that starts the path, \
             e.g. https://example.org/reports/*",
        ))
    }
}

/// An export's identity: random, and the idempotency key the destination sees.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExportId(pub [u8; 16]);

impl fmt::Display for ExportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ExportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExportId({self})")
    }
}

impl std::str::FromStr for ExportId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| "an export id is 32 hex digits".to_owned())?;
        Ok(Self(out))
    }
}

/// SHA-256 of an export's body.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The signature a node puts on every export it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSignature {
    /// The sending device's node key (its device certificate names it).
    pub node: PublicKey,
    /// The export.
    pub export: ExportId,
    /// What produced the body: `job:<id>` or `app:<name>@<deployed>#<run>`.
    pub source: String,
    /// The node key's signature.
    pub signature: Signature,
}

/// Why an export signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportSignatureError {
    /// The header is not in the form this module writes.
    #[error("the {SIGNATURE_HEADER} header is malformed: {0}")]
    Malformed(String),
    /// The signature does not match the body, destination or key.
    #[error(
        "the signature does not match: the body, the destination or the node key differ from what was signed"
    )]
    BadSignature,
    /// The certificate is not a valid device certificate of the owner's mesh.
    #[error("the Hearth-Certificate is not a device certificate of this mesh: {0}")]
    Certificate(String),
    /// Signed by another key than the one expected.
    #[error("the export was signed by node key {found}, not {expected}")]
    WrongNode {
        /// The key the header names.
        found: String,
        /// The key the verifier expected.
        expected: String,
    },
}

fn signing_message(export: &ExportId, source: &str, destination: &str, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(128 + destination.len());
    w.raw(SIGNATURE_DOMAIN);
    w.raw(&export.0);
    w.str(source);
    w.str(destination);
    w.raw(&body_hash(body));
    w.into_bytes()
}

/// Is `source` a `job:` or `app:` source of printable ASCII without `;`?
fn valid_source(source: &str) -> bool {
    source.len() <= MAX_SOURCE_LEN
        && (source.starts_with("job:") || source.starts_with("app:"))
        && source.bytes().all(|b| b.is_ascii_graphic() && b != b';')
}

impl ExportSignature {
    /// Signs `body` for `destination` with the node key.
    pub fn sign(
        key: &SecretKey,
        export: ExportId,
        source: &str,
        destination: &str,
        body: &[u8],
    ) -> Self {
        Self {
            node: key.public(),
            export,
            source: source.to_owned(),
            signature: key.sign(&signing_message(&export, source, destination, body)),
        }
    }

    /// The header's value.
    pub fn to_header(&self) -> String {
        format!(
            "v1; node={}; export={}; source={}; sig={}",
            self.node,
            self.export,
            self.source,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.signature.to_bytes())
        )
    }

    /// Reads a header's value (it does not verify it).
    pub fn parse_header(value: &str) -> Result<Self, ExportSignatureError> {
        let malformed = |why: &str| ExportSignatureError::Malformed(why.to_owned());
        let mut parts = value.trim().split(';').map(str::trim);
        if parts.next() != Some("v1") {
            return Err(malformed("it does not start with `v1`"));
        }
        let (mut node, mut export, mut source, mut sig) = (None, None, None, None);
        for part in parts {
            let (key, val) = part
                .split_once('=')
                .ok_or_else(|| malformed("a part is not key=value"))?;
            let slot = match key {
                "node" => &mut node,
                "export" => &mut export,
                "source" => &mut source,
                "sig" => &mut sig,
                _ => return Err(malformed("it has an unknown part")),
            };
            if slot.replace(val).is_some() {
                return Err(malformed("a part appears twice"));
            }
        }
        let node: PublicKey = node
            .ok_or_else(|| malformed("`node` is missing"))?
            .parse()
            .map_err(|_| malformed("`node` is not 64 hex digits"))?;
        let export: ExportId = export
            .ok_or_else(|| malformed("`export` is missing"))?
            .parse()
            .map_err(|_| malformed("`export` is not 32 hex digits"))?;
        let source = source.ok_or_else(|| malformed("`source` is missing"))?;
        if !valid_source(source) {
            return Err(malformed("`source` is not job:… or app:…"));
        }
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig.ok_or_else(|| malformed("`sig` is missing"))?)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or_else(|| malformed("`sig` is not 64 bytes of base64url"))?;
        Ok(Self {
            node,
            export,
            source: source.to_owned(),
            signature: Signature::from_bytes(sig),
        })
    }

    /// Checks that `node` signed `body` for `destination` (the URL the request was
    /// sent to, as the grant names it).
    pub fn verify(
        &self,
        node: &PublicKey,
        destination: &str,
        body: &[u8],
    ) -> Result<(), ExportSignatureError> {
        if self.node != *node {
            return Err(ExportSignatureError::WrongNode {
                found: self.node.to_string(),
                expected: node.to_string(),
            });
        }
        let message = signing_message(&self.export, &self.source, destination, body);
        if self.node.verify(&message, &self.signature) {
            Ok(())
        } else {
            Err(ExportSignatureError::BadSignature)
        }
    }
}

/// The header that carries the sending device's certificate (a capability chain in
/// text form, `hcap1:…`).
pub const CERTIFICATE_HEADER: &str = "Hearth-Certificate";

/// Checks a received export completely, offline: the `Hearth-Certificate` is a device
/// certificate of the mesh owned by `owner` (valid at `now`), and that device's node
/// key signed `body` for `destination` (`Hearth-Signature`). Returns the signature
/// and the device.
pub fn verify_received(
    owner: &PublicKey,
    certificate: &str,
    signature: &str,
    destination: &str,
    body: &[u8],
    now: crate::time::UnixMillis,
) -> Result<(ExportSignature, crate::device::Device), ExportSignatureError> {
    let chain = crate::capability::Chain::from_text(certificate.trim())
        .map_err(|err| ExportSignatureError::Certificate(err.to_string()))?;
    let mut verifier = crate::capability::Verifier::new(*owner, Default::default());
    let device = crate::device::verify_certificate(
        &mut verifier,
        &chain,
        now,
        &crate::capability::RevocationSet::new(*owner),
    )
    .map_err(|err| ExportSignatureError::Certificate(err.to_string()))?;
    let parsed = ExportSignature::parse_header(signature)?;
    parsed.verify(&device.node_key, destination, body)?;
    Ok((parsed, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::NodeKey;

    #[test]
    fn destinations_are_taken_apart_one_way() {
        let d = Destination::parse("https://study.example.org/submit?v=1").unwrap();
        assert_eq!(d.scheme, Scheme::Https);
        assert_eq!(d.host, Host::Name("study.example.org".into()));
        assert_eq!((d.port, d.target.as_str()), (443, "/submit?v=1"));
        let d = Destination::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(d.host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!((d.port, d.target.as_str()), (8080, "/"));
        let d = Destination::parse("https://[::1]:9/x").unwrap();
        assert_eq!((d.authority.as_str(), d.port), ("[::1]:9", 9));
        for url in [
            "ftp://example.org/",
            "https://user@example.org/",
            "https://Example.org/",
            "https://example.org/a/../admin",
            "https://example.org/a/%2e%2e/admin",
            "https://example.org/a#frag",
            "https://example.org:0/",
            "https://example.org:080/",
            "https://example.org:99999/",
            "https://127.1/",
            "https://0177.0.0.1/",
            "https://exa mple.org/",
            "https://exämple.org/",
            "https://example.org/a\\b",
            "https://example.org/%zz",
            "https:///path",
        ] {
            assert!(Destination::parse(url).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn a_grant_matches_exactly_or_by_a_prefix_that_names_the_host() {
        let exact = "https://study.example.org/submit";
        assert!(grant_allows(exact, exact));
        assert!(!grant_allows(exact, "https://study.example.org/submit2"));
        assert!(!grant_allows(exact, "https://study.example.org:443/submit"));
        assert!(!grant_allows(exact, "http://study.example.org/submit"));
        let prefix = "https://study.example.org/up/*";
        assert!(grant_allows(prefix, "https://study.example.org/up/week-1"));
        assert!(!grant_allows(
            prefix,
            "https://study.example.org/up/../admin"
        ));
        assert!(!grant_allows(prefix, "https://study.example.org/upload"));
        // A prefix without a path could stretch to another host: it allows nothing.
        let loose = "https://study.example.org*";
        assert!(!grant_allows(loose, "https://study.example.org/x"));
        assert!(!grant_allows(loose, "https://study.example.org.evil.net/x"));
    }

    #[test]
    fn a_signature_verifies_for_its_body_only() {
        let key = NodeKey::from_seed([7; 32]);
        let other = NodeKey::from_seed([8; 32]);
        let dest = "https://study.example.org/submit";
        let id = ExportId([3; 16]);
        let sig = ExportSignature::sign(key.secret(), id, "job:00ff", dest, b"{\"n\":3}");
        let parsed = ExportSignature::parse_header(&sig.to_header()).unwrap();
        assert_eq!(parsed, sig);
        parsed.verify(&key.public(), dest, b"{\"n\":3}").unwrap();
        assert_eq!(
            parsed.verify(&key.public(), dest, b"{\"n\":4}"),
            Err(ExportSignatureError::BadSignature)
        );
        assert_eq!(
            parsed.verify(
                &key.public(),
                "https://study.example.org/other",
                b"{\"n\":3}"
            ),
            Err(ExportSignatureError::BadSignature)
        );
        assert!(matches!(
            parsed.verify(&other.public(), dest, b"{\"n\":3}"),
            Err(ExportSignatureError::WrongNode { .. })
        ));
        for header in [
            "",
            "v2; node=00",
            &sig.to_header().replace("source=job:00ff", "source=x"),
            &format!("{}; sig=AAAA", sig.to_header()),
        ] {
            assert!(ExportSignature::parse_header(header).is_err(), "{header}");
        }
    }
}
