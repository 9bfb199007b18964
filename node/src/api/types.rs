//! The local API's requests and answers, as the node writes them and the `hearth`
//! command reads them: one set of types for both sides, so a field renamed on one side
//! is renamed on the other. `docs/api.md` is checked against these by a test
//! (`api::types::tests::the_api_document_names_every_field`).
//!
//! Requests refuse fields they do not know (a typo is an error, not a default); answers
//! accept them, so a newer node can add fields without breaking an older CLI.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::audit_copy::CopyReport;
pub use crate::catalogue::ReplicaStats;
pub use crate::drivers::Listed as Driver;
pub use crate::mesh::{DeviceStatus, PeerStatus};
pub use hearth_stores::audit::{Entry as AuditEntry, Finding};
pub use hearth_stores::{Kind, Reading};

/// Every error: `{"error", "code"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in a sentence.
    pub error: String,
    /// `invalid`, `refused`, `not_found`, … (see docs/api.md).
    pub code: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This node's peer id.
    pub peer_id: String,
    /// This device's name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// The addresses the mesh listens on.
    pub listen: Vec<String>,
    /// Admitted peers, connected or not.
    pub peers: Vec<PeerStatus>,
    /// Each store held here and the sync state of each device its policy places it on.
    pub stores: Vec<StoreSync>,
}

/// One store of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSync {
    /// The store.
    pub name: String,
    /// This device first, then every other device the policy places it on.
    pub replicas: Vec<ReplicaSync>,
}

/// One device's replica of a store, as seen from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSync {
    /// The device.
    pub device: String,
    /// Did that device confirm our digest (this device: is its replica healthy)?
    pub in_sync: bool,
    /// Records it lacks, when known.
    pub lag: Option<u64>,
    /// Is it connected now (absent for this device)?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Does that device hold the store sealed (ciphertext only)? Then `in_sync` says
    /// whether it has stored everything this device holds. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<bool>,
}

/// `GET /v1/stores`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stores {
    /// Every store of the mesh, by name.
    pub stores: Vec<StoreInfo>,
}

/// The query of `GET /v1/stores`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `hypercat` for a HyperCat 3.0 catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A store of the mesh (also the answer to `POST /v1/stores`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: String,
    /// kv, timeseries or doc.
    pub kind: Kind,
    /// The device it was created on.
    pub origin: String,
    /// Its placement policy.
    pub replicas: String,
    /// The devices that report holding it.
    pub held_by: Vec<String>,
    /// Does this device hold it?
    pub here: bool,
    /// Records (readings or keys): here, or the most any holder reports.
    pub records: Option<u64>,
    /// Bytes on disk: here, or the most any holder reports.
    pub bytes: Option<u64>,
    /// Why the replica here cannot be read, if it cannot.
    pub error: Option<String>,
    /// The driver that writes it.
    pub source: Option<String>,
    /// The unit of its readings.
    pub unit: Option<String>,
    /// What it holds, in words.
    pub description: Option<String>,
    /// What each holder last wrote to the catalogue, by device.
    pub heads: Option<BTreeMap<String, ReplicaStats>>,
    /// Its retention (ms), if any.
    pub keep_ms: Option<u64>,
    /// How many erasures the catalogue holds for it.
    pub erasures: u64,
}

/// `POST /v1/stores`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStore {
    /// Its name.
    pub name: String,
    /// kv, timeseries or doc.
    pub kind: String,
    /// A timeseries store's chunk window (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Placement policy; default `origin,role:home`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
    /// What the store holds, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A doc store's text fields (dotted paths), merged character by character.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
    /// A timeseries store's retention (ms); needs the owner's authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_ms: Option<u64>,
    /// A capability chain (`hcap1:` text) held by this device's key that allows
    /// `place` on the store, for a placement the device may not sign alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// `POST /v1/stores/{name}/policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// The new placement policy, if it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
    /// The new retention: absent if it does not change, `null` for none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "present_or_null"
    )]
    pub keep_ms: Option<Option<u64>>,
    /// A capability chain (`hcap1:` text) held by this device's key that allows
    /// `place` on the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
mod present_or_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` hands over a reference to the field
    pub(super) fn serialize<S: Serializer, T: Serialize>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

/// The answer to `POST /v1/stores/{name}/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The store.
    pub name: String,
    /// Its id.
    pub id: String,
    /// Its placement policy now.
    pub replicas: String,
    /// Its retention now (ms), if any.
    pub keep_ms: Option<u64>,
}

