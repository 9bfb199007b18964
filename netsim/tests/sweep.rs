//! `hearth-netsim sweep`: the same outputs whatever the parallelism, resuming, collect's
//! tables and intervals, refusals of bad sweep files, and the Slurm script.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::path::Path;

use common::{SWEEP, csv, files, netsim, netsim_ok, write_sweep};

fn run(dir: &Path, jobs: &str) -> String {
    let sweep = write_sweep(dir, SWEEP);
    let out = dir.join("out");
    netsim_ok(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        jobs,
    ])
}

#[test]
fn one_job_or_two_give_byte_identical_outputs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let said = run(a.path(), "1");
    assert!(
        said.contains("2 points × 2 strategies × 3 seeds = 12 runs"),
        "{said}"
    );
    assert!(said.contains("ran 12 runs; skipped 0"), "{said}");
    run(b.path(), "2");
    let (fa, fb) = (files(&a.path().join("out")), files(&b.path().join("out")));
    let runs: Vec<&String> = fa.keys().filter(|k| k.starts_with("runs/")).collect();
    assert_eq!(runs.len(), 12, "{runs:?}");
    assert!(
        runs.iter().all(|k| k.ends_with("/summary.json")),
        "{runs:?}"
    );
    assert!(fa.contains_key("runs/p1/data-to-cloud/seed-3/summary.json"));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "the two sweeps wrote different files (a temporary left behind?)"
    );
    for (name, bytes) in &fa {
        assert!(
            fb[name] == *bytes,
            "{name} differs between --jobs 1 and --jobs 2"
        );
    }
    for name in [
        "sweep.json",
        "results.csv",
        "results.json",
        "summary.csv",
        "summary.json",
        "plots/jobs_availability_during_partition-vs-partitions_0_end.svg",
        "plots/raw_bytes_over_internet-vs-partitions_0_end.svg",
    ] {
        assert!(fa.contains_key(name), "no {name}");
    }
    // The seeds differ from each other (the loss draws do).
    assert_ne!(
        fa["runs/p0/data-to-cloud/seed-1/summary.json"],
        fa["runs/p0/data-to-cloud/seed-2/summary.json"]
    );
}

