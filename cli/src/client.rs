//! The CLI's side of the local API: finds the node through the data directory and
//! maps API errors to exit codes.

use std::io::Read as _;
use std::time::Duration;

use hearth_node::api::types::ErrorBody;
use hearth_node::layout;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};

/// A connection to the node of one data directory.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    key: String,
    agent: ureq::Agent,
    streaming: ureq::Agent,
}

/// Percent-encodes one path segment (store names may contain `/`).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn not_running(dir: &DataDir) -> CliError {
    CliError::new(
        Exit::Unavailable,
        format!("no Hearth node is running for {}", dir.root().display()),
    )
    .hint(format!(
        "start one with `hearth node run{}`",
        crate::cmd::init::data_dir_flag(dir)
    ))
}

impl Client {
    pub(crate) fn connect(dir: &DataDir) -> Result<Self> {
        let addr = match std::fs::read_to_string(dir.root().join(layout::API_ADDR_FILE)) {
            Ok(addr) => addr.trim().to_owned(),
            Err(_) => {
                if !dir.is_initialised() {
                    return Err(CliError::new(
                        Exit::NotFound,
                        format!("{} is not a Hearth data directory", dir.root().display()),
                    )
                    .hint("run `hearth init --name NAME` first, or pass the right --data-dir"));
                }
                return Err(not_running(dir));
            }
        };
        let key_path = dir.root().join(layout::API_KEY_FILE);
        let key = std::fs::read_to_string(&key_path)
            .map_err(|err| CliError::read(&key_path, err, "API key"))?
            .trim()
            .to_owned();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let streaming = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Self {
            base: format!("http://{addr}"),
            key,
            agent,
            streaming,
        })
    }

    fn unavailable(&self, err: &ureq::Error) -> CliError {
        CliError::new(
            Exit::Unavailable,
            format!("the node at {} does not answer: {err}", self.base),
        )
        .hint("start it with `hearth node run`")
    }

    fn finish<T: DeserializeOwned>(
        &self,
        response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let response = response.map_err(|err| self.unavailable(&err))?;
        let status = response.status().as_u16();
        let mut text = String::new();
        response
            .into_body()
            .into_reader()
            .read_to_string(&mut text)
            .map_err(|err| {
                CliError::new(
                    Exit::Unavailable,
                    format!("the node's answer was cut off: {err}"),
                )
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|err| {
                CliError::new(
                    Exit::Error,
                    format!("the node's answer is not what this version of hearth reads: {err}"),
                )
                .hint("run the same version of hearth as the node")
            });
        }
        let message = serde_json::from_str::<ErrorBody>(&text).map_or_else(
            |_| format!("the node refused the request (HTTP {status})"),
            |body| body.error,
        );
        let exit = match status {
            404 => Exit::NotFound,
            401 | 403 => Exit::Refused,
            503 => Exit::Unavailable,
            _ => Exit::Error,
        };
        Err(CliError::new(exit, message))
    }

    /// The URL of `path` with `query`: a typed query (an object of its set fields) or a
    /// list of `(name, value)` pairs.
    fn url(&self, path: &str, query: &impl Serialize) -> String {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match serde_json::to_value(query).unwrap_or_default() {
            serde_json::Value::Object(map) => {
                for (k, v) in &map {
                    if !v.is_null() {
                        pairs.push((k.clone(), text(v)));
                    }
                }
            }
            serde_json::Value::Array(list) => {
                for pair in &list {
                    if let Some([k, v]) = pair.as_array().map(Vec::as_slice) {
                        pairs.push((text(k), text(v)));
                    }
                }
            }
            _ => {}
        }
        let mut url = format!("{}{path}", self.base);
        for (i, (k, v)) in pairs.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&segment(v));
        }
        url
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str, query: &impl Serialize) -> Result<T> {
        let url = self.url(path, query);
        self.finish(
            self.agent
                .get(&url)
                .header("Authorization", &format!("Bearer {}", self.key))
                .call(),
        )
    }

    pub(crate) fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T> {
        let url = self.url(path, &());
        let bytes = serde_json::to_vec(body).map_err(|err| {
            CliError::new(Exit::Error, format!("cannot encode the request: {err}"))
        })?;
        let auth = format!("Bearer {}", self.key);
        let response = match method {
            "POST" => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(&bytes[..]),
            "PATCH" => self
                .agent
                .patch(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(&bytes[..]),
            _ => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(&bytes[..]),
        };
        self.finish(response)
    }

    /// POSTs raw bytes (an encoded job), waiting up to `timeout` for the answer.
    pub(crate) fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<T> {
        let url = self.url(path, query);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        self.finish(
            agent
                .post(&url)
                .header("Authorization", &format!("Bearer {}", self.key))
                .content_type("application/octet-stream")
                .send(bytes),
        )
    }

    pub(crate) fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path, &());
        self.finish(
            self.agent
                .delete(&url)
                .header("Authorization", &format!("Bearer {}", self.key))
                .call(),
        )
    }

    /// Follows a server-sent event stream, calling `each` with every event's data.
    pub(crate) fn stream(&self, path: &str, mut each: impl FnMut(&str) -> bool) -> Result<()> {
        let url = self.url(path, &());
        let response = self
            .streaming
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.key))
            .call()
            .map_err(|err| self.unavailable(&err))?;
        if !response.status().is_success() {
            return self.finish::<serde_json::Value>(Ok(response)).map(|_| ());
        }
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        for line in std::io::BufRead::lines(reader) {
            let line = line.map_err(|err| {
                CliError::new(
                    Exit::Unavailable,
                    format!("the node closed the stream: {err}"),
                )
            })?;
            if let Some(data) = line.strip_prefix("data:")
                && !each(data.trim_start())
            {
                break;
            }
        }
        Ok(())
    }
}
