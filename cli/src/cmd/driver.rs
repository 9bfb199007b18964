//! `hearth driver add KIND [options]`, `hearth driver ls`, `hearth driver rm NAME`.

use std::path::PathBuf;
use std::time::Duration;

use hearth_node::api::types as api;

use crate::client::{Client, segment};
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// What file-import does with a malformed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnError {
    /// Refuse the whole import.
    Refuse,
    /// Skip the line and go on.
    Skip,
}

impl OnError {
    fn as_str(self) -> &'static str {
        match self {
            OnError::Refuse => "refuse",
            OnError::Skip => "skip",
        }
    }
}

/// Driver subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Add a driver to the running node; it starts at once and on every start after.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  hearth driver add os-monitor --interval 10s\n  hearth driver add http-ingest --listen 0.0.0.0:8443 --store location\n  hearth driver add file-import readings.csv --store heart-rate --ts-column time"
    )]
    Add(Add),
    /// Every driver, its store, state and last error.
    Ls,
    /// Stop a driver and remove it (its store and data stay).
    Rm {
        /// The driver's name.
        name: String,
    },
}

/// The kinds of driver.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Add {
    /// The device's load averages, CPU use, memory, disk use and battery.
    OsMonitor {
        /// Time between readings.
        #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
        interval: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// An HTTP endpoint for OwnTracks and JSON readings; prints its URL and credentials.
    ///
    /// On loopback it speaks plain HTTP; on any other address HTTPS only, with a
    /// self-signed certificate made now, whose SHA-256 fingerprint it prints.
    HttpIngest {
        /// Address to listen on, ADDR:PORT (default: 127.0.0.1, a port chosen once and
        /// kept); beyond loopback the endpoint serves HTTPS.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Subscribe to an MQTT broker: one store per topic filter.
    Mqtt {
        /// The broker, HOST:PORT.
        #[arg(long)]
        broker: String,
        /// The topic filter.
        #[arg(long)]
        topic: String,
        /// The broker's user name.
        #[arg(long, requires = "password")]
        user: Option<String>,
        /// The broker's password.
        #[arg(long, requires = "user")]
        password: Option<String>,
        /// Publish every key put into the kv store STORE-actuators to PREFIX/KEY.
        #[arg(long, value_name = "PREFIX")]
        actuate: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Import a CSV (with a header) or JSON-lines file; resumable and idempotent.
    FileImport {
        /// The file.
        file: PathBuf,
        /// The timestamp column or field (default: ts, timestamp or time).
        #[arg(long, value_name = "C")]
        ts_column: Option<String>,
        /// On a malformed line: refuse the whole import, or skip the line.
        #[arg(long, value_enum, default_value = "refuse")]
        on_error: OnError,
        #[command(flatten)]
        common: Common,
    },
}

/// Options every kind takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// The store it writes (default per kind: os-monitor, location, mqtt, import).
    #[arg(long)]
    store: Option<String>,
    /// The driver's name (default: its kind).
    #[arg(long)]
    name: Option<String>,
    /// The unit of the readings, recorded in the catalogue.
    #[arg(long)]
    unit: Option<String>,
    /// What the readings are, recorded in the catalogue.
    #[arg(long)]
    description: Option<String>,
}

fn body(add: Add) -> Result<(api::AddDriver, bool)> {
    let with = |kind: &str, c: Common| api::AddDriver {
        kind: kind.to_owned(),
        store: c.store,
        name: c.name,
        unit: c.unit,
        description: c.description,
        ..Default::default()
    };
    Ok(match add {
        Add::OsMonitor { interval, common } => (
            api::AddDriver {
                interval_secs: Some(interval.as_secs().max(1)),
                ..with("os-monitor", common)
            },
            false,
        ),
        Add::HttpIngest { listen, common } => (
            api::AddDriver {
                listen,
                ..with("http-ingest", common)
            },
            false,
        ),
        Add::Mqtt {
            broker,
            topic,
            user,
            password,
            actuate,
            common,
        } => {
            let (user, password) = match (user, password) {
                (Some(user), Some(password)) => (Some(user), Some(password)),
                _ => (None, None),
            };
            (
                api::AddDriver {
                    broker: Some(broker),
                    topic: Some(topic),
                    user,
                    password,
                    actuate,
                    ..with("mqtt", common)
                },
                false,
            )
        }
        Add::FileImport {
            file,
            ts_column,
            on_error,
            common,
        } => {
            // The node reads the file: give it an absolute path.
            let file = std::fs::canonicalize(&file).map_err(|err| {
                CliError::new(Exit::NotFound, format!("{}: {err}", file.display()))
            })?;
            if common.store.is_none() {
                return Err(CliError::new(
                    Exit::Usage,
                    "file-import needs --store NAME: the store to import into",
                ));
            }
            (
                api::AddDriver {
                    file: Some(file),
                    on_error: Some(on_error.as_str().to_owned()),
                    ts_column,
                    ..with("file-import", common)
                },
                true,
            )
        }
    })
}

/// Waits for a file import to finish, drawing a progress bar on a terminal.
fn follow(client: &Client, name: &str, json: bool) -> Result<api::Driver> {
    let bar = crate::output::progress(0, "lines", json);
    loop {
        let d: api::Driver = client.get(&format!("/v1/drivers/{}", segment(name)), &())?;
        if let Some((done, total)) = d.progress {
            bar.set_length(total);
            bar.set_position(done);
        }
        match d.state.as_str() {
            "done" => {
                bar.finish_and_clear();
                return Ok(d);
            }
            "failed" | "retrying" | "stopped" => {
                bar.abandon();
                return Err(CliError::new(
                    Exit::Error,
                    format!(
                        "the import of {name} failed: {}",
                        d.last_error.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Is the endpoint at `url` (`http://` or `https://`, `HOST:PORT`) on loopback?
fn on_loopback(url: &str) -> bool {
    let host = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .rsplit_once(':')
        .map_or("", |(host, _)| host);
    host.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    let client = Client::connect(dir)?;
    match command {
        Command::Add(add) => {
            let (body, wait) = body(add)?;
            let added: api::Driver = client.send("POST", "/v1/drivers", &body)?;
            let name = added.name.clone();
            if wait {
                let done = follow(&client, &name, out.json())?;
                out.emit_typed(
                    || {
                        format!(
                            "{}.\n",
                            done.detail.as_deref().unwrap_or("the import finished")
                        )
                    },
                    &done,
                );
                return Ok(());
            }
            out.emit_typed(
                || {
                    let mut text = format!(
                        "Driver {name} ({}) writes the store {}.\n",
                        added.kind, added.store
                    );
                    if let Some(url) = &added.url {
                        text.push_str(&format!(
                            "Endpoint: {url}  (OwnTracks: {url}/owntracks, JSON readings: {url}/readings)\nUser: {}\nPassword: {}\n",
                            added.user.as_deref().unwrap_or("-"),
                            added.password.as_deref().unwrap_or("-"),
                        ));
                    }
                    let fingerprint = added.tls_fingerprint.as_deref();
                    if let Some(fingerprint) = fingerprint {
                        text.push_str(&format!(
                            "TLS certificate: {}\nTLS fingerprint (SHA-256): {fingerprint}\n",
                            added
                                .tls_certificate
                                .as_deref()
                                .map_or_else(|| "-".into(), |p| p.display().to_string()),
                        ));
                    }
                    let networked = added.url.as_deref().is_some_and(|url| !on_loopback(url));
                    if fingerprint.is_some() || networked {
                        text.push_str(
                            "Warning: this endpoint is reachable from the network. Its \
                             certificate is self-signed: set each device to trust exactly this \
                             certificate (pin the fingerprint above, or install the certificate \
                             file), never to accept any certificate, or whoever is in between \
                             can read the credentials and the readings.\n",
                        );
                    }
                    text
                },
                &added,
            );
        }
        Command::Ls => {
            let list: api::Drivers = client.get("/v1/drivers", &())?;
            out.emit_typed(
                || {
                    let rows = list
                        .drivers
                        .iter()
                        .map(|d| {
                            let note = d
                                .last_error
                                .as_deref()
                                .map(|e| format!("error: {e}"))
                                .or_else(|| d.detail.clone())
                                .unwrap_or_default();
                            vec![
                                d.name.clone(),
                                d.kind.clone(),
                                d.store.clone(),
                                d.state.clone(),
                                d.records.to_string(),
                                note,
                            ]
                        })
                        .collect();
                    let mut text = crate::output::table(
                        &[
                            "NAME",
                            "KIND",
                            "STORE",
                            "STATE",
                            "RECORDS",
                            "DETAIL / LAST ERROR",
                        ],
                        rows,
                        &[4],
                    );
                    for d in &list.drivers {
                        if let Some(fingerprint) = &d.tls_fingerprint {
                            text.push_str(&format!(
                                "{} serves HTTPS with {}, SHA-256 fingerprint {fingerprint}\n",
                                d.name,
                                d.tls_certificate.as_deref().map_or_else(
                                    || "its certificate".into(),
                                    |p| p.display().to_string()
                                ),
                            ));
                        }
                    }
                    text
                },
                &list,
            );
        }
        Command::Rm { name } => {
            let answer: api::Removed = client.delete(&format!("/v1/drivers/{}", segment(&name)))?;
            out.emit_typed(
                || format!("Removed driver {name}; its store and data stay."),
                &answer,
            );
        }
    }
    Ok(())
}
