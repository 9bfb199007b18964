//! The built-in drivers through a real node: os-monitor against /proc, http-ingest with
//! OwnTracks bodies, mqtt against a real Mosquitto broker (restarted under it), and
//! file-import of a million lines.

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

#[test]
fn os_monitor_matches_proc() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start(&home);
    json_ok(&home, &["driver", "add", "os-monitor", "--interval", "1s"]);
    let reading = wait_until("a reading", 20, || records(&home, "os-monitor").pop());
    let v = &reading["value"];
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
    assert_eq!(v["mem_total_bytes"].as_u64(), Some(total_kib * 1024));
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (v["load1"].as_f64().unwrap() - load).abs() < 2.0,
        "{v} vs {load}"
    );
    let cpu = v["cpu_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu));
    // Disk: as `stat -f` sees the data directory's file system.
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(&home)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    let total = parts.next().unwrap() * parts.next().unwrap();
    assert_eq!(v["disk_total_bytes"].as_u64(), Some(total));
    let used = v["mem_used_percent"].as_f64().unwrap();
    assert!(used > 0.0 && used < 100.0);
    // It keeps going, once a second.
    wait_until("more readings", 20, || {
        (records(&home, "os-monitor").len() >= 3).then_some(())
    });
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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(url).content_type("application/json");
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
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
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            added["user"].as_str().unwrap(),
            added["password"].as_str().unwrap()
        ))
    );
    let owntracks = format!("{url}/owntracks");
    for name in [
        "location-home.json",
        "location-walk.json",
        "location-work.json",
    ] {
        let (status, body) = post(&owntracks, Some(&basic), &fixture(name));
        assert_eq!((status, body.as_str()), (200, "[]"), "{name}");
    }
    // Other message types are acknowledged, not stored.
    for name in ["transition-work.json", "lwt.json"] {
        let (status, body) = post(&owntracks, Some(&basic), &fixture(name));
        assert_eq!((status, body.as_str()), (200, "[]"), "{name}");
    }
    let stored = records(&home, "location");
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0]["ts"], 1_700_000_100_000u64);
    assert_eq!(stored[0]["value"]["lat"], 52.373069);
    assert_eq!(stored[0]["value"]["batt"], 87);
    assert!(stored[0]["value"].get("_type").is_none());
    assert_eq!(stored[2]["value"]["SSID"], "office");

    // Wrong credentials, bad bodies: refused with a message, nothing written.
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("hearth:not-the-password")
    );
    assert_eq!(
        post(&owntracks, Some(&wrong), &fixture("location-home.json")).0,
        401
    );
    assert_eq!(
        post(&owntracks, None, &fixture("location-home.json")).0,
        401
    );
    for bad in [
        &b"{\"_type\":\"location\",\"lon\":4.9,\"tst\":1700000000}"[..],
        b"{\"_type\":\"location\",\"lat\":123,\"lon\":4.9,\"tst\":1700000000}",
        b"not json",
        b"[1,2]",
    ] {
        let (status, body) = post(&owntracks, Some(&basic), bad);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(body.contains("error"), "{body}");
    }
    assert_eq!(records(&home, "location").len(), 3);

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
        post(&owntracks, Some(&basic), &fixture("location-walk.json")).0,
        200
    );
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
