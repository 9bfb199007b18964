//! Sealed replicas with real `hearth` processes on loopback: home (holding the owner
//! key), a phone and a cloud VM that holds the store sealed. The cloud keeps and
//! forwards ciphertext only: a scan of every byte in its data directory finds none of
//! the store's name, field names or values; the phone and home, never online at the
//! same time, still converge through it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use hearth_protocol::key::{NodeKey, OwnerKey};
use hearth_protocol::sealed::{Blob, ContentKey, KeyShare, SignedCustody};
use hearth_protocol::statefile;
use hearth_tests::cli::{
    files_containing, hearth, json_ok, recover, start_meshed as start, stop, three_devices,
    wait_until,
};
use hearth_tests::work::append;
use serde_json::Value;

/// Marker strings that must never reach the cloud's disk.
const STORE: &str = "hushtrack-7f3a";
const FIELD: &str = "quietfield_9d2c";
const VALUE: &str = "whisper-5e1b";

fn records(dir: &Path, store: &str) -> Option<Vec<Value>> {
    let out = hearth(dir, &["--json", "store", "read", store]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["records"].as_array().cloned()
}

/// `device`'s replica of `store` as `dir` reports it.
fn replica(dir: &Path, store: &str, device: &str) -> Option<Value> {
    json_ok(dir, &["status"])["stores"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == store)?["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["device"] == device)
        .cloned()
}

fn readings(from: u64, n: u64) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"ts": {}, "value": {{"{FIELD}": "{VALUE}-{i}"}}}}"#,
                1_700_000_000_000u64 + i * 60_000
            )
        })
        .collect()
}

