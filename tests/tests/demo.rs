//! `hearth demo --json`: the whole loop on three real node processes, checked from its
//! summary; the `places` result is checked against the same computation done here,
//! independently, over the raw track the demo ships (examples/data/day-track.csv).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::process::Command;

use hearth_tests::cli::hearth_bin;
use hearth_tests::guest::module;
use serde_json::Value;

/// Time per grid cell and visits, as docs and examples/compute/README.md define them.
fn expected_places(csv: &str, grid_m: f64, max_gap_s: u64) -> Vec<(f64, f64, u64, u64)> {
    let lat_step = grid_m / 111_320.0;
    let cell = |lat: f64, lon: f64| {
        let row = (lat / lat_step).floor() as i64;
        let centre = (row as f64 + 0.5) * lat_step;
        let lon_step = (grid_m / (111_320.0 * centre.to_radians().cos())).min(360.0);
        let col = (lon / lon_step).floor() as i64;
        (row, col, centre, (col as f64 + 0.5) * lon_step)
    };
    let mut points: Vec<(u64, (i64, i64, f64, f64))> = csv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("minute"))
        .filter_map(|l| {
            let mut f = l.split(',');
            let minute: u64 = f.next()?.parse().ok()?;
            let lat: f64 = f.next()?.parse().ok()?;
            let lon: f64 = f.next()?.parse().ok()?;
            Some((minute * 60, cell(lat, lon)))
        })
        .collect();
    points.sort_by_key(|p| p.0);
    let mut stays: BTreeMap<(i64, i64), (f64, f64, u64, u64)> = BTreeMap::new();
    let mut in_visit = false;
    for pair in points.windows(2) {
        let ((t0, a), (t1, b)) = (pair[0], pair[1]);
        let joined = (a.0, a.1) == (b.0, b.1) && t1 - t0 <= max_gap_s;
        if joined {
            let entry = stays.entry((a.0, a.1)).or_insert((a.2, a.3, 0, 0));
            entry.2 += t1 - t0;
            if !in_visit {
                entry.3 += 1;
            }
        }
        in_visit = joined;
    }
    let mut ranked: Vec<(f64, f64, u64, u64)> = stays.into_values().collect();
    ranked.sort_by(|a, b| {
        b.2.cmp(&a.2)
            .then(a.0.total_cmp(&b.0))
            .then(a.1.total_cmp(&b.1))
    });
    ranked
}

#[test]
fn the_demo_runs_the_whole_loop_and_its_results_match_the_raw_data() {
    let modules = module("places").parent().unwrap().to_path_buf();
    let out = Command::new(hearth_bin())
        .args(["--json", "demo", "--modules"])
        .arg(&modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hearth demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(summary["checks"]["receipt_valid"], true, "{summary}");
    assert_eq!(
        summary["checks"]["daily_mean_matches_store"], true,
        "{summary}"
    );
    assert_eq!(
        summary["checks"]["cloud_holds_nothing_personal"], true,
        "{summary}"
    );
    // Every check the narration makes is in the summary, and holds.
    let checks = summary["checks"].as_object().unwrap();
    for check in [
        "export_held_until_released",
        "export_delivered_once",
        "export_signature_valid",
        "audit_logs_intact",
        "audit_logs_intact_after_stop",
    ] {
        assert_eq!(checks[check], true, "{check}: {summary}");
    }
    assert!(checks.values().all(|v| v == true), "{summary}");
    for device in ["home", "phone", "cloud"] {
        assert_eq!(summary["audit"][device]["ok"], true);
        assert_eq!(summary["audit_after_stop"][device]["ok"], true);
    }
    let export = &summary["export"];
    assert_eq!(export["sent_by"], "home");
    assert_eq!(export["state"], "delivered");
    assert_eq!(
        (export["requests"].as_u64(), export["kept"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(export["result"]["study"], "mobility");
    let audit = export["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 3, "queue, release, deliver: {audit:?}");
    assert_eq!(summary["cloud_holds"].as_array().unwrap().len(), 0);
    assert!(
        summary["refused"]
            .as_str()
            .unwrap()
            .contains("another module")
    );
    assert_eq!(summary["places"]["receipt"]["ran_on"], "home");
    assert_eq!(summary["daily_mean"]["receipt"]["ran_on"], "home");
    assert_eq!(summary["track"]["posted"], summary["track"]["on_home"]);
    assert!(summary["seconds"].as_f64().unwrap() < 60.0, "{summary}");
    assert!(
        !summary["daily_mean"]["result"]["days"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Nothing left behind.
    assert!(!std::path::Path::new(summary["dir"].as_str().unwrap()).exists());

    // places over the raw track, computed here.
    let csv = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/day-track.csv"),
    )
    .unwrap();
    let expected = expected_places(&csv, 250.0, 3600);
    let got = summary["places"]["result"]["places"].as_array().unwrap();
    assert_eq!(got.len(), 3, "{summary}");
    for (place, (lat, lon, seconds, visits)) in got.iter().zip(&expected) {
        assert!(
            (place["lat"].as_f64().unwrap() - lat).abs() < 1e-4,
            "{place} vs {lat}"
        );
        assert!(
            (place["lon"].as_f64().unwrap() - lon).abs() < 1e-4,
            "{place} vs {lon}"
        );
        assert_eq!(place["seconds"].as_u64().unwrap(), *seconds, "{place}");
        assert_eq!(place["visits"].as_u64().unwrap(), *visits, "{place}");
    }
    // The result is small next to what it summarises, and the data stayed put.
    let result_bytes = summary["moved"]["result_bytes"].as_u64().unwrap();
    assert!(result_bytes < summary["track"]["bytes"].as_u64().unwrap() / 10);
}
