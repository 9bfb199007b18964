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
