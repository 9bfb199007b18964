//! A running node's local API over HTTP, for tests and benchmarks that need more speed
//! than a `hearth` process per call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::BufRead as _;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;

use crate::cli::RunningNode;

/// One node's API.
#[derive(Debug)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Api {
    /// The API of `node`, whose data dir is `dir` (where its key is).
    pub fn new(dir: &Path, node: &RunningNode) -> Self {
        Self::at(dir, &node.addr)
    }

    /// The API at `addr` (`127.0.0.1:PORT`) of the node whose data dir is `dir`. Calls
    /// connect from the calling thread: a node in a network namespace is reached from
    /// a thread in that namespace ([`crate::netns::Worker`]).
    pub fn at(dir: &Path, addr: &str) -> Self {
        let key = std::fs::read_to_string(dir.join("api.key")).unwrap();
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            base: format!("http://{addr}"),
            auth: format!("Bearer {}", key.trim()),
        }
    }

    /// `GET path`, its JSON body (null if it is not JSON).
    pub fn get(&self, path: &str) -> Value {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call()
            .unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// `GET /v1/metrics`, parsed as Prometheus parses it; fails unless the status is
    /// 200 and the content type is OpenMetrics text.
    pub fn metrics(&self) -> Metrics {
        let mut response = self
            .agent
            .get(format!("{}/v1/metrics", self.base))
            .header("Authorization", &self.auth)
            .call()
            .unwrap();
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.body_mut().read_to_string().unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics: {text}");
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Metrics(prometheus_parse::Scrape::parse(lines).unwrap())
    }

    /// The status of `GET path`.
    pub fn status_of(&self, path: &str) -> u16 {
        self.agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call()
            .unwrap()
            .status()
            .as_u16()
    }

    /// `PUT` or `POST` (any other `method`) of `body`; fails unless the status is 2xx.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> Value {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(body).unwrap();
        let request = match method {
            "PUT" => self.agent.put(url),
            _ => self.agent.post(url),
        };
        let mut response = request
            .header("Authorization", &self.auth)
            .content_type("application/json")
            .send(&body[..])
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        assert!(status < 300, "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The `data:` lines of a store's tail, as they arrive.
    pub fn tail(&self, store: &str) -> mpsc::Receiver<(Instant, String)> {
        let response = self
            .agent
            .get(format!("{}/v1/stores/{store}/tail", self.base))
            .header("Authorization", &self.auth)
            .call()
            .unwrap();
        let (tx, rx) = mpsc::sync_channel(65_536);
        std::thread::spawn(move || {
            let reader = std::io::BufReader::new(response.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(data) = line.strip_prefix("data:")
                    && tx.send((Instant::now(), data.trim().to_owned())).is_err()
                {
                    return;
                }
            }
        });
        rx
    }

    /// Does this node list `name` as a connected peer?
    pub fn peer_connected(&self, name: &str) -> bool {
        self.get("/v1/status")["peers"]
            .as_array()
            .is_some_and(|peers| {
                peers
                    .iter()
                    .any(|p| p["name"] == name && p["connected"] == true)
            })
    }

    /// The records of `store` here (0 while it has no replica here).
    pub fn records(&self, store: &str) -> u64 {
        self.get("/v1/stores")["stores"]
            .as_array()
            .and_then(|stores| {
                stores
                    .iter()
                    .find(|s| s["name"] == store && s["here"] == true)
            })
            .and_then(|s| s["records"].as_u64())
            .unwrap_or(0)
    }
}

/// One scrape of a node's metrics.
#[derive(Debug)]
pub struct Metrics(pub prometheus_parse::Scrape);

impl Metrics {
    /// The value of the sample `name` whose labels include every `(label, value)`
    /// (the sum over samples that match); `None` when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// [`Metrics::value`], or 0 when there is no such sample.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}