#[test]
fn a_rerun_runs_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "2");
    let out = dir.path().join("out");
    let before = files(&out);
    let victim = out.join("runs/p1/compute-to-data/seed-2");
    std::fs::remove_dir_all(&victim).unwrap();
    let said = run(dir.path(), "2");
    assert!(
        said.contains("ran 1 runs; skipped 11 whose outputs exist"),
        "{said}"
    );
    assert_eq!(files(&out), before, "the rerun changed the outputs");
    // Nothing to do: everything skipped.
    let said = run(dir.path(), "2");
    assert!(said.contains("ran 0 runs; skipped 12"), "{said}");

    // The same runs with other plots: nothing runs, the plots are redrawn.
    let replotted = SWEEP.replace(
        "metric = \"raw_bytes_over_internet\"",
        "metric = \"raw_bytes_to_cloud\"",
    );
    let sweep = write_sweep(dir.path(), &replotted);
    let said = netsim_ok(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(said.contains("ran 0 runs; skipped 12"), "{said}");
    assert!(
        out.join("plots/raw_bytes_to_cloud-vs-partitions_0_end.svg")
            .is_file()
    );
    write_sweep(dir.path(), SWEEP);
    run(dir.path(), "1");
    std::fs::remove_file(out.join("plots/raw_bytes_to_cloud-vs-partitions_0_end.svg")).unwrap();
    assert_eq!(files(&out), before);

    // Another sweep into the same directory is refused, and changes nothing.
    let other = SWEEP.replace("seeds = 3", "seeds = 4");
    let sweep = write_sweep(dir.path(), &other);
    let refused = netsim(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("holds the runs of another sweep"), "{err}");
    assert_eq!(files(&out), before);

    // So is any sweep into a directory whose runs have lost their sweep.json.
    std::fs::remove_file(out.join("sweep.json")).unwrap();
    let mut before = before;
    before.remove("sweep.json");
    for text in [SWEEP, other.as_str()] {
        let sweep = write_sweep(dir.path(), text);
        let refused = netsim(&[
            "sweep",
            sweep.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("has runs/ but no sweep.json"), "{err}");
        assert_eq!(files(&out), before);
    }
}

fn value(v: &serde_json::Value, dotted: &str) -> f64 {
    dotted
        .split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{dotted} is not a number"))
}

#[test]
fn collect_tabulates_every_run_and_its_intervals() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "2");
    let out = dir.path().join("out");

    let (header, rows) = csv(&out.join("results.csv"));
    assert_eq!(
        header[..4],
        ["point", "partitions.0.end", "strategy", "seed"]
    );
    assert_eq!(rows.len(), 12);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let metrics = [
        "jobs.availability",
        "jobs.availability_during_partition",
        "jobs.latency_ms.p50",
        "raw_bytes_over_internet",
        "bytes_by_class.broadband",
        "writes",
    ];
    // Every row is its run's summary.
    let mut expected_rows = Vec::new();
    for (p, end) in [(0, "8m"), (1, "12m")] {
        for strategy in ["compute-to-data", "data-to-cloud"] {
            for seed in 1..=3 {
                expected_rows.push((format!("p{p}"), end, strategy, seed));
            }
        }
    }
    for (row, (point, end, strategy, seed)) in rows.iter().zip(&expected_rows) {
        assert_eq!(
            (&row[0], &row[1], &row[2], &row[3]),
            (
                point,
                &end.to_string(),
                &strategy.to_string(),
                &seed.to_string()
            )
        );
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                out.join(format!("runs/{point}/{strategy}/seed-{seed}/summary.json")),
            )
            .unwrap(),
        )
        .unwrap();
        for m in metrics {
            let cell: f64 = row[col(m)].parse().unwrap();
            assert_eq!(cell, value(&summary, m), "{point} {strategy} {seed}: {m}");
        }
    }

    // Means, standard deviations and 95 % intervals (t(0.975; 2) = 4.303).
    let (sheader, srows) = csv(&out.join("summary.csv"));
    assert_eq!(
        sheader,
        [
            "point",
            "partitions.0.end",
            "strategy",
            "metric",
            "n",
            "mean",
            "sd",
            "ci95_half",
            "ci95_low",
            "ci95_high"
        ]
    );
    let mut checked = 0;
    for (point, _, strategy, _) in expected_rows.iter().step_by(3) {
        for m in metrics {
            let values: Vec<f64> = rows
                .iter()
                .filter(|r| &r[0] == point && r[2] == *strategy)
                .map(|r| r[col(m)].parse().unwrap())
                .collect();
            assert_eq!(values.len(), 3);
            let mean = values.iter().sum::<f64>() / 3.0;
            let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
            let half = 4.303 * sd / 3f64.sqrt();
            let s = srows
                .iter()
                .find(|r| &r[0] == point && r[2] == *strategy && r[3] == m)
                .unwrap_or_else(|| panic!("no summary row for {point} {strategy} {m}"));
            let num = |i: usize| -> f64 { s[i].parse().unwrap() };
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
            assert_eq!(s[4], "3");
            assert!(
                close(num(5), mean),
                "{point} {strategy} {m}: mean {} vs {mean}",
                s[5]
            );
            assert!(
                close(num(6), sd),
                "{point} {strategy} {m}: sd {} vs {sd}",
                s[6]
            );
            assert!(
                close(num(7), half),
                "{point} {strategy} {m}: ci {} vs {half}",
                s[7]
            );
            assert!(close(num(8), mean - half) && close(num(9), mean + half));
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * metrics.len());
    // The bytes over the internet vary with the seed somewhere (a real interval).
    assert!(
        srows
            .iter()
            .any(|r| r[3] == "raw_bytes_over_internet" && r[6] != "0"),
        "no spread at all across seeds"
    );

    // The JSON holds the same rows.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 12);
    assert_eq!(json[4]["params"]["partitions.0.end"], "8m");
    assert_eq!(json[4]["strategy"], "data-to-cloud");
    assert_eq!(json[4]["seed"], 2);

    // Collect with a run missing lists it and tabulates the rest.
    std::fs::remove_dir_all(out.join("runs/p0/data-to-cloud/seed-1")).unwrap();
    let said = netsim_ok(&["sweep", "collect", out.to_str().unwrap()]);
    assert!(said.contains("collected 11 of 12 runs"), "{said}");
    assert!(
        said.contains("missing 1 runs: p0 data-to-cloud seed 1"),
        "{said}"
    );
    let (_, rows) = csv(&out.join("results.csv"));
    assert_eq!(rows.len(), 11);
    let (_, srows) = csv(&out.join("summary.csv"));
    let n = srows
        .iter()
        .find(|r| r[0] == "p0" && r[2] == "data-to-cloud" && r[3] == "writes")
        .unwrap();
    assert_eq!(n[4], "2");
}

