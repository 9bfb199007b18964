//! The durable state write (temporary file, fsync, rename, fsync of the directory)
//! beside its floor, one fsynced write of the same bytes to an open file, in one run.
//!
//! Run: `cargo bench -p hearth-protocol --bench statefile`. Figures are recorded in
//! docs/benchmarks.md. The files are written under `target/` (a real disk, not tmpfs).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Seek as _, SeekFrom, Write as _};

use criterion::{Criterion, criterion_group, criterion_main};
use hearth_protocol::statefile;

fn bench(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-statefile");
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    // A run-count file of a few hundred capabilities.
    let payload = vec![b'7'; 16 * 1024];
    let mut group = c.benchmark_group("state write, 16 KiB");
    group.sample_size(200);
    let path = dir.path().join("runs.json");
    group.bench_function("statefile::write_state", |b| {
        b.iter(|| statefile::write_state(&path, "runs", 1, &payload).unwrap());
    });
    let floor = dir.path().join("floor");
    let mut file = std::fs::File::create(&floor).unwrap();
    group.bench_function("floor: rewrite in place + fdatasync", |b| {
        b.iter(|| {
            file.seek(SeekFrom::Start(0)).unwrap();
            file.write_all(&payload).unwrap();
            file.sync_data().unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