#[test]
fn a_sealed_cloud_forwards_between_devices_never_online_together_and_learns_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let three = three_devices(tmp.path());
    let [home_node, phone_node, cloud_node] = three.nodes;
    let (home, phone, cloud) = (three.home, three.phone, three.cloud);

    // Only the owner's device can seal a store: the phone cannot.
    let out = hearth(
        &phone,
        &[
            "store",
            "create",
            "other",
            "--kind",
            "timeseries",
            "--replicas",
            "origin,sealed:role:cloud",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    json_ok(
        &home,
        &[
            "store",
            "create",
            STORE,
            "--kind",
            "timeseries",
            "--replicas",
            "origin,phone,sealed:role:cloud",
        ],
    );
    // A day of readings, one a minute: two thirds written at home, the rest on the phone.
    append(&home, STORE, &readings(0, 960));
    // The phone learns the placement (it gets the key from home) and the readings.
    wait_until("the phone holds home's readings", 60, || {
        (records(&phone, STORE)?.len() == 960).then_some(())
    });
    // The cloud stored all of it, sealed.
    wait_until("the cloud stored home's readings", 60, || {
        let r = replica(&home, STORE, "vm")?;
        (r["sealed"] == true && r["in_sync"] == true).then_some(())
    });

    // Home goes away; the phone writes; the cloud keeps it.
    stop(home_node);
    append(&phone, STORE, &readings(960, 480));
    wait_until("the cloud stored the phone's readings", 60, || {
        let r = replica(&phone, STORE, "vm")?;
        (r["in_sync"] == true).then_some(())
    });
    stop(phone_node);

    // Home comes back while the phone is away: it gets the phone's readings from the
    // cloud.
    let home_node = start(&home);
    wait_until(
        "home fetched the phone's readings from the cloud",
        60,
        || (records(&home, STORE)?.len() == 1440).then_some(()),
    );
    let got: Vec<String> = records(&home, STORE)
        .unwrap()
        .iter()
        .map(|r| r["value"][FIELD].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(got.contains(&format!("{VALUE}-1439")));
    // Sync traffic is audited in sums every few seconds.
    wait_until("home audited the fetch from the cloud", 30, || {
        let fetched = json_ok(&home, &["audit", "--action", "sealed.fetch"]);
        fetched["entries"]
            .as_array()?
            .iter()
            .any(|e| {
                e["outcome"].as_str().unwrap().starts_with("allowed")
                    && e["object"].as_str().unwrap() == format!("{STORE} from vm")
            })
            .then_some(())
    });

    // The cloud lists no such store and holds no replica of it.
    let listed = json_ok(&cloud, &["store", "ls"]);
    assert!(!listed.to_string().contains(STORE), "{listed}");
    assert!(records(&cloud, STORE).is_none());
    stop(home_node);
    stop(cloud_node);

    // Every byte of the cloud's data directory: no name, field or value.
    for needle in [STORE, FIELD, VALUE] {
        let hits = files_containing(&cloud, needle.as_bytes());
        assert!(hits.is_empty(), "{needle:?} found on the cloud in {hits:?}");
    }
    // ... while the cloud does keep the ciphertext.
    let kept: u64 = std::fs::read_dir(cloud.join("sealed"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(kept > 0);
    // The test can fail: home's own directory has them.
    assert!(!files_containing(&home, VALUE.as_bytes()).is_empty());
}

/// The custody documents a node keeps (`custody.bin`).
fn custody_docs(dir: &Path) -> Vec<SignedCustody> {
    let Some(state) = statefile::read_state(&dir.join("custody.bin"), "custody", 1 << 30).unwrap()
    else {
        return Vec::new();
    };
    let mut rest = &state.payload[..];
    let mut docs = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        docs.push(SignedCustody::decode(&tail[..len]).unwrap());
        rest = &tail[len..];
    }
    docs
}

/// The key shares the catalogue on `dir` lists.
fn shares(dir: &Path) -> Vec<KeyShare> {
    let keys = json_ok(dir, &["store", "keys", "hearth.catalogue"]);
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .filter(|k| k.starts_with("share/"))
        .map(|k| {
            let v = json_ok(dir, &["store", "get", "hearth.catalogue", k]);
            KeyShare::from_text(v["value"].as_str().unwrap()).unwrap()
        })
        .collect()
}

/// Every content key the key material in `dir` (its node key, its owner key if any)
/// unwraps from `custody`, directly or through `shares`.
fn keys_of(dir: &Path, custody: &[SignedCustody], shares: &[KeyShare]) -> Vec<ContentKey> {
    let mut secrets = vec![
        NodeKey::read(&dir.join("node.key"))
            .unwrap()
            .secret()
            .clone(),
    ];
    if let Ok(owner) = OwnerKey::read(&dir.join("owner.key")) {
        secrets.push(owner.secret().clone());
    }
    let mut keys = Vec::new();
    for doc in custody {
        for secret in &secrets {
            if let Ok(key) = doc.custody().key_for(secret) {
                keys.push(key);
            }
            for share in shares {
                if let Ok(key) = share.open(secret, doc.custody()) {
                    keys.push(key);
                }
            }
        }
    }
    keys
}

/// Every blob a sealed holder keeps.
fn vault_blobs(dir: &Path) -> Vec<Blob> {
    let mut blobs = Vec::new();
    for entry in std::fs::read_dir(dir.join("sealed")).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        let mut rest = &bytes[..];
        while rest.len() >= 8 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            blobs.push(Blob::decode(&rest[8..8 + len]).unwrap());
            rest = &rest[8 + len..];
        }
    }
    blobs
}

/// The blobs that `keys` open and whose plaintext contains `needle`.
fn opened_with(blobs: &[Blob], keys: &[ContentKey], needle: &str) -> usize {
    blobs
        .iter()
        .filter(|b| {
            keys.iter().any(|k| {
                b.open(k)
                    .is_ok_and(|p| p.windows(needle.len()).any(|w| w == needle.as_bytes()))
            })
        })
        .count()
}

#[test]
fn a_device_taken_off_a_sealed_store_or_revoked_cannot_read_what_is_written_after() {
    let tmp = tempfile::tempdir().unwrap();
    let three = three_devices(tmp.path());
    let [home_node, phone_node, cloud_node] = three.nodes;
    let (home, phone, cloud) = (three.home, three.phone, three.cloud);

    // One store the phone is taken off, one it loses by being revoked.
    json_ok(
        &home,
        &[
            "store",
            "create",
            "moved",
            "--kind",
            "timeseries",
            "--replicas",
            "origin,phone,sealed:role:cloud",
        ],
    );
    json_ok(
        &home,
        &[
            "store",
            "create",
            "revoked",
            "--kind",
            "timeseries",
            "--replicas",
            "origin,role:mobile,sealed:role:cloud",
        ],
    );
    for store in ["moved", "revoked"] {
        append(
            &home,
            store,
            &[format!(
                r#"{{"ts": 1700000000000, "value": {{"n": "before-{store}"}}}}"#
            )],
        );
    }
    for store in ["moved", "revoked"] {
        wait_until("the phone reads the sealed stores", 60, || {
            (records(&phone, store)?.len() == 1).then_some(())
        });
        wait_until("the cloud stored them", 60, || {
            (replica(&home, store, "vm")?["in_sync"] == true).then_some(())
        });
    }
    // The phone could read epoch 1 of both.
    let epoch1 = custody_docs(&phone);
    assert_eq!(
        keys_of(&phone, &epoch1, &shares(&phone)).len(),
        2,
        "one key per store"
    );

    json_ok(
        &home,
        &[
            "store",
            "policy",
            "moved",
            "--replicas",
            "origin,sealed:role:cloud",
        ],
    );
    json_ok(&home, &["devices", "revoke", "phone"]);
    for store in ["moved", "revoked"] {
        append(
            &home,
            store,
            &[format!(
                r#"{{"ts": 1700000060000, "value": {{"n": "after-{store}"}}}}"#
            )],
        );
    }
    for store in ["moved", "revoked"] {
        wait_until("the cloud stored what home wrote after", 60, || {
            (replica(&home, store, "vm")?["in_sync"] == true).then_some(())
        });
    }
    // Both stores moved to a new epoch (a revocation moves every sealed store whose
    // epoch began before it), and the audit says why the revoked one did.
    let docs = custody_docs(&home);
    let sids: std::collections::BTreeSet<_> = docs.iter().map(|d| d.custody().sid).collect();
    assert_eq!(sids.len(), 2);
    for sid in sids {
        let newest = docs
            .iter()
            .filter(|d| d.custody().sid == sid)
            .map(|d| d.custody().epoch)
            .max();
        assert!(newest >= Some(2), "{newest:?}");
    }
    let rotated = json_ok(&home, &["audit", "--action", "sealed.rotate"]);
    assert!(rotated.to_string().contains("revoked"), "{rotated}");
    // Every share the phone's catalogue lists, and home's.
    let (phone_shares, home_shares) = (shares(&phone), shares(&home));
    stop(phone_node);
    stop(home_node);
    stop(cloud_node);

    // Every custody document any device kept, every share in the phone's catalogue,
    // its node key: none opens what home wrote after, which home's keys open.
    let mut all = custody_docs(&home);
    all.extend(custody_docs(&cloud));
    all.extend(custody_docs(&phone));
    let blobs = vault_blobs(&cloud);
    let phone_keys = keys_of(&phone, &all, &phone_shares);
    let home_keys = keys_of(&home, &all, &home_shares);
    for store in ["moved", "revoked"] {
        assert!(opened_with(&blobs, &home_keys, &format!("after-{store}")) >= 1);
        assert_eq!(
            opened_with(&blobs, &phone_keys, &format!("after-{store}")),
            0,
            "{store}"
        );
        // ... while what was written before stays readable to it (it was its to read;
        // home and the phone may each have sent it).
        assert!(opened_with(&blobs, &phone_keys, &format!("before-{store}")) >= 1);
    }
}

#[test]
fn a_new_device_from_the_recovery_phrase_alone_restores_every_sealed_store_from_the_cloud() {
    let tmp = tempfile::tempdir().unwrap();
    let three = three_devices(tmp.path());
    let [home_node, phone_node, cloud_node] = three.nodes;
    let (home, phone, cloud) = (three.home, three.phone, three.cloud);

    // A track sealed for the home devices, one for home and the phone only (the
    // restored device is not named: restoring places it there), and a kv store.
    let stores = [
        ("track", "timeseries", "origin,role:home,sealed:role:cloud"),
        ("diary", "timeseries", "origin,phone,sealed:role:cloud"),
        ("settings", "kv", "origin,role:home,sealed:role:cloud"),
    ];
    for (name, kind, replicas) in stores {
        json_ok(
            &home,
            &[
                "store",
                "create",
                name,
                "--kind",
                kind,
                "--replicas",
                replicas,
            ],
        );
    }
    let lines: Vec<String> = (0..300u64)
        .map(|i| {
            format!(
                r#"{{"ts": {}, "value": {{"lat": 52.{i:04}, "note": "entry {i}"}}, "tags": {{"src": "gps"}}}}"#,
                1_700_000_000_000u64 + i * 30_000
            )
        })
        .collect();
    append(&home, "track", &lines);
    append(&home, "diary", &lines[..40]);
    for i in 0..20 {
        json_ok(
            &home,
            &[
                "store",
                "put",
                "settings",
                &format!("k{i}"),
                &format!(r#"{{"v": {i}}}"#),
            ],
        );
    }
    for (name, _, _) in stores {
        wait_until("the cloud stored every sealed store", 60, || {
            (replica(&home, name, "vm")?["in_sync"] == true).then_some(())
        });
    }
    let before: Vec<Value> = stores
        .iter()
        .map(|(name, kind, _)| {
            if *kind == "kv" {
                json_ok(&home, &["store", "keys", name])
            } else {
                json_ok(&home, &["store", "read", name])
            }
        })
        .collect();
    let phrase = json_ok(&home, &["key", "recovery-phrase"])["recovery_phrase"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = json_ok(&cloud, &["status"]);
    let from = format!(
        "{}/p2p/{}",
        status["listen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .find(|a| a.contains("/udp/"))
            .unwrap(),
        status["peer_id"].as_str().unwrap()
    );

    // A member without the owner key cannot start a restore.
    let out = hearth(&phone, &["restore", "--from", &from]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Home's disk dies; the phone is away. A fresh machine, the phrase, the address.
    stop(home_node);
    stop(phone_node);
    std::fs::remove_dir_all(&home).unwrap();
    let fresh = tmp.path().join("fresh");
    recover(&fresh, "home2", &phrase);
    let fresh_node = start(&fresh);
    let restored = json_ok(&fresh, &["restore", "--from", &from, "--timeout", "120s"]);
    assert_eq!(restored["done"], true, "{restored}");
    assert_eq!(
        restored["stores"].as_array().unwrap().len(),
        3,
        "{restored}"
    );
    for (i, (name, kind, _)) in stores.iter().enumerate() {
        let after = if *kind == "kv" {
            json_ok(&fresh, &["store", "keys", name])
        } else {
            json_ok(&fresh, &["store", "read", name])
        };
        assert_eq!(after, before[i], "{name}");
    }
    for i in [0, 19] {
        assert_eq!(
            json_ok(&fresh, &["store", "get", "settings", &format!("k{i}")])["value"]["v"],
            i
        );
    }
    // The recovered device speaks for the owner: it revokes the lost home.
    json_ok(&fresh, &["devices", "revoke", "home"]);
    let audit = json_ok(&fresh, &["audit", "--action", "sealed.restore"]);
    assert!(audit.to_string().contains("diary"), "{audit}");
    stop(fresh_node);
    stop(cloud_node);
}

#[test]
fn a_store_placed_in_plaintext_first_can_be_sealed_later() {
    let tmp = tempfile::tempdir().unwrap();
    let three = three_devices(tmp.path());
    let [home_node, phone_node, cloud_node] = three.nodes;
    let (home, cloud) = (three.home, three.cloud);
    json_ok(&home, &["store", "create", "later", "--kind", "kv"]);
    json_ok(&home, &["store", "put", "later", "a", "1"]);
    let place_keys = |dir: &Path| -> usize {
        json_ok(dir, &["store", "keys", "hearth.catalogue"])["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k.as_str().unwrap().starts_with("place/"))
            .count()
    };
    wait_until("the cloud lists the store", 60, || {
        json_ok(&cloud, &["store", "ls"])
            .to_string()
            .contains("later")
            .then_some(())
    });
    let before = place_keys(&home);
    json_ok(
        &home,
        &[
            "store",
            "policy",
            "later",
            "--replicas",
            "origin,role:home,sealed:role:cloud",
        ],
    );
    json_ok(&home, &["store", "put", "later", "b", "2"]);
    wait_until("the cloud stored it sealed", 60, || {
        (replica(&home, "later", "vm")?["in_sync"] == true).then_some(())
    });
    // The cloud knew the store by its name before; it keeps the placement it could
    // read (the sealed one never reaches it in plaintext), and home leaves that
    // document in the catalogue rather than fight the cloud over it.
    let listed = json_ok(&cloud, &["store", "ls"]);
    assert!(listed.to_string().contains("origin,role:home"), "{listed}");
    assert!(!listed.to_string().contains("sealed:"), "{listed}");
    assert_eq!(place_keys(&home), before);
    assert!(!hearth(&cloud, &["store", "keys", "later"]).status.success());
    stop(home_node);
    stop(phone_node);
    stop(cloud_node);
}
