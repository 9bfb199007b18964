//! Replays the fuzz seeds and every input the fuzzers ever kept as a regression
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the same entry
//! points the fuzz targets call.

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

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let files = inputs(target);
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        run(&data);
        // Every one-byte truncation too: decoders must stop cleanly anywhere.
        for len in 0..data.len().min(2048) {
            run(data.get(..len).unwrap_or_default());
        }
    }
    files.len()
}

#[test]
fn capability_decoder_inputs() {
    let count = replay("capability_decode", hearth_protocol::fuzz::capability_input);
    assert!(count >= 3, "the capability seeds are missing");
}

#[test]
fn manifest_parser_inputs() {
    let count = replay("manifest_parse", hearth_protocol::fuzz::manifest_input);
    assert!(count >= 3, "the manifest seeds are missing");
}

#[test]
fn admission_decoder_inputs() {
    let count = replay("admission_decode", hearth_protocol::fuzz::admission_input);
    assert!(count >= 2, "the admission seeds are missing");
}

#[test]
fn membership_decoder_inputs() {
    let count = replay("membership_decode", hearth_protocol::fuzz::membership_input);
    assert!(count >= 2, "the membership seeds are missing");
}

#[test]
fn session_decoder_inputs() {
    let count = replay("session_decode", hearth_protocol::fuzz::session_input);
    assert!(count >= 3, "the session seeds are missing");
}

#[test]
fn sync_decoder_inputs() {
    let count = replay("sync_decode", hearth_protocol::fuzz::sync_input);
    assert!(count >= 5, "the sync seeds are missing");
}

#[test]
fn compute_decoder_inputs() {
    let count = replay("compute_decode", hearth_protocol::fuzz::compute_input);
    assert!(count >= 3, "the compute seeds are missing");
}

#[test]
fn automerge_inflate_inputs() {
    let count = replay("automerge_inflate", hearth_protocol::fuzz::inflate_input);
    assert!(count >= 3, "the automerge inflate seeds are missing");
}
