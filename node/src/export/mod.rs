//! The export gateway: the one way data leaves the mesh.
//!
//! A computation hands a body and a destination to the host (`gateway.send`); the
//! host checks the destination against the capability's `export:` grants and keeps
//! the body with the run. Only when the run succeeds are its exports written to the
//! durable outbox (`outbox.rs`), each audited, and only then does the job report
//! success. A task sends what is due (`send.rs`): held exports wait for the owner's
//! release, failed attempts are retried with backoff (across restarts: the attempts
//! are in the journal), exports not delivered in time expire. Every request carries
//! an `Idempotency-Key` (the export id), a `Hearth-Signature` by the node key and the
//! device certificate, so a destination can drop duplicates and check the sender.

pub(crate) mod outbox;
pub mod receiver;
pub(crate) mod send;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::capability::{Actions, Chain, Grant, Resource};
use hearth_protocol::export::{ExportId, ExportSignature, body_hash};
use hearth_stores::audit::Event;

use crate::api::types::ExportInfo;
use crate::node::Node;
use outbox::{Book, Entry, Format, Outbox, OutboxError, Record, State};

/// The exports directory inside the data directory.
pub const EXPORTS_DIR: &str = "exports";
/// Largest body one export may carry, whatever a grant allows.
pub const MAX_EXPORT_BYTES: usize = 1 << 20;
/// Most exports one run may make.
pub const MAX_EXPORTS_PER_RUN: usize = 16;
/// Deliveries under way at once.
const CONCURRENCY: usize = 4;
/// Most exports waiting (held or queued) in one outbox.
pub const MAX_WAITING: usize = 10_000;
/// Most bytes of exports waiting in one outbox.
pub const MAX_WAITING_BYTES: u64 = 256 << 20;

/// `[export]` in `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// PEM files of CAs trusted beside the system's roots (private CAs).
    pub ca_files: Vec<PathBuf>,
    /// Send plain `http://` to a loopback address written literally in the grant
    /// (for tests). Off by default.
    pub allow_http_loopback: bool,
    /// An export not delivered this long after it was queued expires.
    pub expire_after: Duration,
    /// The wait before the second attempt; it doubles with each failure.
    pub retry_initial: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// The longest one attempt may take (resolving, connecting, TLS, the answer).
    pub timeout: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            ca_files: Vec::new(),
            allow_http_loopback: false,
            expire_after: Duration::from_secs(7 * 24 * 3600),
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The limits and consent one link of a capability chain puts on exports to one
/// destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkTerms {
    /// The link's capability id.
    pub link: String,
    pub per_day: Option<u64>,
    pub bytes_per_day: Option<u64>,
    pub review: bool,
}

/// The export grants of every link of a chain: what the host checks each export
/// against.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChainExports {
    links: Vec<(String, Vec<Grant>)>,
}

impl ChainExports {
    pub(crate) fn of(chain: &Chain) -> Self {
        Self {
            links: chain
                .links()
                .iter()
                .map(|link| {
                    let grants = link
                        .capability()
                        .grants
                        .iter()
                        .filter(|g| matches!(g.resource, Resource::Export(_)))
                        .cloned()
                        .collect();
                    (link.id().to_string(), grants)
                })
                .collect(),
        }
    }

    /// Per link, the terms of its grants that allow `destination`: review when any of
    /// them asks for it, the tightest daily limits any of them sets (terms are never
    /// mixed from two grants into something looser than either); `None` when some
    /// link allows no export there.
    pub(crate) fn terms(&self, destination: &str) -> Option<Vec<LinkTerms>> {
        self.links
            .iter()
            .map(|(link, grants)| {
                let allowing: Vec<&Grant> = grants
                    .iter()
                    .filter(|g| g.actions.contains(Actions::EXPORT))
                    .filter(|g| match &g.resource {
                        Resource::Export(pattern) => {
                            hearth_protocol::export::grant_allows(pattern, destination)
                        }
                        _ => false,
                    })
                    .collect();
                if allowing.is_empty() {
                    return None;
                }
                let tightest =
                    |f: fn(&Grant) -> Option<u64>| allowing.iter().filter_map(|g| f(g)).min();
                Some(LinkTerms {
                    link: link.clone(),
                    per_day: tightest(|g| g.caveats.max_exports_per_day),
                    bytes_per_day: tightest(|g| g.caveats.max_export_bytes_per_day),
                    review: allowing.iter().any(|g| g.caveats.review),
                })
            })
            .collect()
    }
}

