//! Computations that travel to the data.
//!
//! A job (module, capability chain, holder-signed invocation, parameters) reaches a
//! node through its API or from another device. The node finds, from the catalogue,
//! the devices holding every store the capability lets the job read, picks one
//! ([`hearth_protocol::compute::choose`]), and either runs the job itself or forwards
//! it over `/hearth/compute/1` and relays the reply. Data never moves to the job.
//!
//! The executing node checks everything again itself: the chain, the invocation, the
//! module hash, the device, the run count, and on every host call the store, fields,
//! time range and granularity; then it signs a receipt naming the version of every
//! store read. Each step is an audit entry.

pub(crate) mod apps;
pub(crate) mod counter;
pub(crate) mod host;
mod nonces;
pub mod receipt;
pub mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::capability::{
    Accepted, Access, Actions, InvocationConfig, InvocationVerifier, ModuleHash, Resource,
    RevocationSet, Role, VerifiedChain, Verifier, VerifierConfig,
};
use hearth_protocol::compute::{
    Candidate, Job, JobKind, JobReply, Receipt, SignedReceipt, StoreVersion, choose, result_hash,
};
use hearth_protocol::statefile;
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::Event;

use crate::node::Node;
use host::{HostState, Permit};
use runtime::{Limits, RunError, Runtime};

/// Jobs forwarded here that may be queued or running at once; more are answered "busy".
const INBOUND_QUEUE: usize = 16;
/// The longest a job may wait for a device holding its data to come online.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// File (in the compute directory) counting runs per capability.
const RUNS_FILE: &str = "runs.json";

/// The node's compute service.
pub struct Compute {
    pub(crate) runtime: Arc<Runtime>,
    dir: std::path::PathBuf,
    verifier: Mutex<Verifier>,
    /// Replay protection for jobs this node relays.
    relayed: Mutex<InvocationVerifier>,
    /// Replay protection for jobs this node runs, kept on disk.
    executed: Mutex<(InvocationVerifier, nonces::Journal)>,
    runs: Mutex<BTreeMap<String, u64>>,
    /// Limits of every run (changed by a reload).
    limits: Mutex<Limits>,
    /// Runs at once (one per core keeps the node responsive).
    slots: tokio::sync::Semaphore,
    pub(crate) apps: apps::Apps,
    /// The jobs this device ran lately, newest last (since it started).
    recent: Mutex<std::collections::VecDeque<RecentJob>>,
}

/// Most jobs kept in [`Compute::recent`].
pub const MAX_RECENT: usize = 100;

/// A job this device ran (or refused, or failed), as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct RecentJob {
    /// The job's id.
    pub id: String,
    /// The capability's holder, as the job names it (checked only when `verified`).
    pub holder: String,
    /// Did its capability chain verify (it ran, or failed while running)?
    pub verified: bool,
    /// Where it came from: `local` (this device's API) or the device that sent it.
    pub from: String,
    /// The module's SHA-256 (hex).
    pub module_hash: String,
    /// The capability's id.
    pub cap_id: String,
    /// When it ended.
    pub finished: UnixMillis,
    /// `done`, `deployed`, or `refused: …`, `failed: …`, `unavailable: …`.
    pub outcome: String,
    /// Its receipt, when it ran to the end.
    pub receipt: Option<SignedReceipt>,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("dir", &self.dir)
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}

fn now() -> UnixMillis {
    crate::clock::now()
}

