//! A mesh of three devices over NAT routers in network namespaces (see [`crate::netns`]):
//! the cloud on the "internet" with a public address and the mesh's relay, home behind
//! an endpoint-independent NAT, the phone behind a NAT of a given kind, and a stranger
//! on the internet. Home and the phone know the cloud only by a DNS name
//! (`cloud.hearth.test`, published in the namespaces' hosts files). Used by
//! `tests/tests/nat_relay.rs` and the `nat-bench` benchmark. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{await_listening, hearth_bin, json_ok, start_meshed, stop};
use crate::netns::{Host, Internet, NatKind, exec};

/// The cloud's mesh port (QUIC and TCP), fixed so that the bootstrap address can name it.
pub const CLOUD_PORT: u16 = 4001;

/// `hearth` in namespace `ns`, where the node's API is.
pub fn hearth_in(ns: &str, dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
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

/// Appends JSON lines to `store` on `host`'s node; fails the test unless it succeeds.
pub fn append_in(host: &Host, dir: &Path, store: &str, lines: &[String]) {
    let out = hearth_in(
        host.namespace(),
        dir,
        &["store", "append", store, "-"],
        Some(&lines.join("\n")),
    );
    assert!(
        out.status.success(),
        "append to {store} on {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn json_in(host: &Host, dir: &Path, args: &[&str]) -> Value {
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

/// A node process in a namespace, killed when dropped.
#[derive(Debug)]
pub struct Node {
    child: Child,
    /// Its API address (in its namespace).
    pub api: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::zombie_processes)]
pub fn start_in(host: &Host, dir: &Path, port: u16) -> Node {
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
    let api = await_listening(&mut child);
    Node { child, api }
}

pub fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
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
pub fn peer(host: &Host, dir: &Path, name: &str) -> Option<Value> {
    json_in(host, dir, &["status"])["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name && p["connected"] == true)
        .cloned()
}

pub fn audit(host: &Host, dir: &Path, action: &str) -> Vec<Value> {
    json_in(host, dir, &["audit", "--action", action])["entries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Keeps `config.toml` but its bootstrap addresses, and bootstraps from `addr`.
pub fn bootstrap_only(dir: &Path, addr: &str) {
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

/// Three devices of one mesh in an internet of namespaces. Dropping it stops the nodes,
/// then deletes the namespaces and the data.
#[derive(Debug)]
pub struct Mesh {
    /// The nodes: cloud, home, phone (first: they stop before their namespaces go).
    pub nodes: Vec<Node>,
    /// The cloud, public, with the relay.
    pub cloud: Host,
    /// Home, behind an endpoint-independent NAT; it holds the owner key.
    pub home: Host,
    /// The phone, behind a NAT of the kind asked for.
    pub phone: Host,
    /// A public host that is no device of the mesh.
    pub stranger: Host,
    /// Data directories: home, cloud, phone.
    pub dirs: [PathBuf; 3],
    /// The cloud's peer id.
    pub cloud_id: String,
    /// Home's peer id.
    pub home_id: String,
    /// When the phone's node was started.
    pub phone_started: std::time::SystemTime,
    /// The namespaces.
    pub net: Internet,
    /// Where the data directories are.
    pub tmp: tempfile::TempDir,
}

/// Pairs home (the owner's device), the cloud and the phone on loopback, then runs
/// them in the namespaces: the cloud public, home behind an endpoint-independent NAT,
/// the phone behind a NAT of `phone_nat`, with 20 ms of delay on each router where
/// the kernel has netem. None when the kernel refuses namespaces.
pub fn mesh(tag: &str, phone_nat: NatKind) -> Option<Mesh> {
    let mut net = match Internet::create(tag) {
        Ok(net) => net,
        Err(reason) => {
            crate::netns::skip_without_namespaces(&reason);
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
    crate::cli::init(home_dir);
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

    let mut nodes = vec![
        start_in(&cloud, cloud_dir, CLOUD_PORT),
        start_in(&home, home_dir, 0),
    ];
    let phone_started = std::time::SystemTime::now();
    nodes.push(start_in(&phone, phone_dir, 0));
    Some(Mesh {
        nodes,
        cloud,
        home,
        phone,
        stranger,
        dirs,
        cloud_id,
        home_id,
        phone_started,
        net,
        tmp,
    })
}

impl Mesh {
    pub fn home_dir(&self) -> &Path {
        &self.dirs[0]
    }
    pub fn cloud_dir(&self) -> &Path {
        &self.dirs[1]
    }
    pub fn phone_dir(&self) -> &Path {
        &self.dirs[2]
    }
}