/// An export a run made, kept until the run ends.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub destination: String,
    pub format: Format,
    pub body: String,
    pub terms: Vec<LinkTerms>,
}

/// Would queuing `bytes` more under `terms` (with `extra` already pending from the
/// same run: exports and bytes per link) break a daily limit? `Err` says which.
pub(crate) fn within_limits(
    book: &Book,
    terms: &[LinkTerms],
    extra: &dyn Fn(&str) -> (u64, u64),
    bytes: u64,
    now: u64,
    destination: &str,
) -> Result<(), String> {
    for t in terms {
        let (n, used) = book.used_today(&t.link, now);
        let (pending_n, pending_bytes) = extra(&t.link);
        if let Some(max) = t.per_day
            && n + pending_n + 1 > max
        {
            return Err(format!(
                "export to {destination} refused: capability {} allows {max} export{} a day \
                 and {} {} made today",
                short(&t.link),
                if max == 1 { "" } else { "s" },
                n + pending_n,
                if n + pending_n == 1 { "was" } else { "were" }
            ));
        }
        if let Some(max) = t.bytes_per_day
            && used + pending_bytes + bytes > max
        {
            return Err(format!(
                "export to {destination} refused: capability {} allows {max} bytes of exports a \
                 day; {} were used today and this one is {bytes}",
                short(&t.link),
                used + pending_bytes
            ));
        }
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The node's export gateway.
#[derive(Debug)]
pub struct Gateway {
    outbox: Outbox,
    config: ExportConfig,
    tls: Arc<rustls::ClientConfig>,
    /// Wakes the sending loop (a new export, a release, a resume).
    wake: tokio::sync::Notify,
    /// Exports being attempted now.
    in_flight: Mutex<BTreeSet<String>>,
}

/// Why an owner's action on an export did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No export has that id.
    #[error("no export {0} in this device's outbox")]
    NotFound(String),
    /// The export is not in a state the action applies to.
    #[error("{0}")]
    Conflict(String),
    /// The outbox could not be written.
    #[error("{0}")]
    Io(String),
}

impl From<OutboxError> for ExportError {
    fn from(err: OutboxError) -> Self {
        ExportError::Io(err.to_string())
    }
}

impl From<OutboxError> for String {
    fn from(err: OutboxError) -> Self {
        err.to_string()
    }
}

fn info(e: &Entry, with_body: bool) -> ExportInfo {
    ExportInfo {
        id: e.id.clone(),
        destination: e.destination.clone(),
        state: e.state.as_str().to_owned(),
        review: e.review,
        source: e.source.clone(),
        cap_id: e.cap_id.clone(),
        content_type: e.format.content_type().to_owned(),
        bytes: e.size(),
        sha256: e.sha256.clone(),
        queued_at: e.queued_at,
        expires_at: e.expires_at,
        released_at: e.released_at,
        attempts: e.attempts,
        next_attempt_at: (e.state == State::Queued).then_some(e.next_at),
        status: e.status,
        last_error: e.last_error.clone(),
        finished_at: e.finished_at,
        body: with_body.then(|| e.body.clone()),
    }
}

fn audit(node: &Node, actor: &str, action: &str, e: &Entry, outcome: String) {
    let _ = node.audit.record(Event {
        actor: actor.to_owned(),
        action: action.to_owned(),
        object: e.destination.clone(),
        cap_id: Some(e.cap_id.clone()),
        outcome: format!(
            "{outcome}; export {}, sha256 {}",
            e.id,
            crate::compute::cut(&e.sha256, 64)
        ),
        bytes: e.size(),
    });
}

impl Gateway {
    /// Opens the outbox in `dir` and reads the TLS roots.
    pub fn open(dir: &std::path::Path, config: ExportConfig) -> Result<Self, String> {
        let tls = send::client_config(&config.ca_files)?;
        let outbox = Outbox::open(dir).map_err(|err| {
            format!(
                "{err}. The node will not start on an export outbox it cannot read: it could \
                 send an export twice or lose one. Restore the file from a backup, or move it \
                 aside knowing that the exports in it are lost"
            )
        })?;
        Ok(Self {
            outbox,
            config,
            tls: Arc::new(tls),
            wake: tokio::sync::Notify::new(),
            in_flight: Mutex::new(BTreeSet::new()),
        })
    }

    /// Exports and bytes queued today under `link`, with what is pending in a run.
    pub(crate) fn check_limits(
        &self,
        terms: &[LinkTerms],
        pending: &[Pending],
        bytes: u64,
        destination: &str,
    ) -> Result<(), String> {
        let extra = |link: &str| pending_under(pending, link);
        self.outbox.with(|book| {
            within_limits(
                book,
                terms,
                &extra,
                bytes,
                crate::clock::now().0,
                destination,
            )
        })
    }

    /// Writes the exports of a finished run to the outbox (durably, each audited) or
    /// none of them: `Err` when a daily limit was reached meanwhile or the outbox
    /// cannot be written. `source` is `job:<id>` or `app:<name>@<deployed>#<run>`.
    pub(crate) fn enqueue(
        &self,
        node: &Node,
        holder: &str,
        source: &str,
        chain: &Chain,
        pending: Vec<Pending>,
    ) -> Result<Vec<String>, String> {
        let now = crate::clock::now().0;
        let links: Vec<String> = chain.links().iter().map(|l| l.id().to_string()).collect();
        let cap_id = chain.leaf().id().to_string();
        let chain_text = chain.to_text();
        // Not kept past the capability's own end: it could not be sent then.
        let cap_expires = chain
            .links()
            .iter()
            .map(|l| l.capability().expires.0)
            .min()
            .unwrap_or(u64::MAX);
        let expires_at = now
            .saturating_add(millis(self.config.expire_after))
            .min(cap_expires);
        let node_key = node.config.node_key.public();
        let mut entries = Vec::with_capacity(pending.len());
        for (index, p) in pending.iter().enumerate() {
            let review = p.terms.iter().any(|t| t.review);
            entries.push(Entry {
                id: outbox::export_id(&node_key, source, index).to_string(),
                destination: p.destination.clone(),
                format: p.format,
                sha256: hex::encode(body_hash(p.body.as_bytes())),
                body: p.body.clone(),
                source: source.to_owned(),
                cap_id: cap_id.clone(),
                links: links.clone(),
                chain: chain_text.clone(),
                queued_at: now,
                expires_at,
                review,
                state: if review { State::Held } else { State::Queued },
                attempts: 0,
                next_at: now,
                last_error: None,
                status: None,
                finished_at: None,
                released_at: None,
            });
        }
        let committed = self.outbox.commit::<String>(|book| {
            // The same run made again (an app after a crash): already kept, not again.
            if entries.iter().all(|e| book.entries.contains_key(&e.id)) {
                return Ok(Vec::new());
            }
            let waiting: Vec<&Entry> = book
                .entries
                .values()
                .filter(|e| !e.state.is_final())
                .collect();
            let adding: u64 = entries.iter().map(Entry::size).sum();
            if waiting.len() + entries.len() > MAX_WAITING
                || waiting.iter().map(|e| e.size()).sum::<u64>() + adding > MAX_WAITING_BYTES
            {
                return Err(format!(
                    "export refused: this device's outbox is full ({} exports wait; at most \
                     {MAX_WAITING} exports or {} MiB may wait); release, drop or resume sending",
                    waiting.len(),
                    MAX_WAITING_BYTES >> 20
                ));
            }
            for (i, p) in pending.iter().enumerate() {
                let before = pending.get(..i).unwrap_or(&[]);
                let extra = |link: &str| pending_under(before, link);
                within_limits(
                    book,
                    &p.terms,
                    &extra,
                    p.body.len() as u64,
                    now,
                    &p.destination,
                )?;
            }
            Ok(entries
                .iter()
                .map(|e| Record::Queue {
                    entry: Box::new(e.clone()),
                })
                .collect())
        });
        match committed {
            Ok(records) if records.is_empty() => Ok(entries.into_iter().map(|e| e.id).collect()),
            Ok(_) => {
                for e in &entries {
                    let outcome = if e.review {
                        "allowed: held until the owner releases it"
                    } else {
                        "allowed: queued"
                    };
                    audit(
                        node,
                        holder,
                        "export.queue",
                        e,
                        format!("{outcome} ({source})"),
                    );
                    node.metrics.export("queued");
                }
                self.wake.notify_one();
                Ok(entries.into_iter().map(|e| e.id).collect())
            }
            Err(reason) => {
                for e in &entries {
                    audit(
                        node,
                        holder,
                        "export.queue",
                        e,
                        format!("refused: {reason}"),
                    );
                    node.metrics.export("refused");
                }
                Err(reason)
            }
        }
    }

    /// Every export listed, oldest first.
    pub fn list(&self) -> (bool, Vec<ExportInfo>) {
        self.outbox.with(|book| {
            let mut list: Vec<ExportInfo> = book.entries.values().map(|e| info(e, false)).collect();
            list.sort_by(|a, b| a.queued_at.cmp(&b.queued_at).then(a.id.cmp(&b.id)));
            (book.paused, list)
        })
    }

    /// One export, with its body.
    pub fn show(&self, id: &str) -> Result<ExportInfo, ExportError> {
        self.info(id, true)
    }

    fn info(&self, id: &str, with_body: bool) -> Result<ExportInfo, ExportError> {
        self.outbox.with(|book| {
            book.entries
                .get(id)
                .map(|e| info(e, with_body))
                .ok_or_else(|| ExportError::NotFound(id.to_owned()))
        })
    }

    /// An owner's decision on export `id`: `decide` turns the export (as it is now)
    /// into the record to keep, or refuses; kept, it is audited as `action`.
    fn decide(
        &self,
        node: &Node,
        id: &str,
        action: &str,
        outcome: &str,
        decide: impl FnOnce(&Entry, u64) -> Result<Record, ExportError>,
    ) -> Result<ExportInfo, ExportError> {
        let now = crate::clock::now().0;
        self.outbox.commit::<ExportError>(|book| {
            let e = book
                .entries
                .get(id)
                .ok_or_else(|| ExportError::NotFound(id.to_owned()))?;
            Ok(vec![decide(e, now)?])
        })?;
        if let Some(e) = self.entry(id) {
            audit(node, "local", action, &e, outcome.to_owned());
        }
        self.wake.notify_one();
        self.info(id, false)
    }

    /// The owner's release of a held export.
    pub fn release(&self, node: &Node, id: &str) -> Result<ExportInfo, ExportError> {
        self.decide(
            node,
            id,
            "export.release",
            "allowed: released by the owner",
            |e, now| {
                if e.state != State::Held {
                    return Err(ExportError::Conflict(format!(
                        "export {id} is {}, not held: only a held export is released",
                        e.state.as_str()
                    )));
                }
                if e.expires_at <= now {
                    return Err(ExportError::Conflict(format!(
                        "export {id} expired before it was released"
                    )));
                }
                Ok(Record::Release {
                    id: id.to_owned(),
                    at: now,
                })
            },
        )
    }

    /// The owner's drop of an export not yet finished. An attempt under way when the
    /// drop comes may still deliver it.
    pub fn drop_export(&self, node: &Node, id: &str) -> Result<ExportInfo, ExportError> {
        let dropped = self.decide(
            node,
            id,
            "export.drop",
            "allowed: dropped by the owner",
            |e, now| {
                if e.state.is_final() {
                    return Err(ExportError::Conflict(format!(
                        "export {id} is already {}",
                        e.state.as_str()
                    )));
                }
                Ok(Record::Finish {
                    id: id.to_owned(),
                    state: State::Dropped,
                    at: now,
                    error: None,
                    status: None,
                })
            },
        )?;
        node.metrics.export("dropped");
        Ok(dropped)
    }

    /// Pauses (or resumes) all sending; kept across restarts. Returns the exports
    /// waiting.
    pub fn set_paused(&self, node: &Node, paused: bool) -> Result<u64, ExportError> {
        self.outbox
            .commit::<ExportError>(|_| Ok(vec![Record::Pause { paused }]))?;
        let waiting = self.outbox.with(|book| {
            book.entries
                .values()
                .filter(|e| !e.state.is_final())
                .count() as u64
        });
        let _ = node.audit.record(Event {
            actor: "local".into(),
            action: if paused {
                "export.pause"
            } else {
                "export.resume"
            }
            .into(),
            object: node.config.name.clone(),
            cap_id: None,
            outcome: format!("allowed: {waiting} exports waiting"),
            bytes: 0,
        });
        if !paused {
            self.wake.notify_one();
        }
        Ok(waiting)
    }

    fn record(&self, record: Record) {
        if let Err(err) = self.outbox.commit::<OutboxError>(|_| Ok(vec![record])) {
            tracing::error!(error = %err, "cannot write the export journal");
        }
    }

    fn entry(&self, id: &str) -> Option<Entry> {
        self.outbox.with(|book| book.entries.get(id).cloned())
    }

    /// The wait before attempt `attempts + 1`.
    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
        self.config
            .retry_initial
            .saturating_mul(factor)
            .min(self.config.retry_max)
    }
}

