//! Crash-and-restart rounds over real node processes on loopback: a mesh of home (with
//! the owner key), a phone and optionally a cloud VM; the phone's `steps` timeseries is
//! held by the phone and home (the default placement). A round kills a device with
//! SIGKILL, writes a reading on a device that stays up, starts the killed device again
//! (same data dir, new ports) and measures how long it takes until both holders have
//! every reading, and until the restarted device is admitted again.
//!
//! Shared by the restart test (`tests/tests/restart.rs`) and its benchmark
//! (`restart-bench`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Rng;
use crate::api::Api;
use crate::cli::{LOOPBACK_MESH, RunningNode, hearth, init, json_ok, start_with, wait_until};

/// The store the rounds write to.
const STORE: &str = "steps";
/// How long a round may take before the harness gives up on it.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Which device a round restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Home is killed while the phone writes, then started again.
    Home,
    /// The phone is killed while home writes, then started again.
    Phone,
    /// Home is killed while the phone writes and started again; once the phone knows
    /// where home is, the phone is killed while home writes, and started again. Timed
    /// from the phone's start.
    Both,
}

/// What one round measured, from the (last) restarted node's process start.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Until the restarted node's API listens (the floor: process start).
    pub listening: Duration,
    /// Until the restarted device lists the other holder as connected.
    pub admitted: Duration,
    /// Until both holders have every reading written so far.
    pub caught_up: Duration,
}

#[derive(Debug)]
struct Device {
    name: &'static str,
    dir: PathBuf,
    node: Option<RunningNode>,
    api: Option<Api>,
}

impl Device {
    fn new(root: &Path, name: &'static str) -> Self {
        Self {
            name,
            dir: root.join(name),
            node: None,
            api: None,
        }
    }

    fn start(&mut self) {
        let node = start_with(&self.dir, &LOOPBACK_MESH);
        self.api = Some(Api::new(&self.dir, &node));
        self.node = Some(node);
    }

    fn api(&self) -> &Api {
        self.api.as_ref().expect("the device is running")
    }

    /// SIGKILL: no clean shutdown, as in a crash or a power cut.
    fn kill(&mut self) {
        self.api = None;
        if let Some(mut node) = self.node.take() {
            node.child.kill().unwrap();
            node.child.wait().unwrap();
        }
    }