#[test]
fn bad_sweep_files_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // Without the plots, which name partitions.0.end.
    let bare = SWEEP.split("[[plots]]").next().unwrap();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            bare.replace("\"partitions.0.end\"", "\"links.wifi.loss\""),
            vec![
                "sweep point p0",
                "links.wifi.loss",
                "the scenario has no links.wifi",
            ],
        ),
        (
            bare.replace(
                "\"partitions.0.end\" = [\"8m\", \"12m\"]",
                "\"links.broadband.loss\" = [0.0, 2.0]",
            ),
            vec![
                "sweep point p1",
                "links.broadband.loss = 2.0",
                "not a probability",
            ],
        ),
        (
            SWEEP.replace(
                "\"partitions.0.end\" = [\"8m\", \"12m\"]",
                "\"partitions.0.end\" = [\"8m\", \"soon\"]",
            ),
            vec![
                "sweep point p1",
                "partitions.0.end = \"soon\"",
                "not a duration",
            ],
        ),
        (
            bare.replace("\"partitions.0.end\" = [", "\"partitions.4.end\" = ["),
            vec![
                "sweep point p0",
                "partitions.4.end",
                "partitions has 1 entries",
            ],
        ),
        (
            bare.replace(
                "\"partitions.0.end\" = [\"8m\", \"12m\"]",
                "\"links.broadband.lossy\" = [0.1]",
            ),
            vec![
                "sweep point p0",
                "links.broadband.lossy = 0.1",
                "unknown field `lossy`",
            ],
        ),
        (
            SWEEP.replace("base.toml", "nowhere.toml"),
            vec!["cannot read", "nowhere.toml"],
        ),
        (
            SWEEP.replace("\"data-to-cloud\"]", "\"data-to-moon\"]"),
            vec!["strategies[1]", "\"data-to-moon\" is not a strategy"],
        ),
        (
            format!("{bare}\n[grid.partitions.0]\nend = [\"9m\"]\n"),
            vec!["grid.\"partitions.0.end\"", "given twice"],
        ),
        (
            format!(
                "{bare}\n[[points]]\n\"links.lan.loss\" = 0.1\n[points.links.lan]\nloss = 0.2\n"
            ),
            vec!["points[0].\"links.lan.loss\"", "given twice"],
        ),
        (
            SWEEP.replace("seeds = 3", "seeds = 0"),
            vec!["seeds", "between 1 and 100000"],
        ),
        (
            SWEEP.replace(
                "strategies = [\"compute-to-data\", \"data-to-cloud\"]",
                "strategies = []",
            ),
            vec!["strategies", "name at least one strategy"],
        ),
        (
            SWEEP.replace("seeds = 3", "seeds = 3\nfirst_seed = 18446744073709551614"),
            vec!["first_seed", "overflows"],
        ),
        (
            SWEEP.replace(
                "metric = \"raw_bytes_over_internet\"",
                "metric = \"raw_bytes\"",
            ),
            vec!["plots[1].metric", "\"raw_bytes\" is not a metric"],
        ),
        (
            SWEEP.replacen("x = \"partitions.0.end\"", "x = \"links.lan.loss\"", 1),
            vec!["plots[0].x", "not a swept key"],
        ),
        (
            bare.replace("\"partitions.0.end\" = [", "\"seed\" = ["),
            vec!["grid.\"seed\"", "the sweep sets the seeds"],
        ),
        (
            SWEEP.replace("seeds = 3", "seeds = 3\ncolour = 1"),
            vec!["unknown field `colour`"],
        ),
        (
            bare.replace("[\"8m\", \"12m\"]", "[\"8m\", \"12m\", \"8m\"]"),
            vec![
                "p2 (partitions.0.end = \"8m\") is the same scenario as p0",
                "each point must differ",
            ],
        ),
        (
            format!(
                "{bare}\n[grid.links.lan]\nloss = [{}]\n",
                (0..5001)
                    .map(|i| format!("{}.0e-4", i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            vec!["grid", "more than 10000 points"],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let case = dir.path().join(format!("case{i}"));
        let sweep = write_sweep(&case, text);
        let out = case.join("out");
        for extra in [&[][..], &["--slurm", "--dry-run"][..]] {
            let mut args = vec![
                "sweep",
                sweep.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            let result = netsim(&args);
            let err = String::from_utf8_lossy(&result.stderr);
            assert!(!result.status.success(), "case {i} {extra:?} was accepted");
            for e in expected {
                assert!(err.contains(e), "case {i}: {e:?} not in {err}");
            }
            assert!(!out.exists(), "case {i} {extra:?} wrote {}", out.display());
        }
    }
    // The scenario's own message is said once, not once more as its cause.
    let err = netsim(&[
        "sweep",
        dir.path().join("case1/sweep.toml").to_str().unwrap(),
        "--out",
        dir.path().join("case1/out").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&err.stderr);
    assert_eq!(err.matches("not a probability").count(), 1, "{err}");
}

#[test]
fn collect_refuses_a_summary_that_is_not_its_runs_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "2");
    let out = dir.path().join("out");
    let before = files(&out);
    let o = out.to_str().unwrap();
    let summary = out.join("runs/p1/data-to-cloud/seed-3/summary.json");
    let other = std::fs::read(out.join("runs/p1/data-to-cloud/seed-2/summary.json")).unwrap();
    let original = std::fs::read(&summary).unwrap();
    for (junk, says) in [
        (&b"{\"writes\": "[..], "EOF while parsing"),
        (&b"[1, 2]"[..], "not a run summary"),
        (&other[..], "it holds strategy \"data-to-cloud\", seed 2"),
    ] {
        std::fs::write(&summary, junk).unwrap();
        let refused = netsim(&["sweep", "collect", o]);
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        for e in [
            "runs/p1/data-to-cloud/seed-3/summary.json is not the summary of run p1 data-to-cloud seed 3",
            says,
            "delete its directory and rerun the sweep",
        ] {
            assert!(err.contains(e), "{e:?} not in {err}");
        }
        let mut now = files(&out);
        now.remove("runs/p1/data-to-cloud/seed-3/summary.json");
        let mut then = before.clone();
        then.remove("runs/p1/data-to-cloud/seed-3/summary.json");
        assert_eq!(now, then, "a refused collect changed the outputs");
    }
    std::fs::write(&summary, original).unwrap();

    // A sweep.json that is not one is named as such, and left alone.
    std::fs::write(out.join("sweep.json"), "{").unwrap();
    for args in [
        vec!["sweep", "collect", o],
        vec![
            "sweep",
            dir.path().join("sweep.toml").to_str().unwrap(),
            "--out",
            o,
        ],
    ] {
        let refused = netsim(&args);
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("sweep.json is not a sweep"), "{err}");
        assert_eq!(std::fs::read(out.join("sweep.json")).unwrap(), b"{");
    }
}

#[test]
fn slurm_submission_refuses_unusable_paths_and_reports_sbatch_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = write_sweep(dir.path(), SWEEP);
    let sweep = sweep.to_str().unwrap();
    // #SBATCH lines cannot carry a space or a % in the logs' path.
    for name in ["my sweep", "100%"] {
        let out = dir.path().join(name);
        let refused = netsim(&[
            "sweep",
            sweep,
            "--out",
            out.to_str().unwrap(),
            "--slurm",
            "--dry-run",
        ]);
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("--out: ") && err.contains("#SBATCH"), "{err}");
        assert!(!out.exists(), "the refused {name:?} was written");
    }
    // Slurm's tasks run one run at a time: --jobs does not go with --slurm.
    let refused = netsim(&["sweep", sweep, "--slurm", "--dry-run", "--jobs", "2"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--jobs") && err.contains("--slurm"), "{err}");
    // An sbatch that refuses the job: its exit status and stderr are reported.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("sbatch");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = dir.path().join("out");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_hearth-netsim"))
        .args(["sweep", sweep, "--out", out.to_str().unwrap(), "--slurm"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    for e in [
        "sbatch failed (exit status: 1)",
        "Invalid partition name specified",
        "sweep.sbatch",
    ] {
        assert!(err.contains(e), "{e:?} not in {err}");
    }
}

#[test]
fn the_dry_run_writes_a_job_array_script_that_runs_the_packs() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = write_sweep(dir.path(), SWEEP);
    let out = dir.path().join("out");
    let said = netsim_ok(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--slurm",
        "--dry-run",
        "--pack",
        "5",
    ]);
    assert!(
        said.contains("12 runs in 3 array tasks of up to 5"),
        "{said}"
    );
    assert!(said.contains("submit it with: sbatch "), "{said}");
    let out = std::fs::canonicalize(&out).unwrap();
    let script = std::fs::read_to_string(out.join("sweep.sbatch")).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_hearth-netsim")).unwrap();
    let o = out.display();
    for line in [
        "#!/bin/sh".to_owned(),
        "#SBATCH --array=0-2".to_owned(),
        "#SBATCH --job-name=hearth-sweep-tiny".to_owned(),
        format!("#SBATCH --output={o}/slurm/%A_%a.out"),
        format!("#SBATCH --error={o}/slurm/%A_%a.err"),
        format!(
            "exec '{}' sweep run-pack '{o}' --pack-size 5 --pack \"$SLURM_ARRAY_TASK_ID\"",
            exe.display()
        ),
    ] {
        assert!(
            script.lines().any(|l| l == line),
            "no line {line:?} in\n{script}"
        );
    }
    assert!(out.join("sweep.json").is_file());
    assert!(out.join("slurm").is_dir());
    assert!(!out.join("runs").exists(), "a dry run ran something");

    // Each array task's command, run here as Slurm would run it, does its pack; together
    // they give what the local sweep gives.
    for task in 0..3 {
        let status = std::process::Command::new("sh")
            .arg(out.join("sweep.sbatch"))
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let said = String::from_utf8_lossy(&status.stdout);
        let expect = if task < 2 { 5 } else { 2 };
        assert!(
            said.contains(&format!("pack {task}: ran {expect} runs")),
            "{said}"
        );
    }
    let bad = netsim(&[
        "sweep",
        "run-pack",
        o.to_string().as_str(),
        "--pack-size",
        "5",
        "--pack",
        "3",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pack 3 does not exist"));
    netsim_ok(&["sweep", "collect", o.to_string().as_str()]);
    let local = tempfile::tempdir().unwrap();
    run(local.path(), "2");
    assert_eq!(
        std::fs::read(out.join("results.csv")).unwrap(),
        std::fs::read(local.path().join("out/results.csv")).unwrap()
    );
}

#[test]
fn the_example_sweeps_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweeps");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let sweep = hearth_netsim::sweep::Sweep::load(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            assert!(!sweep.runs().is_empty());
            seen += 1;
        }
    }
    assert!(seen >= 2, "{seen} example sweeps");
    let loss = hearth_netsim::sweep::Sweep::load(&dir.join("loss.toml")).unwrap();
    assert_eq!(loss.points.len(), 8);
    assert_eq!(
        loss.keys,
        [
            "links.broadband.loss",
            "partitions.0.end",
            "links.cellular.mbps",
            "devices.2.at_home"
        ]
    );
    // A listed point shows the base scenario's values for the keys it does not set.
    assert_eq!(loss.points[6].params[0], serde_json::json!(0.002));
    assert_eq!(loss.points[6].params[2], serde_json::json!(0.5));
    assert_eq!(loss.points[7].params[3], serde_json::json!("never"));
    assert_eq!(loss.runs().len(), 160);
    let thesis = hearth_netsim::sweep::Sweep::load(&dir.join("thesis.toml")).unwrap();
    assert_eq!(thesis.runs().len(), 160);
}