fn pending_under(pending: &[Pending], link: &str) -> (u64, u64) {
    pending
        .iter()
        .filter(|p| p.terms.iter().any(|t| t.link == link))
        .fold((0, 0), |(n, b), p| (n + 1, b + p.body.len() as u64))
}

/// Sends what is due until the node stops: expires what waited too long, attempts
/// queued exports (unless paused), sleeps until the next is due or something changes.
pub(crate) async fn run(node: Arc<Node>) {
    let Some(gateway) = node.exports.clone() else {
        return;
    };
    let mut stopping = node.stopping.subscribe();
    let certificate = node
        .config
        .mesh
        .as_ref()
        .map(|m| m.certificate.to_text())
        .unwrap_or_default();
    let certificate = Arc::new(certificate);
    loop {
        if *stopping.borrow() {
            return;
        }
        let now = crate::clock::now().0;
        let (expired, due, paused, next) = gateway.outbox.with(|book| {
            let in_flight = gateway
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let live = book.entries.values().filter(|e| !e.state.is_final());
            let expired: Vec<String> = live
                .clone()
                .filter(|e| e.expires_at <= now && !in_flight.contains(&e.id))
                .map(|e| e.id.clone())
                .collect();
            let due: Vec<Entry> = live
                .clone()
                .filter(|e| e.state == State::Queued && e.next_at <= now && e.expires_at > now)
                .filter(|e| !in_flight.contains(&e.id))
                .take(CONCURRENCY.saturating_sub(in_flight.len()))
                .cloned()
                .collect();
            let next = live
                .filter(|e| !in_flight.contains(&e.id))
                .map(|e| {
                    if e.state == State::Queued && !book.paused {
                        e.next_at.min(e.expires_at)
                    } else {
                        e.expires_at
                    }
                })
                .min();
            (expired, due, book.paused, next)
        });
        for id in expired {
            gateway.record(Record::Finish {
                id: id.clone(),
                state: State::Expired,
                at: now,
                error: None,
                status: None,
            });
            if let Some(e) = gateway.entry(&id) {
                audit(
                    &node,
                    "node",
                    "export.expire",
                    &e,
                    format!(
                        "failed: not delivered within {:?}",
                        gateway.config.expire_after
                    ),
                );
                node.metrics.export("expired");
            }
        }
        if gateway.outbox.is_broken() {
            // Nothing is sent that could not be recorded as sent.
            tracing::error!(
                "the export journal cannot be written; sending stops until the node restarts"
            );
            let _ = stopping.changed().await;
            return;
        }
        if !paused {
            for e in due {
                gateway
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(e.id.clone());
                tokio::spawn(attempt(
                    node.clone(),
                    gateway.clone(),
                    e,
                    certificate.clone(),
                ));
            }
        }
        let wait = next
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
            .unwrap_or(Duration::from_secs(3600))
            .clamp(Duration::from_millis(5), Duration::from_secs(3600));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = gateway.wake.notified() => {}
            _ = stopping.changed() => {}
        }
        if let Err(err) = gateway.outbox.compact(crate::clock::now().0) {
            tracing::warn!(error = %err, "cannot rewrite the export journal");
        }
    }
}

