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

use std::path::Path;

use hearth_tests::cli::{hearth, json_ok};
use hearth_tests::guest::module;
use hearth_tests::nat_mesh::{
    CLOUD_PORT, Mesh, append_in, audit, hearth_in, json_in, mesh, peer, wait,
};
use hearth_tests::netns::{Host, NatKind};
use serde_json::Value;

/// What the mesh must do over either NAT.
trait Flows {
    fn track_replicates(&self);
    fn job_runs_at_home(&self);
    fn stranger_is_refused(&self);
}

impl Flows for Mesh {
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
        append_in(&self.phone, self.phone_dir(), "track", &lines);
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
        let work = self.tmp.path().join("work");
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
        append_in(&self.home, self.home_dir(), "os-monitor", &lines);
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
    let Some(mut m) = mesh("pr", NatKind::PortRandomising) else {
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

    // The phone turned hostile (its node stopped, its key and certificate in other
    // hands) opens a dozen circuits to home at once: the relay lets it be an end of 7
    // and refuses the rest, audited; the relay and home go on serving, and the phone's
    // own node reaches home again afterwards.
    drop(m.nodes.pop());
    let relay = format!(
        "/ip4/{}/udp/{CLOUD_PORT}/quic-v1/p2p/{}",
        m.cloud.addr(),
        m.cloud_id
    );
    let out = m
        .phone
        .command(env!("CARGO_BIN_EXE_relay-probe"))
        .args([
            "--member",
            m.phone_dir().to_str().unwrap(),
            &relay,
            &m.home_id,
            "12",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("relay-probe --member: {said}");
    assert_eq!(said["admitted"], true, "{said}");
    let opened = said["opened"].as_u64().unwrap();
    assert!((1..=7).contains(&opened), "{said}");
    assert_eq!(opened + said["refused"].as_u64().unwrap(), 12, "{said}");
    wait("the cloud audits the circuits over its bounds", 30, || {
        audit(&m.cloud, m.cloud_dir(), "mesh.relay")
            .iter()
            .any(|e| {
                e["outcome"].as_str().is_some_and(|o| {
                    o.starts_with("refused: relay circuit over the relay's bounds")
                })
            })
            .then_some(())
    });
    let phone = hearth_tests::nat_mesh::start_in(&m.phone, m.phone_dir(), 0);
    m.nodes.push(phone);
    wait("the phone reaches home again", 90, || {
        peer(&m.phone, m.phone_dir(), "home")
    });
    let _ = &m.net;
}
