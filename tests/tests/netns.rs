//! Three hosts in network namespaces that this test creates (a bridge namespace and a
//! veth pair per host): the devices find each other by mDNS with no addresses given,
//! a link goes down and comes back, and the mesh heals. Skipped, with the reason
//! printed, only where the kernel refuses to create namespaces, and never under `CI`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hearth_tests::cli::{await_listening, hearth_bin};
use serde_json::Value;

struct Namespaces {
    prefix: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("ip: {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// A bridge namespace and `n` host namespaces, host i at 10.77.0.(i+1)/24. `Err`
    /// only when the kernel refuses to create a namespace at all (the test is then
    /// skipped); any later step that fails fails the test.
    fn create(n: usize) -> Result<Self, String> {
        let prefix = format!("hearth{}", std::process::id());
        let mut ns = Self {
            prefix: prefix.clone(),
            hosts: Vec::new(),
        };
        let br = format!("{prefix}-br");
        let out = Command::new("ip")
            .args(["netns", "add", &br])
            .output()
            .expect("`ip` runs (scripts/setup.sh installs iproute2)");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        if let Err(err) = ns.setup(&br, n) {
            panic!("setting up the namespaces: {err}");
        }
        Ok(ns)
    }

    fn setup(&mut self, br: &str, n: usize) -> Result<(), String> {
        let prefix = self.prefix.clone();
        ip(&["-n", br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", br, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = format!("{prefix}-h{i}");
            ip(&["netns", "add", &host])?;
            self.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                br,
            ])?;
            ip(&["-n", br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", br, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("10.77.0.{}/24", i + 1),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            // Multicast (mDNS) leaves through eth0.
            ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    fn link(&self, host: usize, up: bool) {
        ip(&[
            "-n",
            &format!("{}-br", self.prefix),
            "link",
            "set",
            &format!("p{host}"),
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", host]);
        }
        let _ = ip(&["netns", "del", &format!("{}-br", self.prefix)]);
    }
}

/// `hearth` inside namespace `ns`.
fn hearth_in(ns: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(hearth_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json_in(ns: &str, dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = hearth_in(ns, dir, &all);
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
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

/// The returned guard owns the child and waits for it when dropped.
#[allow(clippy::zombie_processes)]
fn start_in(ns: &str, dir: &Path) -> Node {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(hearth_bin())
        .arg("--data-dir")
        .arg(dir)
        .args([
            "node",
            "run",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/0.0.0.0/udp/0/quic-v1",
            "--listen",
            "/ip4/0.0.0.0/tcp/0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    await_listening(&mut child);
    Node(child)
}

fn connected(ns: &str, dir: &Path) -> Vec<String> {
    let status = json_in(ns, dir, &["status"]);
    let mut names: Vec<String> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == true)
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn mdns_discovery_and_healing_in_namespaces() {
    let ns = match Namespaces::create(3) {
        Ok(ns) => ns,
        Err(reason) => {
            hearth_tests::netns::skip_without_namespaces(&reason);
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let dirs: Vec<_> = names.iter().map(|n| tmp.path().join(n)).collect();
    let h = |i: usize| ns.hosts[i].as_str();

    // Pair b and c through a ticket, then forget every address: only mDNS remains.
    let out = hearth_in(h(0), &dirs[0], &["init", "--name", "a"]);
    assert!(out.status.success());
    let a = start_in(h(0), &dirs[0]);
    for i in 1..3 {
        let ticket = json_in(h(0), &dirs[0], &["invite"])["ticket"]
            .as_str()
            .unwrap()
            .to_owned();
        json_in(h(i), &dirs[i], &["join", &ticket, "--name", names[i]]);
    }
    drop(a);
    for dir in &dirs {
        let _ = std::fs::remove_file(dir.join("peers.json"));
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        let kept: Vec<&str> = config
            .lines()
            .filter(|l| !l.starts_with("bootstrap"))
            .collect();
        std::fs::write(dir.join("config.toml"), kept.join("\n") + "\n").unwrap();
    }
    let _nodes: Vec<Node> = (0..3).map(|i| start_in(h(i), &dirs[i])).collect();
    for i in 0..3 {
        let others: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| (*n).to_owned())
            .collect();
        wait_until(
            &format!("{} sees {others:?} by mDNS", names[i]),
            // mDNS asks again every 30 s once it has heard an answer; a discovery that
            // raced a peer's start is picked up by the next round.
            Duration::from_secs(75),
            || connected(h(i), &dirs[i]) == others,
        );
    }

    // c's link goes down: the others lose it; it comes back: the mesh heals.
    ns.link(2, false);
    wait_until("a loses c", Duration::from_secs(60), || {
        connected(h(0), &dirs[0]) == ["b"]
    });
    ns.link(2, true);
    wait_until("a sees c again", Duration::from_secs(60), || {
        connected(h(0), &dirs[0]) == ["b", "c"]
    });
    wait_until("c sees a and b again", Duration::from_secs(60), || {
        connected(h(2), &dirs[2]) == ["a", "b"]
    });
}