/// `POST /v1/stores/{name}/delete`: a range and tag of readings, or keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// Readings at or after this instant (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Readings before this instant (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// `TAG=VALUE`: readings whose value has this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Keys of a kv or doc store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// The answer to `POST /v1/stores/{name}/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    /// The store.
    pub name: String,
    /// Its id.
    pub id: String,
    /// The erasure's number (from 1).
    pub erasure: u64,
    /// What it deletes, in words.
    pub selector: String,
    /// Readings (or values) it deleted here; `null` when this device holds no replica.
    pub deleted_here: Option<u64>,
}

/// The query of `DELETE /v1/stores/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// A capability chain (`hcap1:` text) held by this device's key that allows
    /// `remove` on the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// The answer to removing a store or a driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Its name.
    pub removed: String,
}

/// `GET /v1/stores/{name}/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// Every key, in order.
    pub keys: Vec<String>,
}

/// A key and its value (`GET` and `PATCH` of a key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value (after the patch, for `PATCH`).
    pub value: Value,
}

/// The answer to `PUT` of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// The key written.
    pub key: String,
}

/// The answer to `DELETE` of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedKey {
    /// The key deleted.
    pub deleted: String,
}

/// The answer to `POST /v1/stores/{name}/records` (whose body is `[Reading]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// How many readings were appended.
    pub appended: u64,
}

/// The query of `GET /v1/stores/{name}/records`: which readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// `all` (default), `latest`, `earliest`, `last`, `first`, `since`, `range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<String>,
    /// Count for `last` and `first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Start (ms) for `since` and `range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// End (ms, excluded) for `range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// `TAG=VALUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// The query of `GET /v1/stores/{name}/aggregate`: which readings, and what of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateQuery {
    /// As in [`ReadQuery`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<String>,
    /// As in [`ReadQuery`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// As in [`ReadQuery`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// As in [`ReadQuery`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// As in [`ReadQuery`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `count`, `sum`, `min`, `max`, `mean`, `median` or `sd`.
    #[serde(rename = "fn", default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Dotted field path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl AggregateQuery {
    /// The readings it picks.
    pub fn read(&self) -> ReadQuery {
        ReadQuery {
            select: self.select.clone(),
            n: self.n,
            from: self.from,
            to: self.to,
            filter: self.filter.clone(),
        }
    }

    /// An aggregate of the readings `read` picks.
    pub fn of(read: ReadQuery, function: &str, field: Option<String>) -> Self {
        Self {
            select: read.select,
            n: read.n,
            from: read.from,
            to: read.to,
            filter: read.filter,
            function: Some(function.to_owned()),
            field,
        }
    }
}

/// `GET /v1/stores/{name}/records`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Records {
    /// The readings picked, oldest first.
    pub records: Vec<Reading>,
}

/// `GET /v1/stores/{name}/aggregate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregated {
    /// An integer for `count`, a number otherwise; `null` when there is nothing to
    /// aggregate.
    pub result: Option<serde_json::Number>,
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries from this instant (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Whose entries (another device's from the copy kept here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// An action, or a prefix of actions ending in `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntries {
    /// The entries, in log order.
    pub entries: Vec<AuditEntry>,
}

/// `GET /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerified {
    /// Is this device's log intact, and every copy held here?
    pub ok: bool,
    /// Entries read.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Entries after the last checkpoint.
    pub unsigned_tail: u64,
    /// What is wrong with this device's log.
    pub findings: Vec<Finding>,
    /// The copies of other devices' logs held here.
    pub copies: Vec<CopyReport>,
}

impl AuditVerified {
    /// The verdict on this device's log (`log`) and on the copies held here.
    pub fn of(log: hearth_stores::audit::Verification, copies: Vec<CopyReport>) -> Self {
        Self {
            ok: log.ok() && copies.iter().all(|c| c.ok),
            entries: log.entries,
            checkpoints: log.checkpoints,
            unsigned_tail: log.unsigned_tail,
            findings: log.findings,
            copies,
        }
    }
}

/// `POST /v1/invite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// How long the ticket works (ms); default ten minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The new device's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The new device's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Where the new device should dial this node, instead of its listen addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
}

/// The answer to `POST /v1/invite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The ticket, as text.
    pub ticket: String,
    /// When it stops working.
    pub expires: String,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Devices {
    /// Every device of the mesh.
    pub devices: Vec<DeviceStatus>,
}

