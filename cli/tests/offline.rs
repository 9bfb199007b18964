//! The offline commands, driven through the real `hearth` binary: init, keys, manifest
//! review and approval, capability show and delegation, and their refusals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hearth_protocol::capability::{Actions, Capability, Chain, Grant, Resource};
use hearth_protocol::key::OwnerKey;
use hearth_protocol::time::UnixMillis;
use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn hearth(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("HEARTH_DATA_DIR")
            .env("HOME", self.dir.path())
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok_json(&self, args: &[&str]) -> Value {
        let out = self.hearth(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every file under the temp dir and its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }

    /// Runs a command that must fail with `code`, print exactly one line on stderr
    /// containing `needle`, and change no file.
    fn refuses(&self, args: &[&str], code: i32, needle: &str) {
        let before = self.snapshot();
        let out = self.hearth(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        assert_eq!(self.snapshot(), before, "{args:?} changed files");
    }

    fn init_mesh(&self) -> Value {
        self.ok_json(&["--data-dir", "home", "--json", "init", "--name", "home"])
    }

    fn write_manifest(&self, name: &str, body: &str) -> String {
        std::fs::write(self.path("module.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(self.path(name), body).unwrap();
        name.to_owned()
    }
}

const MANIFEST: &str = r#"
name = "places"
version = "0.1.0"
description = "Where you stay."

[module]
path = "module.wasm"

[[grants]]
store = "location"
fields = ["lat", "lon", "tst"]
purpose = "Find places."

[[outputs]]
type = "export"
destination = "https://study.example.org/in"
purpose = "A study."
"#;

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_a_mesh_once() {
    let env = Env::new();
    let v = env.init_mesh();
    for field in ["mesh_id", "owner", "peer_id", "name", "role"] {
        assert!(v[field].is_string(), "missing {field}: {v}");
    }
    assert_eq!(v["role"], "home");
    assert!(v["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    assert_eq!(mode(&env.path("home/owner.key")), 0o600);
    assert_eq!(mode(&env.path("home/node.key")), 0o600);
    let cert =
        Chain::from_text(&std::fs::read_to_string(env.path("home/device.cap")).unwrap()).unwrap();
    assert_eq!(cert.leaf().capability().device().unwrap().0, "home");
    assert!(cert.leaf().signature_is_valid());
    env.refuses(
        &["--data-dir", "home", "init", "--name", "again"],
        1,
        "already holds a Hearth node",
    );
    env.refuses(
        &["--data-dir", "other", "init", "--name", "bad name!"],
        2,
        "not a valid device name",
    );
}

#[test]
fn the_recovery_phrase_restores_the_owner_key() {
    let env = Env::new();
    let v = env.init_mesh();
    let phrase = env.ok_json(&["--data-dir", "home", "--json", "key", "recovery-phrase"]);
    let phrase = phrase["recovery_phrase"].as_str().unwrap().to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "--data-dir",
            "restored",
            "--json",
            "init",
            "--name",
            "home2",
            "--recover",
        ])
        .current_dir(env.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "{phrase}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["owner"], v["owner"]);
    assert_eq!(restored["mesh_id"], v["mesh_id"]);
}

#[test]
fn key_new_writes_a_private_file_and_never_overwrites() {
    let env = Env::new();
    let v = env.ok_json(&["--json", "key", "new", "--out", "dev.key"]);
    assert_eq!(v["public_key"].as_str().unwrap().len(), 64);
    assert_eq!(mode(&env.path("dev.key")), 0o600);
    env.refuses(&["key", "new", "--out", "dev.key"], 1, "already exists");
    let public = env.ok_json(&["--json", "key", "public", "--key", "dev.key"]);
    assert_eq!(public["public_key"], v["public_key"]);
}

#[test]
fn review_names_every_destination_and_errors_point_at_the_line() {
    let env = Env::new();
    let m = env.write_manifest("m.toml", MANIFEST);
    let out = env.hearth(&["app", "review", &m]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("SENDS DATA OUT OF YOUR MESH to https://study.example.org/in"),
        "{text}"
    );
    assert!(text.contains("only the fields lat, lon, tst"), "{text}");
    assert!(text.contains("Module hash: sha256:"), "{text}");
    let v = env.ok_json(&["--json", "app", "review", &m]);
    assert_eq!(v["export_destinations"][0], "https://study.example.org/in");

    let bad = env.write_manifest("bad.toml", &MANIFEST.replace("fields = [", "fields = 3 #["));
    env.refuses(&["app", "review", &bad], 1, "line 11");
    env.refuses(&["app", "review", "missing.toml"], 4, "does not exist");
}

#[test]
fn approve_then_show_then_delegate() {
    let env = Env::new();
    env.init_mesh();
    let dev = env.ok_json(&["--json", "key", "new", "--out", "dev.key"]);
    let dev_pub = dev["public_key"].as_str().unwrap();
    let m = env.write_manifest("m.toml", MANIFEST);
    let approved = env.ok_json(&[
        "--data-dir",
        "home",
        "--json",
        "app",
        "approve",
        &m,
        "--holder",
        dev_pub,
        "--out",
        "places.cap",
        "--yes",
    ]);
    assert_eq!(approved["holder"], dev_pub);
    let shown = env.ok_json(&["--data-dir", "home", "--json", "cap", "show", "places.cap"]);
    assert_eq!(shown["valid"], true);
    assert_eq!(shown["checked_against_mesh"], true);
    let grants = &shown["capability"]["links"][0]["grants"];
    assert!(
        grants
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["resource"] == "export:https://study.example.org/in")
    );

    let app = env.ok_json(&["--json", "key", "new", "--out", "app.key"]);
    let app_pub = app["public_key"].as_str().unwrap();
    let delegated = env.ok_json(&[
        "--data-dir",
        "home",
        "--json",
        "cap",
        "delegate",
        "places.cap",
        "--holder",
        app_pub,
        "--key",
        "dev.key",
        "--out",
        "app.cap",
        "--store",
        "location",
        "--no-export",
        "--fields",
        "lat,lon",
        "--aggregate-only",
        "--max-runs",
        "3",
        "--counted-by",
        "home",
        "--expires",
        "1d",
    ]);
    assert_eq!(delegated["depth"], 2);
    let shown = env.ok_json(&["--data-dir", "home", "--json", "cap", "show", "app.cap"]);
    assert_eq!(shown["valid"], true);
    let leaf = &shown["capability"]["links"][1];
    let store_grant = leaf["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["resource"] == "store:location")
        .unwrap();
    assert_eq!(
        store_grant["caveats"]["fields"],
        serde_json::json!(["lat", "lon"])
    );
    assert_eq!(store_grant["caveats"]["aggregate_only"], true);
    assert_eq!(store_grant["caveats"]["max_runs"], 3);
    assert_eq!(store_grant["caveats"]["counted_by"], "home");
    // The export grant was dropped by --no-export.
    assert!(
        !leaf["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["resource"].as_str().unwrap().starts_with("export:"))
    );
}

#[test]
fn bad_input_is_refused_with_the_right_code_and_no_change() {
    let env = Env::new();
    env.init_mesh();
    let dev = env.ok_json(&["--json", "key", "new", "--out", "dev.key"]);
    let dev_pub = dev["public_key"].as_str().unwrap().to_owned();
    env.ok_json(&["--json", "key", "new", "--out", "other.key"]);
    let m = env.write_manifest("m.toml", MANIFEST);

    // A malformed holder key is a usage error.
    env.refuses(
        &[
            "--data-dir",
            "home",
            "app",
            "approve",
            &m,
            "--holder",
            "xyz",
            "--out",
            "c.cap",
            "--yes",
        ],
        2,
        "hex",
    );
    // No owner key here: not found, with advice.
    env.refuses(
        &[
            "--data-dir",
            "nowhere",
            "app",
            "approve",
            &m,
            "--holder",
            &dev_pub,
            "--out",
            "c.cap",
            "--yes",
        ],
        4,
        "hearth init",
    );
    // A malformed manifest.
    let bad = env.write_manifest(
        "bad.toml",
        &MANIFEST.replace("type = \"export\"", "type = \"upload\""),
    );
    env.refuses(
        &[
            "--data-dir",
            "home",
            "app",
            "approve",
            &bad,
            "--holder",
            &dev_pub,
            "--out",
            "c.cap",
            "--yes",
        ],
        1,
        "outputs[0].type",
    );
    // Without --yes and without a terminal, nothing is approved.
    env.refuses(
        &[
            "--data-dir",
            "home",
            "app",
            "approve",
            &m,
            "--holder",
            &dev_pub,
            "--out",
            "c.cap",
        ],
        2,
        "--yes",
    );

    env.ok_json(&[
        "--data-dir",
        "home",
        "--json",
        "app",
        "approve",
        &m,
        "--holder",
        &dev_pub,
        "--out",
        "c.cap",
        "--yes",
    ]);
    let other_pub = env.ok_json(&["--json", "key", "public", "--key", "other.key"])["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Output file exists.
    env.refuses(
        &[
            "--data-dir",
            "home",
            "app",
            "approve",
            &m,
            "--holder",
            &dev_pub,
            "--out",
            "c.cap",
            "--yes",
        ],
        1,
        "already exists",
    );
    // Missing key file.
    env.refuses(
        &[
            "--data-dir",
            "home",
            "cap",
            "delegate",
            "c.cap",
            "--holder",
            &other_pub,
            "--key",
            "nokey.key",
            "--out",
            "d.cap",
        ],
        4,
        "hearth key new",
    );
    // A key that does not hold the capability.
    env.refuses(
        &[
            "--data-dir",
            "home",
            "cap",
            "delegate",
            "c.cap",
            "--holder",
            &other_pub,
            "--key",
            "other.key",
            "--out",
            "d.cap",
        ],
        3,
        "does not hold this capability",
    );
    // An owner key where a holder key is needed.
    env.refuses(
        &[
            "--data-dir",
            "home",
            "cap",
            "delegate",
            "c.cap",
            "--holder",
            &other_pub,
            "--key",
            "home/owner.key",
            "--out",
            "d.cap",
        ],
        2,
        "holder key is needed",
    );
    // Outliving the parent.
    env.refuses(
        &[
            "--data-dir",
            "home",
            "cap",
            "delegate",
            "c.cap",
            "--holder",
            &other_pub,
            "--key",
            "dev.key",
            "--out",
            "d.cap",
            "--expires",
            "400d",
        ],
        3,
        "cannot outlive",
    );
    // Not a capability file.
    env.refuses(
        &["--data-dir", "home", "cap", "show", "m.toml"],
        1,
        "not a valid capability file",
    );

    // An expired capability, signed long ago by this mesh's owner.
    let owner = OwnerKey::read(&env.path("home/owner.key")).unwrap();
    let expired = Capability {
        issuer: owner.public(),
        audience: dev_pub.parse().unwrap(),
        parent: None,
        grants: vec![Grant::new(
            Resource::Store("location".into()),
            Actions::READ,
        )],
        not_before: UnixMillis(1_000_000_000_000),
        expires: UnixMillis(1_000_086_400_000),
        nonce: [0; 16],
    }
    .sign(owner.secret())
    .unwrap();
    std::fs::write(env.path("old.cap"), Chain::root(expired).to_text()).unwrap();
    env.refuses(
        &[
            "--data-dir",
            "home",
            "cap",
            "delegate",
            "old.cap",
            "--holder",
            &other_pub,
            "--key",
            "dev.key",
            "--out",
            "d.cap",
        ],
        3,
        "expired",
    );
    // Shown for what it claims, and refused for scripts.
    let out = env.hearth(&["--data-dir", "home", "--json", "cap", "show", "old.cap"]);
    assert_eq!(out.status.code(), Some(3));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["valid"], false);
    assert_eq!(shown["expired"], true);
    assert_eq!(shown["skew_allowance_ms"], Value::Null);
    let out = env.hearth(&["--data-dir", "home", "cap", "show", "old.cap"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Expired at 2001-09-10T01:46:40Z"), "{text}");
    assert!(text.contains("NOT VALID"), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
}

#[test]
fn a_capability_just_past_its_expiry_is_shown_expired_with_the_skew_allowance() {
    let env = Env::new();
    env.ok_json(&["--data-dir", "home", "--json", "init", "--name", "home"]);
    let owner = OwnerKey::read(&env.path("home/owner.key")).unwrap();
    let holder = OwnerKey::from_seed([7; 32]).public();
    let now = UnixMillis::from_system_time(std::time::SystemTime::now());
    let capability = |expires: UnixMillis| {
        Capability {
            issuer: owner.public(),
            audience: holder,
            parent: None,
            grants: vec![Grant::new(
                Resource::Store("location".into()),
                Actions::READ,
            )],
            not_before: now.saturating_sub(std::time::Duration::from_secs(3600)),
            expires,
            nonce: [1; 16],
        }
        .sign(owner.secret())
        .unwrap()
    };
    // Expired 20 s ago: devices allow 60 s of clock skew, so they still accept it.
    let recent = capability(now.saturating_sub(std::time::Duration::from_secs(20)));
    std::fs::write(env.path("recent.cap"), Chain::root(recent).to_text()).unwrap();
    let shown = env.ok_json(&["--data-dir", "home", "--json", "cap", "show", "recent.cap"]);
    assert_eq!(shown["valid"], true);
    assert_eq!(shown["expired"], true);
    let grace = shown["skew_allowance_ms"].as_u64().unwrap();
    assert!((1..=40_000).contains(&grace), "{grace}");
    let out = env.hearth(&["--data-dir", "home", "cap", "show", "recent.cap"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Expired at"), "{text}");
    assert!(text.contains("Devices still accept it for"), "{text}");
    // Not expired: says when it will.
    let live = capability(now.saturating_add(std::time::Duration::from_secs(86_400)));
    std::fs::write(env.path("live.cap"), Chain::root(live).to_text()).unwrap();
    let shown = env.ok_json(&["--data-dir", "home", "--json", "cap", "show", "live.cap"]);
    assert_eq!(shown["expired"], false);
    let out = env.hearth(&["--data-dir", "home", "cap", "show", "live.cap"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Expires at"));
}

#[test]
fn config_show_reflects_the_file_and_the_flags() {
    let env = Env::new();
    env.init_mesh();
    let show = |args: &[&str]| {
        let mut all = vec!["--data-dir", "home", "--json", "config", "show"];
        all.extend_from_slice(args);
        env.ok_json(&all)
    };
    // Nothing set: defaults, and the data dir from the flag.
    let v = show(&[]);
    assert_eq!(v["data_dir"]["source"], "flag");
    assert_eq!(v["node.api"]["value"], "127.0.0.1:0");
    assert_eq!(v["node.api"]["source"], "default");
    assert_eq!(v["node.mdns"]["value"], true);
    assert_eq!(v["mesh.relay"]["value"], false);
    assert_eq!(v["name"]["value"], "home");

    // The file sets every flag's key.
    let config = env.path("home/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[node]\napi = \"127.0.0.1:7411\"\nbackend = \"redb\"\n\
         listen = [\"/ip4/127.0.0.1/udp/4101/quic-v1\"]\nmdns = false\n\n\
         [compute]\nfuel = 5000\n",
    );
    std::fs::write(&config, &text).unwrap();
    let v = show(&[]);
    assert_eq!(v["node.api"]["value"], "127.0.0.1:7411");
    assert_eq!(v["node.api"]["source"], "config-file");
    assert_eq!(
        v["node.listen"]["value"][0],
        "/ip4/127.0.0.1/udp/4101/quic-v1"
    );
    assert_eq!(v["node.mdns"]["value"], false);
    assert_eq!(v["node.mdns"]["source"], "config-file");
    assert_eq!(v["compute.fuel"]["value"], 5000);
    assert_eq!(v["compute.fuel"]["source"], "config-file");
    assert_eq!(v["compute.memory_mb"]["source"], "default");

    // Flags win over the file; bootstrap addresses add up.
    let v = show(&[
        "--api",
        "127.0.0.1:7500",
        "--mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/4102",
        "--bootstrap",
        "/ip4/127.0.0.1/tcp/4103",
    ]);
    assert_eq!(v["node.api"]["value"], "127.0.0.1:7500");
    assert_eq!(v["node.api"]["source"], "flag");
    assert_eq!(v["node.mdns"]["value"], true);
    assert_eq!(v["node.mdns"]["source"], "flag");
    assert_eq!(v["node.listen"]["value"][0], "/ip4/127.0.0.1/tcp/4102");
    assert_eq!(v["bootstrap"]["source"], "flag");

    // The text form names every key and its source.
    let out = env.hearth(&["--data-dir", "home", "config", "show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("node.api") && text.contains("(config.toml)"),
        "{text}"
    );

    // A bad value in the file is named, with the file, and nothing runs.
    std::fs::write(
        &config,
        text_with(
            &text_of(&config),
            "mdns = false",
            "mdns = false\nbackend2 = 1",
        ),
    )
    .unwrap();
    env.refuses(&["--data-dir", "home", "config", "show"], 1, "config.toml");
    std::fs::write(
        &config,
        text_with(&text_of(&config), "\nbackend2 = 1", "")
            .replace("127.0.0.1:7411", "0.0.0.0:7411"),
    )
    .unwrap();
    env.refuses(&["--data-dir", "home", "config", "show"], 1, "loopback");
    env.refuses(&["--data-dir", "home", "node", "run"], 1, "loopback");
    env.refuses(
        &[
            "--data-dir",
            "home",
            "config",
            "show",
            "--api",
            "192.0.2.1:80",
        ],
        2,
        "loopback",
    );
}

fn text_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn text_with(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in {text}");
    text.replace(from, to)
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "_hearth()"),
        ("zsh", "#compdef hearth"),
        ("fish", "complete -c hearth"),
    ] {
        let out = env.hearth(&["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        for command in ["doctor", "service", "store"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    env.refuses(&["completions", "tcsh"], 2, "possible values");

    let out = env.hearth(&["man", "--out", "man"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "hearth.1",
        "hearth-doctor.1",
        "hearth-store-create.1",
        "hearth-service-install.1",
    ] {
        let text = std::fs::read_to_string(env.path("man").join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    let create = std::fs::read_to_string(env.path("man/hearth-store-create.1")).unwrap();
    assert!(create.contains("timeseries"), "the kinds are listed");

    // Choices are checked by the parser, with the choices named.
    env.refuses(
        &["--data-dir", "x", "store", "create", "n", "--kind", "bogus"],
        2,
        "possible values: kv, timeseries, doc",
    );
    env.refuses(
        &["--data-dir", "x", "init", "--name", "n", "--role", "fridge"],
        2,
        "home, mobile, cloud",
    );
    // The main commands' help ends with examples.
    for args in [
        &["store", "create", "--help"][..],
        &["node", "run", "--help"],
        &["run", "--help"],
        &["doctor", "--help"],
    ] {
        let out = env.hearth(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Examples:\n  hearth"), "{args:?}: {text}");
    }
}
