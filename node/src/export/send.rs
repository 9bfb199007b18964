//! One delivery: resolve the destination once, refuse private addresses it was not
//! granted literally, connect (TLS with the configured roots, or plain HTTP to
//! loopback when allowed), send one `POST`, read the status line. Redirects are
//! answers, not instructions: a 3xx fails the export.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::export::{Destination, Host, Scheme};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// The system's CA bundles, the first that exists is read (`SSL_CERT_FILE` first).
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A 2xx answer.
    Delivered(u16),
    /// Worth trying again later (no answer, 5xx, 408, 425, 429).
    Retry { status: Option<u16>, error: String },
    /// Will never work as it is (4xx, a redirect, a refused address).
    Fail { status: Option<u16>, error: String },
}

/// What a request carries besides the body.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub destination: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub export_id: &'a str,
    pub signature: &'a str,
    pub certificate: &'a str,
}

/// The TLS client configuration: the system's roots and the CA files of
/// `[export] ca_files`.
pub(crate) fn client_config(
    ca_files: &[std::path::PathBuf],
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file());
    if let Some(bundle) = &system {
        match CertificateDer::pem_file_iter(bundle) {
            Ok(certs) => {
                // A bundle may hold a certificate rustls cannot use; the rest still count.
                let (added, _) = roots.add_parsable_certificates(certs.flatten());
                tracing::debug!(bundle = %bundle.display(), added, "system roots for exports");
            }
            Err(err) => {
                tracing::warn!(bundle = %bundle.display(), error = %err, "cannot read the system's CA bundle")
            }
        }
    }
    for file in ca_files {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .and_then(|certs| certs.collect())
            .map_err(|err| format!("[export] ca_files: {}: {err}", file.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "[export] ca_files: {} holds no PEM certificate",
                file.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|err| format!("[export] ca_files: {}: {err}", file.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Is `ip` an address on the public internet? Loopback, private, link-local,
/// shared (CGNAT), unique-local, multicast, documentation and unspecified addresses
/// are not.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                Ipv4Addr::new(a, b, c, d)
            };
            // Addresses that carry an IPv4 address are as public as it is: mapped and
            // compatible (::ffff:a.b.c.d, ::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4.
            if v6.is_loopback() || v6.is_unspecified() {
                return false;
            }
            if let Some(v4) = v6.to_ipv4() {
                return is_public(IpAddr::V4(v4));
            }
            if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            if s[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded(s[1], s[2])));
            }
            !(v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || s[0] == 0x0064)
        }
    }
}

fn kind_of(ip: IpAddr) -> &'static str {
    if ip.is_loopback() {
        "a loopback address"
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_link_local())
        || matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
    {
        "a link-local address"
    } else {
        "a private or reserved address"
    }
}

/// The one address this delivery connects to: a literal address as granted, or the
/// name resolved now, every address it resolves to public.
async fn resolve(dest: &Destination, timeout: Duration) -> Result<SocketAddr, Outcome> {
    let fail = |error: String| Outcome::Fail {
        status: None,
        error,
    };
    match &dest.host {
        Host::Ip(ip) => {
            if dest.scheme == Scheme::Http && !ip.is_loopback() {
                return Err(fail(
                    "plain http:// is sent to a loopback address only".into(),
                ));
            }
            Ok(SocketAddr::new(*ip, dest.port))
        }
        Host::Name(name) => {
            if dest.scheme == Scheme::Http {
                return Err(fail(
                    "plain http:// is sent to a loopback address written literally only".into(),
                ));
            }
            let looked_up =
                tokio::time::timeout(timeout, tokio::net::lookup_host((name.as_str(), dest.port)))
                    .await;
            let addrs: Vec<SocketAddr> = match looked_up {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(err)) => {
                    return Err(Outcome::Retry {
                        status: None,
                        error: format!("cannot resolve {name}: {err}"),
                    });
                }
                Err(_) => {
                    return Err(Outcome::Retry {
                        status: None,
                        error: format!("resolving {name} took longer than {timeout:?}"),
                    });
                }
            };
            if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(fail(format!(
                    "{name} resolves to {}, {}; an export goes to such an address only when \
                     its grant names the address literally",
                    private.ip(),
                    kind_of(private.ip())
                )));
            }
            addrs.first().copied().ok_or_else(|| Outcome::Retry {
                status: None,
                error: format!("{name} resolves to no address"),
            })
        }
    }
}

/// Sends one request and classifies the answer.
pub(crate) async fn deliver(
    request: &Request<'_>,
    tls: &Arc<rustls::ClientConfig>,
    allow_http: bool,
    timeout: Duration,
) -> Outcome {
    let dest = match Destination::parse(request.destination) {
        Ok(dest) => dest,
        Err(err) => {
            return Outcome::Fail {
                status: None,
                error: err.to_string(),
            };
        }
    };
    if dest.scheme == Scheme::Http && !allow_http {
        return Outcome::Fail {
            status: None,
            error: "plain http:// is not allowed (`[export] allow_http_loopback` is off)".into(),
        };
    }
    let addr = match resolve(&dest, timeout).await {
        Ok(addr) => addr,
        Err(outcome) => return outcome,
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
        let _ = tcp.set_nodelay(true);
        match dest.scheme {
            Scheme::Http => exchange(tcp, &dest, request).await,
            Scheme::Https => {
                let name = match &dest.host {
                    Host::Name(name) => ServerName::try_from(name.clone())
                        .map_err(|err| format!("{name}: {err}"))?,
                    Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                };
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|err| format!("TLS with {}: {err}", dest.authority))?;
                exchange(stream, &dest, request).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Outcome::Retry {
            status: None,
            error: format!("no answer from {} within {timeout:?}", dest.authority),
        },
        Ok(Err(error)) => Outcome::Retry {
            status: None,
            error,
        },
        Ok(Ok((status, location))) => classify(status, location),
    }
}

fn classify(status: u16, location: Option<String>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered(status),
        300..=399 => Outcome::Fail {
            status: Some(status),
            error: format!(
                "the destination answered {status}, a redirect{}; redirects are not followed",
                location
                    .map(|l| format!(" to {}", crate::compute::cut(&l, 200)))
                    .unwrap_or_default()
            ),
        },
        408 | 425 | 429 | 500..=599 => Outcome::Retry {
            status: Some(status),
            error: format!("the destination answered {status}"),
        },
        _ => Outcome::Fail {
            status: Some(status),
            error: format!("the destination answered {status}"),
        },
    }
}