/// The answer to `POST /v1/devices/{name}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevoked {
    /// The device.
    pub revoked: String,
    /// Its peer id.
    pub peer_id: String,
}

/// `POST /v1/restore`: fetch every sealed store from a sealed holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The sealed holder's address (a multiaddr, `/p2p/PEER` at the end).
    pub from: String,
}

/// `GET /v1/restore` (also the answer to `POST /v1/restore`): where fetching the
/// sealed stores stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// Sealed holders connected now whose copy of the catalogue equals this device's.
    pub catalogue_from: Vec<String>,
    /// Each sealed store this device reads, per sealed holder.
    pub stores: Vec<RestoreStore>,
    /// Every sealed store fetched whole from a connected sealed holder, after the
    /// catalogue came in.
    pub done: bool,
}

/// One sealed store of [`Restore`], from one sealed holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStore {
    /// The store.
    pub name: String,
    /// The sealed holder.
    pub holder: String,
    /// Is it connected?
    pub online: bool,
    /// Blobs fetched from it (each authenticated and applied, or refused).
    pub fetched: u64,
    /// Blobs it keeps, once it said.
    pub kept: Option<u64>,
    /// Blobs refused: tampered, or not what they claim.
    pub refused: u64,
    /// The store's records here.
    pub records: u64,
}

/// `POST /v1/devices/{name}/allow-admit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAdmitRequest {
    /// How long the grant lasts (ms); default 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The roles it may admit, comma-separated; default `mobile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
    /// The names it may give (`name`, `prefix*` or `*`); default `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<String>,
}

/// The answer to `POST /v1/devices/{name}/allow-admit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitGrant {
    /// The device that may admit.
    pub device: String,
    /// The grant's capability id.
    pub cap_id: String,
    /// When it ends.
    pub expires: String,
    /// The roles it may admit.
    pub roles: Vec<String>,
    /// The names it may give.
    pub names: String,
}

/// The answer to `POST /v1/devices/{name}/approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    /// The device.
    pub device: String,
    /// Always true.
    pub approved: bool,
    /// False when its certificate was the owner's already.
    pub changed: bool,
}

/// The answer to `POST /v1/caps/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapRevoked {
    /// The capability id.
    pub revoked: String,
}

/// `GET /v1/drivers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drivers {
    /// Every driver of this node.
    pub drivers: Vec<Driver>,
}

/// `POST /v1/drivers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDriver {
    /// os-monitor, http-ingest, mqtt or file-import.
    pub kind: String,
    /// Its name; default the kind (numbered when taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The store it writes; default the kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// os-monitor: seconds between readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// http-ingest: the address to listen on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// http-ingest and mqtt: the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// http-ingest and mqtt: the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// mqtt: the broker (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// mqtt: the topic filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// mqtt: the topic actuations are published on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actuate: Option<String>,
    /// file-import: the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// file-import: the CSV column holding the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_column: Option<String>,
    /// file-import: `refuse` (the default) or `skip` on a malformed line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// The unit of its readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What its store holds, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The query of `POST /v1/jobs` (whose body is an encoded job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// How long to wait for a holder of the data to come online (ms).
    #[serde(default)]
    pub wait_ms: u64,
}

/// The answer to `POST /v1/jobs`: a result with its receipt, or a deployed app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobAnswer {
    /// A one-shot job ran.
    Done(Box<JobDone>),
    /// A continuous app was deployed.
    Deployed(Deployed),
}

/// A one-shot job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDone {
    /// The result parsed as JSON (the text itself when it is not JSON).
    pub result: Value,
    /// The exact text the receipt hashes.
    pub result_text: String,
    /// The signed receipt.
    pub receipt: Receipt,
}

/// A deployed app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// Its name.
    pub app: String,
    /// The device it runs on.
    pub device: String,
}

/// A signed receipt: its fields, and the whole of it encoded (base64) so that it can
/// be verified offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The job id.
    pub job: String,
    /// The device name it ran on.
    pub ran_on: String,
    /// That device's peer id.
    pub node: String,
    /// SHA-256 of the module (hex).
    pub module_hash: String,
    /// The capability it ran under.
    pub cap_id: String,
    /// The store versions it read.
    pub data_heads: Vec<DataHead>,
    /// SHA-256 of the result text (hex).
    pub result_hash: String,
    /// Fuel used.
    pub fuel: u64,
    /// When it finished (ms).
    pub finished: u64,
    /// The device's signature (hex).
    pub signature: String,
    /// The whole signed receipt (base64).
    pub encoded: String,
}