    fn listen(&self) -> Vec<String> {
        self.api().get("/v1/status")["listen"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Does this device's saved address book list `other` at one of its current
    /// addresses? (What a restarted device dials.)
    fn remembers(&self, other: &Device) -> bool {
        let path = self.dir.join("peers.json");
        let Ok(Some(state)) = hearth_protocol::statefile::read_state(&path, "peers", 1 << 24)
        else {
            return false;
        };
        let Ok(Value::Array(peers)) = serde_json::from_slice::<Value>(&state.payload) else {
            return false;
        };
        let current = other.listen();
        peers.iter().any(|p| {
            p["name"] == other.name
                && p["addrs"].as_array().is_some_and(|addrs| {
                    addrs
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|a| current.iter().any(|c| a.starts_with(c.as_str())))
                })
        })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // A failed round leaves no node running.
        self.kill();
    }
}

/// A running mesh for restart rounds.
#[derive(Debug)]
pub struct Mesh {
    home: Device,
    phone: Device,
    cloud: Option<Device>,
    rng: Rng,
    /// Readings written so far.
    written: u64,
}

impl Mesh {
    /// Pairs home, the phone and (with `cloud`) a cloud VM in data dirs under `root`,
    /// starts them, creates the phone's store and writes its first reading.
    pub fn new(root: &Path, cloud: bool, seed: u64) -> Self {
        let mut home = Device::new(root, "home");
        init(&home.dir);
        home.start();
        let mut mesh = Self {
            home,
            phone: Device::new(root, "phone"),
            cloud: cloud.then(|| Device::new(root, "cloud")),
            rng: Rng::new(seed),
            written: 0,
        };
        let (phone, cloud) = (&mut mesh.phone, &mut mesh.cloud);
        for (device, role) in [(Some(phone), "mobile"), (cloud.as_mut(), "cloud")] {
            let Some(device) = device else { continue };
            let ticket = json_ok(&mesh.home.dir, &["invite"])["ticket"]
                .as_str()
                .unwrap()
                .to_owned();
            let out = hearth(
                &device.dir,
                &["join", &ticket, "--name", device.name, "--role", role],
            );
            assert!(
                out.status.success(),
                "join: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            device.start();
        }
        mesh.settle();
        mesh.phone.api().send(
            "POST",
            "/v1/stores",
            &json!({ "name": STORE, "kind": "timeseries" }),
        );
        mesh.write(Side::Phone);
        let want = mesh.written;
        wait_until("home holds the phone's first reading", 60, || {
            (mesh.home.api().records(STORE) == want).then_some(())
        });
        mesh
    }

    fn devices(&self) -> impl Iterator<Item = &Device> {
        [Some(&self.home), Some(&self.phone), self.cloud.as_ref()]
            .into_iter()
            .flatten()
    }

    /// Waits until every device is connected to every other and has saved where they
    /// are (so that the next device killed finds the others when it starts again).
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all: Vec<&Device> = self.devices().collect();
            let missing: Vec<String> = all
                .iter()
                .flat_map(|a| all.iter().map(move |b| (a, b)))
                .filter(|(a, b)| a.name != b.name)
                .filter_map(
                    |(a, b)| match (a.api().peer_connected(b.name), a.remembers(b)) {
                        (true, true) => None,
                        (false, _) => Some(format!("{} is not connected to {}", a.name, b.name)),
                        (true, false) => Some(format!(
                            "{} has not saved where {} is ({:?})",
                            a.name,
                            b.name,
                            b.listen()
                        )),
                    },
                )
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the devices did not settle: {}",
                missing.join(", ")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write(&mut self, side: Side) {
        self.written += 1;
        let device = match side {
            Side::Home => &self.home,
            Side::Phone => &self.phone,
        };
        let ts = 1_700_000_000_000 + self.written * 1000;
        device.api().send(
            "POST",
            &format!("/v1/stores/{STORE}/records"),
            &json!([{ "ts": ts, "value": { "steps": self.written } }]),
        );
    }

    /// One round; panics if it has not caught up after two minutes.
    pub fn round(&mut self, restart: Restart) -> Round {
        // The issue this reproduces waited a few seconds between rounds; any wait
        // shorter than ping's five seconds leaves the survivor a dead connection.
        let idle = self.rng.range(0, 1500);
        std::thread::sleep(Duration::from_millis(idle));
        let started = match restart {
            Restart::Home => {
                self.home.kill();
                self.write(Side::Phone);
                let started = Instant::now();
                self.home.start();
                started
            }
            Restart::Phone => {
                self.phone.kill();
                self.write(Side::Home);
                let started = Instant::now();
                self.phone.start();
                started
            }
            Restart::Both => {
                self.home.kill();
                self.write(Side::Phone);
                self.home.start();
                wait_until("the phone knows home's new address", 60, || {
                    (self.phone.api().peer_connected("home") && self.phone.remembers(&self.home))
                        .then_some(())
                });
                self.phone.kill();
                self.write(Side::Home);
                let started = Instant::now();
                self.phone.start();
                started
            }
        };
        let listening = started.elapsed();
        let (restarted, other) = match restart {
            Restart::Home => (&self.home, &self.phone),
            Restart::Phone | Restart::Both => (&self.phone, &self.home),
        };
        let mut admitted = None;
        let caught_up = loop {
            if admitted.is_none() && restarted.api().peer_connected(other.name) {
                admitted = Some(started.elapsed());
            }
            let now = started.elapsed();
            if self.home.api().records(STORE) == self.written
                && self.phone.api().records(STORE) == self.written
            {
                break now;
            }
            assert!(
                now < GIVE_UP,
                "{restart:?} round: not caught up after {now:?} (home {}, phone {}, written {})",
                self.home.api().records(STORE),
                self.phone.api().records(STORE),
                self.written
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        self.settle();
        Round {
            listening,
            admitted: admitted.unwrap_or(caught_up),
            caught_up,
        }
    }

    /// Stops every node.
    pub fn stop(mut self) {
        for device in [
            Some(&mut self.home),
            Some(&mut self.phone),
            self.cloud.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(node) = device.node.take() {
                crate::cli::stop(node);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Home,
    Phone,
}
