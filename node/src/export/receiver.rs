//! A small HTTPS receiver of exports, as a study or a webhook would run one: it serves
//! TLS with a certificate from a CA it makes (whose PEM the sending node is given in
//! `[export] ca_files`), checks each request's `Hearth-Signature` and
//! `Hearth-Certificate` against the mesh owner's key, keeps each body once per
//! `Idempotency-Key`, and answers from a script (e.g. 500, 500, 500, then 200) so that
//! retries can be exercised. `hearth demo`, the tests and the export benchmark run it.
//!
//! Blocking threads, one per connection: it takes a handful of requests, not traffic.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::key::PublicKey;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

/// Largest request read.
const MAX_REQUEST: usize = 2 << 20;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request target (path and query).
    pub target: String,
    /// The `Idempotency-Key` header.
    pub key: Option<String>,
    /// The headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
    /// The signature check: `Ok(device name)` or why it failed.
    pub verified: Result<String, String>,
    /// When its head arrived, in milliseconds since the Unix epoch.
    pub received_at: f64,
}

/// The answers still to give: a status and, for a redirect, a `Location`.
type Script = Mutex<VecDeque<(u16, Option<String>)>>;

/// What the receiver saw.
#[derive(Debug, Default)]
struct Seen {
    requests: Vec<Received>,
    /// Bodies kept, by idempotency key (the first accepted one wins).
    kept: BTreeMap<String, Vec<u8>>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Seen>>,
    script: Arc<Script>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 (port chosen by the system) whose certificate
    /// names `127.0.0.1` and `localhost`. `owner` is the mesh owner's public key the
    /// signatures are checked against (through the device certificate).
    pub fn start(owner: PublicKey) -> Result<Self, String> {
        let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Study test CA");
        let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let leaf_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .map_err(|e| e.to_string())?;
        leaf.subject_alt_names.push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf
            .signed_by(&leaf_key, &ca, &ca_key)
            .map_err(|e| e.to_string())?;
        let chain = vec![leaf.der().clone()];
        let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes())
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let receiver = Self {
            addr,
            ca_pem: ca.pem(),
            seen: Arc::default(),
            script: Arc::default(),
            stop: Arc::default(),
        };
        let (seen, script, stop) = (
            receiver.seen.clone(),
            receiver.script.clone(),
            receiver.stop.clone(),
        );
        let config = Arc::new(config);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (config, seen, script) = (config.clone(), seen.clone(), script.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, config, &seen, &script, &owner);
                });
            }
        });
        Ok(receiver)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed its certificate (for `[export] ca_files`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Answers the next requests with these statuses, in order (`Location` for a
    /// redirect); once used up, it answers 200.
    pub fn script(&self, answers: &[(u16, Option<&str>)]) {
        let mut script = self.script.lock().unwrap_or_else(|e| e.into_inner());
        script.extend(answers.iter().map(|(s, l)| (*s, l.map(str::to_owned))));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// The bodies kept: one per idempotency key that was answered 2xx.
    pub fn kept(&self) -> BTreeMap<String, Vec<u8>> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kept
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    seen: &Mutex<Seen>,
    script: &Script,
    owner: &PublicKey,
) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut received_at = None;
    let (target, headers, body_start) = loop {
        let n = tls.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed early".into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        received_at.get_or_insert_with(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        });
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut parsed);
        if let httparse::Status::Complete(len) = request.parse(&buf).map_err(|e| e.to_string())? {
            let headers: BTreeMap<String, String> = request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (request.path.unwrap_or("").to_owned(), headers, len);
        }
        if buf.len() > MAX_REQUEST {
            return Err("request too large".into());
        }
    };
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = buf.get(body_start..).unwrap_or(&[]).to_vec();
    while body.len() < length {
        let n = tls.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
    body.truncate(length);
    let destination = format!(
        "https://{}{}",
        headers.get("host").cloned().unwrap_or_default(),
        target
    );
    let verified = hearth_protocol::export::verify_received(
        owner,
        headers
            .get(&hearth_protocol::export::CERTIFICATE_HEADER.to_ascii_lowercase())
            .map_or("", String::as_str),
        headers
            .get(&hearth_protocol::export::SIGNATURE_HEADER.to_ascii_lowercase())
            .map_or("", String::as_str),
        &destination,
        &body,
        hearth_protocol::time::UnixMillis::from_system_time(std::time::SystemTime::now()),
    )
    .map(|(_, device)| device.name)
    .map_err(|e| e.to_string());
    let key = headers.get("idempotency-key").cloned();
    let (status, location) = script
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
        .unwrap_or((200, None));
    // A request that does not verify is refused, as a careful destination would.
    let status = if verified.is_err() { 401 } else { status };
    {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if (200..300).contains(&status)
            && let Some(key) = &key
        {
            seen.kept.entry(key.clone()).or_insert_with(|| body.clone());
        }
        seen.requests.push(Received {
            target,
            key,
            headers,
            body,
            status,
            verified,
            received_at: received_at.unwrap_or(0.0),
        });
    }
    let location = location
        .map(|l| format!("Location: {l}\r\n"))
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 {status} {}\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n",
        if (200..300).contains(&status) {
            "OK"
        } else {
            "Not OK"
        }
    );
    tls.write_all(answer.as_bytes())
        .map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}
