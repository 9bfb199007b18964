//! The built-in drivers through a real node: os-monitor against /proc and statvfs,
//! http-ingest with OwnTracks bodies and headers as the apps send them, credentials
//! scoped per driver, and HTTPS beyond loopback checked by a client that pins the
//! certificate's fingerprint, mqtt against a real Mosquitto broker (restarted under it) and a
//! scripted one (subscriptions granted or refused), file-import of a million lines
//! (idempotent, resumed after the node is killed, malformed lines reported), and a
//! hand-edited drivers.toml with bad entries.

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

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hearth_tests::cli::{hearth, init, json_ok, start, stop, wait_until};
use serde_json::Value;

fn records(dir: &Path, store: &str) -> Vec<Value> {
    json_ok(dir, &["store", "read", store])["records"]
        .as_array()
        .unwrap()
        .clone()
}

fn driver(dir: &Path, name: &str) -> Value {
    json_ok(dir, &["driver", "ls"])["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// What the test reads of the system at one moment, as os-monitor defines it.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    /// Wall-clock milliseconds before and after reading.
    before: u64,
    after: u64,
    /// /proc/stat: idle + iowait, and user..steal.
    cpu_idle: u64,
    cpu_total: u64,
    /// /proc/meminfo: MemTotal − MemAvailable.
    mem_used: u64,
    /// statvfs of the data directory: (blocks − free) × fragment size, and available.
    disk_used: u64,
    disk_free: u64,
    load1: f64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn snapshot(dir: &Path) -> Snapshot {
    let before = now_ms();
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |name: &str| -> u64 {
        let line = meminfo.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let vfs = rustix::fs::statvfs(dir).unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap();
    let after = now_ms();
    Snapshot {
        before,
        after,
        cpu_idle: cpu[3] + cpu[4],
        cpu_total: cpu.iter().take(8).sum(),
        mem_used: kib("MemTotal:") - kib("MemAvailable:"),
        disk_used: (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
        disk_free: vfs.f_bavail * vfs.f_frsize,
        load1: load.split_whitespace().next().unwrap().parse().unwrap(),
    }
}

#[test]
fn os_monitor_matches_proc() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    // Read the system every 10 ms while the driver takes its readings, so that each
    // reading can be bracketed by what the test saw just before and just after it.
    let snapshots: Arc<Mutex<Vec<Snapshot>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (snapshots, done, home) = (snapshots.clone(), done.clone(), home.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let snap = snapshot(&home);
                snapshots.lock().unwrap().push(snap);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = wait_until("the sampler runs", 20, || {
        snapshots.lock().unwrap().first().map(|s| s.after)
    });
    json_ok(&home, &["driver", "add", "os-monitor", "--interval", "2s"]);
    // Two consecutive readings, both taken while the sampler ran, and the sampler past
    // the second one.
    let (a, b) = wait_until("two readings inside the sampled time", 30, || {
        let got = records(&home, "os-monitor");
        let n = got.len();
        if n < 2 {
            return None;
        }
        let (a, b) = (got[n - 2].clone(), got[n - 1].clone());
        let b_ts = b["ts"].as_u64().unwrap();
        let past = snapshots.lock().unwrap().last().unwrap().before > b_ts + 200;
        (a["ts"].as_u64().unwrap() > started + 200 && past).then_some((a, b))
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let snaps = snapshots.lock().unwrap().clone();
    let (a_ts, b_ts) = (a["ts"].as_u64().unwrap(), b["ts"].as_u64().unwrap());
    let v = &b["value"];
    // The driver reads /proc/stat first and stamps the reading after its last read:
    // its reads fall within MARGIN ms before the stamp.
    const MARGIN: u64 = 50;
    let last_before = |t: u64| *snaps.iter().rev().find(|s| s.after + MARGIN < t).unwrap();
    let first_after = |t: u64| *snaps.iter().find(|s| s.before > t).unwrap();

    // CPU use over [a, b]: the sampled windows just inside and just outside that
    // interval bound it (busy and idle jiffies only grow).
    let (outer_start, inner_start) = (last_before(a_ts), first_after(a_ts));
    let (inner_end, outer_end) = (last_before(b_ts), first_after(b_ts));
    // (In floating point: iowait, counted as idle, can step back a little on some
    // kernels.)
    let busy = |from: Snapshot, to: Snapshot| {
        (to.cpu_total as f64 - to.cpu_idle as f64) - (from.cpu_total as f64 - from.cpu_idle as f64)
    };
    let idle = |from: Snapshot, to: Snapshot| to.cpu_idle as f64 - from.cpu_idle as f64;
    let (busy_in, busy_out) = (busy(inner_start, inner_end), busy(outer_start, outer_end));
    let (idle_in, idle_out) = (idle(inner_start, inner_end), idle(outer_start, outer_end));
    let low = 100.0 * busy_in / (busy_in + idle_out);
    let high = 100.0 * busy_out / (busy_out + idle_in);
    let cpu = v["cpu_percent"].as_f64().unwrap();
    assert!(
        low - 0.5 <= cpu && cpu <= high + 0.5,
        "cpu_percent {cpu} is outside [{low:.2}, {high:.2}] measured from /proc/stat"
    );

    // Memory, disk and load at b: between what was seen around it.
    let around: Vec<Snapshot> = snaps
        .iter()
        .filter(|s| s.after + MARGIN + 100 >= b_ts && s.before <= b_ts + 100)
        .copied()
        .collect();
    assert!(around.len() >= 2, "{around:?}");
    let within = |what: &str, got: u64, seen: &dyn Fn(&Snapshot) -> u64, slack: u64| {
        let min = around.iter().map(seen).min().unwrap();
        let max = around.iter().map(seen).max().unwrap();
        assert!(
            got + slack >= min && got <= max + slack,
            "{what} {got} is outside [{min}, {max}] ± {slack} measured at the same time"
        );
    };
    const MIB: u64 = 1024 * 1024;
    within(
        "mem_used_bytes",
        v["mem_used_bytes"].as_u64().unwrap(),
        &|s| s.mem_used,
        64 * MIB,
    );
    within(
        "disk_used_bytes",
        v["disk_used_bytes"].as_u64().unwrap(),
        &|s| s.disk_used,
        64 * MIB,
    );
    within(
        "disk_free_bytes",
        v["disk_free_bytes"].as_u64().unwrap(),
        &|s| s.disk_free,
        64 * MIB,
    );
    let load = v["load1"].as_f64().unwrap();
    assert!(
        around.iter().any(|s| s.load1 == load),
        "load1 {load} is none of {:?}",
        around.iter().map(|s| s.load1).collect::<Vec<_>>()
    );
    // Exact: the totals, and the percentages from the reading's own figures.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mem_total = total_kib * 1024;
    assert_eq!(v["mem_total_bytes"].as_u64(), Some(mem_total));
    let vfs = rustix::fs::statvfs(&home).unwrap();
    assert_eq!(
        v["disk_total_bytes"].as_u64(),
        Some(vfs.f_blocks * vfs.f_frsize)
    );
    let percent = |part: &str, whole: f64| 100.0 * v[part].as_f64().unwrap() / whole;
    let mem_percent = percent("mem_used_bytes", mem_total as f64);
    assert!((v["mem_used_percent"].as_f64().unwrap() - mem_percent).abs() <= 0.01);
    let disk_whole =
        v["disk_used_bytes"].as_f64().unwrap() + v["disk_free_bytes"].as_f64().unwrap();
    let disk_percent = percent("disk_used_bytes", disk_whole);
    assert!((v["disk_used_percent"].as_f64().unwrap() - disk_percent).abs() <= 0.01);

    let listed = driver(&home, "os-monitor");
    assert_eq!(listed["state"], "running");
    // In the catalogue, with the driver as source.
    let stores = json_ok(&home, &["store", "ls"]);
    assert!(
        stores["stores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "os-monitor")
    );
    let cat = json_ok(&home, &["store", "ls", "--hypercat"]);
    let item = cat["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["href"].as_str().unwrap().ends_with("/os-monitor"))
        .unwrap()
        .clone();
    let rels: Vec<(String, String)> = item["item-metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["rel"].as_str().unwrap().to_owned(),
                m["val"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        rels.iter()
            .any(|(r, v)| r == "urn:X-hearth:rels:source" && v == "os-monitor")
    );
    assert!(rels.iter().any(|(r, _)| r == "urn:X-hearth:rels:unit"));
    assert!(
        rels.iter()
            .any(|(r, v)| r.ends_with("hasDescription:en") && v.contains("load averages"))
    );
    stop(node);
}

fn post(url: &str, auth: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    post_with(url, &headers, body)
}

fn post_with(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send(body).unwrap();
    let status = response.status().as_u16();
    let mut text = String::new();
    response
        .into_body()
        .into_reader()
        .read_to_string(&mut text)
        .unwrap();
    (status, text)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/owntracks")
        .join(name);
    std::fs::read(path).unwrap()
}

fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The headers the OwnTracks apps send in HTTP mode.
fn owntracks_headers<'a>(auth: &'a str, app: &str) -> Vec<(&'static str, &'a str)> {
    match app {
        "android" => vec![
            ("Authorization", auth),
            ("Content-Type", "application/json; charset=utf-8"),
            ("User-Agent", "Owntracks-Android/gms/420505020"),
            ("X-Limit-U", "anna"),
            ("X-Limit-D", "phone"),
        ],
        _ => vec![
            ("Authorization", auth),
            ("Content-Type", "application/json"),
            (
                "User-Agent",
                "OwnTracks/18.4.1 CFNetwork/1568.200.51 Darwin/24.1.0",
            ),
            ("X-Limit-U", "anna"),
            ("X-Limit-D", "iphone"),
        ],
    }
}

#[test]
fn http_ingest_takes_owntracks_and_json_readings() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let added = json_ok(
        &home,
        &["driver", "add", "http-ingest", "--listen", "127.0.0.1:0"],
    );
    let url = added["url"].as_str().unwrap().to_owned();
    let basic = basic_auth(
        added["user"].as_str().unwrap(),
        added["password"].as_str().unwrap(),
    );
    let owntracks = format!("{url}/owntracks");
    // Locations from both apps, with the headers each sends.
    for (name, app) in [
        ("location-android-home.json", "android"),
        ("location-ios-walk.json", "ios"),
        ("location-android-work.json", "android"),
    ] {
        let (status, body) = post_with(&owntracks, &owntracks_headers(&basic, app), &fixture(name));
        assert_eq!((status, body.as_str()), (200, "[]"), "{name}");
    }
    // Other message types, and the empty body the apps post when a friend is removed,
    // are acknowledged, not stored.
    for name in ["transition-work.json", "waypoint-work.json", "lwt.json"] {
        let (status, body) = post_with(
            &owntracks,
            &owntracks_headers(&basic, "android"),
            &fixture(name),
        );
        assert_eq!((status, body.as_str()), (200, "[]"), "{name}");
    }
    let (status, body) = post_with(&owntracks, &owntracks_headers(&basic, "android"), b"");
    assert_eq!((status, body.as_str()), (200, "[]"), "the empty body");
    let stored = records(&home, "location");
    assert_eq!(stored.len(), 3);
    // At the fix's time; everything the app sent but `_type`, and who sent it.
    let home_fix = &stored[0];
    assert_eq!(home_fix["ts"], 1_700_000_100_000u64);
    let mut expected: Value =
        serde_json::from_slice(&fixture("location-android-home.json")).unwrap();
    expected.as_object_mut().unwrap().remove("_type");
    expected["user"] = "anna".into();
    expected["device"] = "phone".into();
    assert_eq!(home_fix["value"], expected);
    let walk = &stored[1]["value"];
    assert_eq!(stored[1]["ts"], 1_700_001_900_000u64);
    assert_eq!(
        (walk["device"].as_str(), walk["cog"].as_u64()),
        (Some("iphone"), Some(132))
    );
    assert_eq!(walk["p"], 101.26);
    let work = &stored[2]["value"];
    assert_eq!(work["SSID"], "office");
    assert_eq!(work["inregions"], serde_json::json!(["Work"]));

    // Wrong credentials, bad bodies: refused with a message, nothing written.
    let wrong = basic_auth("hearth", "not-the-password");
    assert_eq!(
        post(
            &owntracks,
            Some(&wrong),
            &fixture("location-android-home.json")
        )
        .0,
        401
    );
    assert_eq!(
        post(&owntracks, None, &fixture("location-android-home.json")).0,
        401
    );
    for bad in [
        &b"{\"_type\":\"location\",\"lon\":4.9,\"tst\":1700000000}"[..],
        b"{\"_type\":\"location\",\"lat\":123,\"lon\":4.9,\"tst\":1700000000}",
        b"{\"_type\":\"encrypted\",\"data\":\"b64ciphertext\"}",
        b"not json",
        b"[1,2]",
    ] {
        let (status, body) = post(&owntracks, Some(&basic), bad);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(body.contains("error"), "{body}");
    }
    assert_eq!(records(&home, "location").len(), 3);
    // The last refusal is shown by `driver ls`, since the app hardly shows it.
    let last = driver(&home, "http-ingest")["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(last.starts_with("refused an OwnTracks message"), "{last}");

    // Generic JSON readings: one object, an array, JSON lines; a bad line refuses all.
    let readings = format!("{url}/readings");
    let bearer = format!("Bearer {}", added["password"].as_str().unwrap());
    assert_eq!(
        post(
            &readings,
            Some(&bearer),
            br#"{"ts": 1700009000000, "value": {"steps": 10}}"#
        )
        .0,
        200
    );
    assert_eq!(
        post(
            &readings,
            Some(&bearer),
            br#"[{"steps": 11}, {"steps": 12}]"#
        )
        .0,
        200
    );
    assert_eq!(
        post(
            &readings,
            Some(&bearer),
            b"{\"steps\": 13}\n{\"steps\": 14}\n"
        )
        .0,
        200
    );
    let (status, body) = post(&readings, Some(&bearer), b"{\"steps\": 15}\nnot json\n");
    assert_eq!(status, 400);
    assert!(body.contains("line 2"), "{body}");
    assert_eq!(records(&home, "location").len(), 3 + 5);
    assert_eq!(driver(&home, "http-ingest")["records"], 8);
    stop(node);

    // The port is kept across a restart, so a phone's configuration keeps working.
    let node = start(&home);
    wait_until("the endpoint is back", 20, || {
        (driver(&home, "http-ingest")["detail"].as_str() == Some(url.as_str())).then_some(())
    });
    assert_eq!(
        post_with(
            &owntracks,
            &owntracks_headers(&basic, "ios"),
            &fixture("location-ios-walk.json")
        )
        .0,
        200
    );
    stop(node);
}

#[test]
fn http_ingest_credentials_are_scoped_to_their_driver() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let add = |name: &str, store: &str| {
        json_ok(
            &home,
            &[
                "driver",
                "add",
                "http-ingest",
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
                "--store",
                store,
            ],
        )
    };
    let a = add("ingest-a", "store-a");
    let b = add("ingest-b", "store-b");
    // Both have the default user name: only the password tells them apart.
    assert_eq!(a["user"], b["user"]);
    assert_ne!(a["password"], b["password"]);
    assert_ne!(a["url"], b["url"]);
    let credentials = |d: &Value| {
        let password = d["password"].as_str().unwrap();
        (
            basic_auth(d["user"].as_str().unwrap(), password),
            format!("Bearer {password}"),
        )
    };
    let (a_basic, a_bearer) = credentials(&a);
    let (b_basic, b_bearer) = credentials(&b);
    let endpoint = |d: &Value, path: &str| format!("{}/{path}", d["url"].as_str().unwrap());
    let location = fixture("location-android-home.json");
    let reading = br#"{"ts": 1700000000000, "value": {"watts": 5}}"#;
    // B's credentials on A's endpoints, and A's on B's: refused, nothing written.
    for (target, auth) in [
        (&a, &b_basic),
        (&a, &b_bearer),
        (&b, &a_basic),
        (&b, &a_bearer),
    ] {
        let (status, body) = post(&endpoint(target, "owntracks"), Some(auth), &location);
        assert_eq!(status, 401, "{body}");
        let (status, body) = post(&endpoint(target, "readings"), Some(auth), reading);
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(records(&home, "store-a").len(), 0);
    assert_eq!(records(&home, "store-b").len(), 0);
    // Each driver's own credentials write its own store, and only that one.
    assert_eq!(
        post(&endpoint(&a, "owntracks"), Some(&a_basic), &location).0,
        200
    );
    assert_eq!(
        post(&endpoint(&a, "readings"), Some(&a_bearer), reading).0,
        200
    );
    assert_eq!(
        post(&endpoint(&b, "readings"), Some(&b_bearer), reading).0,
        200
    );
    assert_eq!(records(&home, "store-a").len(), 2);
    assert_eq!(records(&home, "store-b").len(), 1);
    assert_eq!(driver(&home, "ingest-a")["records"], 2);
    assert_eq!(driver(&home, "ingest-b")["records"], 1);
    stop(node);
}

struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(dir: &Path, port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is not installed (scripts/setup.sh installs it)");
        wait_until("the broker listens", 20, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Broker { child, port }
    }

    fn stop(mut self) -> u16 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap();
        self.port
    }

    fn publish(&self, topic: &str, payload: &str) {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1"])
            .args(["-t", topic, "-m", payload])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mqtt_survives_broker_restarts_and_actuates() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let broker = Broker::start(tmp.path(), None);
    let address = format!("127.0.0.1:{}", broker.port);
    json_ok(
        &home,
        &[
            "driver",
            "add",
            "mqtt",
            "--broker",
            &address,
            "--topic",
            "home/+/temperature",
            "--store",
            "climate",
            "--actuate",
            "home/set",
        ],
    );
    wait_until("subscribed", 20, || {
        (driver(&home, "mqtt")["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("subscribed")))
        .then_some(())
    });
    broker.publish("home/kitchen/temperature", "21.5");
    broker.publish("home/bedroom/temperature", "{\"celsius\": 18.0}");
    broker.publish("home/kitchen/humidity", "40");
    // A payload larger than a reading may be is refused with a reason and acknowledged,
    // so it does not block the ones behind it.
    let big = format!("\"{}\"", "x".repeat(70 * 1024));
    broker.publish("home/attic/temperature", &big);
    wait_until("two readings", 20, || {
        (records(&home, "climate").len() == 2).then_some(())
    });
    let got = records(&home, "climate");
    wait_until("the oversized message is reported", 20, || {
        driver(&home, "mqtt")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("home/attic/temperature"))
            .then_some(())
    });
    assert_eq!(records(&home, "climate").len(), 2);
    assert_eq!(got[0]["value"]["topic"], "home/kitchen/temperature");
    assert_eq!(got[0]["value"]["value"], 21.5);
    assert_eq!(got[1]["value"]["value"]["celsius"], 18.0);

    // Actuation: a key put into the actuator store is published.
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "home/set/#", "-C", "1", "-v", "-W", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // mosquitto_sub has no "subscribed" signal: publish until it has seen one.
    let mut output = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sub.try_wait().unwrap().is_none() {
        json_ok(
            &home,
            &["store", "put", "climate-actuators", "heating", "\"on\""],
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(Instant::now() < deadline, "nothing was published");
    }
    sub.stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert_eq!(output.trim(), "home/set/heating on");

    // The broker restarts: the driver reports it, reconnects, and goes on.
    let port = broker.stop();
    wait_until("the driver notices", 30, || {
        (driver(&home, "mqtt")["state"] == "retrying").then_some(())
    });
    assert!(
        driver(&home, "mqtt")["last_error"]
            .as_str()
            .unwrap()
            .contains(&address),
        "{}",
        driver(&home, "mqtt")
    );
    let broker = Broker::start(tmp.path(), Some(port));
    wait_until("reconnected", 60, || {
        (driver(&home, "mqtt")["state"] == "running"
            && driver(&home, "mqtt")["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("subscribed")))
        .then_some(())
    });
    broker.publish("home/kitchen/temperature", "22.0");
    wait_until("a reading after the restart", 30, || {
        (records(&home, "climate").len() == 3).then_some(())
    });

    // QoS 1 keeps its place: messages published while the node is down arrive after.
    stop(node);
    broker.publish("home/kitchen/temperature", "23.0");
    broker.publish("home/kitchen/temperature", "23.5");
    let node = start(&home);
    wait_until("queued messages delivered", 30, || {
        (records(&home, "climate").len() == 5).then_some(())
    });
    let last: Vec<f64> = records(&home, "climate")
        .iter()
        .skip(3)
        .map(|r| r["value"]["value"].as_f64().unwrap())
        .collect();
    assert_eq!(last, vec![23.0, 23.5]);
    stop(node);
    drop(broker);
}

/// A scripted MQTT 3.1.1 broker: it accepts every connection, answers pings, reports
/// each SUBSCRIBE on `subscribed` and answers it with the return code the test sends on
/// `answer` (0x00-0x02 granted at that QoS, 0x80 refused).
struct ScriptedBroker {
    port: u16,
    subscribed: std::sync::mpsc::Receiver<String>,
    answer: std::sync::mpsc::SyncSender<u8>,
}

impl ScriptedBroker {
    fn start() -> Self {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex, mpsc};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (subscribed_tx, subscribed) = mpsc::sync_channel::<String>(16);
        let (answer, answer_rx) = mpsc::sync_channel::<u8>(16);
        let answers = Arc::new(Mutex::new(answer_rx));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (subscribed_tx, answers) = (subscribed_tx.clone(), answers.clone());
                std::thread::spawn(move || {
                    loop {
                        let mut header = [0u8; 1];
                        if stream.read_exact(&mut header).is_err() {
                            return;
                        }
                        let (mut len, mut shift) = (0usize, 0);
                        loop {
                            let mut byte = [0u8; 1];
                            if stream.read_exact(&mut byte).is_err() {
                                return;
                            }
                            len |= usize::from(byte[0] & 0x7f) << shift;
                            shift += 7;
                            if byte[0] & 0x80 == 0 {
                                break;
                            }
                        }
                        let mut body = vec![0u8; len];
                        if stream.read_exact(&mut body).is_err() {
                            return;
                        }
                        let reply = match header[0] >> 4 {
                            1 => vec![0x20, 0x02, 0x00, 0x00], // CONNACK, accepted
                            8 => {
                                // SUBSCRIBE: packet id, then (filter, QoS).
                                let filter_len = usize::from(body[2]) << 8 | usize::from(body[3]);
                                let filter =
                                    String::from_utf8_lossy(&body[4..4 + filter_len]).into_owned();
                                if subscribed_tx.send(filter).is_err() {
                                    return;
                                }
                                let Ok(code) = answers.lock().unwrap().recv() else {
                                    return;
                                };
                                vec![0x90, 0x03, body[0], body[1], code] // SUBACK
                            }
                            12 => vec![0xd0, 0x00], // PINGRESP
                            14 => return,           // DISCONNECT
                            _ => continue,
                        };
                        if stream.write_all(&reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ScriptedBroker {
            port,
            subscribed,
            answer,
        }
    }

    /// Waits for the next SUBSCRIBE and returns its filter.
    fn next_subscribe(&self) -> String {
        self.subscribed
            .recv_timeout(Duration::from_secs(30))
            .expect("the driver did not subscribe")
    }
}

#[test]
fn mqtt_runs_once_the_subscription_is_granted_and_reports_a_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let broker = ScriptedBroker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    json_ok(
        &home,
        &[
            "driver", "add", "mqtt", "--broker", &address, "--topic", "home/#", "--name",
            "scripted",
        ],
    );
    // Connected, the subscription sent and not answered yet: not running.
    assert_eq!(broker.next_subscribe(), "home/#");
    let waiting = driver(&home, "scripted");
    assert_eq!(waiting["state"], "starting", "{waiting}");
    assert!(
        waiting["detail"].as_str().unwrap().contains("subscribing"),
        "{waiting}"
    );
    // Refused: an error in `driver ls`, and the driver tries again.
    broker.answer.send(0x80).unwrap();
    let refused = wait_until("the refusal shows", 20, || {
        let d = driver(&home, "scripted");
        (d["state"] == "retrying").then_some(d)
    });
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .contains("refused the subscription to home/#"),
        "{refused}"
    );
    // Granted on the next attempt (after the first backoff): running, error cleared.
    assert_eq!(broker.next_subscribe(), "home/#");
    assert_eq!(driver(&home, "scripted")["state"], "retrying");
    broker.answer.send(0x01).unwrap();
    let running = wait_until("running", 20, || {
        let d = driver(&home, "scripted");
        (d["state"] == "running").then_some(d)
    });
    assert_eq!(
        running["detail"],
        format!("subscribed to home/# on {address}"),
        "{running}"
    );
    assert_eq!(running["last_error"], Value::Null);
    stop(node);
}

#[test]
fn bad_driver_configuration_is_refused_or_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let unknown = hearth(&home, &["driver", "add", "toaster"]);
    assert_eq!(unknown.status.code(), Some(2));
    let missing = hearth(&home, &["driver", "add", "mqtt", "--topic", "a/b"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--broker"));
    let bad_topic = hearth(
        &home,
        &[
            "driver",
            "add",
            "mqtt",
            "--broker",
            "127.0.0.1:1",
            "--topic",
            "a/#/b",
        ],
    );
    assert_eq!(bad_topic.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_topic.stderr).contains("topic filter"));
    // A broker nobody listens on: accepted, and `driver ls` says why it does not run.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let broker = format!("127.0.0.1:{port}");
    json_ok(
        &home,
        &[
            "driver", "add", "mqtt", "--broker", &broker, "--topic", "x/y", "--name", "nowhere",
        ],
    );
    let listed = wait_until("the failure shows", 20, || {
        let d = driver(&home, "nowhere");
        d["last_error"].as_str().is_some().then_some(d)
    });
    assert_eq!(listed["state"], "retrying");
    assert!(
        listed["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the broker")
    );
    // The node is fine, and the driver goes away when removed.
    json_ok(&home, &["status"]);
    json_ok(&home, &["driver", "rm", "nowhere"]);
    assert_eq!(driver(&home, "nowhere"), Value::Null);
    stop(node);
}

#[test]
fn file_import_of_a_million_lines_is_idempotent_and_reports_bad_lines() {
    use std::io::Write as _;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let big = tmp.path().join("kitchen.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        writeln!(f, "time,celsius,room").unwrap();
        for i in 0..1_000_000u64 {
            writeln!(f, "{},{}.{},kitchen", 1_600_000_000 + i, 18 + i % 7, i % 10).unwrap();
        }
    }
    let big = big.to_str().unwrap();
    let done = json_ok(
        &home,
        &["driver", "add", "file-import", big, "--store", "kitchen"],
    );
    assert_eq!(done["state"], "done");
    assert!(
        done["detail"]
            .as_str()
            .unwrap()
            .starts_with("imported 1000000 records")
    );
    let count = |store: &str| {
        json_ok(&home, &["store", "agg", store, "count"])["result"]
            .as_f64()
            .unwrap() as u64
    };
    assert_eq!(count("kitchen"), 1_000_000);
    // The first reading: seconds became milliseconds, the rest the value.
    let first = json_ok(&home, &["store", "read", "kitchen", "--first", "1"]);
    assert_eq!(first["records"][0]["ts"], 1_600_000_000_000u64);
    assert_eq!(first["records"][0]["value"]["celsius"], 18.0);
    assert_eq!(first["records"][0]["value"]["room"], "kitchen");
    // Again: nothing added.
    let again = json_ok(
        &home,
        &[
            "driver",
            "add",
            "file-import",
            big,
            "--store",
            "kitchen",
            "--name",
            "again",
        ],
    );
    assert!(again["detail"].as_str().unwrap().contains("nothing added"));
    assert_eq!(count("kitchen"), 1_000_000);

    // A malformed line: refused (nothing imported), or skipped and reported.
    let bad = tmp.path().join("bad.jsonl");
    let mut lines: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"steps\": {i}}}",
                1_700_000_000_000u64 + i * 1000
            )
        })
        .collect();
    lines[499] = "{\"ts\": \"soon\", \"steps\": 1}".into();
    lines[799] = "{not json".into();
    lines[899] = format!(
        "{{\"ts\": 1700000900000, \"note\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let bad = bad.to_str().unwrap();
    let refused = hearth(
        &home,
        &["driver", "add", "file-import", bad, "--store", "steps"],
    );
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("line 500"), "{message}");
    assert!(message.contains("nothing was imported"), "{message}");
    assert_eq!(count("steps"), 0);
    let skipped = json_ok(
        &home,
        &[
            "driver",
            "add",
            "file-import",
            bad,
            "--store",
            "steps",
            "--on-error",
            "skip",
            "--name",
            "steps-skip",
        ],
    );
    let detail = skipped["detail"].as_str().unwrap();
    assert!(detail.starts_with("imported 997 records"), "{detail}");
    assert!(
        detail.contains("line 500") && detail.contains("line 800") && detail.contains("line 900"),
        "{detail}"
    );
    assert_eq!(count("steps"), 997);
    stop(node);
}

#[test]
fn file_import_resumes_after_the_node_is_killed() {
    use std::io::Write as _;
    const LINES: u64 = 1_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let file = tmp.path().join("meter.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        writeln!(f, "ts,n").unwrap();
        for i in 0..LINES {
            writeln!(f, "{},{i}", 1_600_000_000_000 + i * 1000).unwrap();
        }
    }
    let file = file.to_str().unwrap().to_owned();
    // `driver add file-import` follows the import until it ends; run it aside.
    let mut add = Command::new(hearth_tests::cli::hearth_bin())
        .arg("--data-dir")
        .arg(&home)
        .args([
            "--json",
            "driver",
            "add",
            "file-import",
            &file,
            "--store",
            "meter",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the node once some batches are stored, well before the end.
    wait_until("the import is under way", 120, || {
        let d = driver(&home, "file-import");
        let done = d["progress"][0].as_u64().unwrap_or(0);
        assert_ne!(
            d["state"], "done",
            "the import ended before the node was killed"
        );
        (done >= 30_000).then_some(())
    });
    let mut node = node;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let _ = add.wait().unwrap();
    // The import was interrupted. Make it worse: roll the saved progress back by two
    // batches of 10,000, as if kills had come between writes and the progress file's
    // updates (the kill above may have added one more).
    let imports_path = home.join("imports.json");
    let stored = hearth_protocol::statefile::read_state(&imports_path, "imports", 1 << 24)
        .unwrap()
        .unwrap();
    let mut imports: Value = serde_json::from_slice(&stored.payload).unwrap();
    let progress = imports
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    assert_eq!(progress["complete"], false, "{progress}");
    let done = progress["done"].as_u64().unwrap();
    assert!((30_000..LINES).contains(&done), "{progress}");
    progress["done"] = (done - 20_000).into();
    progress["imported"] = (progress["imported"].as_u64().unwrap() - 20_000).into();
    hearth_protocol::statefile::write_state(
        &imports_path,
        "imports",
        1,
        &serde_json::to_vec(&imports).unwrap(),
    )
    .unwrap();

    // Started again, the node goes on with the import from drivers.toml.
    let node = start(&home);
    let finished = wait_until("the import finishes", 300, || {
        let d = driver(&home, "file-import");
        assert_ne!(d["state"], "failed", "{d}");
        (d["state"] == "done").then_some(d)
    });
    let detail = finished["detail"].as_str().unwrap();
    assert!(detail.starts_with("imported 1000000 records"), "{detail}");
    // Every line once: the count, and the sum of the numbers 0..LINES.
    let agg = |op: &str| {
        json_ok(&home, &["store", "agg", "meter", op, "--field", "n"])["result"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(agg("count") as u64, LINES);
    assert_eq!(agg("sum") as u64, LINES * (LINES - 1) / 2);
    assert_eq!(agg("max") as u64, LINES - 1);
    stop(node);
}

#[test]
fn file_import_reports_malformed_csv_lines_by_number() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let csv = tmp.path().join("rooms.csv");
    std::fs::write(
        &csv,
        "time,celsius,room\n\
         1600000000,18.5,kitchen\n\
         1600000001,18.6,kitchen\n\
         1600000002,20.0\n\
         1600000003,18.7,kitchen\n\
         soon,19.0,kitchen\n\
         1600000005,21.0,kitchen,extra\n\
         1600000006,18.8,kitchen\n",
    )
    .unwrap();
    let csv = csv.to_str().unwrap();
    // Refuse (the default): the first malformed line named, nothing imported.
    let refused = hearth(
        &home,
        &["driver", "add", "file-import", csv, "--store", "rooms"],
    );
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("line 4: 2 fields where the header has 3"),
        "{message}"
    );
    assert!(message.contains("nothing was imported"), "{message}");
    let failed = driver(&home, "file-import");
    assert_eq!(failed["state"], "failed");
    assert!(failed["last_error"].as_str().unwrap().contains("line 4"));
    let count = || {
        json_ok(&home, &["store", "agg", "rooms", "count"])["result"]
            .as_f64()
            .unwrap() as u64
    };
    assert_eq!(count(), 0);
    // Skip: the good lines imported, each malformed one reported by its line.
    let skipped = json_ok(
        &home,
        &[
            "driver",
            "add",
            "file-import",
            csv,
            "--store",
            "rooms",
            "--on-error",
            "skip",
            "--name",
            "rooms-skip",
        ],
    );
    let detail = skipped["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("imported 4 records") && detail.contains("skipped 3 malformed lines"),
        "{detail}"
    );
    for reason in [
        "line 4: 2 fields where the header has 3",
        "line 6: time \"soon\" is not a time",
        "line 7: 4 fields where the header has 3",
    ] {
        assert!(detail.contains(reason), "{reason} in {detail}");
    }
    assert_eq!(count(), 4);
    let kept: Vec<f64> = records(&home, "rooms")
        .iter()
        .map(|r| r["value"]["celsius"].as_f64().unwrap())
        .collect();
    assert_eq!(kept, [18.5, 18.6, 18.7, 18.8]);
    stop(node);
}

#[test]
fn a_bad_entry_in_drivers_toml_affects_only_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    // Written by hand while the node is stopped: a good entry, a misspelt field, broken
    // syntax, and a valid table with an invalid setting.
    let toml = home.join("drivers.toml");
    std::fs::write(
        &toml,
        r#"# My drivers.

[[driver]]
name = "os-monitor"
kind = "os-monitor"
store = "os-monitor"
interval_secs = 1

[[driver]]
name = "typo"
kind = "os-monitor"
store = "typo"
intervl_secs = 5

[[driver]]
name = "half"
kind = "mqtt"
store = "climate"
broker = 

[[driver]]
name = "zero"
kind = "os-monitor"
store = "zero"
interval_secs = 0
"#,
    )
    .unwrap();
    let node = start(&home);
    // The good one runs.
    wait_until("a reading from the good entry", 20, || {
        records(&home, "os-monitor").pop()
    });
    assert_eq!(driver(&home, "os-monitor")["state"], "running");
    // Each bad one is listed as failed, by its name, with what is wrong and where.
    let failed = |name: &str, kind: &str, words: &[&str]| {
        let d = driver(&home, name);
        assert_eq!(d["state"], "failed", "{d}");
        assert_eq!(d["kind"], kind, "{d}");
        let error = d["last_error"].as_str().unwrap();
        for word in words {
            assert!(error.contains(word), "{word:?} in {error}");
        }
    };
    failed(
        "typo",
        "os-monitor",
        &["drivers.toml line 9:", "intervl_secs"],
    );
    failed("half", "mqtt", &["drivers.toml line 19:"]);
    failed("zero", "os-monitor", &["interval"]);
    let listed = hearth(&home, &["driver", "ls"]);
    assert!(listed.status.success());
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("typo") && text.contains("failed"), "{text}");

    // The node still manages its drivers, and keeps the hand-written entries it cannot
    // read as they were.
    json_ok(
        &home,
        &["driver", "add", "http-ingest", "--listen", "127.0.0.1:0"],
    );
    let written = std::fs::read_to_string(&toml).unwrap();
    assert!(written.contains("intervl_secs = 5"), "{written}");
    assert!(written.contains("broker = \n"), "{written}");
    assert!(written.contains("kind = \"http-ingest\""), "{written}");
    json_ok(&home, &["driver", "rm", "half"]);
    json_ok(&home, &["driver", "rm", "typo"]);
    assert_eq!(driver(&home, "half"), Value::Null);
    let written = std::fs::read_to_string(&toml).unwrap();
    assert!(
        !written.contains("intervl_secs") && !written.contains("broker ="),
        "{written}"
    );
    stop(node);

    // Read again at the next start: the good ones run, the invalid one still fails.
    let node = start(&home);
    wait_until("the drivers are back", 20, || {
        (driver(&home, "http-ingest")["state"] == "running"
            && driver(&home, "os-monitor")["state"] == "running")
            .then_some(())
    });
    assert_eq!(driver(&home, "zero")["state"], "failed");
    stop(node);

    // A fault outside the entries (a misspelt table name): listed, and the node will not
    // rewrite the file until it is fixed by hand; the good entries still run.
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n[[drivers]]\nname = \"x\"\n");
    std::fs::write(&toml, &text).unwrap();
    let node = start(&home);
    let whole = wait_until("the fault shows", 20, || {
        let d = driver(&home, "drivers.toml");
        (d != Value::Null).then_some(d)
    });
    assert_eq!(whole["state"], "failed");
    assert!(
        whole["last_error"].as_str().unwrap().contains("drivers"),
        "{whole}"
    );
    let refused = hearth(&home, &["driver", "add", "os-monitor", "--name", "more"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("fixed by hand"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(std::fs::read_to_string(&toml).unwrap(), text);
    wait_until("the good entries run", 20, || {
        (driver(&home, "os-monitor")["state"] == "running").then_some(())
    });
    stop(node);
}

/// Sends `head` (a request line and headers) on a fresh connection to `url`'s address,
/// and nothing else; returns the status line the server answers.
fn status_line_for_headers(url: &str, head: &str) -> String {
    use std::io::{BufRead as _, Write as _};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    // Bounds the wait: a server that reads the body before answering never answers.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .unwrap();
    line
}

/// A stranger on the network: the endpoint is on loopback unless told otherwise, and
/// a request without credentials is refused before any of its body is read.
#[test]
fn http_ingest_is_local_by_default_and_checks_credentials_before_the_body() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    let added = json_ok(&home, &["driver", "add", "http-ingest"]);
    let url = added["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let out = hearth(
        &home,
        &[
            "driver",
            "add",
            "http-ingest",
            "--name",
            "lan",
            "--listen",
            "0.0.0.0:0",
            "--store",
            "lan",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("https://0.0.0.0:"), "{text}");
    assert!(text.contains("reachable from the network"), "{text}");

    // 3 MiB announced, none sent: the 401 comes at once (the body is never waited for).
    for path in ["/readings", "/owntracks"] {
        let line = status_line_for_headers(
            &url,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 3145728\r\n\r\n"
            ),
        );
        assert!(line.starts_with("HTTP/1.1 401"), "{path}: {line}");
    }
    // So is a request with the wrong password.
    let wrong = base64::engine::general_purpose::STANDARD.encode("hearth:wrong");
    let line = status_line_for_headers(
        &url,
        &format!(
            "POST /readings HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {wrong}\r\n\
             Content-Length: 3145728\r\n\r\n"
        ),
    );
    assert!(line.starts_with("HTTP/1.1 401"), "{line}");
    // `GET /` says nothing without credentials.
    let line = status_line_for_headers(&url, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(line.starts_with("HTTP/1.1 401"), "{line}");
    let basic = basic_auth(
        added["user"].as_str().unwrap(),
        added["password"].as_str().unwrap(),
    );
    let line = status_line_for_headers(
        &url,
        &format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: {basic}\r\n\r\n"),
    );
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert!(records(&home, added["store"].as_str().unwrap()).is_empty());
    stop(node);
}

/// The SHA-256 of a DER certificate as browsers show it, computed here independently
/// of the node.
fn sha256_fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts exactly the server certificate whose SHA-256 fingerprint it pins (what a
/// phone set to trust one certificate does), still checking the handshake's
/// signatures; keeps the certificate it was shown.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
    shown: std::sync::Mutex<Option<Vec<u8>>>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.shown.lock().unwrap() = Some(end_entity.to_vec());
        if sha256_fingerprint(end_entity) == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What an HTTPS exchange gave: the status and body, or the error; and the DER
/// certificate the server showed, if it got that far.
struct Exchange {
    answer: Result<(u16, String), String>,
    shown: Option<Vec<u8>>,
}

/// Sends `head` (request line and headers, without the blank line) and `body` over
/// HTTPS to `port` on 127.0.0.1, trusting only the certificate `fingerprint` names.
fn https(port: u16, fingerprint: &str, head: &str, body: &[u8]) -> Exchange {
    use std::io::Write as _;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pinned = std::sync::Arc::new(Pinned {
        fingerprint: fingerprint.to_owned(),
        provider: provider.clone(),
        shown: std::sync::Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    let server =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let answer = (|| {
        let mut request = format!(
            "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        tls.write_all(&request).map_err(|err| err.to_string())?;
        tls.flush().map_err(|err| err.to_string())?;
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            // A close without TLS's goodbye, after the whole answer: still an answer.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
            }
            Err(err) => return Err(err.to_string()),
        }
        let response = String::from_utf8(response).map_err(|err| err.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("not an HTTP answer: {response:?}"))?;
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
        Ok((status, body.to_owned()))
    })();
    let shown = pinned.shown.lock().unwrap().clone();
    Exchange { answer, shown }
}

/// The value after `label` on a line of `text`.
fn line_value<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        .trim()
}

/// An endpoint reachable from the network: `driver add` makes a certificate and prints
/// its fingerprint; the endpoint speaks HTTPS only, with that certificate (also after a
/// restart), to a client that pins it; plain HTTP on its port writes nothing; without
/// its certificate or key the driver fails naming the file, and `driver rm` deletes
/// them.
#[test]
fn http_ingest_beyond_loopback_serves_https_with_the_certificate_it_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    // 0.0.0.0 is not loopback; the test reaches it through 127.0.0.1.
    let out = hearth(
        &home,
        &[
            "driver",
            "add",
            "http-ingest",
            "--listen",
            "0.0.0.0:0",
            "--name",
            "lan",
            "--store",
            "lan",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("reachable from the network"), "{text}");
    assert!(!text.contains("plain HTTP"), "{text}");
    let url = line_value(&text, "Endpoint:")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(url.starts_with("https://0.0.0.0:"), "{url}");
    let port: u16 = url.rsplit_once(':').unwrap().1.parse().unwrap();
    let printed = line_value(&text, "TLS fingerprint (SHA-256):").to_owned();
    let password = line_value(&text, "Password:").to_owned();
    let basic = basic_auth(line_value(&text, "User:"), &password);
    let bearer = format!("Bearer {password}");

    // The certificate file is the one served; its key is private; `driver ls` shows
    // both the fingerprint and the file.
    let listed = driver(&home, "lan");
    assert_eq!(listed["tls_fingerprint"], printed.as_str(), "{listed}");
    assert_eq!(listed["detail"], url.as_str());
    let certificate = PathBuf::from(listed["tls_certificate"].as_str().unwrap());
    assert_eq!(certificate, home.join("driver-lan.crt"));
    assert_eq!(
        line_value(&text, "TLS certificate:"),
        certificate.to_str().unwrap()
    );
    let key = home.join("driver-lan.key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let pem = std::fs::read_to_string(&certificate).unwrap();
    let base64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap();
    assert_eq!(sha256_fingerprint(&der), printed);

    // The right credentials over HTTPS, the certificate pinned: stored. What the server
    // showed is exactly the certificate whose fingerprint was printed.
    let reading = br#"{"ts": 1700000000000, "value": {"steps": 1}}"#;
    let sent = https(
        port,
        &printed,
        &format!("POST /readings HTTP/1.1\r\nAuthorization: {bearer}"),
        reading,
    );
    assert_eq!(sent.answer, Ok((200, r#"{"appended":1}"#.to_owned())));
    assert_eq!(sha256_fingerprint(&sent.shown.unwrap()), printed);
    let owntracks = https(
        port,
        &printed,
        &format!(
            "POST /owntracks HTTP/1.1\r\nAuthorization: {basic}\r\nContent-Type: application/json"
        ),
        &fixture("location-android-home.json"),
    );
    assert_eq!(owntracks.answer, Ok((200, "[]".to_owned())));
    assert_eq!(records(&home, "lan").len(), 2);

    // Without credentials, or with wrong ones: 401 over HTTPS, nothing written.
    let refused = https(port, &printed, "POST /readings HTTP/1.1", reading);
    assert_eq!(refused.answer.map(|(status, _)| status), Ok(401));
    let wrong = https(
        port,
        &printed,
        "POST /readings HTTP/1.1\r\nAuthorization: Bearer not-the-password",
        reading,
    );
    assert_eq!(wrong.answer.map(|(status, _)| status), Ok(401));

    // A client pinning another certificate does not get to send anything.
    let other = "00:".repeat(31) + "00";
    let pinned_other = https(
        port,
        &other,
        &format!("POST /readings HTTP/1.1\r\nAuthorization: {bearer}"),
        reading,
    );
    assert!(pinned_other.answer.is_err(), "{:?}", pinned_other.answer);

    // Plain HTTP to the same port, with the right credentials: no HTTP answer, nothing
    // written.
    {
        use std::io::Write as _;
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let request = format!(
            "POST /readings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {bearer}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            reading.len()
        );
        let _ = tcp.write_all(request.as_bytes());
        let _ = tcp.write_all(reading);
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(records(&home, "lan").len(), 2);
    stop(node);

    // The same certificate after a restart: the phones' pins stay valid.
    let node = start(&home);
    wait_until("the endpoint is back", 20, || {
        (driver(&home, "lan")["state"] == "running").then_some(())
    });
    let again = https(
        port,
        &printed,
        &format!("POST /readings HTTP/1.1\r\nAuthorization: {bearer}"),
        reading,
    );
    assert_eq!(again.answer.map(|(status, _)| status), Ok(200));
    stop(node);

    // Without its key the driver does not start (and never falls back to plain HTTP):
    // it fails, naming the file.
    std::fs::remove_file(&key).unwrap();
    let node = start(&home);
    let failed = wait_until("the driver fails", 20, || {
        let d = driver(&home, "lan");
        (d["state"] == "failed").then_some(d)
    });
    let error = failed["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{} is missing", key.display())),
        "{error}"
    );
    assert_eq!(failed["tls_fingerprint"], Value::Null);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let text = String::from_utf8_lossy(&hearth(&home, &["driver", "ls"]).stdout).into_owned();
    assert!(text.contains("is missing"), "{text}");

    // Removing the driver deletes its certificate (and key).
    json_ok(&home, &["driver", "rm", "lan"]);
    assert!(!certificate.exists());
    stop(node);
}