/// Is `e` still allowed to leave: its id well formed, its capability not revoked
/// (the revocations this device knows now)? Returns its id.
async fn still_allowed(node: &Node, e: &Entry) -> Result<ExportId, String> {
    let id: ExportId =
        e.id.parse()
            .map_err(|_| "the export's id in the journal is malformed".to_owned())?;
    let chain = Chain::from_text(&e.chain)
        .map_err(|err| format!("the export's capability does not decode: {err}"))?;
    let revocations = crate::compute::revocations(node).await?;
    if let Some(link) = revocations.revoked_link(&chain) {
        return Err(format!(
            "its capability was revoked (link {} of the chain) after it was queued",
            link + 1
        ));
    }
    Ok(id)
}

/// One attempt at `e`, recorded and audited.
async fn attempt(node: Arc<Node>, gateway: Arc<Gateway>, e: Entry, certificate: Arc<String>) {
    let outcome = match still_allowed(&node, &e).await {
        Err(error) => send::Outcome::Fail {
            status: None,
            error,
        },
        Ok(id) => {
            let id_text = id.to_string();
            let signature = ExportSignature::sign(
                node.config.node_key.secret(),
                id,
                &e.source,
                &e.destination,
                e.body.as_bytes(),
            )
            .to_header();
            let request = send::Request {
                destination: &e.destination,
                content_type: e.format.content_type(),
                body: e.body.as_bytes(),
                export_id: &id_text,
                signature: &signature,
                certificate: &certificate,
            };
            send::deliver(
                &request,
                &gateway.tls,
                gateway.config.allow_http_loopback,
                gateway.config.timeout,
            )
            .await
        }
    };
    let now = crate::clock::now().0;
    let attempts = e.attempts.saturating_add(1);
    // Dropped while the attempt was under way: its answer is recorded, the state stays.
    let dropped = gateway
        .entry(&e.id)
        .is_some_and(|now_e| now_e.state.is_final());
    match outcome {
        send::Outcome::Delivered(status) => {
            if !dropped {
                gateway.record(Record::Finish {
                    id: e.id.clone(),
                    state: State::Delivered,
                    at: now,
                    error: None,
                    status: Some(status),
                });
            }
            audit(
                &node,
                "node",
                "export.deliver",
                &e,
                format!("allowed: delivered, answer {status}, attempt {attempts}"),
            );
            node.metrics.export("delivered");
        }
        send::Outcome::Retry { status, error } => {
            let wait = gateway.backoff(attempts);
            if !dropped {
                gateway.record(Record::Retry {
                    id: e.id.clone(),
                    attempts,
                    next_at: now.saturating_add(millis(wait)),
                    error: error.clone(),
                    status,
                });
            }
            audit(
                &node,
                "node",
                "export.attempt",
                &e,
                format!(
                    "failed: {error}; attempt {attempts}, next in {}",
                    humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                ),
            );
            node.metrics.export("retried");
        }
        send::Outcome::Fail { status, error } => {
            if !dropped {
                gateway.record(Record::Finish {
                    id: e.id.clone(),
                    state: State::Failed,
                    at: now,
                    error: Some(error.clone()),
                    status,
                });
            }
            audit(
                &node,
                "node",
                "export.fail",
                &e,
                format!("failed: {error}; attempt {attempts}, not tried again"),
            );
            node.metrics.export("failed");
        }
    }
    gateway
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&e.id);
    gateway.wake.notify_one();
}

