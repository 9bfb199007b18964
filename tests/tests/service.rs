//! Running the node as a service: the systemd unit `hearth service install` writes
//! (checked by `systemd-analyze verify` where it exists, and structurally always), and
//! SIGHUP reloading what can change while the node runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

use hearth_tests::cli::{hearth, hearth_bin, init, json_ok, start_meshed, stop, wait_until};

/// The unit `hearth service install --print` writes for `dir`.
fn unit_for(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["service", "install", "--print"];
    args.extend_from_slice(extra);
    let out = hearth(dir, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of `key=` in `unit` (the last one).
fn value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn the_service_unit_runs_this_node_hardened_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let data = home.canonicalize().unwrap();
    let exe = hearth_bin().canonicalize().unwrap();
    for user in [false, true] {
        let unit = unit_for(&home, if user { &["--user"] } else { &[] });
        // It runs this binary on this data directory, and reloads with SIGHUP.
        assert_eq!(
            value(&unit, "ExecStart"),
            Some(format!("{} --data-dir {} node run", exe.display(), data.display()).as_str()),
            "{unit}"
        );
        assert_eq!(value(&unit, "ExecReload"), Some("/bin/kill -HUP $MAINPID"));
        // Hardened: the data directory is the one place it may write.
        for (key, expected) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("UMask", "0077"),
            ("RestrictSUIDSGID", "yes"),
        ] {
            assert_eq!(value(&unit, key), Some(expected), "{key} in {unit}");
        }
        assert_eq!(
            value(&unit, "ReadWritePaths"),
            Some(data.display().to_string().as_str())
        );
        // wasmtime compiles to machine code: write-execute memory stays allowed.
        assert!(value(&unit, "MemoryDenyWriteExecute").is_none());
        assert_eq!(
            value(&unit, "WantedBy"),
            Some(if user {
                "default.target"
            } else {
                "multi-user.target"
            })
        );
        if !user {
            // A system unit runs as the owner of the data directory, without
            // capabilities.
            use std::os::unix::fs::MetadataExt as _;
            let owner = std::fs::metadata(&data).unwrap().uid();
            if owner != 0 {
                assert_eq!(value(&unit, "User"), Some(owner.to_string().as_str()));
            }
            assert_eq!(value(&unit, "CapabilityBoundingSet"), Some(""));
        }
        // systemd's own check, where systemd-analyze exists.
        let file = tmp
            .path()
            .join(format!("hearth{}.service", if user { "-user" } else { "" }));
        std::fs::write(&file, &unit).unwrap();
        match Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
        {
            Ok(out) => assert!(
                out.status.success()
                    && !String::from_utf8_lossy(&out.stderr).contains(&*file.display().to_string()),
                "systemd-analyze verify: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => eprintln!("systemd-analyze is not installed: checked structurally only"),
        }
    }

    // install writes the user unit where `systemctl --user` reads it, and refuses to
    // overwrite it without --force; uninstall removes it.
    let config_home = tmp.path().join("config");
    let run = |args: &[&str]| {
        Command::new(hearth_bin())
            .arg("--data-dir")
            .arg(&home)
            .args(args)
            .env("XDG_CONFIG_HOME", &config_home)
            .output()
            .unwrap()
    };
    assert!(run(&["service", "install", "--user"]).status.success());
    let installed = config_home.join("systemd/user/hearth.service");
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        unit_for(&home, &["--user"])
    );
    let again = run(&["service", "install", "--user"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(
        run(&["service", "install", "--user", "--force"])
            .status
            .success()
    );
    assert!(run(&["service", "uninstall", "--user"]).status.success());
    assert!(!installed.exists());
}

#[test]
fn sighup_reloads_limits_and_drivers_and_a_bad_config_keeps_the_node_running() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start_meshed(&home);
    json_ok(&home, &["driver", "add", "os-monitor", "--interval", "1s"]);
    let pid = node.child.id().to_string();
    let hangup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let reloads = || {
        json_ok(&home, &["audit", "--action", "node.reload"])["entries"]
            .as_array()
            .unwrap()
            .len()
    };
    hangup();
    wait_until("the reload audited", 30, || (reloads() == 1).then_some(()));
    // Still running, and the driver was started again.
    let drivers = json_ok(&home, &["driver", "ls"]);
    assert_eq!(drivers["drivers"][0]["kind"], "os-monitor");
    wait_until("the driver writing again", 30, || {
        let d = json_ok(&home, &["driver", "ls"]);
        (d["drivers"][0]["state"] == "running").then_some(())
    });

    // A config.toml that no longer reads: audited as a failed reload, and the node
    // keeps running on what it has.
    let config = home.join("config.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\n[compute]\nfuel = 0\n")).unwrap();
    hangup();
    let failed = wait_until("the failed reload audited", 30, || {
        let entries = json_ok(&home, &["audit", "--action", "node.reload"])["entries"].clone();
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["outcome"].as_str().unwrap().starts_with("failed"))
            .cloned()
    });
    assert!(
        failed["outcome"].as_str().unwrap().contains("fuel"),
        "{failed}"
    );
    std::fs::write(&config, &good).unwrap();
    hangup();
    wait_until("the next good reload audited", 30, || {
        (reloads() == 3).then_some(())
    });
    json_ok(&home, &["status"]);
    stop(node);
}
