//! The catalogue: a kv store replicated to every device that lists every store of the
//! mesh, its placement policy, and what each replica holds.
//!
//! ```text
//! store/<id>             {name, kind, window_ms, origin, replicas, created}
//! replica/<id>/<device>  {records, bytes, digest, updated}   written by that device
//! ```
//!
//! Its id is derived from the owner key, so every device of the mesh makes the same
//! (empty) catalogue and sync merges them.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_protocol::key::PublicKey;
use hearth_protocol::sync::placement::Policy;
use hearth_stores::{Kind, Store, StoreError, StoreMeta, Stores};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The catalogue's store name.
pub const NAME: &str = "hearth.catalogue";

/// The catalogue's id in the mesh of `owner`.
pub fn id(owner: &PublicKey) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"hearth/v1/catalogue");
    hasher.update(owner.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    hex::encode(&digest[..16])
}

/// Opens (creating if needed) the catalogue of the mesh of `owner`.
pub fn open(stores: &Stores, owner: &PublicKey) -> Result<Arc<Store>, StoreError> {
    stores.create_replica(StoreMeta {
        name: NAME.to_owned(),
        id: id(owner),
        kind: Kind::Kv,
        created: 0,
        window_ms: hearth_stores::DEFAULT_WINDOW_MS,
    })
}

/// A store as the catalogue lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Timeseries chunk window (ms).
    pub window_ms: u64,
    /// The device it was created on.
    pub origin: String,
    /// Its placement policy.
    pub replicas: String,
    /// When it was created (ms).
    pub created: u64,
    /// What it holds, in words (for the HyperCat listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What writes it (a driver kind), if not the CLI or an app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The unit of its values, where one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl Entry {
    /// The policy; an unreadable one counts as the default.
    pub fn policy(&self) -> Policy {
        Policy::parse(&self.replicas).unwrap_or_else(|_| Policy::default_policy())
    }
}

/// What one device holds of one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStats {
    /// Records (readings or keys).
    pub records: u64,
    /// Bytes on that device's disk.
    pub bytes: u64,
    /// Its digest (hex).
    pub digest: String,
    /// When this was written (ms).
    pub updated: u64,
}

/// The catalogue, read.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Stores by id.
    pub stores: BTreeMap<String, Entry>,
    /// Replica statistics by store id, then device name.
    pub replicas: BTreeMap<String, BTreeMap<String, ReplicaStats>>,
}

impl Listing {
    /// The store id called `name`, if listed.
    pub fn id_of(&self, name: &str) -> Option<&str> {
        self.stores
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(id, _)| id.as_str())
    }
}

/// Reads the whole catalogue.
pub fn read(catalogue: &Store) -> Result<Listing, StoreError> {
    let mut listing = Listing::default();
    for key in catalogue.keys()? {
        let Some(value) = catalogue.get(&key)? else {
            continue;
        };
        if let Some(id) = key.strip_prefix("store/") {
            if let Ok(entry) = serde_json::from_value::<Entry>(value) {
                listing.stores.insert(id.to_owned(), entry);
            }
        } else if let Some(rest) = key.strip_prefix("replica/")
            && let Some((id, device)) = rest.split_once('/')
            && let Ok(stats) = serde_json::from_value::<ReplicaStats>(value)
        {
            listing
                .replicas
                .entry(id.to_owned())
                .or_default()
                .insert(device.to_owned(), stats);
        }
    }
    Ok(listing)
}

/// Lists (or relists) a store.
pub fn put_entry(catalogue: &Store, id: &str, entry: &Entry) -> Result<(), StoreError> {
    let value = serde_json::to_value(entry).map_err(|err| StoreError::Invalid(err.to_string()))?;
    catalogue.put(&format!("store/{id}"), value)
}

/// Removes a store from the catalogue, with every replica's statistics.
pub fn remove_entry(catalogue: &Store, id: &str) -> Result<(), StoreError> {
    catalogue.delete(&format!("store/{id}"))?;
    let prefix = format!("replica/{id}/");
    for key in catalogue.keys()? {
        if key.starts_with(&prefix) {
            catalogue.delete(&key)?;
        }
    }
    Ok(())
}

/// Records what this device holds of a store, if it changed since last written.
pub fn put_stats(
    catalogue: &Store,
    id: &str,
    device: &str,
    stats: &ReplicaStats,
) -> Result<(), StoreError> {
    let key = format!("replica/{id}/{device}");
    let old: Option<ReplicaStats> = catalogue
        .get(&key)?
        .and_then(|v: Value| serde_json::from_value(v).ok());
    if old.is_some_and(|old| {
        old.records == stats.records && old.digest == stats.digest && old.bytes == stats.bytes
    }) {
        return Ok(());
    }
    let value = serde_json::to_value(stats).map_err(|err| StoreError::Invalid(err.to_string()))?;
    catalogue.put(&key, value)
}

/// A HyperCat 3.0 catalogue document listing every store of the mesh.
pub fn hypercat(listing: &Listing, base: &str) -> Value {
    let items: Vec<Value> = listing
        .stores
        .iter()
        .map(|(id, e)| {
            let mut metadata = vec![
                serde_json::json!({ "rel": "urn:X-hypercat:rels:hasDescription:en", "val": e.description.clone().unwrap_or_else(|| format!("{} store {}", e.kind, e.name)) }),
                serde_json::json!({ "rel": "urn:X-hypercat:rels:isContentType", "val": "application/json" }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:name", "val": e.name }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:kind", "val": e.kind }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:origin", "val": e.origin }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:replicas", "val": e.replicas }),
            ];
            if let Some(unit) = &e.unit {
                metadata.push(serde_json::json!({ "rel": "urn:X-hearth:rels:unit", "val": unit }));
            }
            if let Some(source) = &e.source {
                metadata.push(serde_json::json!({ "rel": "urn:X-hearth:rels:source", "val": source }));
            }
            for (device, stats) in listing.replicas.get(id).into_iter().flatten() {
                metadata.push(serde_json::json!({
                    "rel": "urn:X-hearth:rels:heldBy",
                    "val": format!("{device} ({} records)", stats.records),
                }));
            }
            serde_json::json!({
                "href": format!("{base}/v1/stores/{}", e.name),
                "item-metadata": metadata,
            })
        })
        .collect();
    serde_json::json!({
        "catalogue-metadata": [
            { "rel": "urn:X-hypercat:rels:isContentType", "val": "application/vnd.hypercat.catalogue+json" },
            { "rel": "urn:X-hypercat:rels:hasDescription:en", "val": "Hearth stores of this mesh" },
        ],
        "items": items,
    })
}
