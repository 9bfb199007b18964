//! Reaching devices behind NAT, over real NAT routers in network namespaces that the
//! test builds (`hearth_tests::netns`): the cloud on the "internet" with a public
//! address and a relay; home behind an endpoint-independent NAT; the phone behind a
//! second NAT, endpoint-independent (hole punching upgrades the relayed connection to
//! a direct one) or port-randomising (`--random-fully`: punching fails and everything
//! goes through the relay). Home and the phone know the cloud only by a DNS name. The
//! phone's track replicates to home and a job sent from the phone runs on home; a
//! stranger on the internet can neither reserve on the cloud's relay nor open a
//! circuit through it, and the cloud audits both refusals. Skipped, with the reason
//! printed, only where the kernel refuses to create namespaces, and never under `CI`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use hearth_tests::cli::{await_listening, hearth, hearth_bin, json_ok, start_meshed, stop};
use hearth_tests::guest::module;
use hearth_tests::netns::{Host, Internet, NatKind, exec};
use serde_json::Value;

/// The cloud's mesh port (QUIC and TCP), fixed so that the bootstrap address can name it.
const CLOUD_PORT: u16 = 4001;

/// `hearth` in namespace `ns`, where the node's API is.
fn hearth_in(ns: &str, dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = exec(ns, hearth_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn json_in(host: &Host, dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = hearth_in(host.namespace(), dir, &all, None);
    assert!(
        out.status.success(),
        "{args:?} on {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(clippy::zombie_processes)]
fn start_in(host: &Host, dir: &Path, port: u16) -> Node {
    let quic = format!("/ip4/0.0.0.0/udp/{port}/quic-v1");
    let tcp = format!("/ip4/0.0.0.0/tcp/{port}");
    let mut child = exec(host.namespace(), hearth_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(["node", "run", "--api", "127.0.0.1:0", "--no-mdns"])
        .args(["--listen", &quic, "--listen", &tcp])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    await_listening(&mut child);
    Node(child)
}

fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `name`'s entry in `host`'s status, once connected.
fn peer(host: &Host, dir: &Path, name: &str) -> Option<Value> {
    json_in(host, dir, &["status"])["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name && p["connected"] == true)
        .cloned()
}

fn audit(host: &Host, dir: &Path, action: &str) -> Vec<Value> {
    json_in(host, dir, &["audit", "--action", action])["entries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Keeps `config.toml` but its bootstrap addresses, and bootstraps from `addr`.
fn bootstrap_only(dir: &Path, addr: &str) {
    let path = dir.join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for line in config.lines().filter(|l| !l.starts_with("bootstrap")) {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("owner") {
            out.push_str(&format!("bootstrap = [\"{addr}\"]\n"));
        }
    }
    std::fs::write(&path, out).unwrap();
    let _ = std::fs::remove_file(dir.join("peers.json"));
}

struct Mesh {
    // Nodes first: they stop before their namespaces go.
    nodes: Vec<Node>,
    cloud: Host,
    home: Host,
    phone: Host,
    stranger: Host,
    dirs: [PathBuf; 3],
    cloud_id: String,
    home_id: String,
    net: Internet,
    _tmp: tempfile::TempDir,
}

/// Pairs home (the owner's device), the cloud and the phone on loopback, then runs
/// them in the namespaces: the cloud public, home behind an endpoint-independent NAT,
/// the phone behind a NAT of `phone_nat`, with 20 ms of delay on each router where
/// the kernel has netem. None when the kernel refuses namespaces.
fn mesh(tag: &str, phone_nat: NatKind) -> Option<Mesh> {
    let mut net = match Internet::create(tag) {
        Ok(net) => net,
        Err(reason) => {
            hearth_tests::netns::skip_without_namespaces(&reason);
            return None;
        }
    };
    let cloud = net.public_host("cloud");
    let stranger = net.public_host("stranger");
    let home = net.behind_nat("home", NatKind::EndpointIndependent);
    let phone = net.behind_nat("phone", phone_nat);
    net.publish_name("cloud.hearth.test", cloud.addr());
    if let Err(err) = net.delay(20) {
        eprintln!("NOTE: no delay on the routers (this kernel has no netem): {err}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let dirs = [
        tmp.path().join("home"),
        tmp.path().join("cloud"),
        tmp.path().join("phone"),
    ];
    let [home_dir, cloud_dir, phone_dir] = &dirs;
    hearth_tests::cli::init(home_dir);
    let pairing = start_meshed(home_dir);
    let home_id = json_ok(home_dir, &["status"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ids = Vec::new();
    for (dir, name, role) in [
        (cloud_dir, "cloud", "cloud"),
        (phone_dir, "phone", "mobile"),
    ] {
        let ticket = json_ok(home_dir, &["invite"])["ticket"]
            .as_str()
            .unwrap()
            .to_owned();
        let joined = json_ok(dir, &["join", &ticket, "--name", name, "--role", role]);
        ids.push(joined["peer_id"].as_str().unwrap().to_owned());
    }
    stop(pairing);
    let cloud_id = ids[0].clone();
    let bootstrap = format!("/dns4/cloud.hearth.test/udp/{CLOUD_PORT}/quic-v1/p2p/{cloud_id}");
    bootstrap_only(home_dir, &bootstrap);
    bootstrap_only(phone_dir, &bootstrap);
    bootstrap_only(cloud_dir, "/ip4/127.0.0.1/udp/1/quic-v1");

    let nodes = vec![
        start_in(&cloud, cloud_dir, CLOUD_PORT),
        start_in(&home, home_dir, 0),
        start_in(&phone, phone_dir, 0),
    ];
    Some(Mesh {
        nodes,
        cloud,
        home,
        phone,
        stranger,
        dirs,
        cloud_id,
        home_id,
        net,
        _tmp: tmp,
    })
}

impl Mesh {
    fn home_dir(&self) -> &Path {
        &self.dirs[0]
    }
    fn cloud_dir(&self) -> &Path {
        &self.dirs[1]
    }
    fn phone_dir(&self) -> &Path {
        &self.dirs[2]
    }

    /// The phone's track, written on the phone, reaches home.
    fn track_replicates(&self) {
        json_in(
            &self.phone,
            self.phone_dir(),
            &["store", "create", "track", "--kind", "timeseries"],
        );
        let base = 1_700_000_000_000u64;
        let lines: Vec<String> = (0..20u64)
            .map(|i| {
                format!(
                    r#"{{"ts": {}, "value": {{"lat": 51.5, "lon": {}}}}}"#,
                    base + i * 1000,
                    i
                )
            })
            .collect();
        let out = hearth_in(
            self.phone.namespace(),
            self.phone_dir(),
            &["store", "append", "track", "-"],
            Some(&lines.join("\n")),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait("the phone's track on home", 60, || {
            let out = hearth_in(
                self.home.namespace(),
                self.home_dir(),
                &["--json", "store", "read", "track"],
                None,
            );
            let read: Value = serde_json::from_slice(&out.stdout).ok()?;
            (read["records"].as_array()?.len() == 20).then_some(())
        });
    }

    /// A job sent from the phone runs on home, where the data is, and its result
    /// comes back.
    fn job_runs_at_home(&self) {
        let work = self._tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        json_in(
            &self.home,
            self.home_dir(),
            &["store", "create", "os-monitor", "--kind", "timeseries"],
        );
        let base = 1_700_000_000_000u64;
        let lines: Vec<String> = (0..30u64)
            .map(|i| {
                format!(
                    r#"{{"ts": {}, "value": {{"load1": {}}}}}"#,
                    base + i * 60_000,
                    i % 5
                )
            })
            .collect();
        let out = hearth_in(
            self.home.namespace(),
            self.home_dir(),
            &["store", "append", "os-monitor", "-"],
            Some(&lines.join("\n")),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = work.join("daily_mean.wasm");
        std::fs::copy(module("daily_mean"), &wasm).unwrap();
        let key = work.join("dev.key");
        let made = json_ok(
            self.home_dir(),
            &["key", "new", "--out", key.to_str().unwrap()],
        );
        // The manifest names its module beside it.
        let manifest = work.join("daily-mean.toml");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests/daily-mean.toml"),
            &manifest,
        )
        .unwrap();
        let cap = work.join("daily-mean.cap");
        let out = hearth(
            self.home_dir(),
            &[
                "app",
                "approve",
                manifest.to_str().unwrap(),
                "--holder",
                made["public_key"].as_str().unwrap(),
                "--out",
                cap.to_str().unwrap(),
                "--yes",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait("the phone's catalogue lists os-monitor", 60, || {
            json_in(&self.phone, self.phone_dir(), &["store", "ls"])["stores"]
                .as_array()?
                .iter()
                .any(|s| s["name"] == "os-monitor")
                .then_some(())
        });
        let ran = json_in(
            &self.phone,
            self.phone_dir(),
            &[
                "run",
                wasm.to_str().unwrap(),
                "--cap",
                cap.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "--params",
                "{}",
            ],
        );
        assert_eq!(ran["receipt"]["ran_on"], "home", "{ran}");
        assert!(!ran["result"].is_null(), "{ran}");
    }

    /// A stranger on the internet asks the cloud's relay for a reservation and for a
    /// circuit to home: both refused, both audited on the cloud.
    fn stranger_is_refused(&self) {
        let relay = format!(
            "/ip4/{}/udp/{CLOUD_PORT}/quic-v1/p2p/{}",
            self.cloud.addr(),
            self.cloud_id
        );
        let probe = env!("CARGO_BIN_EXE_relay-probe");
        let out = self
            .stranger
            .command(probe)
            .args([&relay, &self.home_id])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!(
            "relay-probe: {said} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert_eq!(said["reservation"], "refused", "{said}");
        assert_eq!(said["circuit"], "refused", "{said}");
        let refusals = wait(
            &format!("the cloud audits both refusals (probe: {said})"),
            30,
            || {
                let entries = audit(&self.cloud, self.cloud_dir(), "mesh.relay");
                let refused: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e["outcome"].as_str())
                    .filter(|o| o.starts_with("refused"))
                    .map(str::to_owned)
                    .collect();
                (refused.iter().any(|o| o.contains("reservation"))
                    && refused.iter().any(|o| o.contains("circuit")))
                .then_some(refused)
            },
        );
        assert!(
            refusals
                .iter()
                .all(|o| o.contains("not an admitted device")),
            "{refusals:?}"
        );
    }
}

#[test]
fn behind_two_cone_nats_the_phone_goes_direct_after_the_relay() {
    let Some(m) = mesh("ei", NatKind::EndpointIndependent) else {
        return;
    };
    wait("home and the phone reach the cloud", 60, || {
        peer(&m.home, m.home_dir(), "cloud")?;
        peer(&m.phone, m.phone_dir(), "cloud")
    });
    wait("home reserves on the cloud's relay", 60, || {
        audit(&m.home, m.home_dir(), "mesh.relay")
            .iter()
            .any(|e| {
                e["object"] == "cloud" && e["outcome"].as_str().unwrap().starts_with("reserved")
            })
            .then_some(())
    });
    let direct = wait("the phone reaches home directly", 90, || {
        let home = peer(&m.phone, m.phone_dir(), "home")?;
        (home["path"] == "direct").then_some(home)
    });
    assert!(direct["via"].is_null(), "{direct}");
    // It went through the relay first, and the upgrade is audited on one side.
    let upgraded = |host: &Host, dir: &Path, other: &str| {
        audit(host, dir, "mesh.path")
            .iter()
            .any(|e| e["object"] == other && e["outcome"] == "direct (was relayed via cloud)")
    };
    assert!(
        upgraded(&m.phone, m.phone_dir(), "home") || upgraded(&m.home, m.home_dir(), "phone"),
        "no audited upgrade"
    );
    m.track_replicates();
    m.job_runs_at_home();
    m.stranger_is_refused();
    let devices = hearth_in(m.phone.namespace(), m.phone_dir(), &["devices"], None);
    let text = String::from_utf8_lossy(&devices.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("home") && l.contains("direct")),
        "{text}"
    );
    drop(m.nodes);
}

#[test]
fn behind_a_port_randomising_nat_everything_goes_through_the_relay() {
    let Some(m) = mesh("pr", NatKind::PortRandomising) else {
        return;
    };
    let relayed = wait("the phone reaches home through the cloud", 90, || {
        let home = peer(&m.phone, m.phone_dir(), "home")?;
        (home["path"] == "relayed").then_some(home)
    });
    assert_eq!(relayed["via"], "cloud", "{relayed}");
    m.track_replicates();
    m.job_runs_at_home();
    // Still relayed: hole punching cannot get through this NAT.
    let now = peer(&m.phone, m.phone_dir(), "home").unwrap();
    assert_eq!(now["path"], "relayed", "{now}");
    let devices = hearth_in(m.phone.namespace(), m.phone_dir(), &["devices"], None);
    let text = String::from_utf8_lossy(&devices.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("home") && l.contains("relayed via cloud")),
        "{text}"
    );
    drop(m.nodes);
    let _ = &m.net;
}