impl Compute {
    /// The limits every run gets now.
    pub fn limits(&self) -> Limits {
        *self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The jobs this device ran since it started, newest first (at most
    /// [`MAX_RECENT`]).
    pub fn recent(&self) -> Vec<RecentJob> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn remember(&self, job: RecentJob) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= MAX_RECENT {
            recent.pop_front();
        }
        recent.push_back(job);
    }

    /// Sets the limits of the runs that start from now on.
    pub fn set_limits(&self, limits: Limits) {
        *self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    /// The compute service keeping its files (compiled modules, run counts, apps)
    /// in `dir`.
    pub fn open(
        dir: &std::path::Path,
        owner: hearth_protocol::key::PublicKey,
        limits: Limits,
    ) -> Result<Self, String> {
        let runtime = Runtime::new(&dir.join("modules"))?;
        let runs = load_runs(&dir.join(RUNS_FILE))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        // A job may wait for a holder of its data before it reaches the device that
        // runs it: that device accepts invocations up to the longest wait old (and
        // remembers, across restarts, every one it accepted until then).
        let mut executed = InvocationVerifier::new(
            InvocationConfig::default().with_max_age(MAX_WAIT + Duration::from_secs(300)),
        );
        let journal = nonces::Journal::open(dir, &mut executed, now())?;
        Ok(Self {
            runtime,
            dir: dir.to_owned(),
            verifier: Mutex::new(Verifier::new(owner, VerifierConfig::default())),
            relayed: Mutex::new(InvocationVerifier::new(InvocationConfig::default())),
            executed: Mutex::new((executed, journal)),
            runs: Mutex::new(runs),
            limits: Mutex::new(limits),
            slots: tokio::sync::Semaphore::new(cores),
            apps: apps::Apps::open(&dir.join("apps")),
            recent: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    fn verify(&self, job: &Job, revocations: &RevocationSet) -> Result<VerifiedChain, String> {
        self.verify_chain(&job.chain, revocations)
    }

    fn verify_chain(
        &self,
        chain: &hearth_protocol::capability::Chain,
        revocations: &RevocationSet,
    ) -> Result<VerifiedChain, String> {
        self.verifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verify(chain, now(), revocations)
            .map_err(|err| format!("the capability is not valid: {err}"))
    }

    /// Counts a run under `chain` where its capability says runs are counted: here,
    /// or on the counting device ([`counter`]). `job` names the run in the counter's
    /// audit log.
    async fn count_run(
        &self,
        node: &Node,
        chain: &hearth_protocol::capability::Chain,
        job: &str,
    ) -> Result<u64, JobReply> {
        match counter::counter_of(chain).map_err(JobReply::Refused)? {
            Some(counter) if counter != node.config.name => {
                counter::reserve(node, &counter, job, chain).await
            }
            _ => self.count_runs(chain).map_err(JobReply::Refused),
        }
    }

    fn check_invocation(
        verifier: &Mutex<InvocationVerifier>,
        job: &Job,
        chain: &VerifiedChain,
    ) -> Result<(), String> {
        let request = Job::signed_request(&job.module_hash(), &job.params, &job.kind);
        verifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(now(), chain, &job.invocation, &request)
            .map_err(|err| format!("the request is not acceptable: {err}"))
    }

    /// Checks the invocation of a job this device is about to run, and keeps it on
    /// disk so that it is refused as a replay after a restart too.
    fn check_executed(&self, job: &Job, chain: &VerifiedChain) -> Result<(), String> {
        let mut executed = self.executed.lock().unwrap_or_else(|e| e.into_inner());
        let (verifier, journal) = &mut *executed;
        if let Some(start) = journal.not_before
            && job.invocation.invocation().timestamp < start
        {
            return Err(
                "the request is not acceptable: it was signed before this device restarted, \
                 and its record of the requests it ran is damaged; sign it again"
                    .into(),
            );
        }
        let request = Job::signed_request(&job.module_hash(), &job.params, &job.kind);
        verifier
            .check(now(), chain, &job.invocation, &request)
            .map_err(|err| format!("the request is not acceptable: {err}"))?;
        journal
            .append(&Accepted::of(chain, &job.invocation), verifier)
            .map_err(|err| {
                tracing::error!(error = %err, "cannot keep an accepted invocation; the job is refused");
                format!("run on compute refused: this device cannot keep its record of runs ({err})")
            })
    }

    /// Counts a run under `chain` and returns its number under the leaf. Every link
    /// counts, and each link's own `max_runs` holds for its count: delegating many
    /// sibling capabilities does not multiply the runs a parent grants. Kept on disk
    /// before the run; nothing is counted when a link's runs are used up.
    fn count_runs(&self, chain: &hearth_protocol::capability::Chain) -> Result<u64, String> {
        let mut held = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut runs = held.clone();
        for link in chain.links() {
            let id = link.id().to_string();
            let next = runs.get(&id).copied().unwrap_or(0) + 1;
            let max = link
                .capability()
                .grants
                .iter()
                .filter(|g| g.resource == Resource::Compute)
                .filter_map(|g| g.caveats.max_runs)
                .min();
            if let Some(max) = max
                && next > max
            {
                return Err(format!(
                    "run on compute refused: the {max} runs granted by capability {} are used up",
                    link.id().short()
                ));
            }
        }
        for link in chain.links() {
            *runs.entry(link.id().to_string()).or_insert(0) += 1;
        }
        let leaf = runs
            .get(&chain.leaf().id().to_string())
            .copied()
            .unwrap_or(1);
        // Nothing runs whose count is not on disk: a count lost in a crash would give
        // the run back.
        let path = self.dir.join(RUNS_FILE);
        serde_json::to_vec(&runs)
            .map_err(|err| err.to_string())
            .and_then(|bytes| {
                statefile::write_state(&path, RUNS_KIND, 1, &bytes)
                    .map_err(|err| format!("{}: {err}", path.display()))
            })
            .map_err(|err| {
                tracing::error!(error = %err, "cannot keep the run counts; the run is refused");
                format!("run on compute refused: this device cannot keep its run counts ({err})")
            })?;
        *held = runs;
        Ok(leaf)
    }

    pub(crate) fn runs_so_far(&self, cap: &str) -> u64 {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cap)
            .copied()
            .unwrap_or(0)
    }
}

/// What the run counts' state file header calls it.
const RUNS_KIND: &str = "runs";
/// The largest run-count file read.
const MAX_RUNS_BYTES: u64 = 64 << 20;

/// The run counts kept on disk. A file that cannot be read stops the node: starting
/// with no counts would give every capability its runs again.
fn load_runs(path: &std::path::Path) -> Result<BTreeMap<String, u64>, String> {
    let refuse = |reason: String| {
        format!(
            "{reason}. The node will not start on run counts it cannot read: capabilities \
             limited to a number of runs would run again. Restore the file from a backup; \
             or, knowing that such capabilities may run their count again here, delete it"
        )
    };
    match statefile::read_state(path, RUNS_KIND, MAX_RUNS_BYTES) {
        Ok(Some(state)) => serde_json::from_slice(&state.payload)
            .map_err(|err| refuse(format!("{} is damaged: {err}", path.display()))),
        Ok(None) => Ok(BTreeMap::new()),
        Err(err) => Err(refuse(err.to_string())),
    }
}

fn audit(
    node: &Node,
    actor: &str,
    action: &str,
    object: &str,
    cap: &str,
    outcome: &str,
    bytes: u64,
) {
    let _ = node.audit.record(Event {
        actor: actor.to_owned(),
        action: action.to_owned(),
        object: object.to_owned(),
        cap_id: Some(cap.to_owned()),
        outcome: cut(outcome, hearth_protocol::compute::MAX_REASON).to_owned(),
        bytes,
    });
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

pub(crate) async fn revocations(node: &Node) -> Result<RevocationSet, String> {
    let owner = node
        .config
        .mesh
        .as_ref()
        .map(|m| m.owner)
        .ok_or("this device is not part of a mesh")?;
    match node.mesh.get() {
        Some(mesh) => mesh.revocations().await.map_err(|err| err.to_string()),
        None => Ok(RevocationSet::new(owner)),
    }
}

/// The stores a job reads (or, for an app, watches): every listed store that a read
/// grant of the capability names.
fn stores_read(node: &Node, chain: &VerifiedChain, kind: &JobKind) -> Vec<String> {
    if let JobKind::Deploy { store, .. } = kind {
        return vec![store.clone()];
    }
    let mut names: BTreeSet<String> = node.stores.list().into_iter().map(|s| s.name).collect();
    if let Some(listing) = node.catalogue.as_ref().and_then(|c| c.read().ok()) {
        names.extend(listing.stores.into_values().map(|e| e.name));
    }
    names.remove(crate::catalogue::NAME);
    names
        .into_iter()
        .filter(|name| {
            let resource = Resource::Store(name.clone());
            chain
                .grants
                .iter()
                .any(|g| g.actions.contains(Actions::READ) && resource.within(&g.resource))
        })
        .collect()
}

/// The devices that hold every store in `stores`, as candidates for running a job.
async fn candidates(
    node: &Node,
    stores: &[String],
    allowed: Option<&BTreeSet<String>>,
) -> Vec<Candidate> {
    let me = node.config.name.clone();
    let my_role: Role = node.config.role.parse().unwrap_or(Role::Home);
    let devices = match node.mesh.get() {
        Some(mesh) => mesh.devices().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let listing = node
        .catalogue
        .as_ref()
        .and_then(|c| c.read().ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut consider = |name: &str, role: Role, online: bool, local: bool| {
        if allowed.is_some_and(|a| !a.contains(name)) {
            return;
        }
        let mut fresh = true;
        for store in stores {
            let holds = if local {
                node.stores.get(store).is_ok()
            } else {
                listing
                    .id_of(store)
                    .and_then(|id| listing.stores.get(id))
                    .is_some_and(|e| e.policy().holds(name, role, &e.origin))
            };
            if !holds {
                return;
            }
            // Fresh: this device's last reported digest equals the origin's.
            if let Some(id) = listing.id_of(store)
                && let (Some(entry), Some(stats)) =
                    (listing.stores.get(id), listing.replicas.get(id))
                && entry.origin != name
                && let (Some(origin), Some(mine)) = (stats.get(&entry.origin), stats.get(name))
                && origin.digest != mine.digest
            {
                fresh = false;
            }
        }
        out.push(Candidate {
            device: name.to_owned(),
            role,
            online,
            fresh,
            local,
        });
    };
    consider(&me, my_role, true, true);
    for d in devices {
        if d.name == me || d.revoked {
            continue;
        }
        let Ok(role) = d.role.parse() else { continue };
        consider(&d.name, role, d.online, false);
    }
    out
}

/// Takes a job from the API: finds where it runs, runs or forwards it, and returns
/// the reply. Waits up to `wait` for a holder of the data to come online.
pub(crate) async fn submit(node: &Arc<Node>, bytes: Vec<u8>, wait: Duration) -> JobReply {
    let Some(compute) = node.compute.as_ref() else {
        return JobReply::Unavailable("this node does not run computations".into());
    };
    let job = match Job::decode(&bytes) {
        Ok(job) => job,
        Err(err) => return JobReply::Refused(format!("the job is malformed: {err}")),
    };
    let id = job.id().to_string();
    let cap = job.chain.leaf().id().to_string();
    let holder = job.chain.leaf().capability().audience.to_string();
    let checked = match revocations(node).await {
        Ok(revocations) => compute.verify(&job, &revocations).and_then(|chain| {
            Compute::check_invocation(&compute.relayed, &job, &chain).map(|()| chain)
        }),
        Err(reason) => return JobReply::Unavailable(reason),
    };
    let refuse = |reason: String| {
        audit(
            node,
            &holder,
            "compute.job",
            &id,
            &cap,
            &format!("refused: {reason}"),
            0,
        );
        JobReply::Refused(reason)
    };
    let chain = match checked {
        Ok(chain) => chain,
        Err(reason) => return refuse(reason),
    };
    let stores = stores_read(node, &chain, &job.kind);
    if stores.is_empty() {
        return refuse("the capability grants reading no store that exists in this mesh".into());
    }
    let allowed = chain
        .grants
        .iter()
        .find(|g| g.resource == Resource::Compute)
        .and_then(|g| g.caveats.devices.clone());
    let deadline = tokio::time::Instant::now() + wait;
    let mut stopping = node.stopping.subscribe();
    loop {
        let found = candidates(node, &stores, allowed.as_ref()).await;
        let target = choose(&found).cloned();
        match target {
            Some(target) if target.local => {
                return execute(node, compute, job, "local").await;
            }
            Some(target) => {
                audit(
                    node,
                    &holder,
                    "compute.forward",
                    &id,
                    &cap,
                    &format!("allowed: to {}", target.device),
                    bytes.len() as u64,
                );
                let Some(mesh) = node.mesh.get() else {
                    return JobReply::Unavailable("the mesh is not running".into());
                };
                match mesh.forward_job(&target.device, bytes.clone()).await {
                    Ok(reply) => {
                        return JobReply::decode(&reply).unwrap_or_else(|err| {
                            JobReply::Failed(format!(
                                "device {} sent a malformed reply: {err}",
                                target.device
                            ))
                        });
                    }
                    Err(err) => {
                        // Once the job left, it may have run there: it is not sent again
                        // (that device would refuse it as a replay anyway).
                        let sent = !matches!(err, crate::mesh::MeshError::NotConnected(_));
                        if sent {
                            return JobReply::Unavailable(format!(
                                "the job went to device {} but no answer came back: {err}",
                                target.device
                            ));
                        }
                        if tokio::time::Instant::now() >= deadline {
                            return JobReply::Unavailable(format!(
                                "device {} holds the data but went offline: {err}",
                                target.device
                            ));
                        }
                        tracing::info!(device = %target.device, "the device went offline before the job reached it; looking again");
                    }
                }
            }
            None if tokio::time::Instant::now() >= deadline => {
                let holders: Vec<String> = found.iter().map(|c| c.device.clone()).collect();
                let reason = if holders.is_empty() {
                    format!(
                        "no device {}holds all of {} ",
                        if allowed.is_some() {
                            "the capability allows "
                        } else {
                            ""
                        },
                        stores.join(", ")
                    )
                } else {
                    format!(
                        "no device holding {} is online (holders: {}); pass --wait to wait for one",
                        stores.join(", "),
                        holders.join(", ")
                    )
                };
                let reason = reason.trim_end().to_owned();
                audit(
                    node,
                    &holder,
                    "compute.job",
                    &id,
                    &cap,
                    &format!("unavailable: {reason}"),
                    0,
                );
                return JobReply::Unavailable(reason);
            }
            None => {}
        }
        // Devices come and go; look again shortly, unless the node is stopping.
        if *stopping.borrow() {
            return JobReply::Unavailable("the node is stopping".into());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// Serves jobs that other devices forward here.
pub(crate) async fn serve_forwarded(node: Arc<Node>) {
    let (Some(mesh), Some(_)) = (node.mesh.get(), node.compute.as_ref()) else {
        return;
    };
    let (sender, mut jobs) = tokio::sync::mpsc::channel::<crate::mesh::InboundJob>(INBOUND_QUEUE);
    if mesh.serve_jobs(sender).await.is_err() {
        return;
    }
    let room = Arc::new(tokio::sync::Semaphore::new(INBOUND_QUEUE));
    while let Some(inbound) = jobs.recv().await {
        let Ok(place) = room.clone().try_acquire_owned() else {
            let busy = JobReply::Unavailable(format!(
                "device {} is busy with {INBOUND_QUEUE} other jobs; try again shortly",
                node.config.name
            ));
            let _ = inbound.reply.send(busy.encode());
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _place = place;
            if let Some(compute) = node.compute.as_ref()
                && counter::is_reservation(&inbound.bytes)
            {
                let answer =
                    counter::count_for(&node, compute, &inbound.from, &inbound.bytes).await;
                let _ = inbound.reply.send(answer);
                return;
            }
            let reply = match (Job::decode(&inbound.bytes), node.compute.as_ref()) {
                (Ok(job), Some(compute)) => execute(&node, compute, job, &inbound.from).await,
                (Err(err), _) => JobReply::Refused(format!("the job is malformed: {err}")),
                (_, None) => JobReply::Unavailable("this node does not run computations".into()),
            };
            let _ = inbound.reply.send(reply.encode());
        });
    }
}

/// Runs (or, for a deploy, installs) `job` here, checking everything. `recipient` is
/// who gets the result: `local`, or the device that forwarded it. Counted in the
/// metrics by outcome.
pub(crate) async fn execute(
    node: &Arc<Node>,
    compute: &Compute,
    job: Job,
    recipient: &str,
) -> JobReply {
    let id = job.id().to_string();
    let holder = job.chain.leaf().capability().audience.to_string();
    let module_hash = hex::encode(job.module_hash().0);
    let cap_id = job.chain.leaf().id().to_string();
    let reply = execute_checked(node, compute, job, recipient).await;
    node.metrics.job(&reply);
    let reason = |why: &str| cut(why, hearth_protocol::compute::MAX_REASON).to_owned();
    let (outcome, receipt) = match &reply {
        JobReply::Done { receipt, .. } => ("done".to_owned(), Some((**receipt).clone())),
        JobReply::Deployed { app, .. } => (format!("deployed: app {app}"), None),
        JobReply::Refused(why) => (format!("refused: {}", reason(why)), None),
        JobReply::Unavailable(why) => (format!("unavailable: {}", reason(why)), None),
        JobReply::Failed(why) => (format!("failed: {}", reason(why)), None),
    };
    compute.remember(RecentJob {
        id,
        holder,
        verified: matches!(
            reply,
            JobReply::Done { .. } | JobReply::Deployed { .. } | JobReply::Failed(_)
        ),
        from: recipient.to_owned(),
        module_hash,
        cap_id,
        finished: now(),
        outcome,
        receipt,
    });
    reply
}

async fn execute_checked(
    node: &Arc<Node>,
    compute: &Compute,
    job: Job,
    recipient: &str,
) -> JobReply {
    let id = job.id();
    let id_text = id.to_string();
    let cap_id = job.chain.leaf().id();
    let cap = cap_id.to_string();
    let holder = job.chain.leaf().capability().audience.to_string();
    let refuse = |reason: String| {
        audit(
            node,
            &holder,
            "compute.job",
            &id_text,
            &cap,
            &format!("refused: {reason}"),
            0,
        );
        JobReply::Refused(reason)
    };
    let fail = |reason: String| {
        audit(
            node,
            &holder,
            "compute.job",
            &id_text,
            &cap,
            &format!("failed: {reason}"),
            0,
        );
        JobReply::Failed(reason)
    };
    let revocations = match revocations(node).await {
        Ok(r) => r,
        Err(reason) => return JobReply::Unavailable(reason),
    };
    let chain = match compute.verify(&job, &revocations) {
        Ok(chain) => chain,
        Err(reason) => return refuse(reason),
    };
    if let Err(reason) = compute.check_executed(&job, &chain) {
        return refuse(reason);
    }
    let module_hash = job.module_hash();
    let device = node.config.name.clone();
    let run_number = compute.runs_so_far(&cap) + 1;
    let permit = Permit {
        grants: chain.grants.clone(),
        module_hash,
        device: device.clone(),
        run_number,
        job: id_text.clone(),
        exports: Arc::new(crate::export::ChainExports::of(&job.chain)),
    };
    if let Err(reason) = permit.check(Access::new(&Resource::Compute, Actions::RUN)) {
        return refuse(reason);
    }
    if let JobKind::Deploy { app, store } = &job.kind {
        let resource = Resource::Store(store.clone());
        // Following a store reveals nothing by itself (every read is checked when it
        // happens): no fields, no raw readings, the present only.
        let nothing = BTreeSet::new();
        let follow = Access {
            fields: Some(&nothing),
            aggregate: true,
            time_range: Some(hearth_protocol::capability::TimeRange {
                start: now(),
                end: now().saturating_add(Duration::from_millis(1)),
            }),
            ..Access::new(&resource, Actions::SUBSCRIBE)
        };
        if let Err(reason) = permit.check(follow) {
            return refuse(reason);
        }
        if !apps::valid_name(app) {
            return refuse(format!(
                "{:?} is not a valid app name (letters, digits, '-', '_', '.'; at most 64)",
                cut(app, 80)
            ));
        }
        // Compiling takes seconds for a large module: not on the async workers.
        let runtime = compute.runtime.clone();
        let module = job.module.clone();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&module)).await;
        match prepared {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return fail(err.to_string()),
            Err(err) => return fail(format!("compiling the module was lost: {err}")),
        }
        return match apps::deploy(node, &job, app, store, &chain) {
            Ok(()) => {
                audit(
                    node,
                    &holder,
                    "compute.deploy",
                    app,
                    &cap,
                    &format!("allowed: on {device}, watching {store}"),
                    job.module.len() as u64,
                );
                JobReply::Deployed {
                    app: app.clone(),
                    device,
                }
            }
            Err(reason) => refuse(reason),
        };
    }
    // Counted before the run, where the capability says its runs are counted (for a
    // run-limited one, perhaps another device); if other runs under the same
    // capability were counted meanwhile, this one's number is checked again.
    let run_number = match compute.count_run(node, &job.chain, &id_text).await {
        Ok(n) => n,
        Err(JobReply::Refused(reason)) => return refuse(reason),
        Err(other) => {
            if let JobReply::Unavailable(reason) = &other {
                audit(
                    node,
                    &holder,
                    "compute.job",
                    &id_text,
                    &cap,
                    &format!("unavailable: {reason}"),
                    0,
                );
            }
            return other;
        }
    };
    let permit = Permit {
        run_number,
        ..permit
    };
    if let Err(reason) = permit.check(Access::new(&Resource::Compute, Actions::RUN)) {
        return refuse(reason);
    }
    audit(
        node,
        &holder,
        "compute.job",
        &id_text,
        &cap,
        &format!("allowed: module {} from {recipient}", short(&module_hash)),
        job.module.len() as u64,
    );
    let outcome = run_module(
        node,
        compute,
        &job.module,
        permit.clone(),
        &job.params,
        None,
    )
    .await;
    let mut outcome = match outcome {
        Ok(outcome) => outcome,
        Err(RunError::Refused(reason)) => return refuse(reason),
        Err(err @ (RunError::Module(_) | RunError::Failed(_))) => {
            return fail(err.to_string());
        }
    };
    audit_reads(node, &holder, &cap, &id_text, &outcome.state);
    let result = match outcome.result {
        Ok(result) => result,
        Err(message) => {
            // The computation's own words are a result too: no longer than a result may
            // be (else an aggregate-only grant could leak readings through errors).
            let allowed = chain
                .grants
                .iter()
                .filter(|g| g.resource == Resource::Compute)
                .filter_map(|g| g.caveats.max_result_bytes)
                .min()
                .unwrap_or(1024)
                .min(1024);
            return fail(format!(
                "the computation failed: {}",
                cut(&message, usize::try_from(allowed).unwrap_or(1024))
            ));
        }
    };
    let size = Access {
        result_bytes: result.len() as u64,
        ..Access::new(&Resource::Compute, Actions::RUN)
    };
    if let Err(reason) = permit.check(size) {
        audit(
            node,
            &holder,
            "compute.result",
            &id_text,
            &cap,
            &format!("refused: {reason}"),
            result.len() as u64,
        );
        return JobReply::Refused(reason);
    }
    // The exports are kept (durably) before the job reports success, or the job does
    // not succeed.
    let exports = std::mem::take(&mut outcome.state.exports);
    if !exports.is_empty()
        && let Err(reason) = queue_exports(
            node,
            &holder,
            &format!("job:{id_text}"),
            &job.chain,
            exports,
        )
        .await
    {
        return JobReply::Refused(reason);
    }
    let hash = result_hash(&result);
    audit(
        node,
        &holder,
        "compute.result",
        &format!("{id_text} to {recipient}"),
        &cap,
        &format!("allowed: sha256 {}", hex::encode(hash)),
        result.len() as u64,
    );
    let Some(setup) = node.config.mesh.as_ref() else {
        return JobReply::Failed("this device has no certificate to sign a receipt with".into());
    };
    let receipt = Receipt {
        job: id,
        ran_on: device,
        node: node.config.node_key.public(),
        module_hash,
        cap_id,
        data_heads: outcome
            .state
            .reads
            .iter()
            .map(|(store, stats)| StoreVersion {
                store: store.clone(),
                digest: stats.digest,
            })
            .collect(),
        result_hash: hash,
        fuel: outcome.fuel,
        finished: now(),
    }
    .sign(node.config.node_key.secret(), setup.certificate.clone());
    JobReply::Done {
        result,
        receipt: Box::new(receipt),
    }
}

/// Writes a successful run's exports to the gateway's outbox (all or none), on a
/// blocking thread: the journal is synced before this returns.
pub(crate) async fn queue_exports(
    node: &Arc<Node>,
    holder: &str,
    source: &str,
    chain: &hearth_protocol::capability::Chain,
    exports: Vec<crate::export::Pending>,
) -> Result<Vec<String>, String> {
    let Some(gateway) = node.exports.clone() else {
        return Err("this device has no export gateway".into());
    };
    let (node, holder, source, chain) = (
        node.clone(),
        holder.to_owned(),
        source.to_owned(),
        chain.clone(),
    );
    tokio::task::spawn_blocking(move || gateway.enqueue(&node, &holder, &source, &chain, exports))
        .await
        .map_err(|err| format!("queuing the exports was lost: {err}"))?
}

fn short(hash: &ModuleHash) -> String {
    hex::encode(hash.0).chars().take(16).collect()
}

/// One audit entry per store a run read: records and bytes handed over.
fn audit_reads(node: &Node, holder: &str, cap: &str, job: &str, state: &HostState) {
    for (store, stats) in &state.reads {
        audit(
            node,
            holder,
            "compute.read",
            store,
            cap,
            &format!("allowed: job {job}, {} records", stats.records),
            stats.bytes,
        );
    }
    for (store, n) in &state.appended {
        audit(
            node,
            holder,
            "compute.write",
            store,
            cap,
            &format!("allowed: job {job}, {n} readings"),
            0,
        );
    }
}

/// Runs `module` on a blocking thread, one run per core at a time.
pub(crate) async fn run_module(
    node: &Arc<Node>,
    compute: &Compute,
    module: &[u8],
    permit: Permit,
    params: &str,
    derived: Option<Arc<dyn host::DerivedStores>>,
) -> Result<runtime::Outcome, RunError> {
    let _slot = compute
        .slots
        .acquire()
        .await
        .map_err(|_| RunError::Failed("the node is stopping".into()))?;
    let runtime = compute.runtime.clone();
    let limits = compute.limits();
    let state = HostState::new(
        permit,
        node.stores.clone(),
        limits.memory_bytes,
        derived,
        node.exports.clone(),
    );
    let module = module.to_vec();
    let params = params.to_owned();
    tokio::task::spawn_blocking(move || runtime.run(&module, state, &params, limits))
        .await
        .map_err(|err| RunError::Failed(format!("the run was lost: {err}")))?
}
