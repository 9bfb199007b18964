//! Metrics for Prometheus, served at `GET /v1/metrics` on the local API (with the API
//! key) when `[metrics] enabled = true` or `--metrics`; off by default.
//!
//! Counters (sync traffic, jobs, audit entries) count from the node's start; gauges
//! (peers, sync state, store sizes, drivers, memory) are read when scraped. The text is
//! the OpenMetrics format of `prometheus-client`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::node::Node;

/// The outcomes `hearth_exports_total` always lists.
const EXPORT_OUTCOMES: [&str; 7] = [
    "queued",
    "refused",
    "delivered",
    "retried",
    "failed",
    "dropped",
    "expired",
];

/// The content type of the metrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the node counts as it runs.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sync traffic by store id and direction (`true` sent): bytes, messages.
    sync: Mutex<BTreeMap<(String, bool), (u64, u64)>>,
    /// Jobs executed here, by outcome.
    jobs: Mutex<BTreeMap<&'static str, u64>>,
    /// Exports by what happened to them.
    exports: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Counts one sync message of `bytes` for the store with sync id `sync_id`.
    pub(crate) fn sync(&self, sync_id: &str, sent: bool, bytes: u64) {
        let id = hearth_stores::replica::parse_sync_id(sync_id).map_or(sync_id, |(id, _)| id);
        let mut sync = self
            .sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Looked up without allocating: the entry exists after a store's first message.
        if let Some(entry) = sync.get_mut(&(id.to_owned(), sent)) {
            entry.0 += bytes;
            entry.1 += 1;
        } else {
            sync.insert((id.to_owned(), sent), (bytes, 1));
        }
    }

    /// Counts one export event: `queued`, `refused`, `delivered`, `retried`,
    /// `failed`, `dropped` or `expired`.
    pub(crate) fn export(&self, outcome: &'static str) {
        *self
            .exports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(outcome)
            .or_default() += 1;
    }

    /// Counts one job executed here, by its outcome.
    pub(crate) fn job(&self, reply: &hearth_protocol::compute::JobReply) {
        use hearth_protocol::compute::JobReply;
        let outcome = match reply {
            JobReply::Done { .. } => "done",
            JobReply::Deployed { .. } => "deployed",
            JobReply::Refused(_) => "refused",
            JobReply::Unavailable(_) => "unavailable",
            JobReply::Failed(_) => "failed",
        };
        *self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(outcome)
            .or_default() += 1;
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: String,
    device: String,
    role: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    state: String,
    path: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreKindLabels {
    store: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    store: String,
    device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditLabels {
    action: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverLabels {
    driver: String,
    kind: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverNameLabels {
    driver: String,
}

/// A gauge or counter value from a count (saturating: a gauge is an `i64`).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// This process's resident memory, from `/proc/self/statm` (Linux), in bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Registers `family` under `name` (with `unit` appended, and `_total` for counters).
fn add<M>(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: M)
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric),
        None => registry.register(name, help, metric),
    }
}

/// How long a scrape waits for the mesh and the replication loop (busy writing, say)
/// before it answers without what they know.
const WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The metrics text of `node` now.
pub async fn render(node: &std::sync::Arc<Node>) -> Result<String, std::fmt::Error> {
    let mut partial = false;
    let devices = match node.mesh.get() {
        Some(mesh) => match tokio::time::timeout(WAIT, mesh.devices()).await {
            Ok(devices) => devices.unwrap_or_default(),
            Err(_) => {
                partial = true;
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let sync_state = match node.replication.get() {
        Some(handle) => match tokio::time::timeout(WAIT, handle.status()).await {
            Ok(state) => state.unwrap_or_default(),
            Err(_) => {
                partial = true;
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let node = node.clone();
    tokio::task::spawn_blocking(move || encode(&node, &devices, &sync_state, partial))
        .await
        .map_err(|_| std::fmt::Error)?
}

fn encode(
    node: &Node,
    devices: &[crate::mesh::DeviceStatus],
    sync_state: &[crate::replication::StoreSync],
    partial: bool,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let gauge = Gauge::<i64>::default();
    gauge.set(i64::from(partial));
    add(
        &mut registry,
        "hearth_metrics_partial",
        "1 when the mesh or the replication loop did not answer in time: peers and sync state are missing from this scrape.",
        None,
        gauge,
    );

    let info = Family::<InfoLabels, Gauge>::default();
    info.get_or_create(&InfoLabels {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        device: node.config.name.clone(),
        role: node.config.role.clone(),
    })
    .set(1);
    add(
        &mut registry,
        "hearth_node_info",
        "This node: its version, device name and role.",
        None,
        info,
    );

    // Peers: every other device of the mesh, by state and how it is reached.
    let peers = Family::<PeerLabels, Gauge>::default();
    for state in ["connected", "offline", "revoked"] {
        for path in ["direct", "relayed", "none"] {
            let _ = peers.get_or_create(&PeerLabels {
                state: state.into(),
                path: path.into(),
            });
        }
    }
    for d in devices.iter().filter(|d| d.name != node.config.name) {
        let state = if d.revoked {
            "revoked"
        } else if d.online {
            "connected"
        } else {
            "offline"
        };
        let path = d.path.clone().unwrap_or_else(|| "none".into());
        peers
            .get_or_create(&PeerLabels {
                state: state.into(),
                path,
            })
            .inc();
    }
    add(
        &mut registry,
        "hearth_peers",
        "Other devices of the mesh, by state and path.",
        None,
        peers,
    );

    // Stores held here.
    let listed = node.stores.list();
    let names: BTreeMap<&str, &str> = listed
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str()))
        .collect();
    let size = Family::<StoreKindLabels, Gauge>::default();
    let records = Family::<StoreKindLabels, Gauge>::default();
    let broken = Family::<StoreLabels, Gauge>::default();
    for s in listed.iter().filter(|s| s.name != crate::catalogue::NAME) {
        let labels = StoreKindLabels {
            store: s.name.clone(),
            kind: s.kind.as_str().into(),
        };
        size.get_or_create(&labels).set(int(s.bytes));
        if let Some(n) = s.records {
            records.get_or_create(&labels).set(int(n));
        }
        broken
            .get_or_create(&StoreLabels {
                store: s.name.clone(),
            })
            .set(i64::from(s.error.is_some()));
    }
    add(
        &mut registry,
        "hearth_store_size",
        "Bytes each store takes on this device's disk.",
        Some(Unit::Bytes),
        size,
    );
    add(
        &mut registry,
        "hearth_store_records",
        "Records (readings or keys) of each store held here.",
        None,
        records,
    );
    add(
        &mut registry,
        "hearth_store_unreadable",
        "1 when the replica here cannot be read.",
        None,
        broken,
    );

    // Sync state: every device each store's policy places it on.
    let in_sync = Family::<ReplicaLabels, Gauge>::default();
    let lag = Family::<ReplicaLabels, Gauge>::default();
    for store in crate::api::store_status(node, &listed, devices, sync_state) {
        for r in store.replicas {
            let labels = ReplicaLabels {
                store: store.name.clone(),
                device: r.device,
            };
            in_sync.get_or_create(&labels).set(i64::from(r.in_sync));
            if let Some(n) = r.lag {
                lag.get_or_create(&labels).set(int(n));
            }
        }
    }
    add(
        &mut registry,
        "hearth_sync_in_sync",
        "1 when that device confirmed holding what this one holds of the store.",
        None,
        in_sync,
    );
    add(
        &mut registry,
        "hearth_sync_lag_records",
        "Records of the store that device lacks, when known.",
        None,
        lag,
    );

    // Sync traffic since the start.
    let sent = Family::<StoreLabels, Counter>::default();
    let received = Family::<StoreLabels, Counter>::default();
    let sent_messages = Family::<StoreLabels, Counter>::default();
    let received_messages = Family::<StoreLabels, Counter>::default();
    for ((id, out), (bytes, messages)) in node
        .metrics
        .sync
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        let store = StoreLabels {
            store: names
                .get(id.as_str())
                .map_or_else(|| id.clone(), |n| (*n).to_owned()),
        };
        let (b, m) = if *out {
            (&sent, &sent_messages)
        } else {
            (&received, &received_messages)
        };
        b.get_or_create(&store).inc_by(*bytes);
        m.get_or_create(&store).inc_by(*messages);
    }
    add(
        &mut registry,
        "hearth_sync_sent",
        "Sync bytes sent to other devices, by store.",
        Some(Unit::Bytes),
        sent,
    );
    add(
        &mut registry,
        "hearth_sync_received",
        "Sync bytes received from other devices, by store.",
        Some(Unit::Bytes),
        received,
    );
    add(
        &mut registry,
        "hearth_sync_sent_messages",
        "Sync messages sent, by store.",
        None,
        sent_messages,
    );
    add(
        &mut registry,
        "hearth_sync_received_messages",
        "Sync messages received, by store.",
        None,
        received_messages,
    );

    // Jobs executed here.
    let jobs = Family::<OutcomeLabels, Counter>::default();
    for outcome in ["done", "deployed", "refused", "unavailable", "failed"] {
        let _ = jobs.get_or_create(&OutcomeLabels {
            outcome: outcome.into(),
        });
    }
    for (outcome, n) in node
        .metrics
        .jobs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        jobs.get_or_create(&OutcomeLabels {
            outcome: (*outcome).into(),
        })
        .inc_by(*n);
    }
    add(
        &mut registry,
        "hearth_jobs",
        "Computations executed on this device, by outcome.",
        None,
        jobs,
    );

    // Exports by outcome, and what waits in the outbox.
    let exports = Family::<OutcomeLabels, Counter>::default();
    for outcome in EXPORT_OUTCOMES {
        let _ = exports.get_or_create(&OutcomeLabels {
            outcome: outcome.into(),
        });
    }
    for (outcome, n) in node
        .metrics
        .exports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        exports
            .get_or_create(&OutcomeLabels {
                outcome: (*outcome).into(),
            })
            .inc_by(*n);
    }
    add(
        &mut registry,
        "hearth_exports",
        "Exports from this device's gateway, by what happened (queued, refused, delivered, retried, failed, dropped, expired).",
        None,
        exports,
    );
    if let Some(gateway) = &node.exports {
        let waiting = Family::<StateLabels, Gauge>::default();
        for state in ["held", "queued"] {
            let _ = waiting.get_or_create(&StateLabels {
                state: state.into(),
            });
        }
        let (_, list) = gateway.list();
        for e in list
            .iter()
            .filter(|e| e.state == "held" || e.state == "queued")
        {
            waiting
                .get_or_create(&StateLabels {
                    state: e.state.clone(),
                })
                .inc();
        }
        add(
            &mut registry,
            "hearth_exports_waiting",
            "Exports in the outbox waiting for the owner's release (held) or to be sent (queued).",
            None,
            waiting,
        );
    }

    // Audit entries written since the start.
    let audit = Family::<AuditLabels, Counter>::default();
    for (action, outcome, n) in node.audit.written() {
        audit
            .get_or_create(&AuditLabels {
                action,
                outcome: outcome.into(),
            })
            .inc_by(n);
    }
    add(
        &mut registry,
        "hearth_audit_entries",
        "Audit entries written, by action and outcome.",
        None,
        audit,
    );

    // Drivers.
    let state = Family::<DriverLabels, Gauge>::default();
    let driver_records = Family::<DriverNameLabels, Counter>::default();
    let failing = Family::<DriverNameLabels, Gauge>::default();
    for d in node.drivers.list() {
        state
            .get_or_create(&DriverLabels {
                driver: d.name.clone(),
                kind: d.kind,
                state: d.state,
            })
            .set(1);
        let name = DriverNameLabels { driver: d.name };
        driver_records.get_or_create(&name).inc_by(d.records);
        failing
            .get_or_create(&name)
            .set(i64::from(d.last_error.is_some()));
    }
    add(
        &mut registry,
        "hearth_driver_state",
        "1 for each driver's current state.",
        None,
        state,
    );
    add(
        &mut registry,
        "hearth_driver_records",
        "Records each driver wrote since the node started.",
        None,
        driver_records,
    );
    add(
        &mut registry,
        "hearth_driver_error",
        "1 while a driver's last attempt failed.",
        None,
        failing,
    );

    // The process.
    if let Some(rss) = resident_memory_bytes() {
        let gauge = Gauge::<i64>::default();
        gauge.set(int(rss));
        add(
            &mut registry,
            "process_resident_memory",
            "Resident memory of the node process.",
            Some(Unit::Bytes),
            gauge,
        );
    }

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}
