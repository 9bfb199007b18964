//! HTTPS for an http-ingest driver that listens beyond loopback.
//!
//! `hearth driver add` makes a self-signed certificate for the driver (ECDSA P-256,
//! subject alternative names `localhost` and the listen address when it names one)
//! and writes it with its key next to `drivers.toml`:
//!
//! ```text
//! DATA_DIR/driver-NAME.crt   the certificate (PEM); devices pin its SHA-256 fingerprint
//! DATA_DIR/driver-NAME.key   its private key (PEM, PKCS #8, 0600)
//! ```
//!
//! (a `/` in NAME is written `%2F`). The driver serves HTTPS with them each time it
//! starts; when either is missing, unreadable, open to other users or does not match
//! the other, the driver fails naming the file, and never falls back to plain HTTP.
//! `hearth driver rm` deletes them.
//!
//! Connections are handshaken off the accept loop, at most [`MAX_HANDSHAKES`] at once
//! and each within [`HANDSHAKE_TIMEOUT`], so a client that connects and says nothing
//! holds up no one; the established ones are handed to axum through [`Listener`].

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use zeroize::Zeroizing;

/// The longest a client may take to complete the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
pub(crate) const MAX_HANDSHAKES: usize = 64;
/// How long the certificate is valid from when it is made.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back it is valid from, for a phone whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// The largest certificate or key file read.
const MAX_FILE: u64 = 64 * 1024;

/// Does a driver listening on `ip` serve HTTPS? Everything but loopback does: a
/// request that can come from the network must not carry its credentials in the clear.
pub(crate) fn serves_tls(ip: IpAddr) -> bool {
    !ip.is_loopback()
}

/// The certificate and key files of one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Files {
    /// The certificate, PEM.
    pub(crate) certificate: PathBuf,
    /// Its private key, PEM (PKCS #8).
    pub(crate) key: PathBuf,
}

impl Files {
    /// The files of the driver `name` in `data_dir`.
    pub(crate) fn of(data_dir: &Path, name: &str) -> Self {
        // Driver names may hold `/`, never `%`: this keeps one file per name.
        let stem = format!("driver-{}", name.replace('/', "%2F"));
        Files {
            certificate: data_dir.join(format!("{stem}.crt")),
            key: data_dir.join(format!("{stem}.key")),
        }
    }

    /// Deletes both (a file already gone is no error).
    pub(crate) fn remove(&self) {
        for path in [&self.key, &self.certificate] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "cannot delete a driver's TLS file");
                }
            }
        }
    }
}

/// A driver's certificate as devices see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Certificate {
    /// The certificate file.
    pub(crate) file: PathBuf,
    /// The SHA-256 of its DER form, uppercase hex pairs joined by `:`.
    pub(crate) fingerprint: String,
}

/// The SHA-256 fingerprint of a DER certificate as browsers and phones show it:
/// uppercase hex pairs joined by `:`.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes a new self-signed certificate and key for the driver `name` listening on
/// `ip` and writes them (durably, 0600), replacing any there.
pub(crate) fn create(data_dir: &Path, name: &str, ip: IpAddr) -> Result<Certificate, String> {
    let files = Files::of(data_dir, name);
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .map_err(|err| format!("cannot make a certificate: {err}"))?;
    if !ip.is_unspecified() {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("hearth http-ingest {name}"),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(VALIDITY).unwrap_or(now).into();
    let key = rcgen::KeyPair::generate().map_err(|err| format!("cannot make a key: {err}"))?;
    let certificate = params
        .self_signed(&key)
        .map_err(|err| format!("cannot make a certificate: {err}"))?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    // The key first: a certificate is never there without its key.
    for (path, bytes) in [
        (&files.key, key_pem.as_bytes()),
        (&files.certificate, certificate.pem().as_bytes()),
    ] {
        hearth_protocol::statefile::write_durable(path, bytes)
            .map_err(|err| format!("{}: {err}", path.display()))?;
    }
    Ok(Certificate {
        file: files.certificate,
        fingerprint: fingerprint(certificate.der()),
    })
}

/// What a driver serves HTTPS with.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The TLS configuration: the certificate and key, TLS 1.3 and 1.2, HTTP/1.1.
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// The certificate as devices see it.
    pub(crate) certificate: Certificate,
}