/// Writes the request on `stream` and reads the status and `Location` of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    dest: &Destination,
    request: &Request<'_>,
) -> Result<(u16, Option<String>), String> {
    use base64::Engine as _;
    let digest = base64::engine::general_purpose::STANDARD
        .encode(hearth_protocol::export::body_hash(request.body));
    let head = format!(
        "POST {target} HTTP/1.1\r\n\
         Host: {host}\r\n\
         User-Agent: hearth/{version}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {len}\r\n\
         Content-Digest: sha-256=:{digest}:\r\n\
         Idempotency-Key: {id}\r\n\
         {sig_header}: {signature}\r\n\
         Hearth-Certificate: {certificate}\r\n\
         Connection: close\r\n\r\n",
        target = dest.target,
        host = dest.authority,
        version = env!("CARGO_PKG_VERSION"),
        content_type = request.content_type,
        len = request.body.len(),
        id = request.export_id,
        sig_header = hearth_protocol::export::SIGNATURE_HEADER,
        signature = request.signature,
        certificate = request.certificate,
    );
    let io = |err: std::io::Error| format!("talking to {}: {err}", dest.authority);
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(request.body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        // What was read is parsed before more is read: an interim answer and the
        // final one may come in one segment.
        match parse_head(&buf) {
            Head::Final(status, location) => return Ok((status, location)),
            Head::Interim(len) => {
                buf.drain(..len);
                continue;
            }
            Head::Malformed(err) => {
                return Err(format!("{} sent a malformed answer: {err}", dest.authority));
            }
            Head::Partial if buf.len() >= MAX_HEAD => {
                return Err(format!(
                    "{} sent an answer head over {MAX_HEAD} bytes",
                    dest.authority
                ));
            }
            Head::Partial => {}
        }
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(format!(
                "{} closed the connection before answering",
                dest.authority
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
}

/// What an answer's head says so far.
enum Head {
    /// Not all of it yet.
    Partial,
    /// A 1xx answer of this many bytes, before the real one.
    Interim(usize),
    /// The status and `Location`.
    Final(u16, Option<String>),
    Malformed(String),
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = response.code.unwrap_or(0);
            if (100..200).contains(&status) {
                return Head::Interim(len);
            }
            let location = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("location"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            Head::Final(status, location)
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(err) => Head::Malformed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_count_as_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:c0a8:101::1",
            "fec0::1",
            "192.0.0.8",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "192.0.78.9",
            "2606:4700:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn an_interim_answer_and_the_final_one_in_one_read() {
        let both =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let Head::Interim(len) = parse_head(both) else {
            panic!("not interim")
        };
        assert!(matches!(parse_head(&both[len..]), Head::Final(201, None)));
        assert!(matches!(parse_head(b"HTTP/1.1 2"), Head::Partial));
        assert!(matches!(
            parse_head(b"NOT HTTP\r\n\r\n"),
            Head::Malformed(_)
        ));
    }

    fn fails_with(url: &str, allow_http: bool) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tls = Arc::new(client_config(&[]).unwrap());
        let request = Request {
            destination: url,
            content_type: "application/json",
            body: b"{}",
            export_id: "00",
            signature: "v1",
            certificate: "hcap1:",
        };
        let outcome = runtime.block_on(deliver(&request, &tls, allow_http, Duration::from_secs(5)));
        match outcome {
            Outcome::Fail { error, .. } => error,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn plain_http_goes_only_to_a_literal_loopback_address_and_only_when_allowed() {
        let err = fails_with("http://127.0.0.1:9/x", false);
        assert!(err.contains("allow_http_loopback"), "{err}");
        let err = fails_with("http://192.0.2.1/x", true);
        assert!(err.contains("loopback address only"), "{err}");
        let err = fails_with("http://localhost:9/x", true);
        assert!(err.contains("written literally only"), "{err}");
        // A name that resolves to this machine, over HTTPS: refused before connecting.
        let err = fails_with("https://localhost:9/x", false);
        assert!(
            err.contains("resolves to") && err.contains("loopback"),
            "{err}"
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(201, None), Outcome::Delivered(201));
        assert!(
            matches!(classify(302, Some("https://x".into())), Outcome::Fail { error, .. } if error.contains("redirects are not followed"))
        );
        assert!(matches!(classify(500, None), Outcome::Retry { .. }));
        assert!(matches!(classify(429, None), Outcome::Retry { .. }));
        assert!(matches!(classify(400, None), Outcome::Fail { .. }));
    }
}
