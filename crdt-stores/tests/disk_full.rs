//! Disk full: on a small tmpfs that the test mounts, writes fail with a clear "disk
//! full" error, nothing acknowledged is lost, and once space is freed the store works.
//! Needs root (to mount); it fails rather than skip when it cannot mount.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::{Kind, Reading, StoreError, Stores, StoresConfig};
use serde_json::json;

struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("the mount command is missing");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the disk-full test needs root)",
            path.display()
        );
        Self { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn open(root: &Path, backend: BackendKind) -> Stores {
    Stores::open(StoresConfig {
        root: root.to_path_buf(),
        backend,
        actor: [5; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap()
}

fn batch(first: u64) -> Vec<Reading> {
    (first..first + 200)
        .map(|i| {
            Reading::new(
                1_700_000_000_000 + i * 1000,
                json!({ "id": i, "pad": "x".repeat(200) }),
            )
        })
        .collect()
}

fn ids(stores: &Stores) -> Vec<u64> {
    stores
        .get("series")
        .unwrap()
        .read(Selection::All, None)
        .unwrap()
        .iter()
        .map(|r| r.value["id"].as_u64().unwrap())
        .collect()
}

fn fill_until_full(backend: BackendKind) {
    let fs = Tmpfs::mount("24m");
    let root = fs.path.join("stores");
    // A filler file whose removal frees space later.
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![0u8; 6 * 1024 * 1024]).unwrap();
    let stores = open(&root, backend);
    stores
        .create("series", Kind::Timeseries, Some(60_000))
        .unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let mut next = 0;
    let err = loop {
        assert!(next < 10_000_000, "the tmpfs never filled up");
        match stores.get("series").unwrap().append(batch(next)) {
            Ok(()) => {
                acked.extend(next..next + 200);
                next += 200;
            }
            Err(err) => break err,
        }
    };
    assert!(
        matches!(err, StoreError::DiskFull { .. }),
        "{backend}: expected disk full, got {err:?}"
    );
    assert!(err.to_string().contains("disk is full"), "{err}");
    // The failed batch may or may not have reached the disk (a write that reports an
    // error has an unknown outcome); everything acknowledged must be there.
    let failed: Vec<u64> = (next..next + 200).collect();
    check(backend, "after the failure", &ids(&stores), &acked, &failed);
    drop(stores);
    let stores = open(&root, backend);
    match stores.get("series") {
        Ok(_) => check(backend, "after reopening", &ids(&stores), &acked, &failed),
        // sled writes while opening, so on a full disk it cannot reopen; it must say so
        // plainly (and open again once there is space). redb reopens read-only work fine.
        Err(err) => {
            assert_eq!(
                backend,
                BackendKind::Sled,
                "{backend} could not reopen on a full disk: {err}"
            );
            // sled now and then fails the read of a segment it could not finish
            // writing as "corrupted" rather than as the full disk it is; either way
            // nothing is served, and it opens with everything acknowledged once there
            // is space (checked below).
            assert!(
                matches!(
                    err,
                    StoreError::DiskFull { .. } | StoreError::Corrupt { .. }
                ),
                "{backend}: {err:?}"
            );
        }
    }
    drop(stores);

    // Free space: writing works again.
    std::fs::remove_file(&filler).unwrap();
    let stores = open(&root, backend);
    let more = next + 200;
    stores.get("series").unwrap().append(batch(more)).unwrap();
    acked.extend(more..more + 200);
    drop(stores);
    let stores = open(&root, backend);
    check(
        backend,
        "after space was freed",
        &ids(&stores),
        &acked,
        &failed,
    );
}

/// Every acknowledged id is stored, and nothing is stored but acknowledged ids and the
/// ids of the one failed batch.
fn check(backend: BackendKind, when: &str, stored: &[u64], acked: &[u64], failed: &[u64]) {
    let stored: std::collections::BTreeSet<u64> = stored.iter().copied().collect();
    let lost: Vec<&u64> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{backend} {when}: {} acknowledged readings lost, first {:?}",
        lost.len(),
        lost.first()
    );
    let unexpected: Vec<&u64> = stored
        .iter()
        .filter(|id| !acked.contains(id) && !failed.contains(id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{backend} {when}: {} readings nobody wrote, first {:?}",
        unexpected.len(),
        unexpected.first()
    );
}

#[test]
fn disk_full_on_redb() {
    fill_until_full(BackendKind::Redb);
}

#[test]
fn disk_full_on_sled() {
    fill_until_full(BackendKind::Sled);
}