/// For the export benchmark (`scripts/bench-export.sh`): the outbox alone.
#[doc(hidden)]
pub mod bench {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::outbox::{Entry, Format, Outbox, OutboxError, Record, State};

    /// Queues `n` exports of `body_bytes` bytes into a fresh outbox in `dir`,
    /// `per_commit` to a commit (each commit synced before the next), and returns the
    /// time it took.
    pub fn outbox(
        dir: &Path,
        n: usize,
        per_commit: usize,
        body_bytes: usize,
    ) -> Result<Duration, String> {
        let outbox = Outbox::open(dir).map_err(|e| e.to_string())?;
        let body = "x".repeat(body_bytes);
        let entry = |i: usize| Entry {
            id: format!("{i:032x}"),
            destination: "https://study.example.org/submit".into(),
            format: Format::Json,
            body: body.clone(),
            sha256: "0".repeat(64),
            source: format!("job:{i:032x}"),
            cap_id: "0".repeat(64),
            links: vec!["0".repeat(64)],
            chain: String::new(),
            queued_at: 0,
            expires_at: u64::MAX,
            review: false,
            state: State::Queued,
            attempts: 0,
            next_at: 0,
            last_error: None,
            status: None,
            finished_at: None,
            released_at: None,
        };
        let started = Instant::now();
        let mut i = 0;
        while i < n {
            let batch: Vec<Record> = (i..(i + per_commit).min(n))
                .map(|i| Record::Queue {
                    entry: Box::new(entry(i)),
                })
                .collect();
            i += batch.len();
            outbox
                .commit::<OutboxError>(|_| Ok(batch))
                .map_err(|e| e.to_string())?;
        }
        Ok(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::capability::Caveats;

    fn export_grant(pattern: &str, per_day: Option<u64>, review: bool) -> Grant {
        Grant {
            resource: Resource::Export(pattern.into()),
            actions: Actions::EXPORT,
            caveats: Caveats {
                max_exports_per_day: per_day,
                review,
                ..Caveats::default()
            },
        }
    }

    #[test]
    fn every_link_must_allow_the_destination_and_terms_are_never_loosened_by_mixing() {
        let dest = "https://study.example.org/up/1";
        let chain = ChainExports {
            links: vec![
                (
                    "root".into(),
                    vec![
                        export_grant("https://study.example.org/up/*", Some(2), true),
                        export_grant("https://study.example.org/up/1", Some(5), true),
                    ],
                ),
                (
                    "leaf".into(),
                    vec![export_grant(
                        "https://study.example.org/up/*",
                        Some(1),
                        true,
                    )],
                ),
            ],
        };
        let terms = chain.terms(dest).unwrap();
        assert_eq!(terms.len(), 2);
        assert_eq!((terms[0].per_day, terms[0].review), (Some(2), true));
        assert_eq!(terms[1].per_day, Some(1));
        assert!(chain.terms("https://study.example.org/other").is_none());
        let unlimited = ChainExports {
            links: vec![(
                "root".into(),
                vec![
                    export_grant("https://study.example.org/up/*", None, false),
                    export_grant("https://study.example.org/up/1", Some(1), true),
                ],
            )],
        };
        // An unlimited grant without review beside a limited one with review: the
        // review and the limit both hold.
        let terms = unlimited.terms(dest).unwrap();
        assert_eq!((terms[0].per_day, terms[0].review), (Some(1), true));
    }

    #[test]
    fn daily_limits_count_what_was_queued_today_and_what_the_run_holds() {
        let book = Book::default();
        let terms = vec![LinkTerms {
            link: "root".into(),
            per_day: Some(2),
            bytes_per_day: Some(100),
            review: false,
        }];
        let none = |_: &str| (0, 0);
        assert!(within_limits(&book, &terms, &none, 100, 0, "d").is_ok());
        assert!(within_limits(&book, &terms, &none, 101, 0, "d").is_err());
        let one = |_: &str| (1, 10);
        assert!(within_limits(&book, &terms, &one, 90, 0, "d").is_ok());
        let two = |_: &str| (2, 10);
        let err = within_limits(&book, &terms, &two, 1, 0, "d").unwrap_err();
        assert!(
            err.contains("allows 2 exports a day and 2 were made today"),
            "{err}"
        );
    }
}
