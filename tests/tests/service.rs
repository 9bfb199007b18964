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
    // A system unit for a root-owned data directory would run the node as root: refused
    // unless asked for by name.
    let refused = hearth(&home, &["service", "install", "--print"]);
    use std::os::unix::fs::MetadataExt as _;
    if std::fs::metadata(&data).unwrap().uid() == 0 {
        assert_eq!(refused.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--run-as root"));
    }
    for user in [false, true] {
        let unit = unit_for(
            &home,
            if user {
                &["--user"]
            } else {
                &["--run-as", "root"]
            },
        );
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
            // A system unit runs as the user named, without capabilities.
            assert_eq!(value(&unit, "User"), Some("root"));
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
fn odd_paths_are_escaped_in_the_unit_and_a_newline_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Spaces, quotes, systemd's specifier and variable signs.
    let odd = tmp.path().join("my data \"50%\" $HOME");
    init(&odd);
    let unit = unit_for(&odd, &["--user"]);
    let exec = value(&unit, "ExecStart").unwrap();
    assert!(
        exec.contains(r#"my data \"50%%\" $$HOME" node run"#),
        "{exec}"
    );
    assert!(
        value(&unit, "ReadWritePaths")
            .unwrap()
            .contains(r#"my data \"50%%\" $HOME""#)
    );
    assert!(
        !unit.contains("Description=Hearth node ("),
        "no path in the description"
    );
    let file = tmp.path().join("odd.service");
    std::fs::write(&file, &unit).unwrap();
    if let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
    {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A newline would start a line of the unit's own: refused, nothing written.
    let newline = tmp.path().join("a\nExecStartPre=+/bin/true");
    init(&newline);
    let out = hearth(&newline, &["service", "install", "--user", "--print"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot name"));
    assert!(out.stdout.is_empty());
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

    // A drivers file with an entry that cannot be used: the running drivers stay, and
    // the reload says why.
    let drivers_file = home.join("drivers.toml");
    let drivers_text = std::fs::read_to_string(&drivers_file).unwrap();
    std::fs::write(
        &drivers_file,
        format!("{drivers_text}\n[[driver]]\nname = \"odd\"\nkind = \"toaster\"\n"),
    )
    .unwrap();
    hangup();
    let refused = wait_until("the refused driver reload audited", 30, || {
        let entries = json_ok(&home, &["audit", "--action", "node.reload"])["entries"].clone();
        entries.as_array().unwrap().last().cloned().filter(|e| {
            e["outcome"]
                .as_str()
                .unwrap()
                .contains("running drivers stay")
        })
    });
    assert!(
        refused["outcome"].as_str().unwrap().starts_with("failed"),
        "{refused}"
    );
    let d = json_ok(&home, &["driver", "ls"]);
    assert_eq!(d["drivers"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["drivers"][0]["state"], "running");
    json_ok(&home, &["status"]);
    stop(node);
}