/// Reads a file of at most [`MAX_FILE`] bytes; the error names the file and, when it
/// is missing, what to do.
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let file = std::fs::File::open(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{} is missing: a driver that listens beyond loopback serves HTTPS with the \
                 certificate and key `hearth driver add` made for it, and never plain HTTP. \
                 Restore the file, or remove the driver and add it again (`hearth driver rm`, \
                 `hearth driver add http-ingest --listen ...`) to make new ones, which devices \
                 must then be given",
                path.display()
            )
        } else {
            format!("{} cannot be read: {err}", path.display())
        }
    })?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("{} cannot be read: {err}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!(
            "{} is larger than a certificate or key file may be ({MAX_FILE} bytes)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Reads the driver `name`'s certificate and key. `Err` names the file and what is
/// wrong with it.
pub(crate) fn load(data_dir: &Path, name: &str) -> Result<Identity, String> {
    let files = Files::of(data_dir, name);
    let cert_pem = read(&files.certificate)?;
    let key_pem = read(&files.key)?;
    hearth_protocol::statefile::check_private(&files.key).map_err(|exposed| exposed.to_string())?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            format!(
                "{} is not a PEM certificate: {err}",
                files.certificate.display()
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{} holds no certificate",
            files.certificate.display()
        ));
    };
    let certificate = Certificate {
        fingerprint: fingerprint(leaf),
        file: files.certificate.clone(),
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|err| format!("{} is not a PEM private key: {err}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("cannot set up TLS: {err}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            format!(
                "{} and {} cannot serve HTTPS together (a key of another certificate?): {err}",
                files.certificate.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        certificate,
    })
}

/// HTTPS connections for `axum::serve`: a task accepts TCP connections and completes
/// their handshakes (bounded in number and time); this hands out the ones that did.
/// Dropping it stops the accepting.
#[derive(Debug)]
pub(crate) struct Listener {
    established: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Serves TLS with `config` on `listener`.
    pub(crate) fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, established) = mpsc::channel(MAX_HANDSHAKES);
        let accepting = tokio::spawn(accept(listener, TlsAcceptor::from(config), tx));
        Ok(Listener {
            established,
            local,
            accepting,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    established: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::debug!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let established = established.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = established.send((tls, peer)).await;
                }
                // Plain HTTP to the HTTPS port ends here, unanswered.
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.established.recv().await {
            Some(connection) => connection,
            // The accepting task is gone (it ends only when aborted): nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn a_made_certificate_loads_with_its_fingerprint_and_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let made = create(dir.path(), "lan/phone", "0.0.0.0".parse().unwrap()).unwrap();
        let files = Files::of(dir.path(), "lan/phone");
        assert_eq!(made.file, files.certificate);
        assert!(made.file.ends_with("driver-lan%2Fphone.crt"));
        hearth_protocol::statefile::check_private(&files.key).unwrap();
        let fp = &made.fingerprint;
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
        assert!(
            fp.split(':').all(|pair| pair.len() == 2
                && pair
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())),
            "{fp}"
        );
        let loaded = load(dir.path(), "lan/phone").unwrap();
        assert_eq!(loaded.certificate, made);
    }

    #[test]
    fn a_missing_mismatched_or_exposed_file_is_refused_naming_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), "a", "192.0.2.1".parse().unwrap()).unwrap();
        create(dir.path(), "b", "192.0.2.1".parse().unwrap()).unwrap();
        let a = Files::of(dir.path(), "a");
        let b = Files::of(dir.path(), "b");

        // Another driver's key.
        std::fs::copy(&b.key, &a.key).unwrap();
        let err = load(dir.path(), "a").unwrap_err();
        assert!(err.contains(&a.key.display().to_string()), "{err}");

        // A key others can read.
        std::fs::set_permissions(&b.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(dir.path(), "b").unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");

        // Missing files.
        for path in [&b.key, &a.certificate] {
            std::fs::remove_file(path).unwrap();
        }
        for (name, path) in [("a", &a.certificate), ("b", &b.key)] {
            let err = load(dir.path(), name).unwrap_err();
            assert!(
                err.contains(&format!("{} is missing", path.display())),
                "{err}"
            );
        }

        // Not a certificate.
        std::fs::write(&a.certificate, "not PEM").unwrap();
        let err = load(dir.path(), "a").unwrap_err();
        assert!(err.contains(&a.certificate.display().to_string()), "{err}");

        Files::of(dir.path(), "a").remove();
        Files::of(dir.path(), "b").remove();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