/// One store version a job read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataHead {
    /// The store.
    pub store: String,
    /// The digest of its heads (hex).
    pub digest: String,
}

impl Receipt {
    /// A signed receipt in its API form.
    pub fn of(signed: &hearth_protocol::compute::SignedReceipt) -> Self {
        use base64::Engine as _;
        let r = &signed.receipt;
        Self {
            job: r.job.to_string(),
            ran_on: r.ran_on.clone(),
            node: r.node.peer_id(),
            module_hash: hex::encode(r.module_hash.0),
            cap_id: r.cap_id.to_string(),
            data_heads: r
                .data_heads
                .iter()
                .map(|v| DataHead {
                    store: v.store.clone(),
                    digest: hex::encode(v.digest),
                })
                .collect(),
            result_hash: hex::encode(r.result_hash),
            fuel: r.fuel,
            finished: r.finished.0,
            signature: hex::encode(signed.signature.to_bytes()),
            encoded: base64::engine::general_purpose::STANDARD.encode(signed.encode()),
        }
    }
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apps {
    /// Every app the catalogue lists, and those this device runs.
    pub apps: Vec<AppInfo>,
}

/// A continuous app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// Its name.
    pub name: String,
    /// The device it runs on.
    pub device: Option<String>,
    /// The store whose new readings it follows.
    pub store: Option<String>,
    /// SHA-256 of its module (hex).
    pub module_hash: Option<String>,
    /// `running`, or `stopped: <reason>`.
    pub state: String,
    /// Runs so far (apps this device runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u64>,
    /// Readings before this `ts` were handed to it (apps this device runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Why its last run failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The answer to `DELETE /v1/apps/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStopped {
    /// The app.
    pub name: String,
    /// The device it ran on.
    pub device: String,
}

/// One export in the outbox: `GET /v1/exports/{id}` (with its body), an entry of
/// `GET /v1/exports` (without), and the answer to release and drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// Its id, also the `Idempotency-Key` the destination sees (32 hex digits).
    pub id: String,
    /// Where it goes.
    pub destination: String,
    /// `held` (waits for the owner's release), `queued`, `delivered`, `failed`,
    /// `dropped` or `expired`.
    pub state: String,
    /// Whether its grant needs the owner's release.
    pub review: bool,
    /// What made it: `job:<id>` or `app:<name>@<deployed>#<run>`.
    pub source: String,
    /// The capability it was made under (the chain's leaf).
    pub cap_id: String,
    /// `application/json` or `text/plain; charset=utf-8`.
    pub content_type: String,
    /// Size of the body in bytes.
    pub bytes: u64,
    /// SHA-256 of the body, hex.
    pub sha256: String,
    /// When it was queued (ms since the Unix epoch).
    pub queued_at: u64,
    /// When it expires if not delivered.
    pub expires_at: u64,
    /// When the owner released it.
    pub released_at: Option<u64>,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due, while it is queued.
    pub next_attempt_at: Option<u64>,
    /// The status of the destination's last answer.
    pub status: Option<u16>,
    /// Why the last attempt did not deliver.
    pub last_error: Option<String>,
    /// When it was delivered, failed, dropped or expired.
    pub finished_at: Option<u64>,
    /// The body, in `GET /v1/exports/{id}` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The answer to `GET /v1/exports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exports {
    /// Whether sending is paused (`hearth export pause`).
    pub paused: bool,
    /// The exports waiting, and those finished in the last two days, oldest first.
    pub exports: Vec<ExportInfo>,
}

/// The answer to `POST /v1/exports/pause` and `POST /v1/exports/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportsPaused {
    /// Whether sending is paused now.
    pub paused: bool,
    /// Exports waiting to be sent (queued or held).
    pub waiting: u64,
}

/// The answer to `POST /v1/dashboard/link`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardLink {
    /// The one-time login link to open in a browser on this device.
    pub url: String,
    /// When it stops working (ms since the Unix epoch).
    pub expires_at: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
    use serde_json::json;

    use super::*;

    /// Catches the field names a type's `Deserialize` asks for (serde hands them to
    /// `deserialize_struct`), without building a value.
    struct FieldCatcher(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut FieldCatcher {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("caught"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
        let mut catcher = FieldCatcher(&[]);
        let _ = T::deserialize(&mut catcher);
        assert!(
            !catcher.0.is_empty(),
            "{} is not a struct",
            std::any::type_name::<T>()
        );
        catcher.0
    }

    /// Reads `sample` as `T` and writes it back: the same JSON, nothing lost, renamed
    /// or added.
    fn round_trip<T: DeserializeOwned + Serialize>(sample: Value) {
        let typed: T = serde_json::from_value(sample.clone())
            .unwrap_or_else(|err| panic!("{}: {err}", std::any::type_name::<T>()));
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            sample,
            "{} does not write back what it read",
            std::any::type_name::<T>()
        );
    }

    fn peer() -> Value {
        json!({"name": "phone", "role": "mobile", "peer_id": "12D3KooWphone", "connected": true,
               "last_seen": 1_700_000_000_000_u64, "path": "relayed", "via": "cloud", "rtt_ms": 41.5})
    }

    fn device() -> Value {
        json!({"name": "phone", "role": "mobile", "peer_id": "12D3KooWphone", "online": false,
               "last_seen": 0, "revoked": false, "approved": true})
    }

    fn store_info() -> Value {
        json!({"name": "location", "id": "0a1b", "kind": "timeseries", "origin": "phone",
               "replicas": "origin,role:home", "held_by": ["home", "phone"], "here": true,
               "records": 1440, "bytes": 90_112, "error": null, "source": "http-ingest",
               "unit": null, "description": "where the phone was",
               "heads": {"phone": {"records": 1440, "bytes": 90_112, "digest": "ab", "updated": 5}},
               "keep_ms": 7_776_000_000_u64, "erasures": 1})
    }

    fn driver() -> Value {
        json!({"name": "http-ingest", "kind": "http-ingest", "store": "location",
               "state": "running", "last_error": null, "records": 3, "progress": [10, 20],
               "detail": "http://127.0.0.1:8080", "tls_fingerprint": null,
               "tls_certificate": null})
    }

    fn receipt() -> Value {
        json!({"job": "j1", "ran_on": "home", "node": "12D3KooWhome", "module_hash": "aa",
               "cap_id": "cc", "data_heads": [{"store": "location", "digest": "dd"}],
               "result_hash": "ee", "fuel": 1000, "finished": 5, "signature": "ff",
               "encoded": "AAAA"})
    }

    #[test]
    fn every_answer_and_request_round_trips() {
        round_trip::<ErrorBody>(json!({"error": "no", "code": "refused"}));
        let export = json!({"id": "00ff", "destination": "https://study.example.org/submit",
            "state": "held", "review": true, "source": "job:00ff", "cap_id": "ab",
            "content_type": "application/json", "bytes": 7, "sha256": "cd", "queued_at": 1,
            "expires_at": 2, "released_at": null, "attempts": 0, "next_attempt_at": null,
            "status": null, "last_error": null, "finished_at": null});
        round_trip::<Exports>(json!({"paused": false, "exports": [export.clone()]}));
        let mut shown = export;
        shown["body"] = json!("{\"n\":3}");
        round_trip::<ExportInfo>(shown);
        round_trip::<ExportsPaused>(json!({"paused": true, "waiting": 2}));
        round_trip::<DashboardLink>(
            json!({"url": "http://127.0.0.1:1/ui/0123456789abcdef0123456789abcdef/login?token=ab", "expires_at": 5}),
        );
        round_trip::<Status>(
            json!({"peer_id": "12D3KooWhome", "name": "home", "role": "home",
            "listen": ["/ip4/127.0.0.1/udp/4001/quic-v1"], "peers": [peer()],
            "stores": [{"name": "location", "replicas": [
                {"device": "home", "in_sync": true, "lag": 0},
                {"device": "phone", "in_sync": false, "lag": null, "online": true}]}]}),
        );
        round_trip::<Stores>(json!({"stores": [store_info()]}));
        round_trip::<ListQuery>(json!({"format": "hypercat"}));
        round_trip::<CreateStore>(json!({"name": "n", "kind": "doc", "window_ms": 60_000,
            "replicas": "origin", "description": "d", "text": ["body"], "keep_ms": 86_400_000,
            "authority": "hcap1:x"}));
        round_trip::<CreateStore>(json!({"name": "n", "kind": "kv"}));
        round_trip::<PolicyRequest>(json!({"replicas": "origin", "keep_ms": null}));
        round_trip::<PolicyRequest>(json!({"keep_ms": 5}));
        round_trip::<PolicyRequest>(json!({"authority": "hcap1:x"}));
        round_trip::<Policy>(
            json!({"name": "n", "id": "i", "replicas": "origin", "keep_ms": null}),
        );
        round_trip::<DeleteRequest>(json!({"from": 1, "to": 2, "filter": "tid=ph"}));
        round_trip::<DeleteRequest>(json!({"keys": ["a", "b"]}));
        round_trip::<Erased>(json!({"name": "n", "id": "i", "erasure": 1,
            "selector": "readings before 2", "deleted_here": null}));
        round_trip::<RemoveQuery>(json!({"authority": "hcap1:x"}));
        round_trip::<Removed>(json!({"removed": "n"}));
        round_trip::<Keys>(json!({"keys": ["a"]}));
        round_trip::<KeyValue>(json!({"key": "a", "value": {"x": [1, 2]}}));
        round_trip::<Put>(json!({"key": "a"}));
        round_trip::<DeletedKey>(json!({"deleted": "a"}));
        round_trip::<Vec<Reading>>(json!([{"ts": 5, "value": {"celsius": 21.5}}]));
        round_trip::<Appended>(json!({"appended": 2}));
        round_trip::<ReadQuery>(json!({"select": "range", "n": 3, "from": 1, "to": 2,
            "filter": "a=b"}));
        round_trip::<AggregateQuery>(json!({"select": "range", "n": 3, "from": 1, "to": 2,
            "filter": "a=b", "fn": "mean", "field": "celsius"}));
        round_trip::<Records>(json!({"records": [{"ts": 5, "value": 1}]}));
        round_trip::<Aggregated>(json!({"result": 3}));
        round_trip::<Aggregated>(json!({"result": 21.25}));
        round_trip::<Aggregated>(json!({"result": null}));
        round_trip::<AuditQuery>(json!({"since": 1, "device": "phone", "action": "store."}));
        round_trip::<AuditEntries>(json!({"entries": [{"seq": 0, "time": 5, "device": "home",
            "actor": "local", "action": "store.put", "object": "n", "cap_id": null,
            "outcome": "allowed", "bytes": 3, "prev": "00", "hash": "11"}]}));
        round_trip::<AuditVerified>(json!({"ok": false, "entries": 3, "checkpoints": 1,
            "unsigned_tail": 2, "findings": [{"line": 2, "problem": "hash"}],
            "copies": [{"device": "phone", "peer_id": "p", "entries": 4, "ok": true,
                        "findings": []}]}));
        round_trip::<InviteRequest>(json!({"ttl_ms": 1, "name": "n", "role": "cloud",
            "addrs": ["/dns4/x/udp/1/quic-v1"]}));
        round_trip::<Invite>(json!({"ticket": "t", "expires": "2026-12-07T00:00:00Z"}));
        round_trip::<Devices>(json!({"devices": [device()]}));
        round_trip::<DeviceRevoked>(json!({"revoked": "phone", "peer_id": "p"}));
        round_trip::<AllowAdmitRequest>(json!({"ttl_ms": 1, "roles": "mobile", "names": "*"}));
        round_trip::<AdmitGrant>(json!({"device": "phone", "cap_id": "c", "expires": "e",
            "roles": ["mobile"], "names": "*"}));
        round_trip::<Approved>(json!({"device": "d", "approved": true, "changed": false}));
        round_trip::<CapRevoked>(json!({"revoked": "c"}));
        round_trip::<Drivers>(json!({"drivers": [driver()]}));
        let mut added = driver();
        if let Some(map) = added.as_object_mut() {
            map.insert("url".into(), json!("http://127.0.0.1:8080"));
            map.insert("user".into(), json!("hearth"));
            map.insert("password".into(), json!("secret"));
        }
        round_trip::<Driver>(added);
        round_trip::<AddDriver>(json!({"kind": "mqtt", "name": "m", "store": "s",
            "interval_secs": 1, "listen": "l", "user": "u", "password": "p", "broker": "b:1",
            "topic": "t/#", "actuate": "a", "file": "/f.csv", "ts_column": "ts",
            "on_error": "skip", "unit": "C", "description": "d"}));
        round_trip::<JobQuery>(json!({"wait_ms": 5}));
        round_trip::<JobAnswer>(json!({"result": {"n": 1}, "result_text": "{\"n\":1}",
            "receipt": receipt()}));
        round_trip::<JobAnswer>(json!({"app": "a", "device": "home"}));
        round_trip::<Apps>(json!({"apps": [
            {"name": "a", "device": "home", "store": "s", "module_hash": "m",
             "state": "running", "runs": 2, "position": 9, "last_error": null},
            {"name": "b", "device": null, "store": null, "module_hash": null,
             "state": "running", "last_error": null}]}));
        round_trip::<AppStopped>(json!({"name": "a", "device": "home"}));
    }

    #[test]
    fn requests_refuse_fields_they_do_not_know() {
        assert!(
            serde_json::from_value::<CreateStore>(json!({"name": "n", "kind": "kv",
            "replica": "origin"}))
            .is_err()
        );
        assert!(serde_json::from_value::<PolicyRequest>(json!({"keep": 5})).is_err());
        assert!(serde_json::from_value::<PolicyRequest>(json!({"keep_ms": "5"})).is_err());
    }

    /// A cell of a Markdown table row, split at `|` not written `\|`.
    fn cells(row: &str) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut chars = row.trim().trim_matches('|').chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'|') => {
                    chars.next();
                    out.last_mut().unwrap().push('|');
                }
                '|' => out.push(String::new()),
                c => out.last_mut().unwrap().push(c),
            }
        }
        out.into_iter().map(|c| c.trim().to_owned()).collect()
    }

    /// Does `text` name `field` as a word (not inside a longer name)?
    fn names(text: &str, field: &str) -> bool {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        text.match_indices(field).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + field.len()..].chars().next();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
    }

    type FieldsOf = fn() -> &'static [&'static str];

    /// Every route, the types of its body (or query) and of its answer.
    fn routes() -> Vec<(&'static str, Vec<FieldsOf>, Vec<FieldsOf>)> {
        vec![
            (
                "GET /v1/status",
                vec![],
                vec![
                    fields::<Status>,
                    fields::<PeerStatus>,
                    fields::<StoreSync>,
                    fields::<ReplicaSync>,
                ],
            ),
            (
                "GET /v1/stores",
                vec![fields::<ListQuery>],
                vec![
                    fields::<Stores>,
                    fields::<StoreInfo>,
                    fields::<ReplicaStats>,
                ],
            ),
            ("POST /v1/stores", vec![fields::<CreateStore>], vec![]),
            (
                "POST /v1/stores/{name}/policy",
                vec![fields::<PolicyRequest>],
                vec![fields::<Policy>],
            ),
            (
                "POST /v1/stores/{name}/delete",
                vec![fields::<DeleteRequest>],
                vec![fields::<Erased>],
            ),
            (
                "DELETE /v1/stores/{name}",
                vec![fields::<RemoveQuery>],
                vec![fields::<Removed>],
            ),
            ("GET /v1/stores/{name}/keys", vec![], vec![fields::<Keys>]),
            (
                "GET /v1/stores/{name}/keys/{key}",
                vec![],
                vec![fields::<KeyValue>],
            ),
            (
                "PUT /v1/stores/{name}/keys/{key}",
                vec![],
                vec![fields::<Put>],
            ),
            (
                "PATCH /v1/stores/{name}/keys/{key}",
                vec![],
                vec![fields::<KeyValue>],
            ),
            (
                "DELETE /v1/stores/{name}/keys/{key}",
                vec![],
                vec![fields::<DeletedKey>],
            ),
            (
                "POST /v1/stores/{name}/records",
                vec![fields::<Reading>],
                vec![fields::<Appended>],
            ),
            (
                "GET /v1/stores/{name}/records",
                vec![fields::<ReadQuery>],
                vec![fields::<Records>, fields::<Reading>],
            ),
            (
                "GET /v1/stores/{name}/aggregate",
                vec![fields::<AggregateQuery>],
                vec![fields::<Aggregated>],
            ),
            ("GET /v1/stores/{name}/tail", vec![], vec![]),
            (
                "GET /v1/audit",
                vec![fields::<AuditQuery>],
                vec![fields::<AuditEntries>],
            ),
            (
                "GET /v1/audit/verify",
                vec![],
                vec![
                    fields::<AuditVerified>,
                    fields::<Finding>,
                    fields::<CopyReport>,
                ],
            ),
            (
                "GET /v1/drivers",
                vec![],
                vec![fields::<Drivers>, fields::<Driver>],
            ),
            ("POST /v1/drivers", vec![fields::<AddDriver>], vec![]),
            ("GET /v1/drivers/{name}", vec![], vec![]),
            ("DELETE /v1/drivers/{name}", vec![], vec![fields::<Removed>]),
            (
                "POST /v1/invite",
                vec![fields::<InviteRequest>],
                vec![fields::<Invite>],
            ),
            (
                "GET /v1/devices",
                vec![],
                vec![fields::<Devices>, fields::<DeviceStatus>],
            ),
            (
                "POST /v1/devices/{name}/revoke",
                vec![],
                vec![fields::<DeviceRevoked>],
            ),
            (
                "POST /v1/devices/{name}/allow-admit",
                vec![fields::<AllowAdmitRequest>],
                vec![fields::<AdmitGrant>],
            ),
            (
                "POST /v1/devices/{name}/approve",
                vec![],
                vec![fields::<Approved>],
            ),
            (
                "POST /v1/restore",
                vec![fields::<RestoreRequest>],
                vec![fields::<Restore>, fields::<RestoreStore>],
            ),
            (
                "GET /v1/restore",
                vec![],
                vec![fields::<Restore>, fields::<RestoreStore>],
            ),
            (
                "POST /v1/caps/{id}/revoke",
                vec![],
                vec![fields::<CapRevoked>],
            ),
            (
                "POST /v1/jobs",
                vec![fields::<JobQuery>],
                vec![
                    fields::<JobDone>,
                    fields::<Receipt>,
                    fields::<DataHead>,
                    fields::<Deployed>,
                ],
            ),
            (
                "GET /v1/apps",
                vec![],
                vec![fields::<Apps>, fields::<AppInfo>],
            ),
            ("DELETE /v1/apps/{name}", vec![], vec![fields::<AppStopped>]),
            ("GET /v1/metrics", vec![], vec![]),
            (
                "GET /v1/exports",
                vec![],
                vec![fields::<Exports>, fields::<ExportInfo>],
            ),
            ("GET /v1/exports/{id}", vec![], vec![fields::<ExportInfo>]),
            (
                "POST /v1/exports/{id}/release",
                vec![],
                vec![fields::<ExportInfo>],
            ),
            (
                "POST /v1/exports/{id}/drop",
                vec![],
                vec![fields::<ExportInfo>],
            ),
            (
                "POST /v1/exports/pause",
                vec![],
                vec![fields::<ExportsPaused>],
            ),
            (
                "POST /v1/exports/resume",
                vec![],
                vec![fields::<ExportsPaused>],
            ),
            (
                "POST /v1/dashboard/link",
                vec![],
                vec![fields::<DashboardLink>],
            ),
        ]
    }

    #[test]
    fn the_api_document_names_every_field() {
        let doc = include_str!("../../../docs/api.md");
        let rows: Vec<Vec<String>> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(cells)
            .collect();
        let routes = routes();
        let mut missing = Vec::new();
        for (route, body, answer) in &routes {
            let Some(row) = rows.iter().find(|r| r[0] == format!("`{route}`")) else {
                missing.push(format!("{route}: no row"));
                continue;
            };
            for (types, cell) in [(body, &row[1]), (answer, &row[2])] {
                for field in types.iter().flat_map(|f| f().iter()) {
                    if !names(cell, field) {
                        missing.push(format!("{route}: `{field}`"));
                    }
                }
            }
        }
        for row in &rows {
            if !routes
                .iter()
                .any(|(route, ..)| row[0] == format!("`{route}`"))
            {
                missing.push(format!(
                    "{}: documented, but no route has that name",
                    row[0]
                ));
            }
        }
        assert!(
            missing.is_empty(),
            "docs/api.md is behind the API types:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn every_route_of_the_router_is_in_the_list() {
        let source = include_str!("mod.rs");
        let listed: Vec<&str> = routes().iter().map(|(r, ..)| *r).collect();
        let mut unlisted = Vec::new();
        for chunk in source.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).unwrap();
            let handlers = chunk.split(')').take(4).collect::<String>();
            for (method, call) in [
                ("GET", "get("),
                ("POST", "post("),
                ("PUT", "put("),
                ("PATCH", "patch("),
                ("DELETE", "delete("),
            ] {
                if handlers.contains(call) && !listed.contains(&format!("{method} {path}").as_str())
                {
                    unlisted.push(format!("{method} {path}"));
                }
            }
        }
        assert!(
            unlisted.is_empty(),
            "routes missing from the list: {unlisted:?}"
        );
    }
}
